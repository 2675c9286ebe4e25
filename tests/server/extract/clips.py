"""Clips for the extraction tests, made by the unit's real clip writer: H.264 from PyAV's
libx264, PCM audio from a known signal, encrypted and signed as the unit does it."""

from __future__ import annotations

import subprocess
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from daemon.clipwriter import ClipWriter, SealedClip
from daemon.hardware.base import AudioBlock, VideoPacket
from daemon.hardware.sim_mic import SimulatedMicrophone
from protocol.signing import SigningKey
from protocol.x25519 import X25519Identity

FPS = 30
SENTENCE = "Please describe how your pain has been today. It was worse this morning."


@dataclass(frozen=True)
class Clip:
    path: Path
    identity: X25519Identity
    sealed: SealedClip


def speak(folder: Path, rate_hz: int) -> Path:
    """The test sentence spoken by espeak-ng, resampled by sox: mono 16-bit WAV."""
    spoken = folder / "espeak.wav"
    subprocess.run(["espeak-ng", "-w", str(spoken), SENTENCE], check=True, capture_output=True)
    out = folder / f"speech_{rate_hz}.wav"
    subprocess.run(
        ["sox", str(spoken), "-r", str(rate_hz), "-c", "1", "-b", "16", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def h264_packets(frames: int, width: int = 160, height: int = 120) -> list[tuple[bytes, bool]]:
    """A moving gradient as the unit's camera sends it: Annex B, headers on every key frame."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, FPS), Fraction(FPS)
    enc.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "x264-params": "repeat-headers=1:bframes=0:keyint=30",
    }
    x = np.arange(width, dtype=np.int32)[None, :]
    y = np.arange(height, dtype=np.int32)[:, None]
    out = []
    for i in range(frames):
        gray = ((x + y + 4 * i) % 256).astype(np.uint8)
        picture = np.stack([gray, np.roll(gray, i, axis=1), gray[::-1]], axis=-1)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [(bytes(p), p.is_keyframe) for p in enc.encode(frame)]
    out += [(bytes(p), p.is_keyframe) for p in enc.encode(None)]
    return out


def _writer(path: Path, identity: X25519Identity, rate_hz: int) -> ClipWriter:
    return ClipWriter(
        path,
        recipients=[identity.recipient],
        signing_key=SigningKey.generate(),
        width=160,
        height=120,
        frame_rate_hz=FPS,
        sample_rate_hz=rate_hz,
        channels=1,
    )


def synthetic_clip(
    path: Path,
    pcm: bytes,
    *,
    rate_hz: int = 48_000,
    seconds: float = 2.0,
    skip_frames: Callable[[int], bool] = lambda i: False,
) -> Clip:
    """A clip written at full speed with exact timestamps: *pcm* (s16le mono, looped) from the
    first frame on, and *seconds* of video, less the frames *skip_frames* names."""
    identity = X25519Identity.generate()
    writer = _writer(path, identity, rate_hz)
    t0, block = 1_000_000_000, rate_hz // 50
    sent = 0
    for i, (data, key) in enumerate(h264_packets(round(seconds * FPS))):
        pts = t0 + i * 1_000_000_000 // FPS
        while t0 + sent * 1_000_000_000 // rate_hz <= pts:
            start = (sent * 2) % len(pcm)
            chunk = (pcm[start:] + pcm)[: block * 2]
            writer.audio(AudioBlock(chunk, block, t0 + sent * 1_000_000_000 // rate_hz))
            sent += block
        if not skip_frames(i):
            writer.video(VideoPacket(data, pts, key))
    return Clip(
        path,
        identity,
        writer.finish("cart-01-20261129T120000Z-0001", "cart-01", participant=None, visit=None),
    )


def recorded_clip(path: Path, wav: Path, *, rate_hz: int, seconds: float) -> Clip:
    """A clip recorded in real time, as on the unit: the simulated microphone plays *wav* on
    its own thread and clock; video frames arrive every 1/30 s on this one."""
    identity = X25519Identity.generate()
    writer = _writer(path, identity, rate_hz)
    packets = h264_packets(round(seconds * FPS))
    mic = SimulatedMicrophone(wav, sample_rate_hz=rate_hz)
    mic.start(writer.audio)
    try:
        t0 = time.monotonic_ns()
        for i, (data, key) in enumerate(packets):
            due = t0 + i * 1_000_000_000 // FPS
            time.sleep(max(0.0, (due - time.monotonic_ns()) / 1e9))
            writer.video(VideoPacket(data, due, key))
        time.sleep(0.2)  # the microphone delivers what it "heard" up to the last frame
    finally:
        mic.close()
    return Clip(
        path,
        identity,
        writer.finish("cart-01-20261129T120000Z-0002", "cart-01", participant=None, visit=None),
    )


def wav_samples(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2")


def aligned(known: np.ndarray, heard: np.ndarray) -> np.ndarray:
    """*known* (looping) from where *heard* begins in it, as long as *heard*: the microphone
    starts anywhere in the file relative to the clip's first frame."""
    loud = int(np.argmax(np.abs(heard) > 1000))  # a window that cannot match silence
    probe = heard[loud : loud + 512]
    looped = np.concatenate([known, known])
    hits = [
        i
        for i in np.flatnonzero(looped[: len(known) + 1] == probe[0])
        if np.array_equal(looped[i : i + len(probe)], probe)
    ]
    assert hits, "the clip's audio is not the known audio"
    start = (hits[0] - loud) % len(known)
    reps = len(heard) // len(known) + 2
    return np.tile(known, reps)[start : start + len(heard)]
