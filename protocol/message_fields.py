"""The field types of painav's MQTT messages: ids, pseudonyms, hashes, timestamps, keys, URLs.

Each type is an ``Annotated`` pydantic type that validates strictly, fails with a message that
says what the value must be (never echoing the value, which may be personal data), and publishes
its rule into the JSON Schema as a ``pattern``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

from . import bech32
from .errors import KeyFormatError
from .topics import ID_PATTERN

__all__ = [
    "AGE_RECIPIENT_PATTERN",
    "CLIP_ID_PATTERN",
    "ED25519_SIGNATURE_PATTERN",
    "MAX_COUNT",
    "MINISIGN_MAX_BYTES",
    "MINISIGN_PATTERN",
    "OWNED_CLIP_ID_PATTERN",
    "PSEUDONYM_PATTERN",
    "REASON_PATTERN",
    "SHA256_PATTERN",
    "SOFTWARE_VERSION_PATTERN",
    "TIMESTAMP_PATTERN",
    "URL_MAX_CHARS",
    "URL_PATTERN",
    "VISIT_PATTERN",
    "AgeRecipient",
    "ClipId",
    "DeviceId",
    "Ed25519SignatureB64",
    "HttpsUrl",
    "MinisignText",
    "OperatorId",
    "Pseudonym",
    "ReasonCode",
    "ReceiverId",
    "Sha256Hex",
    "SiteId",
    "SoftwareVersion",
    "Timestamp",
    "VisitLabel",
    "clip_id_owner",
    "format_timestamp",
]

CLIP_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""Clip ids: 1-64 of ``A-Z a-z 0-9 . _ -``, the first a letter or digit so that an id used as
a file name is never ``.``, ``..`` or an option-like ``-x``. A unit names its clips
``<device>-<yyyymmddThhmmssZ>-<hex>`` (:data:`OWNED_CLIP_ID_PATTERN`), as every version has;
a manifest must name a clip of its own unit so (:func:`clip_id_owner`)."""

OWNED_CLIP_ID_PATTERN: Final = (
    r"^([a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?)-([0-9]{8}T[0-9]{6}Z)-([0-9a-f]{4,16})$"
)
"""A clip id as its unit makes it: ``<device>-<yyyymmddThhmmssZ>-<4 to 16 lower-case hex>``,
e.g. ``cart-03-20250301T093000Z-a1b2``. The two last parts have no ``-`` of their own, so the
device id is whatever precedes them: ``cart-1-20261129T101500Z-ab12`` belongs to ``cart-1``,
never to ``cart``."""

PSEUDONYM_PATTERN: Final = r"^[A-Z]{2,6}-[0-9]{3,6}$"
"""A participant's pseudonymous study id, e.g. ``PAIN-0042``: never a name or record number."""

VISIT_PATTERN: Final = r"^(?!-$)[A-Za-z0-9_-]{1,32}$"
"""A visit label from the study schedule, e.g. ``baseline`` or ``V2``; never ``-`` alone, which
a clip signature's trusted comment writes for "no visit"."""

SHA256_PATTERN: Final = r"^[0-9a-f]{64}$"
"""A SHA-256 digest as 64 lower-case hex digits."""

REASON_PATTERN: Final = r"^[a-z][a-z0-9_]{0,63}$"
"""A short machine-readable code, e.g. ``camera_timeout``."""

SOFTWARE_VERSION_PATTERN: Final = r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$"
"""A software version string, e.g. ``0.4.1`` or ``0.4.1+g1a2b3c``."""

AGE_RECIPIENT_PATTERN: Final = r"^age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}$"
"""An age X25519 recipient, ``age1…`` in lower-case Bech32 (the checksum is checked too)."""

ED25519_SIGNATURE_PATTERN: Final = r"^[A-Za-z0-9+/]{85}[AQgw]==$"
"""A 64-byte Ed25519 signature in canonical padded base64 (88 characters)."""

TIMESTAMP_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z$"
)
"""RFC 3339 in UTC with a ``Z``, at most microsecond precision: ``2025-03-01T09:30:00.25Z``."""

MAX_COUNT: Final = 2**63 - 1
"""The largest count or size in a message: it fits a signed 64-bit column wherever it lands."""

MINISIGN_PATTERN: Final = r"^untrusted comment:[^\x00]*$"
"""A minisign signature file as text: it starts with its untrusted comment line."""

URL_PATTERN: Final = r"^https://[!-~]+$"
"""An https URL in printable ASCII, no spaces; the full rules are checked in code."""

