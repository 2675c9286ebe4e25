"""One recording, from a press to a sealed clip in the outbox.

:meth:`Capturer.start` opens the clip in the outbox and feeds a :class:`ClipWriter` from the
camera and the microphone; :meth:`Capturer.halt` stops them; :meth:`Capturer.seal` (on the seal
worker, off the loop's thread) finishes, signs, describes the clip in its manifest and makes it
durable. A clip that cannot be sealed is aborted in the outbox, never left half-written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from protocol.messages import ClipManifest
from protocol.minisign import SigningKey
from protocol.x25519 import X25519Recipient

from .clipwriter import ClipWriter, SealedClip
from .hardware.base import Camera, Microphone
from .outbox import ClipState, Outbox, OutboxEntry
from .recorder import Start
from .sdnotify import log_fields

__all__ = ["Capture", "Capturer", "SealError", "SealResult"]

log = logging.getLogger("painav.device")


class SealError(RuntimeError):
    """A clip could not be sealed; it is aborted in the outbox (or, if its row was sealed
    already, the next start-up finishes the files). The message is one line."""


@dataclass
class Capture:
    """The recording in progress."""

    clip_id: str
    writer: ClipWriter
    press_mono_ns: int
    participant: str | None
    visit: str | None
    started_at: datetime


@dataclass(frozen=True)
class SealResult:
    entry: OutboxEntry
    press_to_first_frame_ms: float | None


@dataclass
class Capturer:
    """Records clips of one unit with its camera and microphone into its outbox."""

    outbox: Outbox
    camera: Camera
    microphone: Microphone
    recipients: list[X25519Recipient]
    signing_key: SigningKey
    site_id: str
    device_id: str
    sample_rate_hz: int
    channels: int
    software_version: str
    clock_synced: Callable[[], bool]

    def start(self, action: Start, press_mono_ns: int, on_error: Callable[[str], None]) -> Capture:
        """Open the clip and start the camera and microphone; a device that will not start is
        reported through *on_error* (the recording then ends as a capture failure)."""
        part = self.outbox.begin(
            action.clip_id,
            participant=action.participant,
            visit=action.visit,
            started_at=action.started_at,
        )
        writer = ClipWriter(
            part,
            recipients=self.recipients,
            signing_key=self.signing_key,
            width=self.camera.width,  # what the camera delivers, not what was asked for
            height=self.camera.height,
            frame_rate_hz=self.camera.frame_rate_hz,
            sample_rate_hz=self.sample_rate_hz,
            channels=self.channels,
            on_error=lambda exc: on_error(f"writing the clip failed: {exc}"),
        )
        capture = Capture(
            action.clip_id,
            writer,
            press_mono_ns,
            action.participant,
            action.visit,
            action.started_at,
        )
        try:
            self.microphone.start(writer.audio)
            self.camera.start(writer.video)
        except Exception as exc:
            on_error(f"could not start capture: {exc}")
        return capture

    def halt(self) -> None:
        """Stop the camera and the microphone; nothing more reaches the writer."""
        for device in (self.camera, self.microphone):
            try:
                device.stop()
            except Exception:
                log.exception("stopping %s failed", type(device).__name__)

    def seal(self, capture: Capture, reason: str, dropped: int, overruns: int) -> SealResult:
        """Finish, sign, make durable, record as sealed. Raises :class:`SealError`."""
        clip_id = capture.clip_id
        try:
            # The labels signed are the ones the manifest carries: both from this capture.
            sealed = capture.writer.finish(
                clip_id, self.device_id, participant=capture.participant, visit=capture.visit
            )
            manifest = self._manifest(capture, sealed, reason, dropped, overruns)
        except Exception as exc:
            log.exception("finishing %s failed", clip_id, extra=log_fields(clip_id=clip_id))
            capture.writer.abort()
            self.outbox.abort(clip_id, f"seal_failed: {exc}")
            raise SealError(str(exc)[:200]) from exc
        try:
            entry = self.outbox.seal(
                clip_id,
                manifest_json=manifest.model_dump_json(by_alias=True),
                signature=sealed.signature.to_text(),
                sha256=sealed.sha256,
                size_bytes=sealed.size_bytes,
            )
        except Exception as exc:
            log.exception("sealing %s failed", clip_id, extra=log_fields(clip_id=clip_id))
            if self.outbox.get(clip_id).state == ClipState.RECORDING:
                self.outbox.abort(clip_id, f"seal_failed: {exc}")
            # else the row is sealed and the next start-up finishes the files: not lost
            raise SealError(str(exc)[:200]) from exc
        first = sealed.stats.first_frame_ns
        latency = (first - capture.press_mono_ns) / 1e6 if first is not None else None
        return SealResult(entry, latency)

    def _manifest(
        self, capture: Capture, sealed: SealedClip, reason: str, dropped: int, overruns: int
    ) -> ClipManifest:
        stats = sealed.stats
        return ClipManifest.model_validate(
            {
                "clip_id": capture.clip_id,
                "site_id": self.site_id,
                "device_id": self.device_id,
                "participant": capture.participant,
                "visit": capture.visit,
                "started_at": capture.started_at,
                "duration_s": max(stats.duration_s, 0.001),
                "container": "matroska",
                "video": {
                    "codec": "h264",
                    "width": self.camera.width,
                    "height": self.camera.height,
                    "frame_rate_hz": self.camera.frame_rate_hz,
                    "frames": stats.frames,
                    "dropped_frames": dropped,
                },
                "audio": {
                    "codec": "pcm_s16le",
                    "sample_rate_hz": self.sample_rate_hz,
                    "channels": self.channels,
                    "frames": stats.audio_frames,
                    "overruns": overruns,
                },
                "av_offset_ms": stats.av_offset_ms,
                "clock_synced": bool(self.clock_synced()),
                "stop_reason": reason,
                "software_version": self.software_version,
                "size_bytes": sealed.size_bytes,
                "sha256": sealed.sha256,
                "recipients": tuple(str(r) for r in self.recipients),
            }
        )
