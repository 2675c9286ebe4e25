"""The bedside daemon: wires hardware, recorder, outbox, announcer and clip server, and runs.

One thread owns the recorder: button presses, arm commands, receipts and ticks arrive as
events on a queue and the recorder's actions are carried out here. Sealing a clip (flush,
fsync, sign) runs on a worker so the loop stays responsive. Announcements always come from the
outbox — after each seal and again after every (re)connect — so nothing depends on the MQTT
client's memory.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from protocol.errors import MessageError, ProtocolError
from protocol.message_codec import MessageModel
from protocol.messages import (
    ArmCommand,
    ClipAnnouncement,
    ClipManifest,
    Event,
    Receipt,
    Status,
    Telemetry,
)
from protocol.minisign import PublicKey, SigningKey
from protocol.signing import verify_receipt
from protocol.x25519 import X25519Recipient

from .announcer import Announcer, Published
from .clipserver import ClipServer
from .clipwriter import ClipWriter, SealedClip
from .clock import ClockSignal
from .config import DeviceConfig
from .control import ControlServer
from .hardware.base import Button, Camera, Light, Microphone
from .outbox import ClipState, Outbox, OutboxEntry
from .recorder import (
    Action,
    Assignment,
    Discard,
    Readiness,
    Recorder,
    RecorderSettings,
    Report,
    Show,
    Start,
    Stop,
)
from .sdnotify import Notifier, log_fields

__all__ = ["Hardware", "Service", "software_version"]

log = logging.getLogger("painav.device")

_TICK_S = 0.1


def software_version() -> str:
    try:
        return version("painav")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class Hardware:
    camera: Camera
    microphone: Microphone
    button: Button
    light: Light

    def close(self) -> None:
        for part in (self.camera, self.microphone, self.button, self.light):
            try:
                part.close()
            except Exception:
                log.exception("closing %s failed", type(part).__name__)


@dataclass
class _Capture:
    """The recording in progress, as the service sees it."""

    clip_id: str
    writer: ClipWriter
    press_mono_ns: int
    participant: str | None
    visit: str | None
    started_at: datetime


@dataclass
class _Latency:
    """The last clip's timings, for ``painav device status`` and the benchmark."""

    press_to_first_frame_ms: float | None = None
    stop_to_announced_ms: float | None = None


class _Failed:
    """A publish that never left: what a message we could not even build gets."""

    acknowledged = False
    failed = True


_FAILED = _Failed()


@dataclass
class _Pending:
    """A publish whose acknowledgement decides what the outbox records."""

    handle: Published | _Failed
    on_ack: Any


