"""What reaches the unit's loop from other threads: one frozen dataclass per kind of event.

The button, paho's network thread, the seal worker and the control socket each post one of
these; only the loop's thread acts on them (:class:`daemon.loop.UnitLoop`), so the recorder,
the outbox and the announcer never see two threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import ArmCommand, EventAck, QcVerdict, Receipt

from .outbox import OutboxEntry

__all__ = [
    "ArmReceived",
    "BadMessage",
    "CaptureFailed",
    "Connected",
    "CrlReceived",
    "EventAcked",
    "LongPressed",
    "Pressed",
    "PublishSettled",
    "ReceiptReceived",
    "SealFailed",
    "Sealed",
    "UnitEvent",
    "VerdictReceived",
]


@dataclass(frozen=True)
class Pressed:
    """The button was pressed (start or stop a recording)."""


@dataclass(frozen=True)
class LongPressed:
    """The button was held: discard the recording in progress."""


@dataclass(frozen=True)
class Sealed:
    """The seal worker made a clip durable in the outbox."""

    clip_id: str
    entry: OutboxEntry
    press_to_first_frame_ms: float | None = None


@dataclass(frozen=True)
class SealFailed:
    """The seal worker could not finish a clip; it is aborted in the outbox."""

    clip_id: str
    detail: str


@dataclass(frozen=True)
class CaptureFailed:
    """The camera, the microphone or the clip writer failed while recording."""

    detail: str


@dataclass(frozen=True)
class ArmReceived:
    """An arm command arrived (None: the retained command was cleared)."""

    command: ArmCommand | None


@dataclass(frozen=True)
class ReceiptReceived:
    """A receipt for one of this unit's clips arrived."""

    receipt: Receipt


@dataclass(frozen=True)
class VerdictReceived:
    """The hospital's quality-control verdict on one of this unit's clips arrived."""

    verdict: QcVerdict


@dataclass(frozen=True)
class EventAcked:
    """The receiver recorded some of this unit's events: the journal may forget them."""

    ack: EventAck


@dataclass(frozen=True)
class CrlReceived:
    """The hospital's retained copy of the site root's CRL arrived (DER, not yet checked)."""

    crl_der: bytes


@dataclass(frozen=True)
class Connected:
    """The MQTT link (re)connected: replay what the hospital may not have."""


@dataclass(frozen=True)
class PublishSettled:
    """The broker acknowledged (or refused) a publish: the loop collects it now, not at its
    next tick."""


@dataclass(frozen=True)
class BadMessage:
    """Something arrived that is not a valid message for this unit."""

    topic: str
    error: str


UnitEvent = (
    Pressed
    | LongPressed
    | Sealed
    | SealFailed
    | CaptureFailed
    | ArmReceived
    | ReceiptReceived
    | VerdictReceived
    | EventAcked
    | CrlReceived
    | Connected
    | PublishSettled
    | BadMessage
)
