"""The Raspberry Pi camera through picamera2, H.264-encoded in hardware where the board has it.

Timestamps. picamera2 hands an output each encoded frame with ``timestamp`` in microseconds
*relative to the first frame since the encoder started*: ``Encoder._timestamp`` takes the
request's ``SensorTimestamp`` (ns, start of exposure), divides it by 1000, keeps the first value
in ``encoder.firsttimestamp`` and subtracts it (the V4L2 encoder carries that value through the
codec in the buffer's timeval; the libav encoder uses it as the frame's pts with a 1/1000000
time base). ``SensorTimestamp`` comes from the V4L2 buffer timestamp of the Unicam/CFE
receiver, which the kernel takes from CLOCK_MONOTONIC (libcamera documents CLOCK_BOOTTIME,
libcamera bug 254; the two differ only by time spent suspended, which a cart unit never is). So
``(encoder.firsttimestamp + timestamp) * 1000`` is the capture time on ``time.monotonic_ns()``.
Because a wrong clock would silently shift video against audio, the first frame's age is checked
when it arrives: if it is not between 0 and 2 s old, the sensor clock is not monotonic, a warning
is logged and the frames are anchored to their arrival time instead.

Frame rate. picamera2's ``LibavH264Encoder`` passes its ``framerate`` unchanged to PyAV's
``add_stream(codec, rate=...)``, which since PyAV 13 takes only an int or a ``Fraction`` (a float
raises ``AttributeError: ... 'numerator'``), so the encoders get the configured rate as a
``Fraction``. The V4L2 encoder uses it only to choose the H.264 level.

Picture size. libcamera may adjust the requested size when the camera is configured; the size
it chose (picamera2's ``stream_configuration("main")``) is what the encoder is given, so it is
what :attr:`PiCamera.width` and :attr:`PiCamera.height` report, with a warning if it differs.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from .base import HardwareError, VideoPacket

__all__ = ["PiCamera", "encoder_frame_rate", "hardware_encoder_present", "hidden_pyav"]

log = logging.getLogger(__name__)

_CODEC_DEVICE = "bcm2835-codec-encode"  # the VideoCore IV H.264 encoder (Pi 4 and earlier)
_MAX_FIRST_FRAME_AGE_NS = 2_000_000_000
_CLOCK_SLACK_NS = 5_000_000


def hardware_encoder_present(sysfs: Path = Path("/sys/class/video4linux")) -> bool:
    """Whether the board has the V4L2 H.264 encoder (a Pi 4 has; a Pi 5 has none)."""
    try:
        names = [(device / "name").read_text().strip() for device in sysfs.iterdir()]
    except OSError:
        return False
    return _CODEC_DEVICE in names


def encoder_frame_rate(frame_rate_hz: float) -> Fraction:
    """*frame_rate_hz* as the ``Fraction`` PyAV wants (29.97002997 -> 30000/1001, 30.0 -> 30)."""
    return Fraction(frame_rate_hz).limit_denominator(1001)


def hidden_pyav(picamera2: Any, av: Any) -> str | None:
    """Why the PyAV that *av* is hides the one installed beside *picamera2*, or None.

    picamera2's libav encoder imports whichever ``av`` comes first on ``sys.path``: in a venv, a
    PyPI wheel in the venv before Raspberry Pi OS's python3-av, which picamera2 is built against.
    """
    picamera2_file, av_file = getattr(picamera2, "__file__", None), getattr(av, "__file__", None)
    if not picamera2_file or not av_file:
        return None
    beside = Path(picamera2_file).resolve().parent.parent
    used = Path(av_file).resolve().parent.parent
    if used == beside or not (beside / "av").is_dir():
        return None
    return (
        f"camera: PyAV {getattr(av, '__version__', '?')} in {used} hides the PyAV in {beside} "
        "that picamera2 is built against; pip uninstall av in the venv"
    )


def _import_picamera2() -> tuple[Any, Any, Any]:
    try:
        picamera2 = importlib.import_module("picamera2")
        encoders = importlib.import_module("picamera2.encoders")
        outputs = importlib.import_module("picamera2.outputs")
    except ImportError as exc:
        raise HardwareError(
            "camera: picamera2 is not installed; on Raspberry Pi OS: sudo apt install "
            "python3-picamera2, and create the venv with --system-site-packages; "
            'off a Pi, set [camera] backend = "simulated" in the config'
        ) from exc
    return picamera2, encoders, outputs


class PiCamera:
    """A Raspberry Pi camera module, recording H.264 (Annex B) through picamera2.

    The hardware encoder (``H264Encoder``) is used where the board has one; a Pi 5 has none and
    gets picamera2's ``LibavH264Encoder`` (libx264). Each recording starts a fresh encoder, so
    the first packet is a key frame; every key frame repeats SPS/PPS.

    *width* and *height* are asked for; after configuring, :attr:`width` and :attr:`height` are
    the size the camera actually delivers (and the encoder encodes), :attr:`requested_size` the
    size asked for.

    >>> camera = PiCamera(width=1280, height=720, frame_rate_hz=30, bitrate_bps=4_000_000)
    >>> camera.start(recorder.on_video); ...; camera.stop(); camera.close()
    """

    def __init__(
        self,
        *,
        width: int = 1280,
        height: int = 720,
        frame_rate_hz: float = 30.0,
        bitrate_bps: int = 4_000_000,
        keyframe_interval_frames: int = 30,
        camera_index: int = 0,
        encoder: Literal["auto", "hardware", "software"] = "auto",
    ) -> None:
        picamera2, self._encoders, outputs = _import_picamera2()
        self.width, self.height = width, height
        self.requested_size = (width, height)
        self.frame_rate_hz = frame_rate_hz
        self.bitrate_bps = bitrate_bps
        self.keyframe_interval_frames = keyframe_interval_frames
        if encoder == "auto":
            encoder = "hardware" if hardware_encoder_present() else "software"
        self.encoder_kind: Literal["hardware", "software"] = encoder
        if encoder == "software":
            try:
                shadow = hidden_pyav(picamera2, importlib.import_module("av"))
            except ImportError:
                shadow = None  # picamera2's libav encoder will say so when it starts
            if shadow:
                log.warning("%s", shadow)
        self._interval_ns = 1e9 / frame_rate_hz
        self._lock = threading.Lock()
        self._sink: Callable[[VideoPacket], None] | None = None
        self._encoder: Any = None
        self._epoch_ns: int | None = None
        self._last_pts_ns: int | None = None
        self._keyframe_seen = False
        self._dropped = 0
        self._output_class = _output_class(outputs.Output)
        self._camera: Any = None
        self._absent_reason = ""
        try:
            camera = picamera2.Picamera2(camera_index)
        except Exception as exc:  # picamera2 raises IndexError/RuntimeError with no camera
            self._absent_reason = (
                f"camera: no camera {camera_index} ({exc}); check the ribbon cable"
            )
            log.warning("%s", self._absent_reason)
            return
        frame_us = round(1e6 / frame_rate_hz)
        try:
            camera.configure(
                camera.create_video_configuration(
                    main={"size": (width, height), "format": "YUV420"},
                    controls={"FrameDurationLimits": (frame_us, frame_us)},
                )
            )
        except Exception as exc:
            camera.close()
            raise HardwareError(
                f"camera: cannot configure {width}x{height} at {frame_rate_hz} Hz: {exc}"
            ) from exc
        self._camera = camera
        self._read_back_size()

    def _read_back_size(self) -> None:
        """Take the size the camera was configured with, which libcamera may have adjusted."""
        try:
            size = self._camera.stream_configuration("main")["size"]
            width, height = int(size[0]), int(size[1])
        except Exception as exc:  # a picamera2 without it: keep the size asked for
            log.warning("camera: cannot read back the configured size (%s)", exc)
            return
        if (width, height) != self.requested_size:
            log.warning(
                "camera: the camera delivers %dx%d, not the configured %dx%d; recording %dx%d",
                width,
                height,
                *self.requested_size,
                width,
                height,
            )
        self.width, self.height = width, height

    @property
    def present(self) -> bool:
        return self._camera is not None

    @property
    def dropped_frames(self) -> int:
        return self._dropped

    def _make_encoder(self) -> Any:
        options = {
            "bitrate": self.bitrate_bps,
            "repeat": True,  # SPS/PPS before every key frame
            "iperiod": self.keyframe_interval_frames,
            "framerate": encoder_frame_rate(self.frame_rate_hz),  # PyAV >= 13: no float
        }
        if self.encoder_kind == "hardware":
            return self._encoders.H264Encoder(**options)
        return self._encoders.LibavH264Encoder(**options)

    def start(self, sink: Callable[[VideoPacket], None]) -> None:
        if self._camera is None:
            raise HardwareError(self._absent_reason or "camera: closed")
        with self._lock:
            if self._sink is not None:
                raise HardwareError("camera: already started")
            self._encoder = self._make_encoder()
            self._epoch_ns = self._last_pts_ns = None
            self._keyframe_seen = False
            self._dropped = 0
            self._sink = sink
        try:
            self._camera.start_recording(self._encoder, self._output_class(self))
        except Exception as exc:
            self._sink = None
            raise HardwareError(f"camera: cannot start recording: {exc}") from exc

    def stop(self) -> None:
        if self._camera is None or self._sink is None:
            return
        try:
            self._camera.stop_recording()  # returns after the encoder has flushed its frames
        finally:
            with self._lock:
                self._sink = None

    def close(self) -> None:
        camera = self._camera
        if camera is None:
            return
        try:
            self.stop()
        finally:
            self._camera = None
            self._absent_reason = "camera: closed"
            camera.close()

    def _on_frame(self, data: bytes, keyframe: bool, timestamp_us: int | None) -> None:
        """Called on picamera2's encoder thread with each encoded frame."""
        arrived_ns = time.monotonic_ns()
        with self._lock:
            sink = self._sink
            if sink is None:
                return
            pts_ns = self._to_monotonic_ns(timestamp_us, arrived_ns)
            if self._last_pts_ns is not None:
                gap_ns = pts_ns - self._last_pts_ns
                if gap_ns > 1.5 * self._interval_ns:
                    self._dropped += round(gap_ns / self._interval_ns) - 1
            self._last_pts_ns = pts_ns
            if not (self._keyframe_seen or keyframe):
                return  # the recording begins at a key frame
            self._keyframe_seen = True
        try:
            sink(VideoPacket(data, pts_ns, keyframe))
        except Exception:  # an exception here would stop picamera2's encoder thread
            log.exception("camera: the packet sink failed")

    def _to_monotonic_ns(self, timestamp_us: int | None, arrived_ns: int) -> int:
        if timestamp_us is None:
            return arrived_ns
        offset_ns = int(timestamp_us) * 1000
        if self._epoch_ns is None:
            self._epoch_ns = self._sensor_epoch_ns(offset_ns, arrived_ns)
        return self._epoch_ns + offset_ns

    def _sensor_epoch_ns(self, offset_ns: int, arrived_ns: int) -> int:
        """The monotonic time of the encoder's timestamp 0: its first frame's SensorTimestamp."""
        first_us = getattr(self._encoder, "firsttimestamp", None)
        if isinstance(first_us, int):
            epoch_ns = first_us * 1000
            age_ns = arrived_ns - (epoch_ns + offset_ns)
            if -_CLOCK_SLACK_NS <= age_ns <= _MAX_FIRST_FRAME_AGE_NS:
                return epoch_ns
            log.warning(
                "camera: the first frame's sensor timestamp is %.3f s from now, not on the "
                "monotonic clock; using arrival times (audio/video offset less exact)",
                age_ns / 1e9,
            )
        else:
            log.warning("camera: encoder gives no firsttimestamp; using arrival times")
        return arrived_ns - offset_ns


def _output_class(base: Any) -> Any:
    """A subclass of picamera2's ``Output`` (known only once picamera2 is imported)."""

    class PacketOutput(base):  # type: ignore[misc]
        def __init__(self, camera: PiCamera) -> None:
            super().__init__()
            self._camera = camera

        def outputframe(
            self,
            frame: bytes,
            keyframe: bool = True,
            timestamp: int | None = None,
            packet: object = None,
            audio: bool = False,
        ) -> None:
            if not audio:  # picamera2 can mux its own audio; painav records audio separately
                self._camera._on_frame(bytes(frame), bool(keyframe), timestamp)

    return PacketOutput
