"""Simulated cameras: a moving face encoded live with libx264, or a replayed .h264 file."""

from __future__ import annotations

import abc
import logging
import math
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from ..annexb import NAL_SPS, AccessUnit, nal_types, split_access_units
from .base import HardwareError, VideoPacket

__all__ = ["ReplayCamera", "SimulatedCamera"]

log = logging.getLogger(__name__)

Sink = Callable[[VideoPacket], None]


class _FrameClock:
    """Frame slots on the monotonic clock: slot *n* is due at start + n / rate."""

    def __init__(self, frame_rate_hz: float) -> None:
        self.frame_rate_hz = frame_rate_hz
        self.start_ns = time.monotonic_ns()

    def due_ns(self, slot: int) -> int:
        return self.start_ns + round(slot * 1e9 / self.frame_rate_hz)

    def latest_slot(self) -> int:
        """The last slot that is already due."""
        return math.floor((time.monotonic_ns() - self.start_ns) * self.frame_rate_hz / 1e9)

    def wait(self, slot: int, stop: threading.Event) -> bool:
        """Sleep until *slot* is due; False if *stop* was set by then.

        A plain sleep rather than ``stop.wait(delay)``: an Event's timed wait builds a Condition
        wait and a fresh lock each time and costs about half as much CPU again per wake-up on
        this VM (100 µs against 65 µs), 30 times a second. The price is that :meth:`stop`
        returns up to one frame time (33 ms at 30 Hz) later.
        """
        delay_s = (self.due_ns(slot) - time.monotonic_ns()) / 1e9
        if delay_s > 0:
            time.sleep(delay_s)
        return not stop.is_set()


class _Worker(abc.ABC):
    """Start/stop plumbing shared by the simulated cameras: one thread per recording."""

    _name = "camera"

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self._failed: BaseException | None = None
        self._dropped = 0
        self._sink_failures = 0

    @property
    def present(self) -> bool:
        return not self._closed and self._failed is None

    @property
    def dropped_frames(self) -> int:
        return self._dropped

    @abc.abstractmethod
    def _run(self, sink: Sink) -> None:
        """Produce packets into *sink* until told to stop (each camera its own way)."""

    def _deliver(self, sink: Sink, packet: VideoPacket) -> None:
        try:
            sink(packet)
        except Exception:  # the camera carries on, as a real one would; said once
            self._sink_failures += 1
            if self._sink_failures == 1:
                log.exception("%s: the packet sink failed", self._name)

    def _guarded_run(self, sink: Sink) -> None:
        try:
            self._run(sink)
        except Exception as exc:  # the thread must report, not vanish
            self._failed = exc
            log.exception("%s: stopped delivering frames", self._name)

    def start(self, sink: Sink) -> None:
        if self._closed:
            raise HardwareError(f"{self._name}: start() after close()")
        if self._thread is not None:
            raise HardwareError(f"{self._name}: already started")
        self._prepare()
        self._dropped = self._sink_failures = 0
        self._failed = None
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._guarded_run, args=(sink,), name=f"painav-{self._name}", daemon=True
        )
        self._thread.start()

    def _prepare(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Set up what a recording needs, on the caller's thread, so errors raise from start()."""

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()

    def close(self) -> None:
        self.stop()
        self._closed = True


class _FaceScene:
    """The astronaut's portrait (public domain, NASA) drifting and zooming over a backdrop."""

    def __init__(self, width: int, height: int) -> None:
        try:
            from skimage import data
        except ImportError as exc:
            raise HardwareError(
                "camera: the simulated camera needs scikit-image (pip install 'painav[sim]')"
            ) from exc
        self.width, self.height = width, height
        self._face: npt.NDArray[np.uint8] = data.astronaut()  # type: ignore[no-untyped-call]
        rows = np.linspace(70, 150, height, dtype=np.float32)[:, None]
        cols = np.linspace(0, 40, width, dtype=np.float32)[None, :]
        backdrop = np.empty((height, width, 3), dtype=np.uint8)
        backdrop[..., 0] = (rows + cols).astype(np.uint8)
        backdrop[..., 1] = (rows * 1.1).astype(np.uint8)
        backdrop[..., 2] = (rows * 1.3 - cols).clip(0, 255).astype(np.uint8)
        self._backdrop = backdrop

    def render(self, t_s: float) -> npt.NDArray[np.uint8]:
        """The picture at *t_s* seconds: the portrait always wholly in view, periods of 4–7 s."""
        largest = min(self.width, self.height)
        side = max(16, int(largest * (0.75 + 0.2 * math.sin(2 * math.pi * t_s / 5.0))))
        x = int((self.width - side) * (0.5 + 0.5 * math.sin(2 * math.pi * t_s / 7.0)))
        y = int((self.height - side) * (0.5 + 0.5 * math.sin(2 * math.pi * t_s / 4.3)))
        index = np.arange(side) * self._face.shape[0] // side  # nearest neighbour
        picture = self._backdrop.copy()
        picture[y : y + side, x : x + side] = self._face[index[:, None], index[None, :]]
        return picture


class SimulatedCamera(_Worker):
    """A camera filming a moving, zooming face, H.264-encoded in real time with libx264.

    Like a sensor, it runs on its own clock: a frame is due every 1 / *frame_rate_hz* seconds of
    ``time.monotonic_ns()`` and carries that time as its pts. When encoding falls more than a
    frame behind, the missed frames are skipped and counted in :attr:`dropped_frames`. Every
    key frame (each *keyframe_interval_frames*, and the first after :meth:`start`) carries SPS
    and PPS, Annex B.

    >>> camera = SimulatedCamera(width=640, height=360, frame_rate_hz=30)
    >>> packets = []
    >>> camera.start(packets.append); time.sleep(1.0); camera.stop(); camera.close()
    """

    _name = "simulated camera"

    def __init__(
        self,
        *,
        width: int = 1280,
        height: int = 720,
        frame_rate_hz: float = 30.0,
        bitrate_bps: int = 2_000_000,
        keyframe_interval_frames: int = 30,
    ) -> None:
        super().__init__()
        if width % 2 or height % 2 or width < 64 or height < 64:
            raise ValueError(f"camera: {width}x{height}: width and height must be even, >= 64")
        self.width, self.height = width, height
        self.frame_rate_hz = frame_rate_hz
        self.bitrate_bps = bitrate_bps
        self.keyframe_interval_frames = keyframe_interval_frames
        self._scene = _FaceScene(width, height)
        self._encoder: av.VideoCodecContext | None = None

    def _prepare(self) -> None:
        # A fresh encoder per recording, so that the first packet is an IDR frame with SPS/PPS.
        try:
            encoder = av.CodecContext.create("libx264", "w")
        except av.FFmpegError as exc:
            raise HardwareError(f"camera: this FFmpeg has no libx264 encoder: {exc}") from exc
        assert isinstance(encoder, av.VideoCodecContext)
        encoder.width, encoder.height = self.width, self.height
        encoder.pix_fmt = "yuv420p"
        rate = Fraction(self.frame_rate_hz).limit_denominator(1001)
        encoder.time_base = 1 / rate  # pts counts frame slots
        encoder.framerate = rate
        encoder.bit_rate = self.bitrate_bps
        encoder.gop_size = self.keyframe_interval_frames
        encoder.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",  # no B-frames, no lookahead: one packet out per frame in
            # No global header: x264 writes Annex B and repeats SPS/PPS before every IDR.
            "x264-params": "scenecut=0:repeat-headers=1",
        }
        encoder.open()
        self._encoder = encoder

    def _run(self, sink: Sink) -> None:
        encoder = self._encoder
        assert encoder is not None
        clock = _FrameClock(self.frame_rate_hz)

        slot = 0
        while clock.wait(slot, self._stop):
            latest = clock.latest_slot()
            if latest > slot:  # a whole frame time late: the sensor has moved on
                self._dropped += latest - slot
                slot = latest
            picture = self._scene.render((clock.due_ns(slot) - clock.start_ns) / 1e9)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
            frame.pts = slot
            for packet in encoder.encode(frame):
                assert packet.pts is not None
                video = VideoPacket(bytes(packet), clock.due_ns(packet.pts), packet.is_keyframe)
                self._deliver(sink, video)
            slot += 1
        for packet in encoder.encode(None):
            assert packet.pts is not None
            video = VideoPacket(bytes(packet), clock.due_ns(packet.pts), packet.is_keyframe)
            self._deliver(sink, video)
        self._encoder = None


