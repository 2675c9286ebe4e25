"""The quality check's measures on real speech (espeak-ng) and made signals, and its verdicts."""

from __future__ import annotations

import subprocess
import wave

import numpy as np
import pytest

from protocol.extract_config import QcSection
from server.extract.qc import AudioMetrics, VideoMetrics, audio_metrics, judge, video_metrics

RATE = 16_000


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About 4 s of synthetic speech at 16 kHz, float32, with a second of silence after it."""
    folder = tmp_path_factory.mktemp("speech")
    raw, wav = folder / "raw.wav", folder / "speech.wav"
    text = "Please describe how your pain has been today. It was worse this morning."
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(
        ["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(wav)],
        check=True,
        capture_output=True,
    )
    with wave.open(str(wav)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    voice = pcm.astype(np.float32) / 32768
    rng = np.random.default_rng(7)
    room = rng.normal(0, 0.002, RATE).astype(np.float32)  # a quiet room after the sentence
    return np.concatenate([voice + rng.normal(0, 0.002, voice.size).astype(np.float32), room])


def test_speech_is_voiced_clean_and_unclipped(speech: np.ndarray) -> None:
    m = audio_metrics(speech, RATE)
    assert m.speech_ratio > 0.3
    assert m.snr_db > 20
    assert m.clipping_ratio == 0
    assert -40 < m.rms_dbfs < -5 and m.peak_dbfs <= 0


def test_noise_and_silence_are_not_speech() -> None:
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.1, 4 * RATE).astype(np.float32)
    assert audio_metrics(noise, RATE).speech_ratio < 0.05
    silence = np.zeros(4 * RATE, dtype=np.float32)
    assert audio_metrics(silence, RATE).rms_dbfs == -120.0


def test_a_hot_recording_clips(speech: np.ndarray) -> None:
    hot = np.clip(speech * 20, -1, 1)
    assert audio_metrics(hot, RATE).clipping_ratio > 0.01


def test_video_measures_from_timestamps_and_frames() -> None:
    times = [i / 30 for i in range(90) if i not in (40, 41, 70)]  # three frames lost
    flat = np.full((120, 160), 128, dtype=np.uint8)
    checker = (np.indices((120, 160)).sum(axis=0) % 2 * 255).astype(np.uint8)
    m = video_metrics(times, faces=[True, True, False, True], luma=[checker, checker])
    assert m.frame_rate_hz == pytest.approx(30, rel=1e-6)
    assert m.dropped_frames == 3
    assert m.face_share == 0.75
    assert m.brightness == pytest.approx(127.5)
    assert m.sharpness > 1000
    assert video_metrics(times, faces=[], luma=[flat]).sharpness == 0


GOOD_AUDIO = AudioMetrics(-20.0, -3.0, 0.0, 30.0, 0.5)
GOOD_VIDEO = VideoMetrics(30.0, 0, 0.95, 120.0, 200.0)


@pytest.mark.parametrize(
    ("audio", "video", "duration_s", "verdict", "reasons"),
    [
        (GOOD_AUDIO, GOOD_VIDEO, 20.0, "usable", ()),
        (GOOD_AUDIO, GOOD_VIDEO, 1.0, "repeat", ("too_short",)),
        (
            AudioMetrics(-70.0, -50.0, 0.0, 3.0, 0.0),
            GOOD_VIDEO,
            20.0,
            "repeat",
            ("no_speech", "noisy"),
        ),
        (GOOD_AUDIO, VideoMetrics(30.0, 0, 0.1, 120.0, 200.0), 20.0, "repeat", ("no_face",)),
        (
            GOOD_AUDIO,
            VideoMetrics(30.0, 0, 0.5, 120.0, 200.0),
            20.0,
            "check",
            ("face_often_missing",),
        ),
        (GOOD_AUDIO, VideoMetrics(30.0, 0, 0.95, 10.0, 200.0), 20.0, "repeat", ("too_dark",)),
        (AudioMetrics(-20.0, 0.0, 0.05, 30.0, 0.5), GOOD_VIDEO, 20.0, "check", ("clipping",)),
        (
            GOOD_AUDIO,
            VideoMetrics(30.0, 60, 0.95, 120.0, 200.0),
            20.0,
            "check",
            ("dropped_frames",),
        ),
    ],
)
def test_verdicts(audio, video, duration_s, verdict, reasons) -> None:
    result = judge(
        audio, video, duration_s=duration_s, av_offset_ms=5.0, frames=600, limits=QcSection()
    )
    assert (result.verdict, result.reasons) == (verdict, reasons)
    assert result.metrics["face_share"] == video.face_share


def test_an_av_offset_over_the_limit_asks_for_a_check() -> None:
    result = judge(
        GOOD_AUDIO, GOOD_VIDEO, duration_s=20.0, av_offset_ms=250.0, frames=600, limits=QcSection()
    )
    assert (result.verdict, result.reasons) == ("check", ("av_offset",))
