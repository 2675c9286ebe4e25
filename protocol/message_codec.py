"""The wire form of painav's MQTT messages: size limits, strict JSON, schema versions, errors.

Every payload is one UTF-8 JSON object carrying ``"schema": "painav.<kind>/<version>"`` (the
kind as in :attr:`Kind.slug`). Reading goes, cheapest check first: size limit for the kind,
UTF-8, JSON (no NaN or Infinity, no duplicate keys, an object at the top), schema version, then
the model. Every failure is a :class:`MessageError` of one line that names the field.
Writing is compact JSON with sorted keys, so the same message always gives the same bytes.
"""

from __future__ import annotations

import json
import re
from types import MappingProxyType
from typing import Any, ClassVar, Final, Self, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import MessageError
from .topics import Kind, Topic, parse_topic

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "MessageModel",
    "Part",
    "describe",
    "dump_json",
    "schema_id",
]

SCHEMA_VERSION: Final = 1
"""The version of a message schema that has not changed since the first; a kind whose contract
changed says in its model which versions it reads and which it writes (:class:`MessageModel`)."""

MAX_PAYLOAD_BYTES: Final = MappingProxyType(
    {
        Kind.STATUS: 4 * 1024,
        # An announcement carries the manifest, a minisign signature and up to four recipients:
        # a few KiB; the limit leaves room for later fields without inviting abuse.
        Kind.CLIPS: 64 * 1024,
        Kind.EVENTS: 8 * 1024,
        Kind.TELEMETRY: 4 * 1024,
        Kind.ARM: 4 * 1024,
        Kind.RECEIPTS: 4 * 1024,
        Kind.QC: 4 * 1024,
        # Up to MAX_ACKED_EVENTS ids of at most 64 characters each, and the envelope.
        Kind.EVENT_ACKS: 8 * 1024,
        # A root CRL: a few hundred bytes plus ~40 per revoked receiver certificate.
        Kind.CRL: 32 * 1024,
    }
)
"""The largest payload, in bytes, accepted (and written) for each kind."""

_SCHEMA_KEY: Final = "schema"
_SCHEMA_RE: Final = re.compile(r"painav\.([a-z-]{1,32})/([0-9]{1,6})")
_SAFE_SEGMENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SHOW_CHARS: Final = 40


# What each kind's model writes, once the model is defined (see MessageModel).
_WRITTEN: Final[dict[Kind, str]] = {}


def schema_id(kind: Kind) -> str:
    """The schema id this build writes for *kind*, e.g. ``painav.status/1``; a kind whose
    contract changed writes its newest version (``painav.events/2``)."""
    return _WRITTEN.get(kind, f"painav.{kind.slug}/{SCHEMA_VERSION}")


def dump_json(data: object) -> bytes:
    """*data* as compact UTF-8 JSON with sorted keys: the one canonical form painav writes."""
    text = json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MessageError(f"text at offset {exc.start} is not encodable as UTF-8") from None


def _show(value: str) -> str:
    return repr(value[:_SHOW_CHARS]) + ("…" if len(value) > _SHOW_CHARS else "")


