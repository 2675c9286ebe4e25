"""A sound card's microphone through PyAudio (PortAudio over ALSA), on the monotonic clock.

Timestamps. PortAudio's ``time_info["input_buffer_adc_time"]`` is, on ALSA, the PCM status
timestamp minus the reported delay: CLOCK_MONOTONIC seconds where alsa-lib enables monotonic
timestamps (its ``hw`` plugin does), but 0 or a CLOCK_REALTIME value on some setups, and
plugins that report no delay (ALSA's ``file``/``null``) give the time of the last transfer. A
block's observed capture time is therefore that value when it is non-zero and within the last
second of ``time.monotonic_ns()``, else the callback's time minus the block's duration.
Observations jitter with scheduling and can only be late; the sample count does not jitter. So a
block's pts is ``origin + frames_before / rate``, where origin is the earliest
``observation - frames_before / rate`` seen; after an input overflow, or when an observation is
more than ``resync_s`` later than the count predicts (samples were lost unreported), the origin
moves to the new observation. pts never goes backwards.

Devices. PortAudio lists devices only when it initialises, so a microphone plugged in after
start-up is found by initialising it again: :attr:`PyAudioMicrophone.present` does that when the
device was missing, at most once every ``rescan_interval_s``. While PortAudio initialises, ALSA
and JACK describe every device they probe on stderr; :mod:`.alsa_messages` logs that instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import alsa_messages
from .base import AudioBlock, HardwareError

__all__ = ["CaptureClock", "PyAudioMicrophone", "find_input_device"]

log = logging.getLogger(__name__)


class CaptureClock:
    """Capture times of successive audio blocks, from observations and the sample count."""

    def __init__(self, sample_rate_hz: int, *, resync_s: float = 0.1) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.resync_ns = round(resync_s * 1e9)
        self.resyncs = 0
        self.reset()

    def reset(self) -> None:
        self._origin_ns: int | None = None
        self._frames = 0
        self._last_pts_ns: int | None = None

    def _span_ns(self, frames: int) -> int:
        return frames * 1_000_000_000 // self.sample_rate_hz

    def block_pts_ns(self, observed_ns: int, frames: int, *, lost: bool = False) -> int:
        """The pts of a block of *frames* whose first sample was observed at *observed_ns*."""
        candidate = observed_ns - self._span_ns(self._frames)
        if self._origin_ns is None or lost or candidate - self._origin_ns > self.resync_ns:
            if self._origin_ns is not None:
                self.resyncs += 1
            self._origin_ns = candidate
        else:
            self._origin_ns = min(self._origin_ns, candidate)
        pts_ns = self._origin_ns + self._span_ns(self._frames)
        if self._last_pts_ns is not None:
            pts_ns = max(pts_ns, self._last_pts_ns + 1)
        self._last_pts_ns = pts_ns
        self._frames += frames
        return pts_ns


def find_input_device(pa: Any, name: str, channels: int) -> int:
    """The index of the PortAudio input device whose name is, or contains, *name*."""
    inputs: list[tuple[int, str, int]] = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        if int(info["maxInputChannels"]) > 0:
            inputs.append((index, str(info["name"]), int(info["maxInputChannels"])))
    wanted = name.casefold()
    matches = [d for d in inputs if d[1].casefold() == wanted]
    matches += [d for d in inputs if wanted in d[1].casefold() and d not in matches]
    for index, _, max_channels in matches:
        if max_channels >= channels:
            return index
    available = ", ".join(f"{n!r} ({c} ch)" for _, n, c in inputs) or "none"
    if matches:
        raise HardwareError(
            f"microphone: {matches[0][1]!r} has {matches[0][2]} input channels, "
            f"{channels} wanted; available input devices: {available}"
        )
    raise HardwareError(
        f"microphone: no input device matching {name!r}; available input devices: {available}"
    )


class PyAudioMicrophone:
    """A capture device opened through PyAudio by (part of) its name, delivering s16le blocks.

    ALSA PCMs defined in ``/etc/asound.conf`` (e.g. ``pcm.painav_mic``) appear under their own
    name; cards as e.g. ``"USB PnP Sound Device: Audio (hw:1,0)"``. Blocks of *block_s* are
    delivered on PortAudio's callback thread. A device missing at start-up is looked for again
    by :attr:`present` (at most every *rescan_interval_s*) and by :meth:`start`.

    >>> mic = PyAudioMicrophone(device="painav_mic", sample_rate_hz=48_000)
    >>> mic.start(recorder.on_audio); ...; mic.stop(); mic.close()
    """

    def __init__(
        self,
        *,
        device: str = "painav_mic",
        sample_rate_hz: int = 48_000,
        channels: int = 1,
        block_s: float = 0.02,
        rescan_interval_s: float = 2.0,
    ) -> None:
        try:
            import pyaudio
        except ImportError as exc:
            raise HardwareError(
                "microphone: pyaudio is not installed (pip install 'painav[device]')"
            ) from exc
        self._pyaudio: Any = pyaudio
        self.device = device
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self.frames_per_block = max(1, round(sample_rate_hz * block_s))
        self.rescan_interval_s = rescan_interval_s
        self.clock = CaptureClock(sample_rate_hz)
        self._lock = threading.Lock()
        self._stream: Any = None
        self._sink: Callable[[AudioBlock], None] | None = None
        self._overruns = 0
        self._sink_failures = 0
        self._closed = False
        self._pa: Any = None
        self._device_index: int | None = None
        self._absent: HardwareError | None = None
        self._scanned_at = time.monotonic()
        self._pa = self._portaudio()
        self._find_device()

    def _portaudio(self) -> Any:
        alsa_messages.route()
        try:
            with alsa_messages.probing():
                return self._pyaudio.PyAudio()
        except OSError as exc:
            raise HardwareError(f"microphone: PortAudio failed to initialise: {exc}") from exc

    def _rescan(self) -> None:
        """Initialise PortAudio again (it sees devices only then) and look for the device."""
        self._scanned_at = time.monotonic()
        stale, self._pa, self._device_index = self._pa, None, None
        if stale is not None:
            with alsa_messages.probing():
                stale.terminate()
        try:
            self._pa = self._portaudio()
        except HardwareError as exc:
            self._absent = exc
            log.warning("%s", exc)
            return
        self._find_device()

    def _find_device(self) -> None:
        try:
            self._device_index = find_input_device(self._pa, self.device, self.channels)
            self._absent = None
        except HardwareError as exc:
            if self._absent is None or str(exc) != str(self._absent):
                log.warning("%s", exc)  # once, not at every look
            self._device_index, self._absent = None, exc

    @property
    def present(self) -> bool:
        """Whether the device is there; if it was not, PortAudio is asked again when the last
        look is *rescan_interval_s* old (a look takes PortAudio's initialisation, 30-300 ms)."""
        if self._closed:
            return False
        due = time.monotonic() - self._scanned_at >= self.rescan_interval_s
        if self._device_index is None and self._stream is None and due:
            self._rescan()
            if self._device_index is not None:
                log.info("microphone: %r found", self.device)
        return self._device_index is not None

    @property
    def overruns(self) -> int:
        return self._overruns

    def start(self, sink: Callable[[AudioBlock], None]) -> None:
        """Open the device and deliver blocks to *sink*; a no-op if already started."""
        if self._closed:
            raise HardwareError("microphone: closed")
        if self._stream is not None:
            return
        if self._device_index is None:  # plugged in since? PortAudio only sees devices at init
            self._rescan()
            if self._device_index is None:
                raise self._absent or HardwareError(f"microphone: {self.device!r} not found")
        with self._lock:
            self._sink = sink
            self._overruns = self._sink_failures = 0
            self.clock.reset()
        try:
            self._stream = self._pa.open(
                format=self._pyaudio.paInt16,
                channels=self.channels,
                rate=self.sample_rate_hz,
                input=True,
                input_device_index=self._device_index,
                frames_per_buffer=self.frames_per_block,
                stream_callback=self._on_audio,
            )
        except (OSError, ValueError) as exc:
            self._sink = None
            raise HardwareError(
                f"microphone: cannot open {self.device!r} at {self.sample_rate_hz} Hz, "
                f"{self.channels} ch: {exc}"
            ) from exc

    def stop(self) -> None:
        """Stop and close the stream; returns once the callback will not run again."""
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop_stream()
            finally:
                stream.close()
        with self._lock:
            self._sink = None

    def close(self) -> None:
        self.stop()
        self._closed = True
        pa, self._pa, self._device_index = self._pa, None, None
        if pa is not None:
            with alsa_messages.probing():
                pa.terminate()

    def _on_audio(
        self, data: bytes | None, frames: int, time_info: Mapping[str, float], status: int
    ) -> tuple[None, int]:
        """PortAudio's callback, on its own thread."""
        now_ns = time.monotonic_ns()
        overflow = bool(status & self._pyaudio.paInputOverflow)
        with self._lock:
            sink = self._sink
            if sink is None or data is None:
                return None, self._pyaudio.paContinue
            if overflow:
                self._overruns += 1
            observed_ns = self._observed_ns(time_info, frames, now_ns)
            pts_ns = self.clock.block_pts_ns(observed_ns, frames, lost=overflow)
        try:
            sink(AudioBlock(bytes(data), frames, pts_ns))
        except Exception:  # must not reach PortAudio's thread
            self._sink_failures += 1
            if self._sink_failures == 1:
                log.exception("microphone: the audio sink failed")
        return None, self._pyaudio.paContinue

    def _observed_ns(self, time_info: Mapping[str, float], frames: int, now_ns: int) -> int:
        adc_ns = round(time_info.get("input_buffer_adc_time", 0.0) * 1e9)
        if 0 < adc_ns <= now_ns + 1_000_000 and now_ns - adc_ns < 1_000_000_000:
            return adc_ns
        return now_ns - frames * 1_000_000_000 // self.sample_rate_hz
