"""The picamera2 adapter, against FakePicamera2 (a test double: there is no Pi camera here)."""

from __future__ import annotations

import io
import itertools
import logging
import sys
import threading
import time
import types
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

from daemon.hardware.base import HardwareError, VideoPacket
from daemon.hardware.picamera import PiCamera, hardware_encoder_present, hidden_pyav

from .fake_picamera2 import (
    FakeH264Encoder,
    FakeLibavH264Encoder,
    FakePicamera2,
    install,
    yuv420_image,
)

FRAME_NS = 33_333_333  # at 30 Hz
SPS_PPS = b"\x00\x00\x00\x01\x67\x64\x00\x28\xac" + b"\x00\x00\x00\x01\x68\xee\x3c\x80"


def as_picamera2_keeps_it(sensor_ns: int) -> int:
    """A SensorTimestamp after picamera2's ns -> us -> our ns round trip (a float division)."""
    return int(sensor_ns / 1000) * 1000


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakePicamera2]:
    return install(monkeypatch)


class Sink:
    """Collects packets and the names of the threads that delivered them."""

    def __init__(self) -> None:
        self.packets: list[VideoPacket] = []
        self.threads: set[str] = set()

    def __call__(self, packet: VideoPacket) -> None:
        self.packets.append(packet)
        self.threads.add(threading.current_thread().name)


def started(camera: PiCamera) -> tuple[Sink, FakePicamera2]:
    sink = Sink()
    camera.start(sink)
    assert isinstance(camera._camera, FakePicamera2)
    return sink, camera._camera