@dataclass
class Service:
    """The running unit. :meth:`run` returns when *stop* is set (SIGTERM)."""

    config: DeviceConfig
    hardware: Hardware
    notifier: Notifier = field(default_factory=Notifier)
    # () -> bool; default: the clock signal [recorder] clock_sync_file names (or chrony)
    clock_synced: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        cfg = self.config
        self._clock: Callable[[], bool] = self.clock_synced or ClockSignal(
            cfg.recorder.clock_sync_file
        )
        self.device_id = cfg.unit.device_id
        self.version = software_version()
        self.outbox = Outbox(
            cfg.outbox.dir,
            quota_bytes=cfg.outbox.quota_bytes,
            min_free_bytes=cfg.outbox.min_free_bytes,
        )
        self.signing_key = SigningKey.from_file(cfg.keys.signing_key)
        self.receipt_key = PublicKey.from_file(cfg.keys.receipt_pub)
        lines = cfg.keys.recipients.read_text().splitlines()
        self.recipients = [
            X25519Recipient.from_string(x) for x in lines if x.strip() and not x.startswith("#")
        ]
        self.recorder = Recorder(
            RecorderSettings(
                max_seconds=cfg.recorder.max_seconds,
                require_clock_sync=cfg.recorder.require_clock_sync,
            ),
            new_clip_id=self._new_clip_id,
        )
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._sealer = ThreadPoolExecutor(1, thread_name_prefix="seal")
        self._capture: _Capture | None = None
        self._stops: dict[str, int] = {}  # clip id → monotonic ns of the stop
        self._pending: list[_Pending] = []
        self._unsent_events: list[Event] = []
        self.latency = _Latency()
        self.last_error: str | None = None
        self.last_refusal: Event | None = None
        self._started = time.monotonic()
        self.announcer = Announcer(
            site_id=cfg.unit.site_id,
            device_id=self.device_id,
            host=cfg.mqtt.host,
            port=cfg.mqtt.port,
            cert_file=cfg.keys.tls_cert,
            key_file=cfg.keys.tls_key,
            ca_file=cfg.keys.ca_chain,
            keepalive_s=cfg.mqtt.keepalive_s,
            session_expiry_s=cfg.mqtt.session_expiry_s,
            reconnect_max_s=cfg.mqtt.reconnect_max_s,
            on_connect=lambda: self.post("connected"),
            on_arm=lambda command: self.post("arm", command),
            on_receipt=lambda receipt: self.post("receipt", receipt),
            on_bad_message=lambda topic, error: self.post("bad_message", (topic, error)),
        )
        self.clip_server = ClipServer(
            self.outbox,
            host=cfg.clip_server.host,
            port=cfg.clip_server.port,
            cert_file=cfg.keys.tls_cert,
            key_file=cfg.keys.tls_key,
            ca_file=cfg.keys.ca_chain,
            receiver_id=cfg.clip_server.receiver_id,
        )
        self.control = ControlServer(cfg.control.socket, self._control, owner=self.device_id)
        self.hardware.button.on_press(lambda: self.post("press"))
        self.hardware.button.on_long_press(lambda: self.post("long_press"))

    # --- the loop ------------------------------------------------------------------------

    def post(self, kind: str, payload: Any = None) -> None:
        """Hand an event to the loop; safe from any thread."""
        self._events.put((kind, payload))

    def run(self, stop: threading.Event) -> None:
        recovery = self.outbox.recover()
        for entry in recovery.aborted:
            log.warning(
                "clip %s was cut off (crash or power loss): aborted",
                entry.clip_id,
                extra=log_fields(clip_id=entry.clip_id, device_id=self.device_id),
            )
        self.clip_server.start()
        self.control.start()
        self.announcer.start()
        self._execute(self.recorder.start_up())
        self.notifier.ready(f"{self.recorder.state}; {len(self.outbox.pending())} clip(s) queued")
        self._warn_if_presses_would_be_refused()
        log.info(
            "unit %s ready (clip server on port %d)",
            self.device_id,
            self.clip_server.port,
            extra=log_fields(device_id=self.device_id, state=str(self.recorder.state)),
        )
        next_telemetry = time.monotonic() + 5.0
        next_watchdog = 0.0
        try:
            while not stop.is_set():
                try:
                    kind, payload = self._events.get(timeout=_TICK_S)
                    self._handle(kind, payload)
                except queue.Empty:
                    pass
                mono = time.monotonic()
                self._execute(self.recorder.tick(mono, datetime.now(UTC)))
                self._check_acks()
                if self.notifier.watchdog_interval_s and mono >= next_watchdog:
                    self.notifier.watchdog()
                    next_watchdog = mono + self.notifier.watchdog_interval_s
                if mono >= next_telemetry:
                    self._telemetry()
                    next_telemetry = mono + self.config.mqtt.telemetry_interval_s
        finally:
            self._shut_down()

    def _warn_if_presses_would_be_refused(self) -> None:
        """Say at start what would refuse every press, rather than only at the first press."""
        readiness = self._readiness()
        problems = []
        if self.config.recorder.require_clock_sync and not readiness.clock_synced:
            problems.append(
                f"the clock is not synchronised (no {self.config.recorder.clock_sync_file} "
                "from systemd-timesyncd, no chrony); off a Pi, set [recorder] "
                "require_clock_sync = false"
            )
        if not readiness.camera_present:
            problems.append("no camera")
        if not readiness.microphone_present:
            problems.append("no microphone")
        if readiness.storage_problem is not None:
            problems.append(f"storage: {readiness.storage_problem}")
        for problem in problems:
            log.warning(
                "presses will be refused until this is fixed: %s",
                problem,
                extra=log_fields(device_id=self.device_id),
            )

    def _shut_down(self) -> None:
        self.notifier.stopping()
        self._execute(self.recorder.shutdown())
        self._sealer.shutdown(wait=True)  # the last clip is sealed before we go
        while not self._events.empty():
            kind, payload = self._events.get_nowait()
            if kind in ("sealed", "seal_failed"):
                self._handle(kind, payload)
        self._check_acks()
        self.announcer.stop()
        self.clip_server.stop()
        self.control.stop()
        self.hardware.close()
        self.outbox.close()
        log.info("unit %s stopped", self.device_id, extra=log_fields(device_id=self.device_id))

    def _handle(self, kind: str, payload: Any) -> None:
        wall = datetime.now(UTC)
        if kind == "press":
            self._execute(self.recorder.press(time.monotonic(), wall, self._readiness()))
        elif kind == "long_press":
            self._execute(self.recorder.long_press())
        elif kind == "sealed":
            clip_id, entry = payload
            self._announce(entry)
            self._execute(self.recorder.sealed(clip_id))
        elif kind == "seal_failed":
            clip_id, detail = payload
            self.last_error = detail
            self._execute(self.recorder.seal_failed(clip_id, detail))
        elif kind == "capture_failed":
            self.last_error = payload
            self._execute(self.recorder.capture_failed(payload))
        elif kind == "arm":
            self._execute(self.recorder.arm(_assignment(payload), wall))
            self._publish_status()
        elif kind == "receipt":
            self._receipt(payload)
        elif kind == "connected":
            self._replay()
        elif kind == "bad_message":
            topic, error = payload
            log.warning("refused a message on %s: %s", topic, error)
            self._report(Report("refused", "bad_message", None, error[:200]))

    def _readiness(self) -> Readiness:
        return Readiness(
            storage_problem=self.outbox.room_to_record(self.config.recorder.reserve_bytes),
            clock_synced=bool(self._clock()),
            camera_present=self.hardware.camera.present,
            microphone_present=self.hardware.microphone.present,
        )

    def _new_clip_id(self, wall: datetime) -> str:
        return f"{self.device_id}-{wall:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"

    # --- actions -------------------------------------------------------------------------

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Start):
                self._start(action)
            elif isinstance(action, Stop):
                self._stop(action)
            elif isinstance(action, Discard):
                self._discard(action)
            elif isinstance(action, Show):
                self.hardware.light.show(action.pattern)
            elif isinstance(action, Report):
                self._report(action)

    def _start(self, action: Start) -> None:
        press_ns = time.monotonic_ns()
        hw, cfg = self.hardware, self.config
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
            width=hw.camera.width,  # what the camera delivers, not what was asked for
            height=hw.camera.height,
            frame_rate_hz=cfg.camera.frame_rate_hz,
            sample_rate_hz=cfg.microphone.sample_rate_hz,
            channels=cfg.microphone.channels,
            on_error=lambda exc: self.post("capture_failed", f"writing the clip failed: {exc}"),
        )
        self._capture = _Capture(
            action.clip_id, writer, press_ns, action.participant, action.visit, action.started_at
        )
        try:
            hw.microphone.start(writer.audio)
            hw.camera.start(writer.video)
        except Exception as exc:
            self.post("capture_failed", f"could not start capture: {exc}")
        log.info(
            "recording %s",
            action.clip_id,
            extra=log_fields(clip_id=action.clip_id, device_id=self.device_id, state="recording"),
        )
        self._publish_status()

    def _halt_capture(self) -> _Capture | None:
        capture, self._capture = self._capture, None
        for device in (self.hardware.camera, self.hardware.microphone):
            try:
                device.stop()
            except Exception:
                log.exception("stopping %s failed", type(device).__name__)
        if capture is not None:
            self._publish_status()  # no longer "recording"
        return capture

    def _stop(self, action: Stop) -> None:
        dropped = self.hardware.camera.dropped_frames
        overruns = self.hardware.microphone.overruns
        capture = self._halt_capture()
        if capture is None or capture.clip_id != action.clip_id:
            return
        self._stops[action.clip_id] = time.monotonic_ns()
        self._sealer.submit(self._seal, capture, action.reason, dropped, overruns)

    def _seal(self, capture: _Capture, reason: str, dropped: int, overruns: int) -> None:
        """On the seal worker: finish, sign, make durable, record as sealed."""
        clip_id = capture.clip_id
        try:
            sealed = capture.writer.finish(clip_id, self.device_id)
            manifest = self._manifest(capture, sealed, reason, dropped, overruns)
        except Exception as exc:
            log.exception("finishing %s failed", clip_id, extra=log_fields(clip_id=clip_id))
            capture.writer.abort()
            self.outbox.abort(clip_id, f"seal_failed: {exc}")
            self.post("seal_failed", (clip_id, str(exc)[:200]))
            return
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
            self.post("seal_failed", (clip_id, str(exc)[:200]))
            return
        if sealed.stats.first_frame_ns is not None:
            self.latency.press_to_first_frame_ms = (
                sealed.stats.first_frame_ns - capture.press_mono_ns
            ) / 1e6
        self.post("sealed", (clip_id, entry))

    def _manifest(
        self, capture: _Capture, sealed: SealedClip, reason: str, dropped: int, overruns: int
    ) -> ClipManifest:
        cfg = self.config
        stats = sealed.stats
        return ClipManifest.model_validate(
            {
                "clip_id": capture.clip_id,
                "site_id": cfg.unit.site_id,
                "device_id": self.device_id,
                "participant": capture.participant,
                "visit": capture.visit,
                "started_at": capture.started_at,
                "duration_s": max(stats.duration_s, 0.001),
                "container": "matroska",
                "video": {
                    "codec": "h264",
                    "width": self.hardware.camera.width,
                    "height": self.hardware.camera.height,
                    "frame_rate_hz": cfg.camera.frame_rate_hz,
                    "frames": stats.frames,
                    "dropped_frames": dropped,
                },
                "audio": {
                    "codec": "pcm_s16le",
                    "sample_rate_hz": cfg.microphone.sample_rate_hz,
                    "channels": cfg.microphone.channels,
                    "frames": stats.audio_frames,
                    "overruns": overruns,
                },
                "av_offset_ms": stats.av_offset_ms,
                "clock_synced": bool(self._clock()),
                "stop_reason": reason,
                "software_version": self.version,
                "size_bytes": sealed.size_bytes,
                "sha256": sealed.sha256,
                "recipients": tuple(str(r) for r in self.recipients),
            }
        )

    def _discard(self, action: Discard) -> None:
        capture = self._halt_capture()
        if capture is not None:
            capture.writer.abort()
        self.outbox.abort(action.clip_id, action.reason[:200])

    def _report(self, report: Report) -> None:
        log.info(
            "event %s (%s) %s",
            report.kind,
            report.reason,
            report.detail,
            extra=log_fields(clip_id=report.clip_id, device_id=self.device_id),
        )
        event = Event(
            kind=report.kind,  # type: ignore[arg-type]
            at=datetime.now(UTC),
            clip_id=report.clip_id,
            reason=report.reason,
            detail=report.detail.replace("\n", " ")[:500],
        )
        if event.kind == "refused":
            self.last_refusal = event
        self._send_event(event)

    def _send_event(self, event: Event) -> None:
        """Publish *event*; while offline keep it for the next connect. Events about a clip are
        also durable in the outbox (an aborted row not yet reported), so they survive restarts."""
        if not self.announcer.connected:
            self._unsent_events.append(event)
            return
        handle = self._publish(event)
        clip_id = event.clip_id
        if clip_id is not None and event.kind in ("discarded", "error", "aborted"):
            self._pending.append(_Pending(handle, lambda: self._event_reported(clip_id)))

    def _publish(self, message: MessageModel) -> Published | _Failed:
        try:
            return self.announcer.publish(message)
        except MessageError:  # a message we built is invalid: a bug, logged, never fatal
            log.exception("could not publish a %s message", type(message).__name__)
            return _FAILED

    def _event_reported(self, clip_id: str) -> None:
        try:
            self.outbox.mark_event_reported(clip_id)
        except Exception:
            log.debug("no outbox row for %s", clip_id)

    # --- MQTT ---------------------------------------------------------------------------

    def _announce(self, entry: OutboxEntry) -> None:
        if not self.announcer.connected or entry.manifest_json is None or entry.signature is None:
            return  # replayed from the outbox at the next connect
        host = self.config.clip_server.advertise_host or self.announcer.local_address
        announcement = ClipAnnouncement(
            manifest=ClipManifest.model_validate_json(entry.manifest_json),
            signature=entry.signature,
            url=f"https://{host}:{self.clip_server.port}/v1/clips/{entry.clip_id}.age",
        )
        handle = self._publish(announcement)
        clip_id = entry.clip_id
        self._pending.append(_Pending(handle, lambda: self._announced(clip_id)))

    def _announced(self, clip_id: str) -> None:
        self.outbox.mark_announced(clip_id)
        stopped = self._stops.pop(clip_id, None)
        if stopped is not None:
            self.latency.stop_to_announced_ms = (time.monotonic_ns() - stopped) / 1e6
        log.info("announced %s", clip_id, extra=log_fields(clip_id=clip_id, state="announced"))

    def _check_acks(self) -> None:
        still = []
        for pending in self._pending:
            if pending.handle.acknowledged:
                pending.on_ack()
            elif not pending.handle.failed:
                still.append(pending)
        self._pending = still

    def _replay(self) -> None:
        """After (re)connecting: status, then every clip and event the hospital may not know."""
        self._publish_status()
        unsent, self._unsent_events = self._unsent_events, []
        for event in unsent:
            self._send_event(event)
        for entry in self.outbox.pending():
            self._announce(entry)
        for entry in self.outbox.unreported_aborts():
            self._report(
                Report(
                    "aborted",
                    "interrupted",
                    entry.clip_id,
                    entry.abort_reason or "recording cut off",
                )
            )

    def _receipt(self, receipt: Receipt) -> None:
        clip_id = receipt.clip_id
        try:
            entry = self.outbox.get(clip_id)
            if entry.sha256 is None:
                raise ProtocolError(f"receipt for clip {clip_id}, which is not sealed")
            verify_receipt(self.receipt_key, receipt, sha256=entry.sha256)
            self.outbox.receipt(clip_id, receipt.sha256)
        except Exception as exc:
            log.warning(
                "rejected a receipt for %s: %s", clip_id, exc, extra=log_fields(clip_id=clip_id)
            )
            self._report(Report("refused", "receipt_rejected", None, str(exc)[:200]))
            return
        log.info(
            "clip %s receipted and deleted",
            clip_id,
            extra=log_fields(clip_id=clip_id, state="deleted"),
        )
        self._report(Report("deleted", "receipted", clip_id))

    def _publish_status(self) -> None:
        self._publish(
            Status(
                state="recording" if self._capture is not None else "online",
                since=datetime.now(UTC),
                software_version=self.version,
                armed=self.recorder.assignment is not None,
            )
        )

    def _telemetry(self) -> None:
        pending = self.outbox.pending()
        oldest = None
        if pending:
            sealed = [e.sealed_at for e in pending if e.sealed_at is not None]
            oldest = max((datetime.now(UTC) - min(sealed)).total_seconds(), 0.0) if sealed else 0.0
        self._publish(
            Telemetry(
                at=datetime.now(UTC),
                uptime_s=time.monotonic() - self._started,
                free_bytes=self.outbox.free_bytes(),
                queue_depth=len(pending),
                oldest_unreceipted_s=oldest,
                clock_synced=bool(self._clock()),
                temperature_c=_temperature(),
            )
        )

    # --- control socket -----------------------------------------------------------------

    def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("cmd")
        if command == "press":
            self.post("long_press" if request.get("long") else "press")
            return {"ok": True}
        if command == "status":
            assignment = self.recorder.assignment
            readiness = self._readiness()
            refusal = self.last_refusal
            return {
                "ok": True,
                "device_id": self.device_id,
                "state": str(self.recorder.state),
                "clip_id": self.recorder.clip_id,
                "participant": assignment.participant if assignment else None,
                "queue": [e.clip_id for e in self.outbox.pending()],
                "free_bytes": self.outbox.free_bytes(),
                "connected": self.announcer.connected,
                "last_error": self.last_error,
                "last_refusal": (
                    {"at": refusal.at.isoformat(), "reason": refusal.reason}
                    if refusal is not None
                    else None
                ),
                "clock_synced": readiness.clock_synced,
                "require_clock_sync": self.config.recorder.require_clock_sync,
                "camera_present": readiness.camera_present,
                "microphone_present": readiness.microphone_present,
                "press_to_first_frame_ms": self.latency.press_to_first_frame_ms,
                "stop_to_announced_ms": self.latency.stop_to_announced_ms,
                "pid": os.getpid(),
            }
        raise ValueError(f"unknown command {command!r}")


def _assignment(command: ArmCommand | None) -> Assignment | None:
    if command is None or command.participant is None or command.expires_at is None:
        return None
    return Assignment(command.participant, command.visit, command.expires_at)


def _temperature() -> float | None:
    try:
        return int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000
    except (OSError, ValueError):
        return None