MINISIGN_MAX_BYTES: Final = 1024
"""The largest minisign signature file an announcement carries."""

URL_MAX_CHARS: Final = 2048


def _matching(
    pattern: str, error: str, check: Callable[[str], None] | None = None
) -> AfterValidator:
    """The validator of a str that must match *pattern* (then pass *check*); fails with *error*."""
    compiled = re.compile(pattern)

    def validate(value: str) -> str:
        # fullmatch, not the pattern's '$': in Python '$' also matches before a final newline.
        if not compiled.fullmatch(value):
            raise PydanticCustomError("painav_pattern", error)
        if check is not None:
            check(value)
        return value

    return AfterValidator(validate)


def _schema(pattern: str, description: str) -> WithJsonSchema:
    """The JSON Schema of a str that must match *pattern*."""
    return WithJsonSchema({"type": "string", "pattern": pattern, "description": description})


SiteId = Annotated[
    str,
    _matching(
        ID_PATTERN, "must be a site id: 1-32 of a-z, 0-9 and '-', not starting or ending with '-'"
    ),
    _schema(ID_PATTERN, "Site id: an MQTT topic level and TLS certificate common name."),
]
DeviceId = Annotated[
    str,
    _matching(
        ID_PATTERN, "must be a device id: 1-32 of a-z, 0-9 and '-', not starting or ending with '-'"
    ),
    _schema(
        ID_PATTERN,
        "Device id of the bedside unit: an MQTT topic level and TLS certificate common name.",
    ),
]
ReceiverId = Annotated[
    str,
    _matching(
        ID_PATTERN,
        "must be a receiver id: 1-32 of a-z, 0-9 and '-', not starting or ending with '-'",
    ),
    _schema(ID_PATTERN, "Id of the hospital receiver instance whose key signed this receipt."),
]
OperatorId = Annotated[
    str,
    _matching(ID_PATTERN, "must be a pseudonymous operator id: 1-32 of a-z, 0-9 and '-'"),
    _schema(
        ID_PATTERN,
        "Pseudonymous id of the operator account that issued the command, never a person's name.",
    ),
]
ClipId = Annotated[
    str,
    _matching(
        CLIP_ID_PATTERN,
        "must be a clip id: 1-64 of A-Z, a-z, 0-9, '.', '_' and '-', "
        "starting with a letter or digit",
    ),
    _schema(
        CLIP_ID_PATTERN,
        "Clip id: <device>-<yyyymmddThhmmssZ>-<hex>, named by the unit that recorded it.",
    ),
]
_OWNED_CLIP_ID_RE: Final = re.compile(OWNED_CLIP_ID_PATTERN)


def clip_id_owner(clip_id: str) -> str | None:
    """The device id a clip id belongs to (:data:`OWNED_CLIP_ID_PATTERN`), or None if it is not
    of that form."""
    match = _OWNED_CLIP_ID_RE.fullmatch(clip_id)
    return None if match is None else match.group(1)


Pseudonym = Annotated[
    str,
    _matching(
        PSEUDONYM_PATTERN,
        "must be a pseudonymous study id like 'PAIN-0042', never a name or record number",
    ),
    _schema(
        PSEUDONYM_PATTERN,
        "Pseudonymous study id of the participant (e.g. PAIN-0042); never a name or record number.",
    ),
]
VisitLabel = Annotated[
    str,
    _matching(
        VISIT_PATTERN, "must be a visit label: 1-32 of A-Z, a-z, 0-9, '_' and '-', not '-' alone"
    ),
    _schema(VISIT_PATTERN, "Visit label from the study schedule (e.g. baseline, V2)."),
]
Sha256Hex = Annotated[
    str,
    _matching(SHA256_PATTERN, "must be a SHA-256 digest: 64 lower-case hex digits"),
    _schema(SHA256_PATTERN, "SHA-256 digest, 64 lower-case hex digits."),
]
ReasonCode = Annotated[
    str,
    _matching(
        REASON_PATTERN, "must be a reason code: a-z first, then up to 63 of a-z, 0-9 and '_'"
    ),
    _schema(REASON_PATTERN, "Short machine-readable code, e.g. camera_timeout."),
]
SoftwareVersion = Annotated[
    str,
    _matching(
        SOFTWARE_VERSION_PATTERN,
        "must be a version string: 1-64 of A-Z, a-z, 0-9, '.', '+', '_' and '-'",
    ),
    _schema(SOFTWARE_VERSION_PATTERN, "Software version, e.g. 0.4.1+g1a2b3c."),
]


