"""What the unit tells the hospital, and what of it the hospital has acknowledged.

Events, clip announcements, status and telemetry go out over the MQTT link. An announcement
counts in the outbox once the broker has acknowledged it (QoS 1), because the MQTT client's queue
lives in memory; the clip itself stays until its receipt. Every event goes into the event
journal (:mod:`daemon.event_journal`) before it is published, and stays there until the receiver
acknowledges its id on ``event-acks``: the broker's acknowledgement proves nothing (a client in
the receivers' group, or no receiver at all, may be all there is). After every (re)connect
:meth:`Uplink.replay` sends again whatever the hospital may not know, and :meth:`Uplink.resend`
publishes unacknowledged events again every ``resend_s``. Runs on the loop's thread only
(:class:`daemon.loop.UnitLoop`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from protocol.errors import MessageError
from protocol.message_codec import MessageModel
from protocol.messages import ClipAnnouncement, ClipManifest, Event, EventAck, Status, Telemetry

from .event_journal import EventJournal, EventJournalError, new_event_id
from .outbox import Outbox, OutboxEntry
from .recorder import Report
from .sdnotify import log_fields

__all__ = ["Handle", "Link", "Uplink"]

log = logging.getLogger("painav.device")


class Handle(Protocol):
    """A publish's fate (:class:`link.Published`)."""

    @property
    def acknowledged(self) -> bool: ...
    @property
    def failed(self) -> bool: ...


class Link(Protocol):
    """What the uplink needs of the MQTT link (:class:`daemon.announcer.Announcer`)."""

    @property
    def connected(self) -> bool: ...
    def publish(self, message: MessageModel) -> Handle: ...


class _Failed:
    """A publish that never left: what a message we could not even build gets."""

    acknowledged = False
    failed = True


_FAILED = _Failed()


@dataclass
class _Pending:
    """A publish whose acknowledgement decides what the outbox records."""

    handle: Handle
    on_ack: Callable[[], None]


