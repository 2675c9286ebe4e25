"""Finished media files: the live-written clip remuxed carries a duration and cues, and every
packet is copied unchanged."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import av
import pytest

from daemon.hardware.sim_mic import voice_like_signal
from server.extract.media import MediaError, decrypt_to_memory
from server.extract.remux import remux

from .clips import Clip, synthetic_clip


def packets(media: bytes | Path) -> list[tuple[str, int | None, int | None, bool, bytes]]:
    """Every packet: stream kind, pts and duration in seconds × 1000, key flag, bytes."""
    source = io.BytesIO(media) if isinstance(media, bytes) else str(media)
    with av.open(source, "r") as container:
        return [
            (
                p.stream.type,
                round(p.pts * p.time_base * 1000) if p.pts is not None else None,
                round(p.duration * p.time_base * 1000) if p.duration else None,
                p.is_keyframe,
                bytes(p),
            )
            for p in container.demux()
            if p.size
        ]


def probe_format(path: Path) -> dict[str, str]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    fmt: dict[str, str] = json.loads(out.stdout)["format"]
    return fmt


@pytest.fixture
def clip(tmp_path: Path) -> Clip:
    return synthetic_clip(tmp_path / "c.age", voice_like_signal(48_000, 1), seconds=3.0)


@pytest.mark.integration  # ffprobe
def test_remuxed_clip_has_a_duration_and_the_same_packets(clip: Clip, tmp_path: Path) -> None:
    with clip.path.open("rb") as f:
        live = decrypt_to_memory(f, [clip.identity])
    live_file = tmp_path / "live.mkv"
    live_file.write_bytes(live)
    assert "duration" not in probe_format(live_file)  # written live: no duration, no cues

    finished = tmp_path / "finished.mkv"
    with finished.open("wb") as out:
        result = remux(live, out)
    fmt = probe_format(finished)
    assert float(fmt["duration"]) == pytest.approx(clip.sealed.stats.duration_s, abs=0.05)
    assert result.streams == 2 and result.duration_s == pytest.approx(3.0, abs=0.05)

    before, after = packets(live), packets(finished)
    assert len(after) == result.packets == len(before)
    assert after == before  # copied, not re-encoded: same bytes, times and key frames
    with av.open(str(finished)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "pcm_s16le"
        container.seek(2_000_000)  # a player can seek: the cues say where
        frame = next(container.decode(video=0))
        assert frame.time is not None and 1.0 <= frame.time <= 2.1


def test_garbage_is_a_media_error_and_a_pipe_is_refused() -> None:
    with pytest.raises(MediaError, match=r"^clip media: "):
        remux(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 100, io.BytesIO())

    class Pipe(io.RawIOBase):
        def writable(self) -> bool:
            return True

    with pytest.raises(ValueError, match="seekable"):
        remux(b"", Pipe())  # type: ignore[arg-type]
