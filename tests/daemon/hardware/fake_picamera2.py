"""FakePicamera2: a test double of the picamera2 package, since there is no Pi camera here.

It mirrors picamera2 0.3.36 (tag v0.3.36, May 2026), the 0.3.x line Raspberry Pi OS Bookworm
ships as ``python3-picamera2``; what it copies is unchanged in substance since 0.3.26 (March
2025, when the V4L2 encoder began dropping SPS/PPS-only buffers). As read in
``picamera2/picamera2.py``, ``encoders/encoder.py``,
``encoders/h264_encoder.py``, ``encoders/v4l2_encoder.py``, ``encoders/libav_h264_encoder.py``
and ``outputs/output.py``:

- ``create_video_configuration`` fills in picamera2's defaults and aligns the size;
  ``configure`` lets "libcamera" adjust the main stream (``adjusted_size``) and stores the result
  in ``camera_config``, which ``stream_configuration("main")`` returns.
- ``start_recording`` = ``start_encoder`` (output set, the encoder's width, height, format and
  stride taken from the configured stream, a float ``framerate`` filled in if it is None, the
  encoder and its outputs started) then ``start`` (the camera's own thread begins handing each
  request to ``encoder.encode``). ``stop_recording`` = ``stop`` then ``stop_encoder``.
- Encoders take exactly picamera2's constructor arguments; ``Encoder._timestamp`` turns the
  request's ``SensorTimestamp`` (ns) into microseconds relative to ``firsttimestamp``, and
  ``outputframe(frame, keyframe, timestamp, packet, audio)`` reaches each ``Output``.
- ``FakeH264Encoder`` (the V4L2 hardware codec) hands frames to a poll thread of its own, which
  outputs them, dropping buffers that hold only SPS/PPS (``_check_for_picture``). The "codec"
  output is what the test put in the request (``encoded``), with the timestamp carried through.
- ``FakeLibavH264Encoder`` really encodes with PyAV and libx264, set up as picamera2 does
  (``add_stream(codec, rate=self.framerate)``: a float rate fails with PyAV >= 13, as on a
  Pi 5), outputs on the camera thread, and flushes the codec during ``stop_recording``, on the
  caller's thread. Only its pacing for outputs that need it (``needs_pacing``) is left out.
"""

from __future__ import annotations

import queue
import sys
import threading
import types
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest

# The encoders' keyword arguments, as picamera2 0.3.36 declares them.
H264_DEFAULTS: dict[str, Any] = {
    "bitrate": None,
    "repeat": True,
    "iperiod": None,
    "framerate": None,
    "enable_sps_framerate": False,
    "qp": None,
    "profile": None,
}
LIBAV_DEFAULTS: dict[str, Any] = {
    "bitrate": None,
    "repeat": True,
    "iperiod": 30,
    "framerate": 30,
    "qp": None,
    "profile": None,
}


