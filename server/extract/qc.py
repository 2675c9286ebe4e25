"""Quality control of one clip: measures of its audio and video, and a verdict with reasons.

Pure: numbers in, a :class:`QcResult` out; no decoding, no database. The worker feeds it the
decoded audio (float32 in [-1, 1]) and facts about the sampled video frames. The verdict is
``repeat`` when the clip is of no use to the study and the nurse should record again while the
participant is still there, ``check`` when a person should look at it, else ``usable``; every
reason is a short code, and every threshold comes from the ``[qc]`` section of the config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from protocol.extract_config import QcSection

__all__ = [
    "AudioMetrics",
    "QcResult",
    "VideoMetrics",
    "audio_metrics",
    "judge",
    "video_metrics",
]

Verdict = Literal["usable", "check", "repeat"]

_FRAME_S = 0.04  # analysis frames of 40 ms: at least three periods of a 75 Hz voice
_CLIP_LEVEL = 0.999  # a sample at or above this magnitude counts as clipped
_PITCH_HZ = (75.0, 400.0)  # where a voice's fundamental lies
_VOICED_CORRELATION = 0.5  # normalised autocorrelation peak that counts as voiced


@dataclass(frozen=True)
class AudioMetrics:
    """Levels in dBFS, the share of clipped samples, an SNR estimate (loud vs quiet frames)
    and the share of 40 ms frames that are voiced (periodic, at a voice's pitch, above the
    noise)."""

    rms_dbfs: float
    peak_dbfs: float
    clipping_ratio: float
    snr_db: float
    speech_ratio: float


@dataclass(frozen=True)
class VideoMetrics:
    """The frame rate the timestamps show, frames missing from gaps between them, the share of
    sampled frames with a face, mean luma (0–255) and sharpness (variance of the Laplacian)."""

    frame_rate_hz: float
    dropped_frames: int
    face_share: float
    brightness: float
    sharpness: float


@dataclass(frozen=True)
class QcResult:
    verdict: Verdict
    reasons: tuple[str, ...]
    metrics: dict[str, float | int | None]


def _dbfs(value: float) -> float:
    return 20 * math.log10(value) if value > 0 else -120.0


def audio_metrics(samples: npt.NDArray[np.float32], rate_hz: int) -> AudioMetrics:
    """Measures of mono *samples* (float32 in [-1, 1]) at *rate_hz*."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return AudioMetrics(-120.0, -120.0, 0.0, 0.0, 0.0)
    rms = float(np.sqrt(np.mean(x * x)))
    peak = float(np.max(np.abs(x)))
    clipping = float(np.mean(np.abs(x) >= _CLIP_LEVEL))
    n = max(int(rate_hz * _FRAME_S), 1)
    frames = x[: x.size // n * n].reshape(-1, n)
    if frames.shape[0] == 0:
        return AudioMetrics(_dbfs(rms), _dbfs(peak), clipping, 0.0, 0.0)
    energy = np.mean(frames * frames, axis=1) + 1e-12
    noise, loud = np.percentile(energy, 10), np.percentile(energy, 90)
    snr = 10 * math.log10(loud / noise)
    above_noise = energy > noise * 4  # 6 dB over the quiet frames
    voiced = _voiced(frames, rate_hz) & above_noise
    return AudioMetrics(_dbfs(rms), _dbfs(peak), clipping, snr, float(np.mean(voiced)))


def _voiced(frames: npt.NDArray[np.float64], rate_hz: int) -> npt.NDArray[np.bool_]:
    """Which *frames* (one a row) are periodic at a voice's pitch: the best normalised
    correlation of a frame with itself shifted by one pitch period (all frames at once)."""
    f = frames - frames.mean(axis=1, keepdims=True)
    n = f.shape[1]
    low, high = max(int(rate_hz / _PITCH_HZ[1]), 1), min(int(rate_hz / _PITCH_HZ[0]), n // 2)
    if high < low:
        return np.zeros(f.shape[0], dtype=bool)
    spectrum = np.fft.rfft(f, 2 * n, axis=1)
    correlation = np.fft.irfft(spectrum * np.conj(spectrum), axis=1)[:, low : high + 1]
    squares = np.cumsum(f * f, axis=1)
    total = squares[:, -1:]
    lags = np.arange(low, high + 1)
    head = squares[:, n - 1 - lags]  # energy of f[:-lag]
    tail = total - squares[:, lags - 1]  # energy of f[lag:]
    norm = np.sqrt(np.maximum(head * tail, 1e-24))
    voiced: npt.NDArray[np.bool_] = np.max(correlation / norm, axis=1) >= _VOICED_CORRELATION
    return voiced


def video_metrics(
    timestamps_s: Sequence[float],
    *,
    faces: Sequence[bool],
    luma: Sequence[npt.NDArray[np.uint8]],
) -> VideoMetrics:
    """Measures from every frame's timestamp, and face presence and luma of sampled frames."""
    times = np.asarray(timestamps_s, dtype=np.float64)
    gaps = np.diff(times) if times.size > 1 else np.array([])
    gaps = gaps[gaps > 0]
    if gaps.size:
        interval = float(np.median(gaps))
        rate = 1 / interval
        dropped = int(np.sum(np.maximum(np.round(gaps / interval) - 1, 0)))
    else:
        rate, dropped = 0.0, 0
    shares = [float(np.mean(image)) for image in luma]
    sharp = [_laplacian_variance(image) for image in luma]
    return VideoMetrics(
        frame_rate_hz=rate,
        dropped_frames=dropped,
        face_share=float(np.mean(faces)) if len(faces) else 0.0,
        brightness=float(np.median(shares)) if shares else 0.0,
        sharpness=float(np.median(sharp)) if sharp else 0.0,
    )


def _laplacian_variance(image: npt.NDArray[np.uint8]) -> float:
    g = np.asarray(image, dtype=np.float64)
    if g.ndim != 2 or min(g.shape) < 3:
        return 0.0
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(lap.var())


def judge(
    audio: AudioMetrics,
    video: VideoMetrics,
    *,
    duration_s: float,
    av_offset_ms: float | None,
    frames: int,
    limits: QcSection,
) -> QcResult:
    """The verdict: ``repeat`` if any reason to record again, else ``check`` if any reason to
    look, else ``usable``."""
    repeat: list[str] = []
    check: list[str] = []
    if duration_s < limits.min_duration_s:
        repeat.append("too_short")
    if audio.rms_dbfs < limits.silent_below_dbfs or audio.speech_ratio < limits.min_speech_ratio:
        repeat.append("no_speech")
    if audio.clipping_ratio > limits.max_clipping_ratio:
        check.append("clipping")
    if audio.snr_db < limits.min_snr_db:
        check.append("noisy")
    if video.face_share < limits.repeat_face_share:
        repeat.append("no_face")
    elif video.face_share < limits.min_face_share:
        check.append("face_often_missing")
    if video.brightness < limits.min_brightness:
        repeat.append("too_dark")
    elif video.brightness > limits.max_brightness:
        repeat.append("overexposed")
    if video.sharpness < limits.min_sharpness:
        check.append("blurred")
    expected = frames + video.dropped_frames
    if expected and video.dropped_frames / expected > limits.max_dropped_ratio:
        check.append("dropped_frames")
    if av_offset_ms is not None and abs(av_offset_ms) > limits.max_av_offset_ms:
        check.append("av_offset")
    verdict: Verdict = "repeat" if repeat else "check" if check else "usable"
    metrics: dict[str, float | int | None] = {
        **asdict(audio),
        **asdict(video),
        "duration_s": duration_s,
        "av_offset_ms": av_offset_ms,
    }
    return QcResult(verdict, (*repeat, *check), metrics)
