"""A simulated microphone: plays a WAV or raw s16le file in real time, looping, in blocks."""

from __future__ import annotations

import logging
import math
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path

from .base import AudioBlock, HardwareError

__all__ = ["SimulatedMicrophone", "voice_like_signal"]

log = logging.getLogger(__name__)


def voice_like_signal(sample_rate_hz: int, channels: int, *, seconds: float = 3.0) -> bytes:
    """A voice-like s16le signal: a gliding 120–180 Hz buzz with harmonics, in 4 Hz syllables."""
    import numpy as np

    t = np.arange(round(seconds * sample_rate_hz)) / sample_rate_hz
    pitch = 150 + 30 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate_hz
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) * (t % 1.5 < 1.0)
    samples = (voice * syllables * 8000).astype("<i2")
    return np.repeat(samples, channels).tobytes()


def _load(path: Path, sample_rate_hz: int, channels: int) -> bytes:
    if path.suffix.lower() != ".wav":  # raw s16le at the configured rate and channels
        pcm = path.read_bytes()
    else:
        try:
            with wave.open(str(path), "rb") as wav:
                shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
                pcm = wav.readframes(wav.getnframes())
        except (wave.Error, EOFError) as exc:
            raise HardwareError(f"microphone: {path} is not a readable WAV file: {exc}") from exc
        if shape != (sample_rate_hz, channels, 2):
            raise HardwareError(
                f"microphone: {path} is {shape[0]} Hz, {shape[1]} ch, {8 * shape[2]}-bit; "
                f"{sample_rate_hz} Hz, {channels} ch, 16-bit wanted "
                f"(sox {path.name} -r {sample_rate_hz} -c {channels} -b 16 out.wav)"
            )
    frame_bytes = 2 * channels
    pcm = pcm[: len(pcm) - len(pcm) % frame_bytes]
    if not pcm:
        raise HardwareError(f"microphone: {path} holds no audio")
    return pcm


class SimulatedMicrophone:
    """A microphone that "hears" a file, delivered in real time in blocks of *block_s*, looping.

    Like a sound card it runs on its own clock: block *k* is never delivered before its last
    sample has been "captured", and its pts is start + k × block duration, exactly. Like a
    card's interrupt, the thread wakes once every *period_s* and hands over every block
    completed by then, one call each (and, at :meth:`stop`, those completed so far): a wake-up
    costs more CPU than the blocks it delivers, so waking for each 20 ms block would make the
    simulation, not the recorder, the cost being measured. If the sink holds the thread for
    longer than *buffer_s* (a sound card's buffer), the audio that would have been overwritten
    is skipped — the file position and the pts jump ahead together — and counted in
    :attr:`overruns`.

    >>> mic = SimulatedMicrophone(Path("speech_48k_mono.wav"), sample_rate_hz=48_000)
    >>> mic.start(blocks.append); time.sleep(1.0); mic.stop()
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        sample_rate_hz: int = 48_000,
        channels: int = 1,
        block_s: float = 0.02,
        period_s: float = 0.1,
        buffer_s: float = 0.5,
    ) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self.path = path
        try:
            self.pcm = (
                _load(path, sample_rate_hz, channels)
                if path is not None
                else voice_like_signal(sample_rate_hz, channels)
            )
        except OSError as exc:
            raise HardwareError(f"microphone: cannot read {path}: {exc}") from exc
        self.frames_per_block = max(1, round(sample_rate_hz * block_s))
        self.blocks_per_period = max(1, round(period_s / block_s))
        self.buffer_blocks = max(self.blocks_per_period, math.floor(buffer_s / block_s))
        self._frame_bytes = 2 * channels
        self._total_frames = len(self.pcm) // self._frame_bytes
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._overruns = 0
        self._closed = False

    @property
    def present(self) -> bool:
        return not self._closed

    @property
    def overruns(self) -> int:
        return self._overruns

    def start(self, sink: Callable[[AudioBlock], None]) -> None:
        """Start delivering blocks to *sink*, from the file's beginning; a no-op if started."""
        if self._closed:
            raise HardwareError("microphone: start() after close()")
        if self._thread is not None:
            return
        self._overruns = 0
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(sink,), name="painav-sim-microphone", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()

    def close(self) -> None:
        self.stop()
        self._closed = True

    def _frames_ns(self, frames: int) -> int:
        return frames * 1_000_000_000 // self.sample_rate_hz

    def _block(self, first_frame: int) -> bytes:
        """Frames [first_frame, first_frame + frames_per_block) of the looping file."""
        size = self._frame_bytes
        frame, wanted = first_frame % self._total_frames, self.frames_per_block
        if frame + wanted <= self._total_frames:  # the usual case: one slice, one copy
            return self.pcm[frame * size : (frame + wanted) * size]
        out = bytearray()
        while wanted:
            take = min(wanted, self._total_frames - frame)
            out += self.pcm[frame * size : (frame + take) * size]
            frame, wanted = 0, wanted - take
        return bytes(out)

    def _run(self, sink: Callable[[AudioBlock], None]) -> None:
        start_ns = time.monotonic_ns()
        n, rate = self.frames_per_block, self.sample_rate_hz
        block = 0
        stopping = False
        while not stopping:
            # Wake when the last block of this period is complete (rounded up, so it is).
            ready_ns = start_ns - (-(block + self.blocks_per_period) * n * 1_000_000_000 // rate)
            delay_s = (ready_ns - time.monotonic_ns()) / 1e9
            stopping = self._stop.wait(delay_s) if delay_s > 0 else self._stop.is_set()
            # Hand over what the "card" holds now: every block whose last sample is in.
            captured = (time.monotonic_ns() - start_ns) * rate // 1_000_000_000
            complete = captured // n
            if complete - block > self.buffer_blocks:  # the "card's buffer" has wrapped
                self._overruns += 1
                block = complete - self.buffer_blocks
                log.warning("microphone: overrun (simulated): the sink was too slow")
            while block < complete:
                pts_ns = start_ns + self._frames_ns(block * n)
                try:
                    sink(AudioBlock(self._block(block * n), n, pts_ns))
                except Exception:  # the capture thread carries on, as a sound card would
                    log.exception("microphone: the audio sink failed")
                block += 1