class FakeOutput:
    """picamera2.outputs.Output."""

    def __init__(self, pts: Any = None) -> None:
        self.recording = False
        self.ptsoutput = pts
        self.needs_pacing = False
        self.needs_add_stream = False

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        pass

    def _add_stream(self, encoder_stream: Any, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass
class FakeRequest:
    """A completed request: its metadata and the main stream's YUV420 buffer."""

    sensor_timestamp_ns: int
    image: np.ndarray | None = None  # (height * 3 / 2, stride) bytes, for the libav encoder
    encoded: tuple[bytes, bool] | None = None  # what the V4L2 codec makes of it: data, key flag
    users: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metadata["SensorTimestamp"] = self.sensor_timestamp_ns

    def acquire(self) -> None:
        self.users += 1

    def release(self) -> None:
        self.users -= 1


class FakeEncoder:
    """picamera2.encoders.Encoder: its size checks, start/stop order and timestamps."""

    def __init__(self, framerate: Any = 30) -> None:
        self._width = self._height = self._stride = 0
        self._format: str | None = None
        self._output: list[FakeOutput] = []
        self._running = False
        self._framerate = framerate
        self._lock = threading.Lock()
        self._output_lock = threading.Lock()
        self.name: str | None = None
        self.firsttimestamp: int | None = None
        self.output_threads: set[str] = set()

    @property
    def width(self) -> int:
        return self._width

    @width.setter
    def width(self, value: int) -> None:
        if not isinstance(value, int):
            raise RuntimeError("Width must be integer")
        self._width = value

    @property
    def height(self) -> int:
        return self._height

    @height.setter
    def height(self, value: int) -> None:
        if not isinstance(value, int):
            raise RuntimeError("Height must be integer")
        self._height = value

    @property
    def output(self) -> Any:
        return self._output[0] if len(self._output) == 1 else self._output

    @output.setter
    def output(self, value: Any) -> None:
        if not isinstance(value, FakeOutput):
            raise RuntimeError("Must pass Output")
        self._output = [value]

    def encode(self, stream: str, request: FakeRequest) -> None:
        with self._lock:
            if not self._running:
                return
            self._encode(stream, request)

    def start(self, quality: Any = None) -> None:
        with self._lock:
            if self._running:
                raise RuntimeError("Encoder already running")
            self._running = True
            self.firsttimestamp = None
            for out in self._output:
                out.start()
            self._start()

    def stop(self) -> None:
        with self._lock:
            if not self._running:
                raise RuntimeError("Encoder already stopped")
            self._running = False
            self._stop()
            for out in self._output:
                out.stop()

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        self.output_threads.add(threading.current_thread().name)
        with self._output_lock:
            for out in self._output:
                out.outputframe(frame, keyframe, timestamp, packet, audio)

    def _timestamp(self, request: FakeRequest) -> int:
        ts = int(request.metadata["SensorTimestamp"] / 1000)  # ns to us, as picamera2 does
        if self.firsttimestamp is None:
            self.firsttimestamp = ts
            return 0
        return ts - self.firsttimestamp

    def _start(self) -> None:
        pass

    def _stop(self) -> None:
        pass

    def _encode(self, stream: str, request: FakeRequest) -> None:
        raise NotImplementedError

    def wait_idle(self) -> None:
        """Return once every frame handed to the encoder has been output (test helper)."""


class FakeH264Encoder(FakeEncoder):
    """The V4L2 (hardware) encoder: outputs on a poll thread of its own."""

    def __init__(
        self,
        bitrate: int | None = None,
        repeat: bool = True,
        iperiod: int | None = None,
        framerate: Any = None,
        enable_sps_framerate: bool = False,
        qp: int | None = None,
        profile: str | None = None,
    ) -> None:
        super().__init__()
        self.bitrate, self.repeat, self.iperiod = bitrate, repeat, iperiod
        self.framerate, self._enable_framerate = framerate, enable_sps_framerate
        self.qp, self.profile = qp, profile
        self._codec: queue.Queue[tuple[FakeRequest, int]] = queue.Queue()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._thread_poll, name="v4l2-poll", daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        self._thread.join()

    def _encode(self, stream: str, request: FakeRequest) -> None:
        request.acquire()
        self._codec.put((request, self._timestamp(request)))  # the timeval travels with it

    def _thread_poll(self) -> None:
        while self._running or not self._codec.empty():
            try:
                request, timestamp_us = self._codec.get(timeout=0.05)
            except queue.Empty:
                continue
            assert request.encoded is not None, "a request for the V4L2 double needs `encoded`"
            data, keyframe = request.encoded
            if _check_for_picture(data):
                self.outputframe(data, keyframe, timestamp_us)
            request.release()
            self._codec.task_done()

    def wait_idle(self) -> None:
        self._codec.join()


def _check_for_picture(buf: bytes) -> bool:
    """V4L2Encoder._check_for_picture: at low bitrates a buffer can hold SPS and PPS only."""
    if len(buf) > 64:
        return True
    pos = 0
    while (pos := buf.find(b"\x00\x00\x00\x01", pos)) != -1:
        pos += 4
        if pos < len(buf) and buf[pos] & 15 in {5, 1}:
            return True
    return False


class FakeLibavH264Encoder(FakeEncoder):
    """The libav (software) encoder of a Pi 5: libx264 through PyAV, as picamera2 sets it up."""

    def __init__(
        self,
        bitrate: int | None = None,
        repeat: bool = True,
        iperiod: int = 30,
        framerate: Any = 30,
        qp: int | None = None,
        profile: str | None = None,
    ) -> None:
        super().__init__()
        self._codec = "h264"
        self.bitrate, self.repeat, self.iperiod = bitrate, repeat, iperiod
        self.framerate, self.qp, self.profile = framerate, qp, profile
        self.drop_final_frames = False
        self.threads = 0
        self._container: Any = None
        self._stream: Any = None

    def _start(self) -> None:
        container: Any = av.open("/dev/null", "w", format="null")
        stream: Any = container.add_stream(self._codec, rate=self.framerate)
        self._container, self._stream = container, stream
        context = stream.codec_context
        context.thread_count = self.threads
        context.thread_type = av.codec.context.ThreadType.FRAME
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        if self.bitrate is not None:
            context.bit_rate = self.bitrate
        context.gop_size = self.iperiod or (1 << 31) - 1
        context.options["preset"] = "ultrafast"
        context.options["deblock"] = "1"
        if not self.repeat:
            # As picamera2 spells it; current PyAV has only Flags.global_header (painav repeats).
            context.flags |= av.codec.context.Flags.GLOBAL_HEADER  # type: ignore[attr-defined]
        context.time_base = Fraction(1, 1000000)
        context.options["tune"] = "zerolatency"

    def _stop(self) -> None:
        if not self.drop_final_frames:
            for packet in self._stream.encode():
                self.outputframe(bytes(packet), packet.is_keyframe, packet.pts, packet)
        self._container.close()

    def _encode(self, stream: str, request: FakeRequest) -> None:
        assert request.image is not None, "a request for the libav encoder needs `image`"
        timestamp_us = self._timestamp(request)
        frame = av.VideoFrame.from_numpy_buffer(request.image, format="yuv420p", width=self.width)
        frame.pts = timestamp_us
        for packet in self._stream.encode(frame):
            self.outputframe(bytes(packet), packet.is_keyframe, packet.pts, packet)


@dataclass(frozen=True)
class _Range:
    min: int
    max: int


class FakePicamera2:
    calls: list[tuple[str, Any]]
    no_camera = False
    adjusted_size: tuple[int, int] | None = None  # what libcamera's validate() makes of "main"
    min_frame_duration_us = 8_333  # the sensor's fastest mode: 120 fps

    def __init__(self, camera_num: int = 0) -> None:
        if self.no_camera:
            raise IndexError("list index out of range")
        self.calls.append(("Picamera2", camera_num))
        self.camera_config: dict[str, Any] = {}
        self.camera_ctrl_info = {
            "FrameDurationLimits": (None, _Range(self.min_frame_duration_us, 1_000_000_000))
        }
        self.encoders: set[FakeEncoder] = set()
        self.encoder: FakeEncoder | None = None  # the last one started (test helper)
        self._requests: queue.Queue[FakeRequest | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def create_video_configuration(
        self,
        main: dict[str, Any] | None = None,
        lores: Any = None,
        raw: dict[str, Any] | None = None,
        transform: Any = None,
        colour_space: Any = None,
        buffer_count: int = 6,
        controls: dict[str, Any] | None = None,
        display: str = "main",
        encode: str = "main",
        queue: bool = True,
        sensor: dict[str, Any] | None = None,
        use_case: str = "video",
    ) -> dict[str, Any]:
        stream: dict[str, Any] = {"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True}
        for key, value in (main or {}).items():
            if key not in ("format", "size", "stride", "preserve_ar"):
                raise ValueError(f"Bad key {key!r}")
            stream[key] = value
        width, height = stream["size"]
        stream["size"] = (width - width % 2, height - height % 2)  # align_stream(optimal=False)
        defaults = {"NoiseReductionMode": 1, "FrameDurationLimits": (33333, 33333)}
        return {
            "use_case": use_case,
            "buffer_count": buffer_count,
            "queue": queue,
            "main": stream,
            "lores": lores,
            "raw": raw,
            "controls": defaults | (controls or {}),
            "display": display,
            "encode": encode,
        }

    def configure(self, camera_config: dict[str, Any]) -> None:
        self.calls.append(("configure", camera_config))
        config = dict(camera_config)
        main = dict(config["main"])
        if self.adjusted_size is not None:
            main["size"] = self.adjusted_size  # Status.Adjusted: picamera2 only logs it
        width, height = main["size"]
        main["stride"] = width  # YUV420: the Y plane's stride (padding left out)
        main["framesize"] = width * height * 3 // 2
        config["main"] = main
        self.camera_config = config
        self.encode_stream_name = config["encode"]

    def camera_configuration(self) -> dict[str, Any]:
        return self.camera_config

    def stream_configuration(self, name: str = "main") -> dict[str, Any]:
        return self.camera_config[name]  # type: ignore[no-any-return]

    def start_encoder(
        self,
        encoder: FakeEncoder,
        output: FakeOutput | None = None,
        pts: Any = None,
        quality: Any = None,
        name: str | None = None,
    ) -> None:
        if output is not None:
            encoder.output = output
        streams = self.camera_configuration()
        if not streams:
            raise RuntimeError("Camera has not been configured")
        name = self.encode_stream_name if name is None else name
        encoder.name = name
        encoder.width, encoder.height = streams[name]["size"]
        encoder._format = streams[name]["format"]
        encoder._stride = streams[name]["stride"]
        min_frame_duration = max(self.camera_ctrl_info["FrameDurationLimits"][1].min, 33333)
        if getattr(encoder, "framerate", 0) is None:
            encoder.framerate = 1000000 / min_frame_duration  # type: ignore[attr-defined]
        encoder.start(quality=quality)
        self.encoders.add(encoder)
        self.encoder = encoder

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="picamera2-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join()
            self._thread = None

    def start_recording(
        self,
        encoder: FakeEncoder,
        output: FakeOutput,
        pts: Any = None,
        config: Any = None,
        quality: Any = None,
        name: str | None = None,
    ) -> None:
        self.calls.append(("start_recording", type(encoder).__name__))
        if config is not None:
            self.configure(config)
        self.start_encoder(encoder, output, pts=pts, quality=quality, name=name)
        self.start()

    def stop_encoder(self) -> None:
        for encoder in self.encoders:
            encoder.stop()
        self.encoders.clear()

    def stop_recording(self) -> None:
        self.calls.append(("stop_recording", None))
        self.stop()
        self.stop_encoder()

    def close(self) -> None:
        self.calls.append(("close", None))

    def expose(
        self,
        sensor_timestamp_ns: int,
        *,
        image: np.ndarray | None = None,
        encoded: tuple[bytes, bool] | None = None,
    ) -> None:
        """A frame the sensor exposed at *sensor_timestamp_ns* reaches the camera's thread."""
        self._requests.put(FakeRequest(sensor_timestamp_ns, image=image, encoded=encoded))

    def drain(self) -> None:
        """Return once every exposed frame has been handed on and output (test helper)."""
        self._requests.join()
        for encoder in list(self.encoders):
            encoder.wait_idle()

    def _loop(self) -> None:
        while (request := self._requests.get()) is not None:
            for encoder in list(self.encoders):
                encoder.encode(encoder.name or "main", request)
            request.release()
            self._requests.task_done()
        self._requests.task_done()


def yuv420_image(width: int, height: int, k: int) -> np.ndarray:
    """Frame *k* of a moving gradient, as a YUV420 buffer (Y plane, then U, then V)."""
    x = np.arange(width, dtype=np.int32)[None, :]
    y = np.arange(height * 3 // 2, dtype=np.int32)[:, None]
    return ((x + y + 4 * k) % 256).astype(np.uint8)


def install(monkeypatch: pytest.MonkeyPatch) -> type[FakePicamera2]:
    """Put the fake picamera2 (and its encoders and outputs modules) into sys.modules."""
    camera_class = type(
        "FakePicamera2", (FakePicamera2,), {"calls": [], "no_camera": False, "adjusted_size": None}
    )
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
