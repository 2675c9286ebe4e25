"""The interfaces every camera, microphone, button and light backend implements.

Timestamps are nanoseconds of ``time.monotonic_ns()`` (CLOCK_MONOTONIC), the clock both the
camera and the microphone backends translate their own timestamps into, so that the muxer can
put video and audio on one clock and measure their offset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..recorder import Pattern  # the core's vocabulary; the backends render it

__all__ = [
    "AudioBlock",
    "Button",
    "Camera",
    "HardwareError",
    "Light",
    "Microphone",
    "Pattern",
    "VideoPacket",
]


class HardwareError(RuntimeError):
    """A device is missing or failed; the message names which and how."""


@dataclass(frozen=True)
class VideoPacket:
    """One encoded H.264 access unit (Annex B), as the encoder produced it."""

    data: bytes
    pts_ns: int  # capture time of the frame, monotonic clock
    keyframe: bool


@dataclass(frozen=True)
class AudioBlock:
    """A block of captured audio: signed 16-bit little-endian PCM, channels interleaved."""

    pcm: bytes
    frames: int  # sample frames in the block
    pts_ns: int  # capture time of the first sample, monotonic clock


class Camera(Protocol):
    """A camera with a hardware (or simulated) H.264 encoder.

    :meth:`start` begins delivering packets to *sink* from a key frame, on the camera's own
    thread; :meth:`stop` returns once no more packets will be delivered.
    """

    width: int
    height: int
    frame_rate_hz: float

    @property
    def present(self) -> bool: ...

    @property
    def dropped_frames(self) -> int:
        """Frames lost since :meth:`start` (sensor or encoder could not keep up)."""
        ...

    def start(self, sink: Callable[[VideoPacket], None]) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


class Microphone(Protocol):
    """A capture device delivering PCM blocks on its own thread between start and stop."""

    sample_rate_hz: int
    channels: int

    @property
    def present(self) -> bool: ...

    @property
    def overruns(self) -> int:
        """Input overflows since :meth:`start` (audio was lost)."""
        ...

    def start(self, sink: Callable[[AudioBlock], None]) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


class Button(Protocol):
    """The nurse's button: a short press (released before the hold time) or a long press."""

    def on_press(self, callback: Callable[[], None]) -> None: ...
    def on_long_press(self, callback: Callable[[], None]) -> None: ...
    def close(self) -> None: ...


class Light(Protocol):
    """The status light (and buzzer, if fitted)."""

    def show(self, pattern: Pattern) -> None: ...
    def close(self) -> None: ...
