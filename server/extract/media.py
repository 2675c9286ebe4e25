"""A stored clip opened in memory: decrypted with the data key, demuxed and decoded with PyAV.

The plaintext lives only in this process's memory (one ``bytes`` object); nothing is written to
disk, not even a temporary file. From it come the audio as float32 mono in [-1, 1], video frames
sampled at a chosen rate as RGB or grey arrays, and the stream facts quality control needs::

    with open("clip.age", "rb") as f:
        media = ClipMedia.decrypt(f, [identity])
    facts = media.facts()            # duration, frame times, A/V offset: demux only
    audio = media.audio()            # AudioTrack(samples, sample_rate_hz, start_s, ...)
    for sample in media.frames(fps=10.0):
        sample.time_s, sample.image  # (H, W, 3) uint8 RGB
    for sample in media.frames(fps=2.0, width=640, grey=True):
        sample.image                 # (360, 640) uint8 luma, 0–255

Media that PyAV cannot read (an authentic age file with garbage inside, a clip without a video
or an audio track, a decode error) raises :class:`MediaError` with a one-line reason; the
envelope's own errors (:class:`protocol.errors.EnvelopeError` and its kinds: wrong key,
damaged ciphertext) pass through unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO, TypeVar, cast

import av
import numpy as np
import numpy.typing as npt

from protocol.envelope import EnvelopeReader
from protocol.errors import ProtocolError
from protocol.x25519 import X25519Identity

__all__ = ["AudioTrack", "ClipMedia", "MediaError", "StreamFacts", "VideoSample"]

_T = TypeVar("_T")

# Matroska stores timestamps in milliseconds: audio blocks that are not a whole number of
# milliseconds long arrive up to half a millisecond off. Only a larger jump is a real gap.
_GAP_TOLERANCE_S = 0.002


class MediaError(ValueError):
    """The decrypted clip is not media this worker can read: the reason, in one line."""


class NotTheSignedClipError(MediaError):
    """The store's bytes under a clip's key do not hash to it: not the clip its unit signed."""


class _Hashing:
    """A reader that hashes what passes through it (``fileno`` passed on for the size hint)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        self.sha256.update(data)
        return data

    def readinto(self, view: memoryview, /) -> int:
        readinto = getattr(self._raw, "readinto", None)
        if readinto is not None:
            n: int = readinto(view)
        else:
            data = self._raw.read(len(view))
            n = len(data)
            view[:n] = data
        self.sha256.update(view[:n])
        return n

    def fileno(self) -> int:
        return self._raw.fileno()


@dataclass(frozen=True)
class AudioTrack:
    """The clip's audio, mixed down to mono float32 in [-1, 1].

    *start_s* is where the first sample sits on the clip's clock (the first video frame is
    0 for clips from the unit); *gap_samples* counts silence inserted where the track's
    timestamps jump ahead (0 for a clip from the unit, whose audio is contiguous).
    """

    samples: npt.NDArray[np.float32]
    sample_rate_hz: int
    start_s: float
    channels: int  # in the clip, before the mixdown
    codec: str
    gap_samples: int = 0

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz


@dataclass(frozen=True)
class VideoSample:
    """One decoded frame: its index among the clip's frames, its time on the clip's clock,
    and the picture as an (height, width, 3) uint8 RGB array, or (height, width) uint8 luma
    for a grey frame."""

    index: int
    time_s: float
    image: npt.NDArray[np.uint8]


@dataclass(frozen=True)
class StreamFacts:
    """What the container says about its streams, read by demuxing alone (no decoding).

    Times are seconds on the clip's clock. *frame_times_s* are the video frames' timestamps in
    presentation order, for dropped-frame detection (Matroska stores them to the millisecond).
    *av_offset_ms* is the audio's start minus the video's (positive: audio starts later).
    """

    duration_s: float
    video_codec: str
    width: int
    height: int
    nominal_fps: float | None
    frame_count: int
    frame_times_s: tuple[float, ...]
    video_start_s: float
    video_end_s: float
    audio_codec: str
    audio_sample_rate_hz: int
    audio_channels: int
    audio_start_s: float
    audio_end_s: float
    av_offset_ms: float
    plaintext_bytes: int

    def dropped_frames(self, frame_rate_hz: float | None = None) -> int:
        """Frames missing from the timestamp gaps: a gap of *k* frame intervals (rounded) holds
        *k − 1* missing frames. The interval is 1 / *frame_rate_hz*, by default the nominal
        rate (or, without one, the median interval)."""
        times = np.asarray(self.frame_times_s)
        if len(times) < 2:
            return 0
        gaps = np.diff(times)
        rate = frame_rate_hz or self.nominal_fps
        interval = 1.0 / rate if rate else float(np.median(gaps))
        if interval <= 0:
            return 0
        return int(np.clip(np.rint(gaps / interval) - 1, 0, None).sum())


