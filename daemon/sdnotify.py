"""The unit's systemd glue: readiness, watchdog and status text, and journal fields.

Notifications speak sd_notify's datagram protocol (sd_notify(3)) themselves: one datagram of
``KEY=VALUE`` lines to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for
the abstract namespace). The protocol is small and documented as stable, and speaking it here
means READY=1 reaches systemd whether or not systemd-python is installed; with
systemd-python missing it used to go nowhere, and systemd killed the unit after
TimeoutStartSec= without a word. Without ``$NOTIFY_SOCKET`` (a developer's machine, the demo)
there is nothing to notify. Journal logging uses systemd-python when it is installed, else
stderr, which journald collects as well.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
from typing import Any

__all__ = ["Notifier", "log_fields", "notify_address", "setup_logging"]

log = logging.getLogger(__name__)


def _systemd(module: str) -> Any:
    # Imported by name: the repository's own systemd/ folder (unit files) would otherwise
    # shadow systemd-python for the type checker.
    return importlib.import_module(f"systemd.{module}")


def notify_address(value: str) -> str | None:
    """The socket address for a ``$NOTIFY_SOCKET`` value: a path as is, ``@name`` as an
    abstract-namespace name (leading NUL); ``None`` for forms this code does not speak
    (systemd 253's ``vsock:``)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


class Notifier:
    """Sends READY, WATCHDOG and STATUS to systemd when run under ``Type=notify``.

    A datagram that cannot be sent is logged once and otherwise ignored, as sd_notify(3)
    callers do: the service keeps running, and systemd's own timeout says the rest.
    """

    def __init__(self) -> None:
        self._address: str | None = None
        self._warned = False
        value = os.environ.get("NOTIFY_SOCKET")
        if value:
            self._address = notify_address(value)
            if self._address is None:
                log.warning("NOTIFY_SOCKET=%s: not a socket path or @name; not notifying", value)
        usec = os.environ.get("WATCHDOG_USEC")
        # Ping at a third of the interval, so one slow loop iteration is not fatal.
        self.watchdog_interval_s = int(usec) / 3e6 if usec and usec.isdigit() else None

    def _send(self, text: str) -> None:
        if self._address is None:
            return
        # A socket per message, as sd_notify(3) does: nothing held open between them.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(text.encode(), self._address)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
                self._warned = True

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")


def log_fields(**fields: str | None) -> dict[str, str]:
    """``extra=`` for a log call: journal fields such as CLIP_ID, DEVICE_ID, STATE."""
    return {k.upper(): v for k, v in fields.items() if v is not None}


class _Plain(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [f"{k}={v}" for k, v in vars(record).items() if k.isupper()]
        return f"{text} [{' '.join(extras)}]" if extras else text


def setup_logging(level: int = logging.INFO) -> None:
    """To the journal with structured fields under systemd, else to stderr."""
    root = logging.getLogger()
    root.setLevel(level)
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        try:
            handler = _systemd("journal").JournalHandler(SYSLOG_IDENTIFIER="painav-device")
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Plain("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
