"""The simulated microphone: a speech file played in real time, looping, on the monotonic clock."""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
import wave
from pathlib import Path

import pytest

from daemon.hardware.base import AudioBlock, HardwareError
from daemon.hardware.sim_mic import SimulatedMicrophone

from .conftest import SPEECH_RATE_HZ

BLOCK = 320  # 20 ms at 16 kHz


def capture(mic: SimulatedMicrophone, seconds: float, sink=None):
    blocks: list[AudioBlock] = []
    lock = threading.Lock()

    def collect(block: AudioBlock) -> None:
        if sink is not None:
            sink(block)
        with lock:
            blocks.append(block)

    started_ns = time.monotonic_ns()
    mic.start(collect)
    time.sleep(seconds)
    mic.stop()
    return blocks, started_ns, time.monotonic_ns()


def pcm_of(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        return wav.readframes(wav.getnframes())


def test_a_second_of_capture_is_the_files_samples_in_real_time(speech_wav: Path):
    mic = SimulatedMicrophone(speech_wav, sample_rate_hz=SPEECH_RATE_HZ, channels=1)
    assert mic.present and mic.frames_per_block == BLOCK
    blocks, started_ns, stopped_ns = capture(mic, 1.0)
    elapsed_s = (stopped_ns - started_ns) / 1e9
    frames = sum(b.frames for b in blocks)
    assert frames == pytest.approx(elapsed_s * SPEECH_RATE_HZ, rel=0.1)
    assert all(b.frames == BLOCK and len(b.pcm) == 2 * BLOCK for b in blocks)
    assert b"".join(b.pcm for b in blocks) == pcm_of(speech_wav)[: 2 * frames]
    # pts: the first sample at start, then exactly the sample count's worth apart.
    assert started_ns <= blocks[0].pts_ns <= started_ns + 5_000_000
    for k, block in enumerate(blocks):
        assert block.pts_ns == blocks[0].pts_ns + k * BLOCK * 1_000_000_000 // SPEECH_RATE_HZ
    # Each block arrives once its last sample is "captured", not before.
    assert blocks[-1].pts_ns + 20_000_000 <= stopped_ns
    assert mic.overruns == 0
    mic.close()
    assert not mic.present


def test_a_short_file_loops(tmp_path: Path, speech_wav: Path):
    raw = tmp_path / "hello.raw"  # raw s16le: 0.15 s, not a whole number of blocks
    raw.write_bytes(pcm_of(speech_wav)[20_000 : 20_000 + 2 * 2400])
    mic = SimulatedMicrophone(raw, sample_rate_hz=SPEECH_RATE_HZ)
    blocks, _, _ = capture(mic, 0.5)
    captured = b"".join(b.pcm for b in blocks)
    assert len(captured) > 3 * len(raw.read_bytes())
    looped = raw.read_bytes() * (len(captured) // len(raw.read_bytes()) + 1)
    assert captured == looped[: len(captured)]
    mic.close()


def test_a_sink_that_blocks_too_long_loses_audio_as_an_overrun(speech_wav: Path):
    mic = SimulatedMicrophone(speech_wav, sample_rate_hz=SPEECH_RATE_HZ, buffer_s=0.2)
    calls = 0

    def stall_once(block: AudioBlock) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            time.sleep(0.5)

    blocks, _, _ = capture(mic, 1.2, stall_once)
    assert mic.overruns == 1
    pcm = pcm_of(speech_wav)
    first = blocks[0].pts_ns
    offsets = [(b.pts_ns - first) * SPEECH_RATE_HZ // 1_000_000_000 for b in blocks]
    jumps = [(k, b - a) for k, (a, b) in enumerate(itertools.pairwise(offsets)) if b - a != BLOCK]
    assert len(jumps) == 1 and jumps[0][1] > BLOCK  # one gap in the pts ...
    for block, offset in zip(blocks, offsets, strict=True):  # ... matching the audio skipped
        assert block.pcm == pcm[2 * offset : 2 * (offset + BLOCK)]
    mic.close()


def test_a_wav_in_another_format_is_refused_with_the_fix(speech_wav: Path, tmp_path: Path):
    other = tmp_path / "speech_22k.wav"
    subprocess.run(["sox", str(speech_wav), "-r", "22050", str(other)], check=True)
    with pytest.raises(HardwareError, match=r"22050 Hz, 1 ch, 16-bit; 16000 Hz.*sox"):
        SimulatedMicrophone(other, sample_rate_hz=SPEECH_RATE_HZ)
    with pytest.raises(HardwareError, match="cannot read"):
        SimulatedMicrophone(tmp_path / "missing.wav")


def test_without_a_file_it_plays_a_voice_like_signal():
    mic = SimulatedMicrophone(sample_rate_hz=48_000, channels=2)
    blocks, _, _ = capture(mic, 0.3)
    assert blocks and all(len(b.pcm) == 4 * b.frames for b in blocks)
    samples = memoryview(b"".join(b.pcm for b in blocks)).cast("h")
    assert max(samples) > 1000
    assert samples[0::2].tolist() == samples[1::2].tolist()  # the same on both channels
    mic.start(lambda b: None)
    mic.start(lambda b: None)  # idempotent
    mic.stop()
    mic.stop()
    mic.close()
    with pytest.raises(HardwareError):
        mic.start(lambda b: None)
