"""Finished media files: a clip's live-written Matroska remuxed so players show its length and
can seek.

The unit writes Matroska push-style into the envelope, never seeking back, so a clip carries no
duration and no cues (index), and ``ffprobe`` reports no duration. Copying its packets into a
new container on a seekable file lets the muxer write both. Nothing is decoded or re-encoded:
every packet goes across unchanged, with its timestamps::

    with open("clip.mkv", "wb") as out:
        remux(plaintext, out)
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import av

from .media import MediaError, media_errors

__all__ = ["RemuxResult", "remux"]

# The copied stream kinds: a clip has video and audio; anything else is dropped, not guessed at.
_KINDS = ("video", "audio", "subtitle")


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class RemuxResult:
    packets: int
    streams: int
    duration_s: float | None  # the longest stream's end, from the packets' timestamps


def remux(source: bytes | Readable, dest: BinaryIO, *, format: str = "matroska") -> RemuxResult:
    """Copy the media in *source* into *dest* in *format*, packet by packet, in one pass.

    *source* is a whole file in memory, or anything with ``read`` (an
    :class:`~protocol.envelope.EnvelopeReader`, say: it is read front to back, never seeked,
    so memory stays flat; an error it raises, such as a chunk failing authentication, is
    raised from here unchanged). *dest* must be seekable (a regular file, or
    :class:`io.BytesIO`) for the duration and cues to be written. Raises :class:`MediaError`
    if *source* is not readable media.

    *dest* is written but neither flushed to disk nor closed: the caller decides when the file
    is complete (fsync and rename).
    """
    if not dest.seekable():
        raise ValueError("remux: the destination must be seekable to carry a duration and cues")
    with media_errors("open the container"):
        src = av.open(io.BytesIO(source) if isinstance(source, bytes) else source, "r")
    try:
        with media_errors("remux"):
            return _copy(src, dest, format)
    finally:
        src.close()


def _copy(src: Any, dest: BinaryIO, format: str) -> RemuxResult:
    inputs = [s for s in src.streams if s.type in _KINDS]
    if not inputs:
        raise MediaError("clip media: no audio or video stream to copy")
    out = av.open(dest, "w", format=format)
    try:
        outputs = {s.index: out.add_stream_from_template(s) for s in inputs}
        packets = 0
        end_s: float | None = None
        for packet in src.demux(*inputs):
            if packet.dts is None and packet.pts is None:
                continue  # the demuxer's end-of-stream marker, not data
            if packet.pts is not None and packet.time_base is not None:
                t = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                end_s = t if end_s is None else max(end_s, t)
            packet.stream = outputs[packet.stream.index]
            out.mux(packet)
            packets += 1
    finally:
        out.close()  # writes the cues and goes back to fill in the duration
    return RemuxResult(packets=packets, streams=len(outputs), duration_s=end_s)
