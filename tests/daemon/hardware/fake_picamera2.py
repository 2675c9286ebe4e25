"""FakePicamera2: a test double of the picamera2 package, since there is no Pi camera here.

It keeps the parts of picamera2's behaviour the adapter depends on, as read in picamera2's
source (``encoders/encoder.py``, ``outputs/output.py``): ``start_recording`` starts the encoder
and its outputs, then the camera; ``stop_recording`` stops the camera, then the encoder, which
stops its outputs; an encoder turns each request's ``SensorTimestamp`` (ns) into microseconds,
keeps the first in ``firsttimestamp`` and hands outputs ``timestamp - firsttimestamp``.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest


class FakeOutput:
    """picamera2.outputs.Output's interface."""

    def __init__(self, pts: Any = None) -> None:
        self.recording = False

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(
        self,
        frame: bytes,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        pass


class FakeEncoder:
    def __init__(self, **options: Any) -> None:
        self.options = options
        self.firsttimestamp: int | None = None
        self.output: FakeOutput | None = None

    def emit(self, sensor_timestamp_ns: int, data: bytes, keyframe: bool) -> None:
        """Deliver one encoded frame as picamera2's encoders do (Encoder._timestamp)."""
        assert self.output is not None and self.output.recording
        ts_us = int(sensor_timestamp_ns / 1000)
        if self.firsttimestamp is None:
            self.firsttimestamp = ts_us
        self.output.outputframe(data, keyframe, ts_us - self.firsttimestamp)


class FakeH264Encoder(FakeEncoder):
    """The V4L2 (hardware) encoder."""


class FakeLibavH264Encoder(FakeEncoder):
    """The libx264 (software) encoder."""


class FakePicamera2:
    calls: list[tuple[str, Any]]
    no_camera = False

    def __init__(self, camera_num: int = 0) -> None:
        if self.no_camera:
            raise IndexError("list index out of range")
        self.calls.append(("Picamera2", camera_num))
        self.encoder: FakeEncoder | None = None

    def create_video_configuration(self, **options: Any) -> dict[str, Any]:
        return dict(options)

    def configure(self, config: dict[str, Any]) -> None:
        self.calls.append(("configure", config))

    def start_recording(self, encoder: FakeEncoder, output: FakeOutput, **_: Any) -> None:
        assert isinstance(output, FakeOutput), "picamera2 insists on an Output subclass"
        self.calls.append(("start_recording", type(encoder).__name__))
        encoder.output, self.encoder = output, encoder
        output.start()

    def stop_recording(self) -> None:
        self.calls.append(("stop_recording", None))
        assert self.encoder is not None and self.encoder.output is not None
        self.encoder.output.stop()

    def close(self) -> None:
        self.calls.append(("close", None))


def install(monkeypatch: pytest.MonkeyPatch) -> type[FakePicamera2]:
    """Put the fake picamera2 (and its encoders and outputs modules) into sys.modules."""
    camera_class = type("FakePicamera2", (FakePicamera2,), {"calls": [], "no_camera": False})
    package = types.ModuleType("picamera2")
    encoders = types.ModuleType("picamera2.encoders")
    outputs = types.ModuleType("picamera2.outputs")
    package.Picamera2 = camera_class  # type: ignore[attr-defined]
    encoders.H264Encoder = FakeH264Encoder  # type: ignore[attr-defined]
    encoders.LibavH264Encoder = FakeLibavH264Encoder  # type: ignore[attr-defined]
    outputs.Output = FakeOutput  # type: ignore[attr-defined]
    package.encoders, package.outputs = encoders, outputs  # type: ignore[attr-defined]
    for name, module in (
        ("picamera2", package),
        ("picamera2.encoders", encoders),
        ("picamera2.outputs", outputs),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    return camera_class
