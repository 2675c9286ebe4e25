"""The unit's loop: where button, recorder, outbox, announcer and clip server meet.

One thread runs it. Other threads only :meth:`UnitLoop.post` typed events
(:mod:`daemon.events`); the loop hands them to the recorder and carries out the recorder's
actions: capture (:mod:`daemon.capture`) and what the hospital is told (:mod:`daemon.uplink`).
What the control socket
reports comes from :attr:`UnitLoop.snapshot`, an immutable :class:`UnitSnapshot` the loop
replaces after every event and once a second, so no other thread reads the loop's state.
Announcements always come from the outbox, after each seal and again after every (re)connect,
so nothing depends on the MQTT client's memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from protocol.errors import ProtocolError
from protocol.hospital_signature import CrlError, HospitalTrust
from protocol.messages import (
    ArmCommand,
    Event,
    QcVerdict,
    Receipt,
)
from protocol.signing import verify_receipt

from .armgate import ArmGate, ArmRefused
from .capture import Capture, Capturer, SealError
from .crlstore import CrlStore, Offered
from .event_journal import EventJournal
from .events import (
    ArmReceived,
    BadMessage,
    CaptureFailed,
    Connected,
    CrlReceived,
    EventAcked,
    LongPressed,
    Pressed,
    PublishSettled,
    ReceiptReceived,
    Sealed,
    SealFailed,
    UnitEvent,
    VerdictReceived,
)
from .hardware.base import Light
from .outbox import Outbox
from .recorder import Action, Assignment, Discard, Readiness, Recorder, Report, Show, Start, Stop
from .sdnotify import Notifier, log_fields
from .uplink import Link, Uplink

__all__ = ["Clock", "Link", "LoopSettings", "SystemClock", "UnitLoop", "UnitSnapshot"]

log = logging.getLogger("painav.device")

_TICK_S = 0.1
_SNAPSHOT_S = 1.0


class Clock(Protocol):
    """Where the loop reads time: the system's, or a test's."""

    def monotonic(self) -> float: ...
    def monotonic_ns(self) -> int: ...
    def now(self) -> datetime: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True)
class LoopSettings:
    device_id: str
    require_clock_sync: bool
    reserve_bytes: int
    telemetry_interval_s: float
    software_version: str
    # Where the issue time of the arm command in force is kept, so that after a restart an older
    # signed command (replayed on the broker) still cannot replace it. None: in memory only.
    arm_state: Path | None = None


@dataclass(frozen=True)
class UnitSnapshot:
    """The unit as the loop last saw it, for ``painav device status``."""

    state: str
    clip_id: str | None
    participant: str | None
    queue: tuple[str, ...]
    free_bytes: int
    connected: bool
    last_error: str | None
    last_refusal: Event | None
    readiness: Readiness
    press_to_first_frame_ms: float | None
    stop_to_announced_ms: float | None
    last_verdict: QcVerdict | None = None  # the latest quality-control verdict received
    record_again: bool = False  # the light asks the nurse to record the latest clip again


@dataclass
class UnitLoop:
    """Runs one unit; :meth:`run` returns when *stop* is set, :meth:`step` runs one turn."""

    settings: LoopSettings
    recorder: Recorder
    outbox: Outbox
    capturer: Capturer
    link: Link
    light: Light
    trust: HospitalTrust  # whose receipts and arm commands count: receivers the root certifies
    crls: CrlStore  # the root CRL in force (trust reads it too)
    sealer: Executor
    clock_synced: Callable[[], bool]
    clip_url: Callable[[str], str]  # where the hospital fetches a clip, by its id
    clock: Clock = field(default_factory=SystemClock)
    notifier: Notifier = field(default_factory=Notifier)
    temperature: Callable[[], float | None] = lambda: None

    def __post_init__(self) -> None:
        self._events: queue.Queue[UnitEvent] = queue.Queue()
        self._capture: Capture | None = None
        self._last_error: str | None = None
        self._first_frame_ms: float | None = None
        self._last_verdict: QcVerdict | None = None
        self._arm_gate = ArmGate(self.trust, self.settings.device_id, self.settings.arm_state)
        self.uplink = Uplink(
            device_id=self.settings.device_id,
            software_version=self.settings.software_version,
            link=self.link,
            outbox=self.outbox,
            # Beside the outbox: the same card, the same owner.
            journal=EventJournal(self.outbox.dir / "events.sqlite", now=self.clock.now),
            clip_url=self.clip_url,
            now=self.clock.now,
            monotonic_ns=self.clock.monotonic_ns,
        )
        self._started = self.clock.monotonic()
        self._next_snapshot = 0.0
        self.snapshot = self._take_snapshot()

    # --- the loop ------------------------------------------------------------------------

    def post(self, event: UnitEvent) -> None:
        """Hand an event to the loop; safe from any thread."""
        self._events.put(event)

    def start_up(self) -> None:
        """Recover the outbox, show the light, say what would refuse every press."""
        for entry in self.outbox.recover().aborted:
            log.warning(
                "clip %s was cut off (crash or power loss): aborted",
                entry.clip_id,
                extra=log_fields(clip_id=entry.clip_id, device_id=self.settings.device_id),
            )
        self._execute(self.recorder.start_up())
        self.snapshot = self._take_snapshot()
        self._warn_if_presses_would_be_refused(self.snapshot.readiness)

    def run(self, stop: threading.Event) -> None:
        next_telemetry = self.clock.monotonic() + 5.0
        next_watchdog = 0.0
        try:
            while not stop.is_set():
                self.step(_TICK_S)
                mono = self.clock.monotonic()
                if self.notifier.watchdog_interval_s and mono >= next_watchdog:
                    self.notifier.watchdog()
                    next_watchdog = mono + self.notifier.watchdog_interval_s
                if mono >= next_telemetry:
                    self.uplink.telemetry(
                        uptime_s=mono - self._started,
                        clock_synced=bool(self.clock_synced()),
                        temperature_c=self.temperature(),
                    )
                    next_telemetry = mono + self.settings.telemetry_interval_s
        finally:
            self.shut_down()

    def step(self, timeout_s: float = 0.0) -> None:
        """Handle at most one event (waiting up to *timeout_s*), tick, collect acks."""
        handled = False
        try:
            event = self._events.get(timeout=timeout_s) if timeout_s else self._events.get_nowait()
        except queue.Empty:
            pass
        else:
            self._handle(event)
            handled = True
        self._execute(self.recorder.tick(self.clock.monotonic(), self.clock.now()))
        acked = self.uplink.collect_acks()
        self.uplink.resend()
        if handled or acked or self.clock.monotonic() >= self._next_snapshot:
            self.snapshot = self._take_snapshot()

    def shut_down(self) -> None:
        """Seal or abort the recording in progress, wait for the seal, collect acks."""
        self.notifier.stopping()
        self._execute(self.recorder.shutdown())
        self.sealer.shutdown(wait=True)  # the last clip is sealed before we go
        while not self._events.empty():
            event = self._events.get_nowait()
            if isinstance(event, Sealed | SealFailed):
                self._handle(event)
        self.uplink.collect_acks()
        self.uplink.journal.close()

    def _handle(self, event: UnitEvent) -> None:
        wall = self.clock.now()
        match event:
            case Pressed():
                ready = self._readiness()
                self._execute(self.recorder.press(self.clock.monotonic(), wall, ready))
            case LongPressed():
                self._execute(self.recorder.long_press())
            case Sealed(clip_id, entry, first_frame_ms):
                if first_frame_ms is not None:
                    self._first_frame_ms = first_frame_ms
                self.uplink.announce(entry)
                self._execute(self.recorder.sealed(clip_id))
            case SealFailed(clip_id, detail):
                self._last_error = detail
                self._execute(self.recorder.seal_failed(clip_id, detail))
            case CaptureFailed(detail):
                self._last_error = detail
                self._execute(self.recorder.capture_failed(detail))
            case ArmReceived(command):
                if self._arm_accepted(command):
                    self._execute(self.recorder.arm(_assignment(command), wall))
                    self._status()
            case ReceiptReceived(receipt):
                self._receipt(receipt)
            case CrlReceived(crl_der):
                self._crl(crl_der)
            case VerdictReceived(verdict):
                self._verdict(verdict)
            case EventAcked(ack):
                self.uplink.acknowledged(ack)
            case Connected():
                self.uplink.replay(
                    recording=self._capture is not None,
                    armed=self.recorder.assignment is not None,
                )
            case PublishSettled():
                pass  # the acknowledgements are collected after every event
            case BadMessage(topic, error):
                log.warning("refused a message on %s: %s", topic, error)
                self.uplink.report(Report("refused", "bad_message", None, error[:200]))

    def _readiness(self) -> Readiness:
        return Readiness(
            storage_problem=self.outbox.room_to_record(self.settings.reserve_bytes),
            clock_synced=bool(self.clock_synced()),
            camera_present=self.capturer.camera.present,
            microphone_present=self.capturer.microphone.present,
        )

    def _take_snapshot(self) -> UnitSnapshot:
        self._next_snapshot = self.clock.monotonic() + _SNAPSHOT_S
        assignment = self.recorder.assignment
        return UnitSnapshot(
            state=str(self.recorder.state),
            clip_id=self.recorder.clip_id,
            participant=assignment.participant if assignment else None,
            queue=tuple(e.clip_id for e in self.outbox.pending()),
            free_bytes=self.outbox.free_bytes(),
            connected=self.link.connected,
            last_error=self._last_error,
            last_refusal=self.uplink.last_refusal,
            readiness=self._readiness(),
            press_to_first_frame_ms=self._first_frame_ms,
            stop_to_announced_ms=self.uplink.stop_to_announced_ms,
            last_verdict=self._last_verdict,
            record_again=self.recorder.asking_to_record_again,
        )

    def _warn_if_presses_would_be_refused(self, readiness: Readiness) -> None:
        """Say at start what would refuse every press, rather than only at the first press."""
        problems = []
        if self.settings.require_clock_sync and not readiness.clock_synced:
            problems.append(
                "the clock is not synchronised (no sign from systemd-timesyncd or chrony); "
                "off a Pi, set [recorder] require_clock_sync = false"
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
                extra=log_fields(device_id=self.settings.device_id),
            )

    # --- the recorder's actions ----------------------------------------------------------

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Start():
                    self._start(action)
                case Stop():
                    self._stop(action)
                case Discard():
                    self._discard(action)
                case Show(pattern):
                    self.light.show(pattern)
                case Report():
                    self.uplink.report(action)

    def _start(self, action: Start) -> None:
        press_ns = self.clock.monotonic_ns()
        self._capture = self.capturer.start(
            action, press_ns, lambda detail: self.post(CaptureFailed(detail))
        )
        log.info(
            "recording %s",
            action.clip_id,
            extra=log_fields(
                clip_id=action.clip_id, device_id=self.settings.device_id, state="recording"
            ),
        )
        self._status()

    def _status(self) -> None:
        self.uplink.status(
            recording=self._capture is not None, armed=self.recorder.assignment is not None
        )

    def _halt_capture(self) -> Capture | None:
        capture, self._capture = self._capture, None
        self.capturer.halt()
        if capture is not None:
            self._status()  # no longer "recording"
        return capture

    def _stop(self, action: Stop) -> None:
        dropped = self.capturer.camera.dropped_frames
        overruns = self.capturer.microphone.overruns
        capture = self._halt_capture()
        if capture is None or capture.clip_id != action.clip_id:
            return
        self.uplink.stopped(action.clip_id)
        self.sealer.submit(self._seal, capture, action.reason, dropped, overruns)

    def _seal(self, capture: Capture, reason: str, dropped: int, overruns: int) -> None:
        """On the seal worker: seal, then tell the loop how it went."""
        try:
            result = self.capturer.seal(capture, reason, dropped, overruns)
        except SealError as exc:
            self.post(SealFailed(capture.clip_id, str(exc)))
            return
        self.post(Sealed(capture.clip_id, result.entry, result.press_to_first_frame_ms))

    def _discard(self, action: Discard) -> None:
        capture = self._halt_capture()
        if capture is not None:
            capture.writer.abort()
        self.outbox.abort(action.clip_id, action.reason[:200])

    def _receipt(self, receipt: Receipt) -> None:
        clip_id = receipt.clip_id
        try:
            entry = self.outbox.get(clip_id)
            if entry.sha256 is None:
                raise ProtocolError(f"receipt for clip {clip_id}, which is not sealed")
            verify_receipt(self.trust, receipt, sha256=entry.sha256, now=self.clock.now())
            self.outbox.delete_receipted(clip_id, receipt.sha256)
        except Exception as exc:
            log.warning(
                "rejected a receipt for %s: %s", clip_id, exc, extra=log_fields(clip_id=clip_id)
            )
            self.uplink.report(Report("refused", "receipt_rejected", None, str(exc)[:200]))
            return
        log.info(
            "clip %s receipted and deleted",
            clip_id,
            extra=log_fields(clip_id=clip_id, state="deleted"),
        )
        self.uplink.report(Report("deleted", "receipted", clip_id))

    def _arm_accepted(self, command: ArmCommand | None) -> bool:
        """Whether to act on *command* (:mod:`daemon.armgate`); a refusal is logged and
        reported. None (the retained command was cleared) disarms."""
        if command is None:
            return True
        try:
            self._arm_gate.admit(command, self.clock.now())
        except ArmRefused as exc:
            log.warning(
                "refused an arm command: %s",
                exc,
                extra=log_fields(device_id=self.settings.device_id),
            )
            self.uplink.report(Report("refused", "arm_rejected", None, str(exc)[:200]))
            return False
        return True

    def _crl(self, crl_der: bytes) -> None:
        """Keep the hospital's root CRL if the site root signed it and it is newer."""
        try:
            outcome = self.crls.offer(crl_der)
        except (CrlError, OSError) as exc:
            log.warning(
                "refused a CRL: %s", exc, extra=log_fields(device_id=self.settings.device_id)
            )
            self.uplink.report(Report("refused", "crl_rejected", None, str(exc)[:200]))
            return
        if outcome is Offered.KEPT:
            crl = self.crls.current()
            count = len(list(crl)) if crl is not None else 0
            log.info(
                "root CRL updated: %d certificate(s) revoked",
                count,
                extra=log_fields(device_id=self.settings.device_id),
            )

    def _verdict(self, verdict: QcVerdict) -> None:
        # Kept for `device status` whatever clip it names; the recorder decides whether the
        # light asks for that clip again (only the latest one, and only while it is recent).
        self._last_verdict = verdict
        actions = self.recorder.verdict(
            verdict.clip_id,
            verdict.verdict,
            verdict.issued_at,
            self.clock.monotonic(),
            self.clock.now(),
        )
        self._execute(actions)
        log.log(
            logging.WARNING if verdict.verdict == "repeat" else logging.INFO,
            "QC verdict on %s (%s pass): %s%s%s",
            verdict.clip_id,
            verdict.pass_,
            verdict.verdict,
            f" ({', '.join(verdict.reasons)})" if verdict.reasons else "",
            "; the light asks to record again" if self.recorder.asking_to_record_again else "",
            extra=log_fields(clip_id=verdict.clip_id, device_id=self.settings.device_id),
        )


def _assignment(command: ArmCommand | None) -> Assignment | None:
    if command is None or command.participant is None or command.expires_at is None:
        return None
    return Assignment(command.participant, command.visit, command.expires_at)
