"""The picamera2 adapter, against FakePicamera2 (a test double: there is no Pi camera here)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest

from daemon.hardware.base import HardwareError, VideoPacket
from daemon.hardware.picamera import PiCamera, hardware_encoder_present

from .fake_picamera2 import FakeEncoder, FakePicamera2, install

FRAME_NS = 33_333_333  # at 30 Hz


def as_picamera2_keeps_it(sensor_ns: int) -> int:
    """A SensorTimestamp after picamera2's ns -> us -> our ns round trip (a float division)."""
    return int(sensor_ns / 1000) * 1000


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakePicamera2]:
    return install(monkeypatch)


def started(camera: PiCamera) -> tuple[list[VideoPacket], FakeEncoder]:
    packets: list[VideoPacket] = []
    camera.start(packets.append)
    encoder = camera._camera.encoder
    assert isinstance(encoder, FakeEncoder)
    return packets, encoder


def test_missing_picamera2_is_a_hardware_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes the import fail
    with pytest.raises(HardwareError, match="camera: picamera2 is not installed"):
        PiCamera()


def test_configures_then_starts_stops_and_closes_in_order(fake: type[FakePicamera2]):
    camera = PiCamera(width=1920, height=1080, frame_rate_hz=25, encoder="hardware")
    assert camera.present
    camera.start(lambda packet: None)
    camera.stop()
    camera.stop()  # idempotent
    camera.close()
    assert not camera.present
    config = {
        "main": {"size": (1920, 1080), "format": "YUV420"},
        "controls": {"FrameDurationLimits": (40_000, 40_000)},
    }
    assert fake.calls == [
        ("Picamera2", 0),
        ("configure", config),
        ("start_recording", "FakeH264Encoder"),
        ("stop_recording", None),
        ("close", None),
    ]
    with pytest.raises(HardwareError, match="closed"):
        camera.start(lambda packet: None)


def test_hardware_and_software_encoders_get_bitrate_and_key_frame_interval(
    fake: type[FakePicamera2],
):
    for kind, expected in (
        ("hardware", {"bitrate": 3_000_000, "repeat": True, "iperiod": 15}),
        ("software", {"bitrate": 3_000_000, "repeat": True, "iperiod": 15, "framerate": 15.0}),
    ):
        camera = PiCamera(
            frame_rate_hz=15.0,
            bitrate_bps=3_000_000,
            keyframe_interval_frames=15,
            encoder=kind,  # type: ignore[arg-type]
        )
        _, encoder = started(camera)
        assert encoder.options == expected
        wanted = "FakeH264Encoder" if kind == "hardware" else "FakeLibavH264Encoder"
        assert type(encoder).__name__ == wanted
        camera.close()


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
    packets, encoder = started(camera)
    first_ns = time.monotonic_ns() - 80_000_000  # exposed 80 ms ago
    sent = [(first_ns + k * FRAME_NS, bytes([k]) * 10, k % 30 == 0) for k in range(40)]
    for sensor_ns, data, key in sent:
        encoder.emit(sensor_ns, data, key)
    camera.stop()
    assert [(p.data, p.keyframe) for p in packets] == [(d, k) for _, d, k in sent]
    # picamera2 keeps microseconds: the pts is the sensor time truncated to the microsecond.
    assert [p.pts_ns for p in packets] == [as_picamera2_keeps_it(ns) for ns, _, _ in sent]
    assert camera.dropped_frames == 0
    camera.close()


def test_recording_begins_at_a_key_frame_and_restarts_with_a_fresh_encoder(
    fake: type[FakePicamera2],
):
    camera = PiCamera()
    packets, encoder = started(camera)
    now = time.monotonic_ns() - 50_000_000
    encoder.emit(now, b"P-frame", False)
    encoder.emit(now + FRAME_NS, b"IDR", True)
    encoder.emit(now + 2 * FRAME_NS, b"P", False)
    camera.stop()
    assert encoder.output is not None
    encoder.output.outputframe(b"straggler", False, 3 * FRAME_NS // 1000)  # after stop: ignored
    assert [p.data for p in packets] == [b"IDR", b"P"]
    again, second = started(camera)
    assert second is not encoder and second.firsttimestamp is None
    later = time.monotonic_ns() - 10_000_000
    second.emit(later, b"IDR2", True)
    assert again[0].pts_ns == as_picamera2_keeps_it(later)
    camera.close()


def test_gaps_longer_than_one_and_a_half_frames_count_as_dropped(fake: type[FakePicamera2]):
    camera = PiCamera(frame_rate_hz=30.0)
    packets, encoder = started(camera)
    start_ns = time.monotonic_ns() - 500_000_000
    slots = [0, 1, 2, 5, 6, 7, 9, 10]  # 3, 4 and 8 lost
    jitter = [0, 2_000_000, -1_000_000, 0, 14_000_000, 0, 0, -3_000_000]  # a late one is not lost
    for slot, late in zip(slots, jitter, strict=True):
        encoder.emit(start_ns + slot * FRAME_NS + late, b"x", slot == 0)
    assert len(packets) == len(slots)
    assert camera.dropped_frames == 3
    camera.stop()
    camera.close()


def test_sensor_clock_that_is_not_monotonic_falls_back_to_arrival_time(
    fake: type[FakePicamera2], caplog: pytest.LogCaptureFixture
):
    camera = PiCamera()
    packets, encoder = started(camera)
    wall_ns = time.time_ns()  # as if SensorTimestamp were CLOCK_REALTIME
    with caplog.at_level(logging.WARNING):
        before = time.monotonic_ns()
        encoder.emit(wall_ns, b"IDR", True)
        encoder.emit(wall_ns + FRAME_NS, b"P", False)
        after = time.monotonic_ns()
    assert "not on the monotonic clock" in caplog.text
    assert before <= packets[0].pts_ns <= after
    spacing_ns = as_picamera2_keeps_it(wall_ns + FRAME_NS) - as_picamera2_keeps_it(wall_ns)
    assert packets[1].pts_ns - packets[0].pts_ns == spacing_ns
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
    camera = PiCamera()

    def broken(packet: VideoPacket) -> None:
        raise RuntimeError("disk full")

    camera.start(broken)
    encoder = camera._camera.encoder
    with caplog.at_level(logging.ERROR):
        encoder.emit(time.monotonic_ns(), b"IDR", True)
    assert "packet sink failed" in caplog.text
    camera.close()
