"""A generated test clip: H.264 video of a moving face-like shape and a voice-like tone, muxed
into Matroska on one clock and handed to any write-only sink (never seeks, never on disk)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av
import numpy as np

WIDTH, HEIGHT, FPS, RATE = 640, 360, 30, 48_000
_AUDIO_BLOCK = 1024


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class MediaInfo:
    seconds: float
    frames: int
    audio_samples: int
    plaintext_bytes: int


class _Counting:
    """Passes writes through, counting bytes, and tells FFmpeg it cannot seek."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.size = 0

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        self.size += len(data)
        return len(data)

    def seekable(self) -> bool:
        return False


def _frame(i: int) -> np.ndarray:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    img[..., 0] = 40 + (x * 60 // WIDTH)
    img[..., 1] = 50 + (y * 60 // HEIGHT)
    img[..., 2] = 90
    cx = WIDTH // 2 + int(120 * np.sin(i / 25))
    cy = HEIGHT // 2 + int(30 * np.cos(i / 40))
    face = ((x - cx) / 70.0) ** 2 + ((y - cy) / 90.0) ** 2 <= 1
    img[face] = (224, 182, 150)
    for ex in (cx - 25, cx + 25):  # eyes, blinking every two seconds
        if i % 60 > 4:
            img[((x - ex) ** 2 + (y - cy + 20) ** 2) <= 49] = (30, 30, 30)
    mouth = (abs(y - cy - 40) <= 3 + 3 * (i % 15 < 7)) & (abs(x - cx) <= 25)
    img[mouth] = (120, 30, 30)
    return img


def write_demo_clip(sink: Sink, seconds: float) -> MediaInfo:
    """Encode *seconds* of video and audio into *sink* as a Matroska stream."""
    out = _Counting(sink)
    frames = round(seconds * FPS)
    samples = round(seconds * RATE)
    with av.open(out, "w", format="matroska", options={"live": "1"}) as container:
        video = container.add_stream("libx264", rate=FPS, options={"preset": "veryfast"})
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = container.add_stream("aac", rate=RATE)
        audio.layout = "mono"
        next_sample = 0
        for i in range(frames):
            vf = av.VideoFrame.from_ndarray(_frame(i), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, FPS)
            container.mux(video.encode(vf))
            # Interleave: audio up to this frame's time, so the muxer never buffers much.
            while next_sample < min(samples, (i + 1) * RATE // FPS):
                t = np.arange(next_sample, next_sample + _AUDIO_BLOCK) / RATE
                syllables = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
                wave = 0.2 * syllables * np.sin(2 * np.pi * (180 + 40 * np.sin(t)) * t)
                af = av.AudioFrame.from_ndarray(
                    wave.astype(np.float32).reshape(1, -1), format="fltp", layout="mono"
                )
                af.sample_rate, af.pts, af.time_base = RATE, next_sample, Fraction(1, RATE)
                container.mux(audio.encode(af))
                next_sample += _AUDIO_BLOCK
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return MediaInfo(seconds, frames, next_sample, out.size)
