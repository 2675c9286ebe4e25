"""A stored clip opened in memory: stream facts, audio exactly as recorded, sampled frames, and
one typed error for whatever is not media."""

from __future__ import annotations

import dataclasses
import io
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon.hardware.sim_mic import voice_like_signal
from protocol.envelope import EnvelopeWriter
from protocol.errors import NoIdentityMatchError, PayloadError
from protocol.x25519 import X25519Identity
from server.extract.media import ClipMedia, MediaError, _read_ahead, decrypt_to_memory

from .clips import FPS, Clip, aligned, synthetic_clip, wav_samples


@pytest.fixture
def voice_clip(tmp_path: Path) -> Clip:
    return synthetic_clip(tmp_path / "c.age", voice_like_signal(48_000, 1), seconds=2.0)


def open_clip(clip: Clip) -> ClipMedia:
    with clip.path.open("rb") as f:
        return ClipMedia.decrypt(f, [clip.identity])


@pytest.mark.integration
def test_recorded_speech_comes_out_sample_for_sample(speech_clip: Clip, speech_48k: Path) -> None:
    media = open_clip(speech_clip)
    audio = media.audio()
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.sample_rate_hz == 48_000 and audio.channels == 1 and audio.gap_samples == 0
    assert len(audio.samples) == speech_clip.sealed.stats.audio_frames
    assert abs(audio.start_s * 1000 - speech_clip.sealed.stats.av_offset_ms) < 1.0
    heard = np.rint(audio.samples * 32768).astype(np.int16)
    np.testing.assert_array_equal(heard, aligned(wav_samples(speech_48k), heard))
    assert float(np.abs(audio.samples).max()) <= 1.0


@pytest.mark.integration
def test_stream_facts_match_what_the_writer_reported(speech_clip: Clip) -> None:
    facts = open_clip(speech_clip).facts()
    stats = speech_clip.sealed.stats
    assert facts.frame_count == stats.frames == len(facts.frame_times_s)
    assert facts.video_codec == "h264" and (facts.width, facts.height) == (160, 120)
    assert facts.audio_codec == "pcm_s16le" and facts.audio_sample_rate_hz == 48_000
    assert facts.nominal_fps == pytest.approx(FPS)
    assert facts.duration_s == pytest.approx(stats.duration_s, abs=0.002)
    assert facts.av_offset_ms == pytest.approx(stats.av_offset_ms, abs=1.0)
    assert facts.dropped_frames() == 0
    assert facts.plaintext_bytes > 0


def test_dropped_frames_are_found_in_the_timestamps(tmp_path: Path) -> None:
    missing = {10, 20, 21, 22}
    clip = synthetic_clip(
        tmp_path / "c.age", voice_like_signal(48_000, 1), skip_frames=lambda i: i in missing
    )
    facts = open_clip(clip).facts()
    assert facts.frame_count == 2 * FPS - len(missing)
    assert facts.dropped_frames() == len(missing)
    assert facts.dropped_frames(frame_rate_hz=FPS) == len(missing)


def test_dropped_frames_without_a_nominal_rate_use_the_median_interval(
    voice_clip: Clip,
) -> None:
    facts = open_clip(voice_clip).facts()
    gappy = dataclasses.replace(facts, nominal_fps=None, frame_times_s=(0.0, 0.1, 0.2, 0.5, 0.6))
    assert gappy.dropped_frames() == 2


def test_frames_are_sampled_at_the_asked_rate(voice_clip: Clip) -> None:
    media = open_clip(voice_clip)
    samples = list(media.frames(fps=10.0))
    assert len(samples) == 20
    times = np.array([s.time_s for s in samples])
    np.testing.assert_allclose(np.diff(times), 0.1, atol=0.002)
    assert [s.index for s in samples[:3]] == [0, 3, 6]
    first = samples[0].image
    assert first.shape == (120, 160, 3) and first.dtype == np.uint8
    assert len(list(media.frames(fps=None))) == 2 * FPS
    assert len(list(media.frames(fps=1000.0))) == 2 * FPS  # never more than there are
    small = next(media.frames(fps=1.0, width=80))
    assert small.image.shape == (60, 80, 3)
    with pytest.raises(ValueError):
        next(media.frames(fps=0))


