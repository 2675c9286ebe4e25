"""One recording in progress: H.264 packets and PCM blocks in, a signed age file out.

Video and audio arrive on their own threads with monotonic timestamps; the writer puts them on
one clock (the clip starts at the first key frame), muxes them into Matroska, and streams that
through the envelope into the outbox's partial file, hashing the ciphertext for the signature
as it goes. Plaintext exists only in memory: the muxer writes straight into the encryption.
Audio stays uncompressed PCM: it costs no CPU on the unit and keeps voice features exact.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from protocol.envelope import EnvelopeWriter
from protocol.signing import ClipBinding, ClipSigner, Signature, SigningKey
from protocol.x25519 import X25519Recipient

from .annexb import parameter_sets
from .hardware.base import AudioBlock, VideoPacket

__all__ = ["ClipStats", "ClipWriter", "SealedClip"]

_US = Fraction(1, 1_000_000)
_PRE_ROLL_BLOCKS = 100  # audio kept while waiting for the first key frame (~2 s of 20 ms)
_ORIGIN_BLOCKS = 3  # blocks whose timestamps place the audio track (see _place_audio)


@dataclass(frozen=True)
class ClipStats:
    """What the manifest reports about the capture."""

    duration_s: float
    frames: int
    audio_frames: int
    av_offset_ms: float  # start of audio minus start of video (positive: audio started late)
    first_frame_ns: int | None  # monotonic time of the clip's first frame


@dataclass(frozen=True)
class SealedClip:
    size_bytes: int
    sha256: str
    signature: Signature
    binding: ClipBinding
    stats: ClipStats


class _Tee:
    """Ciphertext to the partial file, and the same bytes to the signer's hashes."""

    def __init__(self, fd: int, signer: ClipSigner) -> None:
        self._fd = fd
        self._signer = signer

    def write(self, data: bytes | memoryview) -> int:
        self._signer.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        return len(data)


class _MuxSink:
    """What FFmpeg writes to: the envelope. Not seekable, so nothing is ever rewritten."""

    def __init__(self, envelope: EnvelopeWriter) -> None:
        self._envelope = envelope

    def write(self, data: bytes) -> int:
        return self._envelope.write(data)

    def seekable(self) -> bool:
        return False