class ReplayCamera(_Worker):
    """A camera that replays a pre-encoded H.264 (Annex B) file, one access unit per frame time.

    For benchmarks: the recorder gets a real 1080p stream with no encoding cost on this side.
    The file must start with a key frame carrying SPS/PPS; it is read once, at construction,
    and loops. Every access unit is delivered (none is skipped: skipping would corrupt the
    stream), so :attr:`dropped_frames` stays 0; if the sink is slow, delivery catches up.
    """

    _name = "replay camera"

    def __init__(self, path: Path, *, frame_rate_hz: float = 30.0, loop: bool = True) -> None:
        super().__init__()
        try:
            stream = path.read_bytes()
        except OSError as exc:
            raise HardwareError(f"camera: cannot read replay file {path}: {exc}") from exc
        self.access_units: list[AccessUnit] = split_access_units(stream)
        if not self.access_units:
            raise HardwareError(f"camera: {path} holds no H.264 access units (Annex B expected)")
        first = self.access_units[0]
        if not (first.keyframe and NAL_SPS in nal_types(first.data)):
            raise HardwareError(f"camera: {path} does not start with a key frame with SPS/PPS")
        self.path = path
        self.frame_rate_hz = frame_rate_hz
        self.loop = loop
        self.width, self.height = _picture_size(first.data, path)

    def _run(self, sink: Sink) -> None:
        clock = _FrameClock(self.frame_rate_hz)
        count = len(self.access_units)
        slot = 0
        while (self.loop or slot < count) and clock.wait(slot, self._stop):
            unit = self.access_units[slot % count]
            self._deliver(sink, VideoPacket(unit.data, clock.due_ns(slot), unit.keyframe))
            slot += 1


def _picture_size(access_unit: bytes, path: Path) -> tuple[int, int]:
    """Width and height of the first picture, by decoding it."""
    decoder = av.CodecContext.create("h264", "r")
    assert isinstance(decoder, av.VideoCodecContext)
    try:
        frames = decoder.decode(av.Packet(access_unit)) + decoder.decode(None)
    except av.FFmpegError as exc:
        raise HardwareError(f"camera: cannot decode the first frame of {path}: {exc}") from exc
    if not frames:
        raise HardwareError(f"camera: cannot decode the first frame of {path}")
    return frames[0].width, frames[0].height