def test_grey_frames_are_the_luma_of_the_same_samples(voice_clip: Clip) -> None:
    media = open_clip(voice_clip)
    colour = list(media.frames(fps=10.0, width=80))
    grey = list(media.frames(fps=10.0, width=80, grey=True))
    assert [(s.index, s.time_s) for s in grey] == [(s.index, s.time_s) for s in colour]
    for g, c in zip(grey, colour, strict=True):
        assert g.image.shape == (60, 80) and g.image.dtype == np.uint8
        luma = c.image @ np.array([0.299, 0.587, 0.114])
        assert float(np.abs(g.image - luma).mean()) < 3.0  # the same picture, within a level or two
    # full range, as luma from RGB is: the gradient's black and white, not video's 16–235
    assert min(int(g.image.min()) for g in grey) < 12
    assert max(int(g.image.max()) for g in grey) > 243
    assert next(media.frames(fps=1.0, grey=True)).image.shape == (120, 160)


def test_frames_decoded_ahead_are_the_same_and_the_thread_ends(voice_clip: Clip) -> None:
    media = open_clip(voice_clip)
    threads = threading.active_count()
    here = list(media.frames(fps=10.0, width=80, grey=True))
    ahead = list(media.frames(fps=10.0, width=80, grey=True, ahead=2))
    assert [(s.index, s.time_s) for s in ahead] == [(s.index, s.time_s) for s in here]
    assert all(np.array_equal(a.image, h.image) for a, h in zip(ahead, here, strict=True))
    early = media.frames(fps=None, ahead=1)
    assert next(early).index == 0
    early.close()  # type: ignore[attr-defined]  # stops the decoding thread
    assert threading.active_count() == threads


def test_an_error_while_reading_ahead_is_raised_to_the_reader() -> None:
    def broken() -> Iterator[int]:
        yield 1
        raise MediaError("clip media: decode the video: broken")

    reader = _read_ahead(broken(), 4)
    assert next(reader) == 1
    with pytest.raises(MediaError, match="broken"):
        next(reader)


def test_decrypting_needs_no_file_on_disk(
    voice_clip: Clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ciphertext = voice_clip.path.read_bytes()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(scratch)
    data = decrypt_to_memory(io.BytesIO(ciphertext), [voice_clip.identity])
    assert data.startswith(b"\x1a\x45\xdf\xa3")  # Matroska
    media = ClipMedia(data)
    media.facts(), media.audio(), list(media.frames(fps=5.0))
    assert not list(scratch.iterdir())
    again = decrypt_to_memory(io.BytesIO(ciphertext), [voice_clip.identity], size_hint=100)
    assert again == data  # a short hint only costs a copy


def encrypt(path: Path, plaintext: bytes) -> X25519Identity:
    identity = X25519Identity.generate()
    with path.open("wb") as f, EnvelopeWriter(f, [identity.recipient]) as env:
        env.write(plaintext)
    return identity


@pytest.mark.parametrize(
    "plaintext",
    [
        b"garbage, not media " * 4000,
        b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 300,  # Matroska's magic, then noise
        b"",
    ],
)
def test_an_authentic_clip_with_broken_media_is_one_media_error(
    tmp_path: Path, plaintext: bytes
) -> None:
    path = tmp_path / "bad.age"
    identity = encrypt(path, plaintext)
    with pytest.raises(MediaError) as raised, path.open("rb") as f:
        ClipMedia.decrypt(f, [identity])
    message = str(raised.value)
    assert message.startswith("clip media: ") and "\n" not in message


def test_media_without_video_is_a_media_error(voice_clip: Clip, tmp_path: Path) -> None:
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as container:
        stream = container.add_stream("pcm_s16le", rate=48_000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 960), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 48_000
        for packet in stream.encode(frame):
            container.mux(packet)
    path = tmp_path / "audio-only.age"
    identity = encrypt(path, out.getvalue())
    with pytest.raises(MediaError, match="no video stream"), path.open("rb") as f:
        ClipMedia.decrypt(f, [identity])


def test_envelope_errors_pass_through_unchanged(voice_clip: Clip) -> None:
    with pytest.raises(NoIdentityMatchError), voice_clip.path.open("rb") as f:
        ClipMedia.decrypt(f, [X25519Identity.generate()])
    damaged = bytearray(voice_clip.path.read_bytes())
    damaged[-100] ^= 1
    with pytest.raises(PayloadError):
        ClipMedia.decrypt(io.BytesIO(bytes(damaged)), [voice_clip.identity])
