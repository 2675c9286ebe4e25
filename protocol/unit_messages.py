"""Messages a bedside unit publishes: status, clip announcements, events and telemetry."""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Literal, Self

from pydantic import (
    Field,
    GetJsonSchemaHandler,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_serializer,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from .clip_manifest import ClipManifest
from .message_codec import MessageModel
from .message_fields import (
    MAX_COUNT,
    ClipId,
    HttpsUrl,
    MinisignText,
    ReasonCode,
    SoftwareVersion,
    Timestamp,
)
from .topics import Kind, Topic

__all__ = ["EVENTS_V1", "EVENTS_V2", "ClipAnnouncement", "Event", "EventId", "Status", "Telemetry"]

_ONE_LINE: Final = r"^[^\x00-\x1f\x7f]*$"

EventId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
    Field(description="An event's id, unique per unit: 1-64 of A-Z a-z 0-9 . _ -."),
]
"""An event's id, chosen by its unit (painav units use 32 random hex digits)."""

EVENTS_V1: Final = "painav.events/1"
EVENTS_V2: Final = "painav.events/2"


class Status(MessageModel):
    """A unit's state, retained on ``status``.

    The unit publishes it on every change. Its MQTT last will is :meth:`last_will`, registered
    at connect time: it carries only ``state: offline``, because any timestamp in it would be
    the connect time, not the moment the unit went away (a subscriber that needs that moment
    uses the time it received the will). ``since``, ``software_version`` and ``armed`` are
    required in every other state; ``reason`` is required exactly when ``state`` is ``error``.
    """

    KIND: ClassVar[Kind] = Kind.STATUS
    schema_id: Literal["painav.status/1"] = Field(default="painav.status/1", alias="schema")
    state: Literal["online", "recording", "error", "offline"]
    since: Timestamp | None = Field(
        default=None, validate_default=True, description="When the unit entered this state."
    )
    software_version: SoftwareVersion | None = Field(default=None, validate_default=True)
    armed: bool | None = Field(
        default=None, validate_default=True, description="Whether an arm command is in force."
    )
    reason: ReasonCode | None = Field(
        default=None, validate_default=True, description="What is wrong, when state is error."
    )

    @field_validator("since", "software_version", "armed")
    @classmethod
    def _required_unless_offline(cls, value: object, info: ValidationInfo) -> object:
        if value is None and info.data.get("state", "offline") != "offline":
            raise PydanticCustomError("painav_required", "required unless state is 'offline'")
        return value

    @field_validator("reason")
    @classmethod
    def _reason_iff_error(cls, value: str | None, info: ValidationInfo) -> str | None:
        state = info.data.get("state")
        if state == "error" and value is None:
            raise PydanticCustomError("painav_required", "required when state is 'error'")
        if state is not None and state != "error" and value is not None:
            raise PydanticCustomError("painav_forbidden", "must be null unless state is 'error'")
        return value

    @classmethod
    def last_will(cls) -> Self:
        """The offline status the broker publishes (retained) if the unit vanishes."""
        return cls(state="offline")


class ClipAnnouncement(MessageModel):
    """A sealed clip, announced on ``clips``: its manifest, signature and where to fetch it."""

    KIND: ClassVar[Kind] = Kind.CLIPS
    schema_id: Literal["painav.clips/1"] = Field(default="painav.clips/1", alias="schema")
    manifest: ClipManifest
    signature: MinisignText
    url: HttpsUrl

    def topic_mismatch(self, topic: Topic) -> str | None:
        """A clip may only be announced on its own unit's topic."""
        if self.manifest.site_id != topic.site:
            return "field 'manifest.site_id': does not match the topic's site"
        if self.manifest.device_id != topic.device:
            return "field 'manifest.device_id': does not match the topic's device"
        return None


_CLIP_EVENTS: Final = frozenset({"discarded", "recovered", "deleted"})