def test_missing_picamera2_is_a_hardware_error_that_names_the_simulated_backend(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes the import fail
    with pytest.raises(HardwareError, match="camera: picamera2 is not installed") as error:
        PiCamera()
    assert '[camera] backend = "simulated"' in str(error.value)


def test_configures_then_starts_stops_and_closes_in_order(fake: type[FakePicamera2]):
    camera = PiCamera(width=1920, height=1080, frame_rate_hz=25, encoder="hardware")
    assert camera.present
    camera.start(lambda packet: None)
    camera.stop()
    camera.stop()  # idempotent
    camera.close()
    assert not camera.present
    assert [name for name, _ in fake.calls] == [
        "Picamera2",
        "configure",
        "start_recording",
        "stop_recording",
        "close",
    ]
    config = fake.calls[1][1]
    assert config["main"] == {"format": "YUV420", "size": (1920, 1080), "preserve_ar": True}
    assert config["controls"]["FrameDurationLimits"] == (40_000, 40_000)
    assert fake.calls[2] == ("start_recording", "FakeH264Encoder")
    with pytest.raises(HardwareError, match="closed"):
        camera.start(lambda packet: None)


def test_encoders_get_bitrate_key_frame_interval_and_the_rate_as_a_fraction(
    fake: type[FakePicamera2],
):
    for kind, rate_hz, expected_rate in (
        ("hardware", 15.0, Fraction(15)),
        ("software", 15.0, Fraction(15)),
        ("software", 30000 / 1001, Fraction(30000, 1001)),
    ):
        camera = PiCamera(
            width=320,
            height=240,
            frame_rate_hz=rate_hz,
            bitrate_bps=3_000_000,
            keyframe_interval_frames=15,
            encoder=kind,  # type: ignore[arg-type]
        )
        _, picam = started(camera)
        encoder: Any = picam.encoder
        wanted = FakeH264Encoder if kind == "hardware" else FakeLibavH264Encoder
        assert type(encoder) is wanted
        assert isinstance(encoder, FakeH264Encoder | FakeLibavH264Encoder)
        assert (encoder.bitrate, encoder.repeat, encoder.iperiod) == (3_000_000, True, 15)
        assert type(encoder.framerate) is Fraction and encoder.framerate == expected_rate
        if isinstance(encoder, FakeLibavH264Encoder):
            assert encoder._stream.codec_context.framerate == expected_rate
        camera.close()


def test_a_pi_5_records_through_the_libav_encoder_with_pyav_13_or_later(
    fake: type[FakePicamera2],
):
    """Pi 5: libx264 through PyAV, which refuses a float frame rate since PyAV 13."""
    assert int(av.__version__.split(".")[0]) >= 13
    camera = PiCamera(width=320, height=240, frame_rate_hz=30.0, encoder="software")
    sink, picam = started(camera)
    first_ns = time.monotonic_ns() - 500_000_000
    for k in range(40):
        picam.expose(first_ns + k * FRAME_NS, image=yuv420_image(320, 240, k))
    picam.drain()
    camera.stop()  # flushes the codec: every frame comes out
    assert len(sink.packets) == 40
    assert sink.packets[0].keyframe and sum(p.keyframe for p in sink.packets) == 2
    assert all(b.pts_ns > a.pts_ns for a, b in itertools.pairwise(sink.packets))
    assert sink.packets[0].pts_ns == as_picamera2_keeps_it(first_ns)
    assert sink.threads <= {"picamera2-loop", threading.current_thread().name}
    assert "picamera2-loop" in sink.threads
    stream = io.BytesIO(b"".join(p.data for p in sink.packets))
    with av.open(stream, mode="r", format="h264") as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 40
    assert (frames[0].width, frames[0].height) == (320, 240)
    camera.close()


def test_the_size_the_camera_configured_is_the_size_reported(
    fake: type[FakePicamera2], caplog: pytest.LogCaptureFixture
):
    fake.adjusted_size = (1536, 864)  # libcamera's validate() adjusted the request
    with caplog.at_level(logging.WARNING):
        camera = PiCamera(width=1280, height=720, encoder="software")
    assert (camera.width, camera.height) == (1536, 864)
    assert camera.requested_size == (1280, 720)
    assert "1536x864, not the configured 1280x720" in caplog.text
    _, picam = started(camera)
    encoder: Any = picam.encoder
    assert encoder._stream.width == 1536
    camera.close()
    fake.adjusted_size = None
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        same = PiCamera(width=640, height=480, encoder="software")
    assert (same.width, same.height) == (640, 480) and not caplog.text
    same.close()


def test_hardware_encoder_detected_from_the_v4l2_device_names(tmp_path: Path):
    def board(*names: str) -> Path:
        root = tmp_path / "-".join(names or ("none",))
        for i, name in enumerate(names):
            (root / f"video{i}").mkdir(parents=True)
            (root / f"video{i}" / "name").write_text(name + "\n")
        return root

    assert hardware_encoder_present(board("unicam-image", "bcm2835-codec-encode"))  # Pi 4
    assert not hardware_encoder_present(board("rp1-cfe", "pispbe"))  # Pi 5
    assert not hardware_encoder_present(tmp_path / "missing")  # not a Pi


def test_packets_carry_data_key_flag_and_sensor_time_on_the_monotonic_clock(
    fake: type[FakePicamera2],
):
    camera = PiCamera(encoder="hardware")
    sink, picam = started(camera)
    first_ns = time.monotonic_ns() - 80_000_000  # exposed 80 ms ago
    sent = [(first_ns + k * FRAME_NS, bytes([k]) * 70, k % 30 == 0) for k in range(40)]
    for sensor_ns, data, key in sent:
        picam.expose(sensor_ns, encoded=(data, key))
    picam.drain()
    camera.stop()
    assert [(p.data, p.keyframe) for p in sink.packets] == [(d, k) for _, d, k in sent]
    # picamera2 keeps microseconds: the pts is the sensor time truncated to the microsecond.
    assert [p.pts_ns for p in sink.packets] == [as_picamera2_keeps_it(ns) for ns, _, _ in sent]
    assert sink.threads == {"v4l2-poll"}  # the V4L2 encoder's own thread
    assert camera.dropped_frames == 0
    camera.close()


def test_a_buffer_of_only_sps_and_pps_never_reaches_the_sink(fake: type[FakePicamera2]):
    camera = PiCamera(encoder="hardware")
    sink, picam = started(camera)
    now = time.monotonic_ns() - 50_000_000
    picam.expose(now, encoded=(SPS_PPS, True))  # the codec had headers but no picture
    picam.expose(now + FRAME_NS, encoded=(SPS_PPS + b"\x00\x00\x00\x01\x65\x88", True))
    picam.drain()
    camera.stop()
    assert [p.data[-2:] for p in sink.packets] == [b"\x65\x88"]
    camera.close()


def test_recording_begins_at_a_key_frame_and_restarts_with_a_fresh_encoder(
    fake: type[FakePicamera2],
):
    camera = PiCamera(encoder="hardware")
    sink, picam = started(camera)
    first = picam.encoder
    now = time.monotonic_ns() - 50_000_000
    picam.expose(now, encoded=(b"P-frame" * 10, False))
    picam.expose(now + FRAME_NS, encoded=(b"IDR" * 30, True))
    picam.expose(now + 2 * FRAME_NS, encoded=(b"P" * 80, False))
    picam.drain()
    camera.stop()
    assert first is not None
    first.output.outputframe(b"straggler", False, 3 * FRAME_NS // 1000)  # after stop: ignored
    assert [p.data[:3] for p in sink.packets] == [b"IDR", b"PPP"]
    again, _ = started(camera)
    second = picam.encoder
    assert second is not first and second is not None and second.firsttimestamp is None
    later = time.monotonic_ns() - 10_000_000
    picam.expose(later, encoded=(b"IDR2" * 20, True))
    picam.drain()
    assert again.packets[0].pts_ns == as_picamera2_keeps_it(later)
    camera.close()


def test_gaps_longer_than_one_and_a_half_frames_count_as_dropped(fake: type[FakePicamera2]):
    camera = PiCamera(frame_rate_hz=30.0, encoder="hardware")
    sink, picam = started(camera)
    start_ns = time.monotonic_ns() - 500_000_000
    slots = [0, 1, 2, 5, 6, 7, 9, 10]  # 3, 4 and 8 lost
    jitter = [0, 2_000_000, -1_000_000, 0, 14_000_000, 0, 0, -3_000_000]  # a late one is not lost
    for slot, late in zip(slots, jitter, strict=True):
        picam.expose(start_ns + slot * FRAME_NS + late, encoded=(b"x" * 70, slot == 0))
    picam.drain()
    assert len(sink.packets) == len(slots)
    assert camera.dropped_frames == 3
    camera.stop()
    camera.close()


def test_sensor_clock_that_is_not_monotonic_falls_back_to_arrival_time(
    fake: type[FakePicamera2], caplog: pytest.LogCaptureFixture
):
    camera = PiCamera(encoder="hardware")
    sink, picam = started(camera)
    wall_ns = time.time_ns()  # as if SensorTimestamp were CLOCK_REALTIME
    with caplog.at_level(logging.WARNING):
        before = time.monotonic_ns()
        picam.expose(wall_ns, encoded=(b"I" * 70, True))
        picam.expose(wall_ns + FRAME_NS, encoded=(b"P" * 70, False))
        picam.drain()
        after = time.monotonic_ns()
    assert "not on the monotonic clock" in caplog.text
    assert before <= sink.packets[0].pts_ns <= after
    spacing_ns = as_picamera2_keeps_it(wall_ns + FRAME_NS) - as_picamera2_keeps_it(wall_ns)
    assert sink.packets[1].pts_ns - sink.packets[0].pts_ns == spacing_ns
    camera.close()


def test_no_camera_connected_is_not_present_and_start_says_why(fake: type[FakePicamera2]):
    fake.no_camera = True
    camera = PiCamera()
    assert not camera.present
    with pytest.raises(HardwareError, match="camera: no camera 0"):
        camera.start(lambda packet: None)
    camera.close()


def test_a_failing_sink_does_not_reach_the_encoder_thread(
    fake: type[FakePicamera2], caplog: pytest.LogCaptureFixture
):
    camera = PiCamera(encoder="hardware")

    def broken(packet: VideoPacket) -> None:
        raise RuntimeError("disk full")

    camera.start(broken)
    picam = camera._camera
    with caplog.at_level(logging.ERROR):
        picam.expose(time.monotonic_ns(), encoded=(b"I" * 70, True))
        picam.expose(time.monotonic_ns(), encoded=(b"P" * 70, False))
        picam.drain()
    assert caplog.text.count("packet sink failed") == 2  # and the thread still runs
    camera.close()


def test_a_pyav_in_the_venv_hiding_the_os_copy_beside_picamera2_is_named(tmp_path: Path):
    system, venv = tmp_path / "dist-packages", tmp_path / "venv-site-packages"
    for site in (system, venv):
        (site / "av").mkdir(parents=True)
    (system / "picamera2").mkdir()
    picamera2 = types.SimpleNamespace(__file__=str(system / "picamera2" / "__init__.py"))
    os_av = types.SimpleNamespace(__file__=str(system / "av" / "__init__.py"), __version__="12")
    wheel_av = types.SimpleNamespace(__file__=str(venv / "av" / "__init__.py"), __version__="18")
    assert hidden_pyav(picamera2, os_av) is None
    message = hidden_pyav(picamera2, wheel_av)
    assert message is not None and "PyAV 18" in message and str(system) in message
    (system / "av").rmdir()  # nothing beside picamera2 to hide
    assert hidden_pyav(picamera2, wheel_av) is None
    assert hidden_pyav(types.SimpleNamespace(), wheel_av) is None  # a test double has no file
