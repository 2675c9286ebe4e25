"""painav's MQTT messages: one strict, versioned model per topic kind, and the parser for all.

>>> status = Status.last_will()
>>> status.to_payload()
b'{"armed":null,"reason":null,"schema":"painav.status/1","since":null,"software_version":null,"state":"offline"}'
>>> parse(Kind.STATUS, status.to_payload(), topic="painav/v1/ward7/cart-03/status") == status
True

The models live in :mod:`.unit_messages` (unit to hospital) and :mod:`.hospital_messages`
(hospital to unit), the clip manifest in :mod:`.clip_manifest`, field types in
:mod:`.message_fields`, wire rules (size limits, strict JSON, schema versions, errors) in
:mod:`.message_codec`. Import them from here.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from .clip_manifest import AudioTrack, ClipManifest, VideoTrack
from .errors import MessageError
from .hospital_messages import (
    ARM_SIGNING_CONTEXT,
    LEGACY_RECEIPT_SCHEMA,
    MAX_ACKED_EVENTS,
    MAX_ARM_DURATION,
    MAX_QC_REASONS,
    RECEIPT_SIGNING_CONTEXT,
    ArmCommand,
    CrlMessage,
    EventAck,
    LegacyReceipt,
    QcVerdict,
    Receipt,
)
from .message_codec import MAX_PAYLOAD_BYTES, SCHEMA_VERSION
from .topics import Kind, Topic, parse_topic
from .unit_messages import EVENTS_V1, EVENTS_V2, ClipAnnouncement, Event, EventId, Status, Telemetry

__all__ = [
    "ARM_SIGNING_CONTEXT",
    "EVENTS_V1",
    "EVENTS_V2",
    "LEGACY_RECEIPT_SCHEMA",
    "MAX_ACKED_EVENTS",
    "MAX_ARM_DURATION",
    "MAX_PAYLOAD_BYTES",
    "MAX_QC_REASONS",
    "MESSAGE_TYPES",
    "RECEIPT_SIGNING_CONTEXT",
    "SCHEMA_VERSION",
    "ArmCommand",
    "AudioTrack",
    "ClipAnnouncement",
    "ClipManifest",
    "CrlMessage",
    "Event",
    "EventAck",
    "EventId",
    "LegacyReceipt",
    "Message",
    "QcVerdict",
    "Receipt",
    "Status",
    "Telemetry",
    "VideoTrack",
    "parse",
    "parse_message",
]

Message = (
    Status
    | ClipAnnouncement
    | Event
    | Telemetry
    | ArmCommand
    | Receipt
    | QcVerdict
    | EventAck
    | CrlMessage
)
"""Any painav MQTT message."""

MESSAGE_TYPES: Final[MappingProxyType[Kind, type[Message]]] = MappingProxyType(
    {
        Kind.STATUS: Status,
        Kind.CLIPS: ClipAnnouncement,
        Kind.EVENTS: Event,
        Kind.TELEMETRY: Telemetry,
        Kind.ARM: ArmCommand,
        Kind.RECEIPTS: Receipt,
        Kind.QC: QcVerdict,
        Kind.EVENT_ACKS: EventAck,
        Kind.CRL: CrlMessage,
    }
)
"""The model for each kind."""


def parse(
    kind: Kind, payload: bytes | bytearray | memoryview, *, topic: str | None = None
) -> Message:
    """Read a *kind* payload; MessageError (TopicError for *topic*) names what is wrong.

    With *topic*, also check that it is a painav topic of *kind* naming the message's unit.
    """
    if not isinstance(kind, Kind):
        raise MessageError(f"message kind must be a Kind, not {type(kind).__name__}")
    return MESSAGE_TYPES[kind].parse(payload, topic=topic)


def parse_message(topic: str, payload: bytes | bytearray | memoryview) -> tuple[Topic, Message]:
    """Read a message as received: the kind comes from *topic*, which must be a painav topic."""
    parsed = parse_topic(topic)
    return parsed, MESSAGE_TYPES[parsed.kind].parse(payload, topic=topic)