@contextlib.contextmanager
def media_errors(what: str) -> Iterator[None]:
    """PyAV's and FFmpeg's errors become one :class:`MediaError` naming *what* failed."""
    try:
        yield
    except (MediaError, ProtocolError):
        raise  # already typed; an envelope error raised from inside a demuxer's read stays one
    except (av.FFmpegError, ValueError, IndexError, EOFError) as exc:
        # FFmpeg's errors carry a readable strerror; their str() adds errno and file noise.
        text = exc.strerror if isinstance(exc, av.FFmpegError) and exc.strerror else str(exc)
        reason = " ".join(str(text).split()) or type(exc).__name__
        raise MediaError(f"clip media: {what}: {reason}") from exc


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def decrypt_to_memory(
    fileobj: BinaryIO, identities: Sequence[str | X25519Identity], *, size_hint: int | None = None
) -> bytes:
    """Decrypt an age clip into memory, every chunk authenticated; returns the plaintext.

    The buffer is sized from the ciphertext (``os.fstat`` of *fileobj*, or *size_hint*), which
    is never smaller than the plaintext, so decryption is one pass with no reallocation.
    Raises :class:`protocol.errors.EnvelopeError` kinds for a wrong key or a damaged file.
    """
    if size_hint is None:
        try:
            size_hint = os.fstat(fileobj.fileno()).st_size
        except (AttributeError, OSError, io.UnsupportedOperation):
            size_hint = None
    with EnvelopeReader(fileobj, identities) as reader:
        if size_hint is None:
            return reader.read()
        buffer = bytearray(size_hint + 1)
        view = memoryview(buffer)
        got = 0
        while True:
            n = reader.readinto(view[got:])
            if not n:
                break
            got += n
            if got == len(buffer):  # the hint was short: carry on with what is left
                return bytes(buffer) + reader.read()
        with view:
            return bytes(view[:got])


class ClipMedia:
    """A clip's plaintext media, held in memory and opened with PyAV on demand.

    Each method opens its own demuxer over the same bytes, so they can be called in any order
    and more than once. The constructor checks that the data is a container with one video and
    one audio stream, and raises :class:`MediaError` otherwise.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        with self._open("open the container") as container:
            if not container.streams.video:
                raise MediaError("clip media: no video stream in the container")
            if not container.streams.audio:
                raise MediaError("clip media: no audio stream in the container")

    @classmethod
    def decrypt(
        cls,
        fileobj: BinaryIO,
        identities: Sequence[str | X25519Identity],
        *,
        sha256: str | None = None,
    ) -> ClipMedia:
        """Decrypt an age clip (see :func:`decrypt_to_memory`) and open its media. With
        *sha256*, the ciphertext must hash to it (:class:`NotTheSignedClipError`): whoever runs
        the store could otherwise put another clip sealed to the same data key in its place."""
        if sha256 is None:
            return cls(decrypt_to_memory(fileobj, identities))
        hashing = _Hashing(fileobj)
        plaintext = decrypt_to_memory(cast(BinaryIO, hashing), identities)
        if hashing.sha256.hexdigest() != sha256:
            del plaintext
            raise NotTheSignedClipError(
                f"the stored ciphertext does not hash to {sha256[:16]}…: not the clip its unit "
                "signed (the store's copy was replaced); nothing extracted"
            )
        return cls(plaintext)

    @contextlib.contextmanager
    def _open(self, what: str) -> Iterator[Any]:
        with media_errors(what):
            container = av.open(io.BytesIO(self.data), "r")
        try:
            with media_errors(what):
                yield container
        finally:
            container.close()

    def facts(self) -> StreamFacts:
        """The stream facts, from the packets' timestamps (fast: nothing is decoded)."""
        with self._open("read the packets") as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            frame_times: list[float] = []
            video_end = audio_start = audio_end = None
            for packet in container.demux(video, audio):
                start = _seconds(packet.pts, packet.time_base)
                if start is None:
                    continue  # a flush packet
                length = _seconds(packet.duration, packet.time_base) or 0.0
                if packet.stream.type == "video":
                    frame_times.append(start)
                    video_end = max(video_end or start, start + length)
                else:
                    audio_start = start if audio_start is None else min(audio_start, start)
                    audio_end = max(audio_end or start, start + length)
            if not frame_times:
                raise MediaError("clip media: the video stream holds no frames")
            if audio_start is None or audio_end is None:
                raise MediaError("clip media: the audio stream holds no samples")
            frame_times.sort()
            rate = video.average_rate or video.guessed_rate or video.base_rate
            nominal_fps = float(rate) if rate else None
            if video_end is None or video_end <= frame_times[-1]:
                video_end = frame_times[-1] + (1 / nominal_fps if nominal_fps else 0.0)
            start_s = min(frame_times[0], audio_start)
            return StreamFacts(
                duration_s=max(video_end, audio_end) - start_s,
                video_codec=video.codec_context.name,
                width=video.codec_context.width,
                height=video.codec_context.height,
                nominal_fps=nominal_fps,
                frame_count=len(frame_times),
                frame_times_s=tuple(frame_times),
                video_start_s=frame_times[0],
                video_end_s=video_end,
                audio_codec=audio.codec_context.name,
                audio_sample_rate_hz=audio.codec_context.sample_rate,
                audio_channels=audio.codec_context.channels,
                audio_start_s=audio_start,
                audio_end_s=audio_end,
                av_offset_ms=(audio_start - frame_times[0]) * 1000,
                plaintext_bytes=len(self.data),
            )

    def audio(self) -> AudioTrack:
        """The whole audio track, decoded and mixed down to mono float32 in [-1, 1]."""
        with self._open("decode the audio") as container:
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            channels = stream.codec_context.channels
            parts: list[npt.NDArray[np.float32]] = []
            length = gaps = 0
            start_s: float | None = None
            for frame in container.decode(stream):
                mono = _mono(frame)
                t = _seconds(frame.pts, frame.time_base)
                if start_s is None:
                    start_s = t if t is not None else 0.0
                elif t is not None:
                    expected = start_s + length / rate
                    if t - expected > _GAP_TOLERANCE_S:  # timestamps jump: keep the timing
                        gap = round((t - expected) * rate)
                        parts.append(np.zeros(gap, np.float32))
                        length, gaps = length + gap, gaps + gap
                parts.append(mono)
                length += len(mono)
            if not parts:
                raise MediaError("clip media: the audio stream holds no samples")
            samples = np.concatenate(parts) if len(parts) > 1 else parts[0]
            return AudioTrack(
                samples=samples,
                sample_rate_hz=rate,
                start_s=start_s or 0.0,
                channels=channels,
                codec=stream.codec_context.name,
                gap_samples=gaps,
            )

    def frames(
        self,
        fps: float | None = 10.0,
        *,
        width: int | None = None,
        grey: bool = False,
        ahead: int = 0,
    ) -> Iterator[VideoSample]:
        """Video frames sampled at about *fps* frames per second (every frame if None or if the
        clip has fewer), as RGB arrays, or as luma arrays if *grey*, scaled to *width* pixels
        wide (aspect kept) if given.

        Every frame is decoded (H.264 needs them all), but only the sampled ones are converted.
        A grey frame is the decoded picture's own luma plane, scaled and expanded to full range
        (0–255) by FFmpeg's swscale in one step: no RGB conversion. Sampling follows the
        timestamps: after a gap the next frame is taken at once.

        With *ahead* > 0 the video is decoded on a thread of its own, at most *ahead* sampled
        frames ahead of the caller, so that decoding runs while the caller works on the frames
        (FFmpeg and OpenCV both release the GIL); the frames are the same. A decoding error is
        raised here as it would be without; closing the iterator stops the thread.
        """
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive, not {fps}")
        samples = self._sampled(1.0 / fps if fps else 0.0, width, "gray" if grey else "rgb24")
        return _read_ahead(samples, ahead) if ahead > 0 else samples

    def _sampled(self, step: float, width: int | None, pixels: str) -> Iterator[VideoSample]:
        with self._open("decode the video") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            due: float | None = None
            height: int | None = None
            for index, frame in enumerate(container.decode(stream)):
                t = _seconds(frame.pts, frame.time_base)
                if t is None:
                    t = index * step
                if step:
                    if due is not None and t < due - 1e-6:
                        continue
                    due = (due if due is not None else t) + step
                    while due <= t + 1e-6:
                        due += step  # catch up after a gap rather than emit a burst
                if width is not None and height is None:
                    height = max(2, round(frame.height * width / frame.width / 2) * 2)
                picture = frame.to_ndarray(format=pixels, width=width, height=height)
                yield VideoSample(index=index, time_s=t, image=picture)