def _check_recipient(value: str) -> None:
    try:
        bech32.decode(value)
    except KeyFormatError:
        raise PydanticCustomError(
            "painav_recipient", "must be an age1… X25519 recipient with a valid checksum"
        ) from None


AgeRecipient = Annotated[
    str,
    _matching(
        AGE_RECIPIENT_PATTERN,
        "must be an age1… X25519 recipient (62 lower-case Bech32 characters)",
        _check_recipient,
    ),
    _schema(AGE_RECIPIENT_PATTERN, "age X25519 recipient (public key) the clip is encrypted to."),
]


def _check_signature(value: str) -> None:
    # The pattern fixes length and alphabet; decoding also catches non-canonical trailing bits.
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 64 or base64.b64encode(raw).decode() != value:
        raise PydanticCustomError("painav_signature", "must be a canonical base64 signature")


Ed25519SignatureB64 = Annotated[
    str,
    _matching(
        ED25519_SIGNATURE_PATTERN,
        "must be a 64-byte Ed25519 signature in padded base64 (88 characters)",
        _check_signature,
    ),
    _schema(ED25519_SIGNATURE_PATTERN, "Ed25519 signature, 64 bytes, padded standard base64."),
]


def _check_minisign(value: str) -> None:
    if len(value.encode("utf-8", "surrogatepass")) > MINISIGN_MAX_BYTES:
        raise PydanticCustomError(
            "painav_minisign", "must be at most {limit} bytes", {"limit": MINISIGN_MAX_BYTES}
        )


MinisignText = Annotated[
    str,
    _matching(
        MINISIGN_PATTERN,
        "must be a minisign signature file, starting with 'untrusted comment:'",
        _check_minisign,
    ),
    _schema(
        MINISIGN_PATTERN,
        f"The minisign signature file over the ciphertext, as text (at most "
        f"{MINISIGN_MAX_BYTES} bytes).",
    ),
]


def _check_url(value: str) -> None:
    problem = None
    try:
        parts = urlsplit(value)
        if len(value) > URL_MAX_CHARS:
            problem = f"must be at most {URL_MAX_CHARS} characters"
        elif parts.scheme != "https":
            problem = "must be an https:// URL"
        elif not parts.hostname:
            problem = "must name a host"
        elif parts.username is not None or parts.password is not None:
            problem = "must not carry credentials"
        elif parts.fragment:
            problem = "must not have a fragment"
        else:
            _ = parts.port  # raises ValueError on a port out of range
    except ValueError:
        problem = "must be a well-formed URL"
    if problem is not None:
        raise PydanticCustomError("painav_url", problem)


HttpsUrl = Annotated[
    str,
    _matching(URL_PATTERN, "must be an https:// URL of printable ASCII without spaces", _check_url),
    _schema(URL_PATTERN, "https URL of the unit's clip server for this clip (mutual TLS)."),
]

_TIMESTAMP_RE: Final = re.compile(TIMESTAMP_PATTERN)


def format_timestamp(value: datetime) -> str:
    """*value* (timezone-aware) as RFC 3339 UTC with ``Z``, microseconds only when non-zero."""
    utc = value.astimezone(UTC)
    # Not strftime: glibc writes year 1 as "1", not "0001".
    text = (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
        f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    )
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def _timestamp_text(value: object) -> object:
    # A validator that runs before pydantic's hands its result on as a Python value, which
    # strict mode reads as a datetime only; so a string (JSON input) is parsed here, and any
    # other type goes on to pydantic's strict datetime check and its usual error.
    if not isinstance(value, str):
        return value
    error = "must be an RFC 3339 UTC timestamp like 2025-03-01T09:30:00Z"
    if not _TIMESTAMP_RE.fullmatch(value):
        raise PydanticCustomError("painav_timestamp", error)
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # matches the pattern but is no date, e.g. February 30 or 24:00
        raise PydanticCustomError("painav_timestamp", error) from None


def _timestamp_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() != timedelta(0):
        raise PydanticCustomError("painav_timestamp", "must be a timezone-aware UTC datetime")
    return value.astimezone(UTC)


Timestamp = Annotated[
    datetime,
    AfterValidator(_timestamp_utc),
    BeforeValidator(_timestamp_text),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": TIMESTAMP_PATTERN,
            "description": "RFC 3339 timestamp in UTC, ending in Z.",
        }
    ),
]
"""A UTC instant: a timezone-aware ``datetime`` in Python, RFC 3339 with ``Z`` on the wire."""