@dataclass
class Uplink:
    """The unit's side of the conversation with the hospital."""

    device_id: str
    software_version: str
    link: Link
    outbox: Outbox
    journal: EventJournal
    clip_url: Callable[[str], str]  # where the hospital fetches a clip, by its id
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    monotonic_ns: Callable[[], int] = time.monotonic_ns
    resend_s: float = 60.0  # unacknowledged events go out again this often while connected
    last_refusal: Event | None = None
    stop_to_announced_ms: float | None = None
    _pending: list[_Pending] = field(default_factory=list)
    _stops: dict[str, int] = field(default_factory=dict)  # clip id → monotonic ns of its stop
    _sent: dict[str, int] = field(default_factory=dict)  # event id → monotonic ns last published
    _next_resend_ns: int | None = None

    def stopped(self, clip_id: str) -> None:
        """*clip_id* stopped recording now: its announcement's latency counts from here."""
        self._stops[clip_id] = self.monotonic_ns()

    def report(self, report: Report) -> None:
        """Log *report*, keep it as an event in the journal, and send it if connected."""
        log.info(
            "event %s (%s) %s",
            report.kind,
            report.reason,
            report.detail,
            extra=log_fields(clip_id=report.clip_id, device_id=self.device_id),
        )
        event = Event(
            event_id=new_event_id(),
            kind=report.kind,  # type: ignore[arg-type]
            at=self.now(),
            clip_id=report.clip_id,
            reason=report.reason,
            detail=report.detail.replace("\n", " ")[:500],
        )
        if event.kind == "refused":
            self.last_refusal = event
        try:
            self.journal.add(event)
        except EventJournalError as exc:
            # A full or failing card: the event still goes out now, once, as before journals.
            log.error("event not kept for the hospital's acknowledgement: %s", exc)
            self._publish(event)
            return
        if event.clip_id is not None and event.kind in ("discarded", "error", "aborted"):
            # The journal keeps the event from here on: the outbox need not report it again.
            self._event_reported(event.clip_id)
        self._send_event(event)

    def announce(self, entry: OutboxEntry) -> None:
        """Announce a sealed clip; while offline, the next :meth:`replay` does."""
        if not self.link.connected or entry.manifest_json is None or entry.signature is None:
            return
        announcement = ClipAnnouncement(
            manifest=ClipManifest.model_validate_json(entry.manifest_json),
            signature=entry.signature,
            url=self.clip_url(entry.clip_id),
        )
        handle = self._publish(announcement)
        clip_id = entry.clip_id
        self._pending.append(_Pending(handle, lambda: self._announced(clip_id)))

    def status(self, *, recording: bool, armed: bool) -> None:
        """Publish the retained status."""
        self._publish(
            Status(
                state="recording" if recording else "online",
                since=self.now(),
                software_version=self.software_version,
                armed=armed,
            )
        )

    def telemetry(
        self, *, uptime_s: float, clock_synced: bool, temperature_c: float | None
    ) -> None:
        pending = self.outbox.pending()
        oldest = None
        if pending:
            sealed = [e.sealed_at for e in pending if e.sealed_at is not None]
            oldest = max((self.now() - min(sealed)).total_seconds(), 0.0) if sealed else 0.0
        self._publish(
            Telemetry(
                at=self.now(),
                uptime_s=uptime_s,
                free_bytes=self.outbox.free_bytes(),
                queue_depth=len(pending),
                oldest_unreceipted_s=oldest,
                clock_synced=clock_synced,
                temperature_c=temperature_c,
            )
        )

    def replay(self, *, recording: bool, armed: bool) -> None:
        """After (re)connecting: status, then every clip and event the hospital may not know."""
        self.status(recording=recording, armed=armed)
        for event in self.journal.unacked():
            self._send_event(event)
        for entry in self.outbox.pending():
            self.announce(entry)
        for entry in self.outbox.unreported_aborts():
            reason = entry.abort_reason or "recording cut off"
            self.report(Report("aborted", "interrupted", entry.clip_id, reason))

    def collect_acks(self) -> bool:
        """Record in the outbox what the broker acknowledged; whether anything was."""
        still = []
        for pending in self._pending:
            if pending.handle.acknowledged:
                pending.on_ack()
            elif not pending.handle.failed:
                still.append(pending)
        acked = len(still) < len(self._pending)
        self._pending = still
        return acked

    def resend(self) -> None:
        """Every ``resend_s`` while connected: publish again the events the receiver has not
        acknowledged (it was away, or its acknowledgement was lost)."""
        mono, period = self.monotonic_ns(), int(self.resend_s * 1e9)
        if self._next_resend_ns is None:
            self._next_resend_ns = mono + period
        if not self.link.connected or mono < self._next_resend_ns:
            return
        self._next_resend_ns = mono + period
        for event in self.journal.unacked():
            assert event.event_id is not None  # the journal keeps only events/2
            if mono - self._sent.get(event.event_id, mono - period) >= period:
                self._send_event(event)

    def acknowledged(self, ack: EventAck) -> None:
        """The receiver recorded these events: forget them."""
        forgotten = self.journal.forget(ack.event_ids)
        for event_id in ack.event_ids:
            self._sent.pop(event_id, None)
        log.debug("%d of %d acknowledged events forgotten", forgotten, len(ack.event_ids))

    def _send_event(self, event: Event) -> None:
        # Kept in the journal until acknowledged: a publish while offline, or one the broker
        # hands to no receiver, is sent again at the next connect or resend.
        if self.link.connected and event.event_id is not None:
            self._publish(event)
            self._sent[event.event_id] = self.monotonic_ns()

    def _publish(self, message: MessageModel) -> Handle:
        try:
            return self.link.publish(message)
        except MessageError:  # a message we built is invalid: a bug, logged, never fatal
            log.exception("could not publish a %s message", type(message).__name__)
            return _FAILED

    def _event_reported(self, clip_id: str) -> None:
        try:
            self.outbox.mark_event_reported(clip_id)
        except Exception:
            log.debug("no outbox row for %s", clip_id)

    def _announced(self, clip_id: str) -> None:
        self.outbox.mark_announced(clip_id)
        stopped = self._stops.pop(clip_id, None)
        if stopped is not None:
            self.stop_to_announced_ms = (self.monotonic_ns() - stopped) / 1e6
        log.info("announced %s", clip_id, extra=log_fields(clip_id=clip_id, state="announced"))
