"""The clip writer: packets and PCM in, a signed age file out that age and ffprobe accept."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from daemon.clipwriter import ClipWriter
from daemon.hardware.base import AudioBlock, VideoPacket
from protocol.signing import SigningKey, verify_clip
from protocol.x25519 import X25519Identity
from tests.support.unit import probe_seconds

FPS, RATE = 30, 48_000


def h264_packets(frames: int, width: int = 320, height: int = 240) -> list[tuple[bytes, bool]]:
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, FPS), Fraction(FPS)
    enc.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "x264-params": "repeat-headers=1:bframes=0:keyint=30",
    }
    out = []
    for i in range(frames):
        img = np.full((height, width, 3), (i * 7) % 255, np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [(bytes(p), p.is_keyframe) for p in enc.encode(frame)]
    out += [(bytes(p), p.is_keyframe) for p in enc.encode(None)]
    return out


@pytest.fixture
def keys(tmp_path: Path) -> tuple[X25519Identity, Path, SigningKey]:
    identity = X25519Identity.generate()
    key_file = tmp_path / "data-key.txt"
    key_file.write_text(f"{identity}\n")
    return identity, key_file, SigningKey.generate()


def new_writer(part: Path, identity: X25519Identity, signing: SigningKey) -> ClipWriter:
    """A writer for 320x240 video at FPS and mono audio at RATE."""
    return ClipWriter(
        part,
        recipients=[identity.recipient],
        signing_key=signing,
        width=320,
        height=240,
        frame_rate_hz=FPS,
        sample_rate_hz=RATE,
        channels=1,
    )


def test_a_clip_decrypts_with_age_and_plays(tmp_path: Path, keys) -> None:
    identity, key_file, signing = keys
    part = tmp_path / "clip.age.part"
    writer = new_writer(part, identity, signing)
    t0 = 5_000_000_000
    block = RATE // 50  # 20 ms
    # Audio starts 100 ms before the first frame: trimmed to the clip's start.
    audio_t = t0 - 100_000_000
    for i, (data, key) in enumerate(h264_packets(3 * FPS)):
        pts = t0 + i * 1_000_000_000 // FPS
        while audio_t < pts:
            pcm = (np.sin(np.arange(block) / 8) * 3000).astype("<i2").tobytes()
            writer.audio(AudioBlock(pcm, block, audio_t))
            audio_t += 20_000_000
        writer.video(VideoPacket(data, pts, key))
    sealed = writer.finish(
        "cart-01-20261127T100000Z-0001", "cart-01", participant="PAIN-0042", visit=None
    )
    assert sealed.stats.frames == 3 * FPS
    assert abs(sealed.stats.duration_s - 3.0) < 0.05
    assert abs(sealed.stats.av_offset_ms) < 1.0  # trimmed to start with the first frame
    assert sealed.size_bytes == part.stat().st_size
    binding = verify_clip(signing.public_key, sealed.signature, part)
    assert binding.sha256 == sealed.sha256
    media = tmp_path / "clip.mkv"
    subprocess.run(["age", "-d", "-i", str(key_file), "-o", str(media), str(part)], check=True)
    ends = probe_seconds(media)
    assert abs(ends["video"] - 3.0) < 0.1 and abs(ends["audio"] - 3.0) < 0.1


def test_video_before_a_key_frame_is_skipped_and_no_frames_fails(tmp_path: Path, keys) -> None:
    identity, _, signing = keys
    part = tmp_path / "c.age.part"
    writer = new_writer(part, identity, signing)
    packets = h264_packets(5)
    writer.video(VideoPacket(packets[1][0], 0, False))  # not a key frame: skipped
    with pytest.raises(RuntimeError, match="no video key frame"):
        writer.finish("cart-01-20261127T100000Z-00c1", "cart-01", participant=None, visit=None)


def test_abort_leaves_nothing(tmp_path: Path, keys) -> None:
    identity, _, signing = keys
    part = tmp_path / "c.age.part"
    writer = new_writer(part, identity, signing)
    for i, (data, key) in enumerate(h264_packets(10)):
        writer.video(VideoPacket(data, i * 33_333_333, key))
    writer.abort()
    assert not part.exists()


def test_audio_is_placed_by_its_earliest_implied_origin(tmp_path: Path, keys) -> None:
    """The first block reported 15 ms late (as PortAudio on ALSA can): the track is placed by
    the blocks after it, so the measured offset is the true one, not the late report."""
    identity, _, signing = keys
    writer = new_writer(tmp_path / "c.age.part", identity, signing)
    t0, block = 1_000_000_000, RATE // 50
    packets = h264_packets(FPS)
    writer.video(VideoPacket(packets[0][0], t0, True))
    true_start = t0 + 40_000_000  # audio really starts 40 ms after the first frame
    for i in range(10):
        late = 15_000_000 if i == 0 else 0
        writer.audio(AudioBlock(bytes(block * 2), block, true_start + i * 20_000_000 + late))
    for i, (data, key) in enumerate(packets[1:], start=1):
        writer.video(VideoPacket(data, t0 + i * 1_000_000_000 // FPS, key))
    sealed = writer.finish("cart-01-20261127T100000Z-00c2", "cart-01", participant=None, visit=None)
    assert abs(sealed.stats.av_offset_ms - 40.0) < 0.5