class ClipWriter:
    """Writes one clip to *part_path* (created here, mode 0600, never existing before)."""

    def __init__(
        self,
        part_path: Path,
        *,
        recipients: list[X25519Recipient],
        signing_key: SigningKey,
        width: int,
        height: int,
        frame_rate_hz: float,
        sample_rate_hz: int,
        channels: int,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._fd = os.open(part_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._path = part_path
        self._signer = ClipSigner(signing_key)
        self._envelope = EnvelopeWriter(_Tee(self._fd, self._signer), recipients)
        self._video_format = (width, height, frame_rate_hz)
        self._audio_format = (sample_rate_hz, channels)
        self._audio_time_base = Fraction(1, sample_rate_hz)
        self._lock = threading.Lock()
        self._container: Any = None
        self._video: Any = None
        self._audio: Any = None
        self._t0: int | None = None
        self._pending_audio: deque[AudioBlock] = deque(maxlen=_PRE_ROLL_BLOCKS)
        self._audio_start_sample: int | None = None  # clip-relative sample of the next block
        self._audio_first_ns: int | None = None
        self._frames = 0
        self._audio_frames = 0
        self._last_video_ns = 0
        self._closed = False
        self.error: BaseException | None = None
        # Told at once (on the capture thread) so a full disk ends the recording now, not at
        # the press that would have stopped it.
        self._on_error = on_error

    # --- input, from the camera and microphone threads ------------------------------------

    def video(self, packet: VideoPacket) -> None:
        with self._lock:
            if self._closed or self.error is not None:
                return
            try:
                if self._t0 is None:
                    extradata = parameter_sets(packet.data) if packet.keyframe else None
                    if extradata is None:
                        return  # a clip starts at a key frame that carries its parameter sets
                    self._open(packet.pts_ns, extradata)
                    self._place_audio()
                assert self._t0 is not None
                out = av.Packet(packet.data)
                out.stream = self._video
                out.time_base = _US
                out.pts = out.dts = (packet.pts_ns - self._t0) // 1000
                out.is_keyframe = packet.keyframe
                self._container.mux(out)
                self._frames += 1
                self._last_video_ns = packet.pts_ns
            except BaseException as exc:  # the camera thread carries on; finish() raises it
                self._fail(exc)

    def audio(self, block: AudioBlock) -> None:
        with self._lock:
            if self._closed or self.error is not None:
                return
            try:
                if self._audio_start_sample is None:
                    self._pending_audio.append(block)
                    self._place_audio()
                else:
                    self._mux_audio(block)
            except BaseException as exc:
                self._fail(exc)

    # --- internals (lock held) -----------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        if self._on_error is not None:
            self._on_error(exc)

    def _open(self, t0: int, extradata: bytes) -> None:
        width, height, fps = self._video_format
        rate, channels = self._audio_format
        container = av.open(_MuxSink(self._envelope), "w", format="matroska", options={"live": "1"})
        video = container.add_stream("h264", rate=round(fps))
        video.width, video.height = width, height
        video.codec_context.extradata = extradata
        audio = container.add_stream("pcm_s16le", rate=rate)
        audio.layout = "mono" if channels == 1 else "stereo"
        self._container, self._video, self._audio, self._t0 = container, video, audio, t0

    def _place_audio(self, *, final: bool = False) -> None:
        """Put the audio track on the video's clock, once a few blocks have arrived.

        A block's timestamp can be late by up to a block (a driver may report when it handed the
        block over, not when it was sampled). Each pending block implies when the first pending
        sample was taken — its timestamp minus the samples before it — and the earliest of these
        is the best estimate. Later blocks then follow sample by sample, so the sound card's
        clock rules and no gap or overlap can creep in.
        """
        pending = list(self._pending_audio)
        if self._t0 is None or not pending or (len(pending) < _ORIGIN_BLOCKS and not final):
            return
        rate, channels = self._audio_format
        start_ns, before = pending[0].pts_ns, 0
        for block in pending:
            start_ns = min(start_ns, block.pts_ns - before * 1_000_000_000 // rate)
            before += block.frames
        self._pending_audio.clear()
        offset = round((start_ns - self._t0) * rate / 1e9)
        for block in pending:
            pcm, frames = block.pcm, block.frames
            if offset < 0:  # sampled before the first frame: trim to the clip's start
                skip = min(-offset, frames)
                pcm, frames, offset = pcm[skip * 2 * channels :], frames - skip, offset + skip
                if not frames:
                    continue
            if self._audio_start_sample is None:
                self._audio_start_sample = offset
                self._audio_first_ns = self._t0 + offset * 1_000_000_000 // rate
            self._write_audio(pcm, frames)

    def _mux_audio(self, block: AudioBlock) -> None:
        self._write_audio(block.pcm, block.frames)

    def _write_audio(self, pcm: bytes, frames: int) -> None:
        assert self._audio_start_sample is not None
        out = av.Packet(pcm)
        out.stream = self._audio
        out.time_base = self._audio_time_base
        out.pts = out.dts = self._audio_start_sample + self._audio_frames
        self._container.mux(out)
        self._audio_frames += frames

    def _stats(self) -> ClipStats:
        rate, _ = self._audio_format
        fps = self._video_format[2]
        video_s = (self._last_video_ns - self._t0) / 1e9 + 1 / fps if self._t0 is not None else 0
        audio_s = 0.0
        if self._audio_start_sample is not None:
            audio_s = (self._audio_start_sample + self._audio_frames) / rate
        offset_ms = 0.0
        if self._audio_first_ns is not None and self._t0 is not None:
            offset_ms = (self._audio_first_ns - self._t0) / 1e6
        return ClipStats(
            duration_s=max(video_s, audio_s),
            frames=self._frames,
            audio_frames=self._audio_frames,
            av_offset_ms=offset_ms,
            first_frame_ns=self._t0,
        )

    # --- end ------------------------------------------------------------------------------

    def finish(
        self, clip_id: str, device_id: str, *, participant: str | None, visit: str | None
    ) -> SealedClip:
        """Close the media, seal the envelope, make the file durable and sign it, binding the
        *participant* and *visit* the unit was armed with (the manifest's). Raises if capture
        failed or no frame ever arrived; the caller then aborts the clip."""
        with self._lock:
            self._closed = True
            if self.error is not None:
                raise RuntimeError(f"clip {clip_id}: muxing failed: {self.error}") from self.error
            if self._container is None:
                raise RuntimeError(f"clip {clip_id}: no video key frame arrived from the camera")
            self._place_audio(final=True)
            self._container.close()
            self._envelope.close()
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        signature, binding = self._signer.finish(
            clip_id, device_id, participant=participant, visit=visit, timestamp=int(time.time())
        )
        return SealedClip(self._signer.size, binding.sha256, signature, binding, self._stats())

    def abort(self) -> None:
        """Stop writing and remove the partial file; nothing of the clip is kept."""
        with self._lock:
            self._closed = True
            if self._container is not None:
                with contextlib.suppress(Exception):
                    self._container.close()
            self._envelope.abort()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._path.unlink(missing_ok=True)