class Event(MessageModel):
    """Something that happened on a unit and must not pass silently, published on ``events``.

    ``aborted``: a recording ended without a clip; ``discarded``: the nurse discarded a clip;
    ``refused``: a button press or command was refused; ``error``: a fault; ``recovered``: a clip
    left by a crash was sealed after restart; ``deleted``: a receipted clip was deleted;
    ``armed``/``disarmed``: the unit took an arm command, or it expired.
    """

    KIND: ClassVar[Kind] = Kind.EVENTS
    schema_id: Literal["painav.events/2", "painav.events/1"] = Field(
        default=EVENTS_V2,
        alias="schema",
        description=(
            "painav.events/2 carries event_id: the unit keeps the event until the receiver "
            "acknowledges that id on event-acks. painav.events/1 (units of the previous "
            "version) has none: it is recorded, not acknowledged."
        ),
    )
    event_id: EventId | None = Field(
        default=None,
        validate_default=True,
        description="Required in painav.events/2, absent in painav.events/1.",
    )
    kind: Literal[
        "aborted", "discarded", "refused", "error", "recovered", "deleted", "armed", "disarmed"
    ]
    at: Timestamp
    clip_id: ClipId | None = Field(
        default=None,
        validate_default=True,
        description="The clip concerned; required for discarded, recovered and deleted.",
    )
    reason: ReasonCode
    detail: Annotated[str, StringConstraints(max_length=500, pattern=_ONE_LINE)] = Field(
        default="", description="One line of human-readable detail, no personal data."
    )

    @field_validator("clip_id")
    @classmethod
    def _clip_for_clip_events(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("kind") in _CLIP_EVENTS:
            raise PydanticCustomError("painav_required", "required for this kind of event")
        return value

    @field_validator("event_id")
    @classmethod
    def _id_in_version_2(cls, value: str | None, info: ValidationInfo) -> str | None:
        version = info.data.get("schema_id")
        if value is None and version == EVENTS_V2:
            raise PydanticCustomError("painav_required", f"required in {EVENTS_V2}")
        if value is not None and version == EVENTS_V1:
            raise PydanticCustomError("painav_forbidden", f"not part of {EVENTS_V1}")
        return value

    @model_serializer(mode="wrap")
    def _without_absent_id(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, object]:
        # An events/1 message written again reads as one: no event_id key at all.
        data: dict[str, object] = handler(self)
        if data.get("event_id", "") is None:
            del data["event_id"]
        return data

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        # What the validator says, for other languages' validators: events/2 needs event_id.
        target["if"] = {"properties": {"schema": {"const": EVENTS_V2}}, "required": ["schema"]}
        target["then"] = {"required": ["event_id"]}
        target["else"] = {"not": {"required": ["event_id"]}}
        return schema


class Telemetry(MessageModel):
    """A unit's periodic health sample, published on ``telemetry`` (QoS 0)."""

    KIND: ClassVar[Kind] = Kind.TELEMETRY
    schema_id: Literal["painav.telemetry/1"] = Field(default="painav.telemetry/1", alias="schema")
    at: Timestamp
    uptime_s: float = Field(ge=0, description="Seconds since the unit's daemon started.")
    free_bytes: int = Field(ge=0, le=MAX_COUNT, description="Free space on the outbox volume.")
    queue_depth: int = Field(
        ge=0, le=MAX_COUNT, description="Sealed clips not yet receipted by the hospital."
    )
    oldest_unreceipted_s: float | None = Field(
        default=None,
        ge=0,
        validate_default=True,
        description="Age of the oldest unreceipted clip in seconds; null when the queue is empty.",
    )
    clock_synced: bool = Field(description="Whether the clock is NTP-synchronised.")
    temperature_c: float | None = Field(
        default=None, ge=-50, le=150, description="SoC temperature in °C, if readable."
    )
    cpu_percent: float | None = Field(
        default=None, ge=0, le=100, description="Whole-system CPU use in percent, if measured."
    )

    @field_validator("oldest_unreceipted_s")
    @classmethod
    def _age_iff_queued(cls, value: float | None, info: ValidationInfo) -> float | None:
        depth = info.data.get("queue_depth")
        if depth is not None and (value is None) != (depth == 0):
            rule = "required when queue_depth > 0" if value is None else "must be null"
            raise PydanticCustomError(
                "painav_queue_age", rule + " (null exactly when the queue is empty)"
            )
        return value
