"""Speech and clips for the extraction tests (espeak-ng and sox speak; the clip writer records)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .clips import Clip, recorded_clip, speak

SPEECH_RATE_HZ = 48_000  # the unit's microphone rate: openSMILE resamples to the analysis rate


@pytest.fixture(scope="session")
def speech_48k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 4 s of synthetic speech, 48 kHz mono 16-bit WAV."""
    return speak(tmp_path_factory.mktemp("speech"), SPEECH_RATE_HZ)


@pytest.fixture(scope="session")
def speech_clip(tmp_path_factory: pytest.TempPathFactory, speech_48k: Path) -> Clip:
    """A 5 s clip recorded in real time from the speech: the simulated microphone plays the
    WAV (looping) into the real clip writer."""
    path = tmp_path_factory.mktemp("clip") / "speech.age"
    return recorded_clip(path, speech_48k, rate_hz=SPEECH_RATE_HZ, seconds=5.0)