class _Refused(Exception):
    """Raised inside ``json.loads`` hooks; carries the one-line reason."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # Two parsers may keep different copies of a duplicate; refuse rather than guess.
            raise _Refused(f"duplicate key {_show(key)} in a JSON object")
        result[key] = value
    return result


def _no_constants(name: str) -> object:
    raise _Refused(f"{name} is not allowed in a payload (JSON has no NaN or Infinity)")


def _load_object(payload: bytes) -> tuple[str, dict[str, Any]]:
    """The text and top-level object of *payload*; raises MessageError (without a prefix)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = f"byte 0x{payload[exc.start]:02x} at offset {exc.start}"
        raise MessageError(f"payload is not UTF-8: {bad}") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _Refused as exc:
        raise MessageError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise MessageError(
            f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise MessageError("payload is not JSON this build reads: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise MessageError(f"payload is not JSON this build reads: {exc}") from None
    if not isinstance(data, dict):
        name = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        found = name.get(type(data), "a number")
        raise MessageError(f"payload must be a JSON object, not {found}")
    return text, data


def _check_schema(kind: Kind, reads: tuple[str, ...], data: dict[str, Any]) -> None:
    expected = " or ".join(repr(r) for r in reads)
    if _SCHEMA_KEY not in data:
        raise MessageError(f"field 'schema': missing (this build reads {expected})")
    found = data[_SCHEMA_KEY]
    if not isinstance(found, str):
        raise MessageError(f"field 'schema': must be a string like {reads[0]!r}")
    if found in reads:
        return
    match = _SCHEMA_RE.fullmatch(found)
    if match is not None and match.group(1) == kind.slug:
        raise MessageError(f"unknown schema version {_show(found)} (this build reads {expected})")
    raise MessageError(
        f"field 'schema': {_show(found)} is not a {kind.value} message (expected {expected})"
    )


def _segment(name: str) -> str:
    if _SAFE_SEGMENT.fullmatch(name):
        return name
    # An unknown key is attacker-chosen: escape it so the error stays one short line.
    escaped = name[:_SHOW_CHARS].encode("unicode_escape").decode("ascii")
    return escaped + ("…" if len(name) > _SHOW_CHARS else "")


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{_segment(part)}" if out else _segment(part)
    return out


def describe(exc: ValidationError) -> str:
    """One line for a pydantic ValidationError: the first failing field's path and why."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if first["type"] == "json_invalid":
        return f"payload is not JSON this build reads: {first['msg']}"
    path = _path(first["loc"])
    return f"field '{path}': {first['msg']}{more}" if path else f"{first['msg']}{more}"


class Part(BaseModel):
    """Base of the objects nested inside messages: strict, frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def _require_schema_key(schema: dict[str, Any]) -> None:
    # The model gives "schema" a default for Python callers; on the wire it is required.
    required = schema.setdefault("required", [])
    if _SCHEMA_KEY not in required:
        required.insert(0, _SCHEMA_KEY)


class MessageModel(Part):
    """Base of every painav MQTT message: strict, frozen, versioned JSON.

    Subclasses set :attr:`KIND` and declare ``schema_id: Literal[...] = Field(..., alias=
    "schema")``: the versions of their kind they read, the default being the one they write
    (e.g. ``Literal["painav.events/2", "painav.events/1"]``, default ``painav.events/2``), so a
    receiver keeps reading the previous version from units not yet upgraded.
    """

    model_config = ConfigDict(json_schema_extra=_require_schema_key)

    KIND: ClassVar[Kind]
    READS: ClassVar[tuple[str, ...]]
    """The schema ids this model reads, the one it writes first."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("schema_id")
        reads = get_args(field.annotation) if field is not None else ()
        written = field.default if field is not None else None
        ours = [_SCHEMA_RE.fullmatch(r) for r in reads if isinstance(r, str)]
        if (
            not isinstance(written, str)
            or field is None
            or field.alias != _SCHEMA_KEY
            or written not in reads
            or len(ours) != len(reads)
            or any(m is None or m.group(1) != cls.KIND.slug for m in ours)
        ):
            raise TypeError(
                f"{cls.__name__}: schema_id must be a Literal of painav.{cls.KIND.slug}/<n> "
                "ids, defaulting to the one written"
            )
        cls.READS = (written, *(r for r in reads if r != written))
        _WRITTEN[cls.KIND] = written

    @classmethod
    def parse(cls, payload: bytes | bytearray | memoryview, *, topic: str | None = None) -> Self:
        """Read a payload of this kind; raise MessageError (TopicError for *topic*) naming the
        field on anything but a valid message. With *topic*, also check that it is a topic of
        this kind and that the message names the same unit."""
        where = f"{cls.KIND.value} message"
        parsed_topic = None
        if topic is not None:
            parsed_topic = parse_topic(topic)
            where += f" from {parsed_topic}"
            if parsed_topic.kind is not cls.KIND:
                raise MessageError(f"{where}: topic is for {parsed_topic.kind.value} messages")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise MessageError(f"{where}: payload must be bytes, not {type(payload).__name__}")
        payload = bytes(payload)
        limit = MAX_PAYLOAD_BYTES[cls.KIND]
        if len(payload) > limit:
            raise MessageError(f"{where}: payload is {len(payload)} bytes, over the {limit} limit")
        try:
            text, data = _load_object(payload)
            _check_schema(cls.KIND, cls.READS, data)
        except MessageError as exc:
            raise MessageError(f"{where}: {exc}") from None
        try:
            message = cls.model_validate_json(text, by_alias=True, by_name=False)
        except ValidationError as exc:
            raise MessageError(f"{where}: {describe(exc)}") from None
        if parsed_topic is not None:
            problem = message.topic_mismatch(parsed_topic)
            if problem is not None:
                raise MessageError(f"{where}: {problem}")
        return message

    def topic_mismatch(self, topic: Topic) -> str | None:
        """Why this message may not appear on *topic* (naming the field), or None if it may.

        The base accepts any unit's topic; messages that name a unit override this."""
        return None

    def to_payload(self) -> bytes:
        """This message as the bytes to publish: compact UTF-8 JSON, sorted keys."""
        try:
            payload = dump_json(self.model_dump(mode="json", by_alias=True))
        except MessageError as exc:
            raise MessageError(f"{self.KIND.value} message: {exc}") from None
        limit = MAX_PAYLOAD_BYTES[self.KIND]
        if len(payload) > limit:
            raise MessageError(
                f"{self.KIND.value} message: payload would be {len(payload)} bytes, "
                f"over the {limit} limit"
            )
        return payload
