"""ALSA's and JACK's messages to stderr, routed into the log instead.

When PortAudio initialises (``pyaudio.PyAudio()``) it opens every PCM the ALSA configuration
defines and tries to reach a JACK server. On a unit that prints some 80-100 lines to stderr:
cards that are not there, surround PCMs a USB microphone does not have, "jack server is not
running". libasound and libjack each have one process-wide hook for their messages
(``snd_lib_error_set_handler``; ``jack_set_error_function`` and ``jack_set_info_function``).
:func:`route` sets both, once per process, to log the messages on the ``daemon.hardware.alsa``
logger: at DEBUG while this thread is probing devices (inside :func:`probing`), since they
describe devices the unit does not use; at WARNING otherwise, so that a real error (a device
that fails while it is opened or read) is still seen.

ALSA's message arrives as its printf format without the arguments (a C variadic function cannot
be read portably through ctypes), e.g. ``pcm.c:2721 (snd_pcm_open_noupdate): Unknown PCM %s``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import threading
from collections.abc import Iterator

__all__ = ["probing", "route"]

log = logging.getLogger("daemon.hardware.alsa")

# void (*snd_lib_error_handler_t)(const char *file, int line, const char *function, int err,
#                                 const char *fmt, ...): the fixed arguments only.
_ALSA_HANDLER = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
)
_JACK_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p)


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", "replace").strip()


class _Router:
    """The installed hooks (kept alive here: C holds only pointers to them)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.alsa = self.jack = False
        try:  # libffi closures; its static trampolines work under MemoryDenyWriteExecute=yes
            self._alsa_handler = _ALSA_HANDLER(self._on_alsa)
            self._jack_handler = _JACK_HANDLER(self._on_jack)
        except (MemoryError, OSError) as exc:  # no closures here: the libraries keep printing
            log.debug("cannot route ALSA/JACK messages: %s", exc)
            return
        self.alsa = self._hook_alsa()
        self.jack = self._hook_jack()

    def _level(self) -> int:
        return logging.DEBUG if getattr(self._local, "depth", 0) else logging.WARNING

    def _on_alsa(
        self, file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None
    ) -> None:
        where = f"{_text(file)}:{line} ({_text(function)})"
        cause = f": {os.strerror(abs(err))}" if err else ""
        log.log(self._level(), "ALSA %s: %s%s", where, _text(fmt), cause)

    def _on_jack(self, message: bytes | None) -> None:
        log.log(self._level(), "JACK: %s", _text(message))

    def _hook_alsa(self) -> bool:
        try:
            asound = ctypes.CDLL(ctypes.util.find_library("asound") or "libasound.so.2")
        except OSError:
            return False  # no libasound: no ALSA messages either
        asound.snd_lib_error_set_handler(self._alsa_handler)
        # At exit, before these callbacks are freed, give ALSA back its own printer.
        atexit.register(asound.snd_lib_error_set_handler, None)
        return True

    def _hook_jack(self) -> bool:
        try:
            jack = ctypes.CDLL(ctypes.util.find_library("jack") or "libjack.so.0")
        except OSError:
            return False  # PortAudio built without JACK
        saved: list[tuple[str, int | None]] = []
        for name in ("jack_error_callback", "jack_info_callback"):
            with contextlib.suppress(ValueError):  # a libjack that does not export them
                saved.append((name, ctypes.c_void_p.in_dll(jack, name).value))
        jack.jack_set_error_function(self._jack_handler)
        jack.jack_set_info_function(self._jack_handler)

        def restore() -> None:
            for name, value in saved:
                ctypes.c_void_p.in_dll(jack, name).value = value

        atexit.register(restore)
        return True

    @contextlib.contextmanager
    def probing(self) -> Iterator[None]:
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1


@functools.cache
def route() -> _Router:
    """Route ALSA's and JACK's messages into the log, from now on, for the whole process."""
    return _Router()


@contextlib.contextmanager
def probing() -> Iterator[None]:
    """While this thread probes devices, ALSA's and JACK's messages are logged at DEBUG only."""
    with route().probing():
        yield
