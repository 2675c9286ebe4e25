"""Voice features: eGeMAPSv02 through the whole path equal openSMILE run directly on the audio,
with the provenance to tell results apart."""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import numpy as np
import opensmile  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from daemon.hardware.sim_mic import voice_like_signal
from server.extract.media import ClipMedia
from server.extract.voice import VoiceExtractor

from .clips import Clip, aligned, wav_samples

ANALYSIS_RATE_HZ = 16_000


@pytest.fixture(scope="module")
def voice() -> VoiceExtractor:
    return VoiceExtractor(analysis_rate_hz=ANALYSIS_RATE_HZ)


def smile(level: opensmile.FeatureLevel, rate_hz: int = ANALYSIS_RATE_HZ) -> opensmile.Smile:
    return opensmile.Smile(
        opensmile.FeatureSet.eGeMAPSv02, level, sampling_rate=rate_hz, resample=True
    )


def signal(seconds: float = 3.0) -> np.ndarray:
    pcm = voice_like_signal(48_000, 1, seconds=seconds)
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768


@pytest.mark.integration
def test_a_recorded_clip_gives_what_opensmile_gives_on_the_known_audio(
    speech_clip: Clip, speech_48k: Path, tmp_path: Path, voice: VoiceExtractor
) -> None:
    with speech_clip.path.open("rb") as f:
        audio = ClipMedia.decrypt(f, [speech_clip.identity]).audio()
    features = voice.extract(audio.samples, audio.sample_rate_hz, start_s=audio.start_s)

    # The reference: the WAV the microphone played, cut where the clip's audio falls in it,
    # written as a WAV file and given to openSMILE directly.
    heard = np.rint(audio.samples * 32768).astype(np.int16)
    known = aligned(wav_samples(speech_48k), heard)
    reference_wav = tmp_path / "reference.wav"
    with wave.open(str(reference_wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48_000)
        out.writeframes(known.astype("<i2").tobytes())
    functionals = smile(opensmile.FeatureLevel.Functionals).process_file(str(reference_wav))
    lld = smile(opensmile.FeatureLevel.LowLevelDescriptors).process_file(str(reference_wav))

    assert len(features.functionals.values) == 88 == functionals.shape[1]
    assert list(features.functionals.values) == list(functionals.columns)
    np.testing.assert_allclose(
        list(features.functionals.values.values()), functionals.iloc[0].to_numpy(), rtol=1e-6
    )
    assert list(features.lld.columns) == list(lld.columns) and len(lld.columns) == 25
    assert features.lld.frame_count == len(lld) > 400  # 10 ms frames over about 5 s
    for name, values in features.lld.columns.items():
        np.testing.assert_allclose(values, lld[name].to_numpy(), rtol=1e-6, atol=1e-7)
    starts = lld.index.get_level_values("start").total_seconds().to_numpy()
    np.testing.assert_allclose(features.lld.frame_times_s, starts + audio.start_s, atol=1e-9)


def test_the_analysis_rate_is_applied_and_recorded(voice: VoiceExtractor) -> None:
    x = signal()
    ours = voice.functionals(x, 48_000)
    direct = smile(opensmile.FeatureLevel.Functionals).process_signal(x, 48_000)
    np.testing.assert_allclose(list(ours.values.values()), direct.iloc[0].to_numpy(), rtol=1e-6)
    at_48k = VoiceExtractor(analysis_rate_hz=48_000).functionals(x, 48_000)
    assert at_48k.values != ours.values  # the rate changes the numbers...
    assert at_48k.provenance.config_hash != ours.provenance.config_hash  # ...and the hash
    assert at_48k.provenance.analysis_rate_hz == 48_000
    assert ours.provenance.analysis_rate_hz == ANALYSIS_RATE_HZ


def test_provenance_names_the_tool_the_set_and_the_settings(voice: VoiceExtractor) -> None:
    features = voice.extract(signal(1.0), 48_000)
    func, lld = features.functionals.provenance, features.lld.provenance
    assert (func.tool, func.tool_version) == ("opensmile", opensmile.__version__)
    assert (func.feature_set, func.feature_set_version) == ("eGeMAPS", "v02")
    assert func.feature_set_name == "eGeMAPSv02"
    assert (func.level, lld.level) == ("functionals", "lld")
    assert len(func.config_hash) == 64 and func.config_hash != lld.config_hash
    same = VoiceExtractor(analysis_rate_hz=ANALYSIS_RATE_HZ)
    assert same.provenance_functionals == func and same.provenance_lld == lld


def test_descriptors_go_to_parquet_with_frame_times_and_the_rate(voice: VoiceExtractor) -> None:
    lld = voice.lld(signal(2.0), 48_000, start_s=0.25)
    table = pq.read_table(io.BytesIO(lld.to_parquet()))
    assert table.num_rows == lld.frame_count
    assert table.column_names[:2] == ["frame_time_s", "analysis_rate_hz"]
    assert table.column_names[2:] == list(lld.columns) and len(lld.columns) == 25
    times = table.column("frame_time_s").to_numpy()
    assert times[0] == pytest.approx(0.25)
    np.testing.assert_allclose(np.diff(times), 0.01, atol=1e-9)
    assert set(table.column("analysis_rate_hz").to_pylist()) == {ANALYSIS_RATE_HZ}
    np.testing.assert_array_equal(
        table.column("Loudness_sma3").to_numpy(), lld.columns["Loudness_sma3"]
    )
    recorded = json.loads(table.schema.metadata[b"painav.voice"])
    assert recorded == lld.provenance.as_dict()


def test_integer_audio_is_refused_before_it_overflows(voice: VoiceExtractor) -> None:
    pcm = np.frombuffer(voice_like_signal(48_000, 1, seconds=0.5), "<i2")
    with pytest.raises(TypeError, match="float32"):
        voice.functionals(pcm, 48_000)
    with pytest.raises(ValueError, match="mono"):
        voice.functionals(np.zeros((2, 100), np.float32), 48_000)
    with pytest.raises(ValueError, match="no samples"):
        voice.lld(np.zeros(0, np.float32), 48_000)
