"""Real media for the hardware tests: speech from espeak-ng and sox, H.264 from PyAV's libx264."""

from __future__ import annotations

import subprocess
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

SPEECH_RATE_HZ = 16_000
SENTENCE = "Please describe how your pain has been today. It was worse this morning."


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 4 s of synthetic speech, 16 kHz mono 16-bit WAV."""
    folder = tmp_path_factory.mktemp("speech")
    spoken = folder / "espeak.wav"
    subprocess.run(["espeak-ng", "-w", str(spoken), SENTENCE], check=True, capture_output=True)
    out = folder / "speech_16k_mono.wav"
    subprocess.run(
        ["sox", str(spoken), "-r", str(SPEECH_RATE_HZ), "-c", "1", "-b", "16", str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def speech_raw(speech_wav: Path) -> Path:
    """The same speech as headerless s16le, the ALSA file plugin's "raw" format."""
    with wave.open(str(speech_wav), "rb") as wav:
        pcm = wav.readframes(wav.getnframes())
    out = speech_wav.with_name("speech_16k_mono_s16le.raw")
    out.write_bytes(pcm)
    return out


def encode_h264(
    path: Path, *, frames: int, width: int = 320, height: int = 240, gop: int = 15
) -> Path:
    """An Annex B H.264 file of a moving gradient, encoded by libx264 through PyAV's muxer."""
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"preset": "ultrafast", "x264-params": "scenecut=0"}
        x = np.arange(width, dtype=np.int32)[None, :]
        y = np.arange(height, dtype=np.int32)[:, None]
        for i in range(frames):
            gray = ((x + y + 4 * i) % 256).astype(np.uint8)
            picture = np.stack([gray, np.roll(gray, i, axis=1), gray[::-1]], axis=-1)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="session")
def h264_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """45 frames, 320x240, a key frame every 15."""
    return encode_h264(tmp_path_factory.mktemp("h264") / "clip.h264", frames=45)