def _read_ahead(items: Iterator[_T], depth: int) -> Iterator[_T]:
    """*items*, taken on a thread of their own at most *depth* ahead of the consumer. What the
    producer raises is raised here; closing this generator stops the producer, which closes
    *items* (a generator's ``with`` blocks end on the thread that ran them)."""
    slots: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    break
                slots.put((True, item))
            slots.put((False, None))
        except BaseException as exc:  # handed to the consumer, who raises it
            slots.put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="painav-decode", daemon=True)
    thread.start()
    try:
        while True:
            more, value = slots.get()
            if more:
                yield cast(_T, value)
            elif value is None:
                return
            else:
                assert isinstance(value, BaseException)
                raise value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting for room
            with contextlib.suppress(queue.Empty):
                slots.get(timeout=0.05)
        thread.join()


def _mono(frame: Any) -> npt.NDArray[np.float32]:
    """One decoded audio frame as mono float32 in [-1, 1]: integer samples scaled by their
    full range (int16 / 32768 exactly), channels averaged."""
    array = frame.to_ndarray()
    channels = len(frame.layout.channels)
    # planar: one row per channel; packed: channels interleaved sample by sample
    array = array.reshape(channels, -1) if frame.format.is_planar else array.reshape(-1, channels).T
    if array.dtype.kind == "i":
        scale = np.float32(1.0 / (1 << (8 * array.dtype.itemsize - 1)))
        data = array.astype(np.float32) * scale
    elif array.dtype.kind == "u":  # 8-bit PCM is unsigned, centred on 128
        data = (array.astype(np.float32) - 128) / np.float32(128)
    else:
        data = array.astype(np.float32)
    mono = data[0] if channels == 1 else data.mean(axis=0, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)
