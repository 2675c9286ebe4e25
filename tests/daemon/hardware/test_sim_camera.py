"""The simulated camera (real libx264, in real time) and the replay camera, decoded by PyAV."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from pathlib import Path

import av
import cv2
import pytest

from daemon.annexb import NAL_IDR, NAL_PPS, NAL_SPS, nal_types, split_access_units
from daemon.hardware.base import HardwareError, VideoPacket
from daemon.hardware.sim_camera import ReplayCamera, SimulatedCamera

from .conftest import encode_h264

FPS = 30.0
FRAME_NS = 1e9 / FPS


def record(camera: SimulatedCamera | ReplayCamera, seconds: float, sink=None):
    packets: list[VideoPacket] = []
    lock = threading.Lock()

    def collect(packet: VideoPacket) -> None:
        with lock:
            packets.append(packet)
        if sink is not None:
            sink(packet)

    started_ns = time.monotonic_ns()
    camera.start(collect)
    time.sleep(seconds)
    camera.stop()
    return packets, started_ns, time.monotonic_ns()


def decode(packets: list[VideoPacket]) -> list[av.VideoFrame]:
    decoder = av.CodecContext.create("h264", "r")
    assert isinstance(decoder, av.VideoCodecContext)
    frames = []
    for packet in packets:
        frames += decoder.decode(av.Packet(packet.data))
    return frames + decoder.decode(None)


@pytest.fixture(scope="module")
def one_second() -> tuple[SimulatedCamera, list[VideoPacket], int, int]:
    camera = SimulatedCamera(width=640, height=360, frame_rate_hz=FPS, bitrate_bps=1_000_000)
    packets, started_ns, stopped_ns = record(camera, 1.0)
    return camera, packets, started_ns, stopped_ns


def test_one_second_is_a_frame_rate_of_decodable_frames_paced_by_the_clock(one_second):
    camera, packets, started_ns, stopped_ns = one_second
    elapsed_s = (stopped_ns - started_ns) / 1e9
    assert camera.present
    assert abs(len(packets) + camera.dropped_frames - elapsed_s * FPS) <= 2
    assert len(packets) >= 0.8 * elapsed_s * FPS  # and most were encoded in time
    frames = decode(packets)
    assert len(frames) == len(packets)
    assert {(f.width, f.height) for f in frames} == {(640, 360)}
    pts = [p.pts_ns for p in packets]
    assert started_ns <= pts[0] <= started_ns + 50_000_000
    assert pts[-1] <= stopped_ns
    gaps = [b - a for a, b in itertools.pairwise(pts)]
    assert statistics.median(gaps) == pytest.approx(FRAME_NS, abs=1)
    # Every pts is on the frame grid, and each gap wider than a frame is a counted drop.
    slots = [(t - pts[0]) / FRAME_NS for t in pts]
    assert all(abs(s - round(s)) < 1e-6 for s in slots)
    assert sum(round(g / FRAME_NS) - 1 for g in gaps) == camera.dropped_frames


def test_first_packet_is_a_key_frame_with_sps_and_pps(one_second):
    _, packets, _, _ = one_second
    assert packets[0].keyframe
    assert packets[0].data.startswith(b"\x00\x00\x00\x01")  # Annex B
    assert nal_types(packets[0].data)[:2] == [NAL_SPS, NAL_PPS]
    assert NAL_IDR in nal_types(packets[0].data)
    keys = [p for p in packets if p.keyframe]
    assert all(NAL_SPS in nal_types(p.data) for p in keys)  # repeated headers
    assert len(keys) >= 2  # a key frame every 30 frames


def test_a_face_detector_finds_the_face_in_most_frames(one_second):
    _, packets, _, _ = one_second
    cascades = Path(cv2.__file__).parent / "data"  # shipped in the opencv wheel
    detector = cv2.CascadeClassifier(str(cascades / "haarcascade_frontalface_default.xml"))
    sample = decode(packets)[::3]
    found = 0
    for frame in sample:
        faces = detector.detectMultiScale(frame.to_ndarray(format="gray"), 1.1, 5, minSize=(30, 30))
        found += len(faces) > 0
    assert found >= 0.8 * len(sample), f"a face in {found} of {len(sample)} frames"


def test_frames_the_encoder_could_not_make_in_time_are_dropped_and_counted():
    camera = SimulatedCamera(width=320, height=240, frame_rate_hz=FPS, bitrate_bps=300_000)

    def slow(packet: VideoPacket) -> None:
        if len(seen) in (5, 6):
            time.sleep(0.2)  # the consumer stalls the camera thread: six frame times each
        seen.append(packet)

    seen: list[VideoPacket] = []
    packets, _, _ = record(camera, 1.0, slow)
    gaps = [b.pts_ns - a.pts_ns for a, b in itertools.pairwise(packets)]
    assert camera.dropped_frames >= 8
    assert sum(round(g / FRAME_NS) - 1 for g in gaps) == camera.dropped_frames
    camera.start(lambda p: None)  # a new recording counts afresh
    camera.stop()
    assert camera.dropped_frames <= 1
    camera.close()
    assert not camera.present
    with pytest.raises(HardwareError):
        camera.start(lambda p: None)


def test_replay_delivers_the_files_access_units_in_order_at_the_frame_rate(h264_file: Path):
    camera = ReplayCamera(h264_file, frame_rate_hz=FPS)
    assert (camera.width, camera.height) == (320, 240)
    units = split_access_units(h264_file.read_bytes())
    packets, started_ns, stopped_ns = record(camera, 0.7)
    elapsed_s = (stopped_ns - started_ns) / 1e9
    assert abs(len(packets) - (elapsed_s * FPS + 1)) <= 2
    assert [p.data for p in packets] == [u.data for u in units[: len(packets)]]
    assert [p.keyframe for p in packets] == [u.keyframe for u in units[: len(packets)]]
    gaps = [b.pts_ns - a.pts_ns for a, b in itertools.pairwise(packets)]
    assert all(abs(g - FRAME_NS) <= 1 for g in gaps)
    assert camera.dropped_frames == 0
    assert len(decode(packets)) == len(packets)
    camera.close()


def test_replay_loops_from_the_first_key_frame(tmp_path: Path):
    short = encode_h264(tmp_path / "short.h264", frames=6, gop=3)
    camera = ReplayCamera(short, frame_rate_hz=60.0)
    packets, _, _ = record(camera, 0.4)
    units = split_access_units(short.read_bytes())
    assert len(packets) > 12
    assert [p.data for p in packets] == [units[i % 6].data for i in range(len(packets))]
    assert len(decode(packets)) == len(packets)
    camera.close()


def test_replay_refuses_files_it_cannot_play(tmp_path: Path, h264_file: Path):
    missing = tmp_path / "missing.h264"
    with pytest.raises(HardwareError, match="cannot read replay file"):
        ReplayCamera(missing)
    text = tmp_path / "notes.h264"
    text.write_bytes(b"this is not a video")
    with pytest.raises(HardwareError, match=r"no H\.264 access units"):
        ReplayCamera(text)
    units = split_access_units(h264_file.read_bytes())
    cut = tmp_path / "cut.h264"
    cut.write_bytes(b"".join(u.data for u in units[1:]))
    with pytest.raises(HardwareError, match="does not start with a key frame"):
        ReplayCamera(cut)
