"""Messages the hospital sends to a unit: the researcher's arm command, the receipt, the
quality-control verdict and the site root's CRL.

Arm commands and receipts are hospital-signed (:mod:`.hospital_signature`): each carries its
signer's certificate and an Ed25519 signature over a context prefix per kind and the message's
canonical JSON without ``signature``. The broker is not trusted with either: a forged arm command
would label clips with the wrong pseudonym, a forged receipt would delete a clip."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, ClassVar, Final, Literal, Self, TypeVar

from pydantic import ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from .errors import MessageError
from .message_codec import MessageModel, dump_json
from .message_fields import (
    ClipId,
    DeviceId,
    Ed25519SignatureB64,
    OperatorId,
    Pseudonym,
    ReasonCode,
    ReceiverId,
    Sha256Hex,
    SiteId,
    Timestamp,
    VisitLabel,
)
from .topics import Kind, Topic
from .unit_messages import EventId

_M = TypeVar("_M", bound=MessageModel)

__all__ = [
    "ARM_SIGNING_CONTEXT",
    "LEGACY_RECEIPT_SCHEMA",
    "MAX_ACKED_EVENTS",
    "MAX_ARM_DURATION",
    "MAX_QC_REASONS",
    "RECEIPT_SIGNING_CONTEXT",
    "ArmCommand",
    "CrlMessage",
    "EventAck",
    "LegacyReceipt",
    "QcVerdict",
    "Receipt",
]

MAX_ARM_DURATION: Final = timedelta(hours=24)
"""The longest an arm command may stay in force: a forgotten cart disarms itself by next day."""

MAX_QC_REASONS: Final = 8
"""The most reasons a QC verdict carries: the few that matter most, not every measurement."""

RECEIPT_SIGNING_CONTEXT: Final = b"painav-receipt/2\n"
"""Prefix of the bytes a receipt signature covers, so the key signs nothing else by accident."""

LEGACY_RECEIPT_SCHEMA: Final = "painav.receipts/1"
"""Receipts of the previous version, signed with the one key every receiver shared: sent beside
``receipts/2`` only while units of that version remain (:class:`LegacyReceipt`)."""

_LEGACY_RECEIPT_CONTEXT: Final = b"painav-receipt/1\n"

ARM_SIGNING_CONTEXT: Final = b"painav-cmd-arm/2\n"
"""Prefix of the bytes an arm command's signature covers."""

_CERT_B64_PATTERN: Final = r"^[A-Za-z0-9+/]{4,2732}={0,2}$"

SignerCertB64 = Annotated[
    str,
    Field(
        pattern=_CERT_B64_PATTERN,
        max_length=2736,
        description=(
            "The signer's X.509 certificate, DER in padded base64: issued by the site root to a "
            "receiver (CN its id) for signing hospital messages (painav's extended key usage)."
        ),
    ),
]

_UNSIGNED: Final = base64.b64encode(bytes(64)).decode()


def _signed_bytes(message: MessageModel, context: bytes) -> bytes:
    body = message.model_dump(mode="json", by_alias=True, exclude={"signature"})
    return context + dump_json(body)


def _sign(draft: _M, context: bytes, sign: Callable[[bytes], bytes]) -> _M:
    raw = sign(_signed_bytes(draft, context))
    if not isinstance(raw, bytes) or len(raw) != 64:
        raise MessageError(
            f"{draft.KIND.value} message: sign() must return a 64-byte Ed25519 signature"
        )
    return draft.model_copy(update={"signature": base64.b64encode(raw).decode()})


def _unit_mismatch(site_id: str, device_id: str, topic: Topic) -> str | None:
    if site_id != topic.site:
        return "field 'site_id': does not match the topic's site"
    if device_id != topic.device:
        return "field 'device_id': does not match the topic's device"
    return None


class ArmCommand(MessageModel):
    """The researcher's command, retained on ``cmd/arm``, to tag a unit's next clips with a
    participant (``participant`` set) or to stop doing so (``participant`` null).

    An arm command expires: ``expires_at`` is after ``issued_at`` and at most
    :data:`MAX_ARM_DURATION` later. A disarm command has no ``visit`` and no ``expires_at``.

    Hospital-signed (``cmd-arm/2``): the signature covers :data:`ARM_SIGNING_CONTEXT` and the
    canonical JSON without ``signature``, so it binds the unit (``site_id``, ``device_id``) and
    ``issued_at``: a signed command for one cart cannot arm another, and a unit refuses one
    issued before the command it holds. A unit of version 1 cannot read it (upgrade units first).
    """

    KIND: ClassVar[Kind] = Kind.ARM
    schema_id: Literal["painav.cmd-arm/2"] = Field(default="painav.cmd-arm/2", alias="schema")
    participant: Pseudonym | None = Field(
        description="Pseudonymous study id to arm for (e.g. PAIN-0042); null to disarm."
    )
    visit: VisitLabel | None = Field(default=None, validate_default=True)
    issued_at: Timestamp
    expires_at: Timestamp | None = Field(default=None, validate_default=True)
    issued_by: OperatorId | None = None
    site_id: SiteId
    device_id: DeviceId
    signer: SignerCertB64
    signature: Ed25519SignatureB64 = Field(
        description="Ed25519 signature by the signer's key over the signed bytes."
    )

    @field_validator("visit")
    @classmethod
    def _no_visit_when_disarming(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and "participant" in info.data and info.data["participant"] is None:
            raise PydanticCustomError("painav_forbidden", "must be null when disarming")
        return value

    @field_validator("expires_at")
    @classmethod
    def _expiry_in_range(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if "participant" not in info.data:
            return value
        if info.data["participant"] is None:
            if value is not None:
                raise PydanticCustomError("painav_forbidden", "must be null when disarming")
            return value
        if value is None:
            raise PydanticCustomError("painav_required", "required when arming")
        issued_at = info.data.get("issued_at")
        # A difference, not issued_at + MAX_ARM_DURATION, which overflows near year 9999.
        if issued_at is not None and not timedelta(0) < value - issued_at <= MAX_ARM_DURATION:
            hours = MAX_ARM_DURATION // timedelta(hours=1)
            raise PydanticCustomError(
                "painav_expiry", f"must be after issued_at and at most {hours} h later"
            )
        return value

    def active_at(self, now: datetime) -> bool:
        """Whether this command arms the unit at *now* (timezone-aware): an arm command that has
        not expired. (A disarm command has no expiry and never arms.)"""
        return self.expires_at is not None and now < self.expires_at

    def signed_bytes(self) -> bytes:
        """What the signature covers: :data:`ARM_SIGNING_CONTEXT`, then the canonical JSON
        without ``signature``."""
        return _signed_bytes(self, ARM_SIGNING_CONTEXT)

    def signature_bytes(self) -> bytes:
        return base64.b64decode(self.signature)

    @classmethod
    def signed(
        cls,
        *,
        participant: str | None,
        visit: str | None = None,
        issued_at: datetime,
        expires_at: datetime | None = None,
        issued_by: str | None = None,
        site_id: str,
        device_id: str,
        signer: str,
        sign: Callable[[bytes], bytes],
    ) -> Self:
        """An arm (or disarm) command for one unit, signed by *sign* (the key of the receiver
        whose certificate, base64 DER, is *signer*)."""
        draft = cls(
            participant=participant,
            visit=visit,
            issued_at=issued_at,
            expires_at=expires_at,
            issued_by=issued_by,
            site_id=site_id,
            device_id=device_id,
            signer=signer,
            signature=_UNSIGNED,
        )
        return _sign(draft, ARM_SIGNING_CONTEXT, sign)

    def topic_mismatch(self, topic: Topic) -> str | None:
        """An arm command may only be sent on the topic of the unit it names."""
        return _unit_mismatch(self.site_id, self.device_id, topic)


class Receipt(MessageModel):
    """The receiver's signed statement, on ``receipts``, that it stored a clip: after verifying
    the signature over :meth:`signed_bytes`, the unit may delete the clip.

    The signature covers ``painav-receipt/2`` and a newline, then the receipt's canonical JSON
    (compact, sorted keys, UTF-8, as published) without ``signature``; ``signer`` is the
    certificate of the receiver's own signing key (``receipts/2``; version 1 was signed by a key
    every receiver shared). The Ed25519 signing and verifying live with the keys; this model
    fixes the bytes signed.
    """

    KIND: ClassVar[Kind] = Kind.RECEIPTS
    schema_id: Literal["painav.receipts/2"] = Field(default="painav.receipts/2", alias="schema")
    site_id: SiteId
    device_id: DeviceId
    clip_id: ClipId
    sha256: Sha256Hex = Field(description="SHA-256 of the stored ciphertext.")
    stored_at: Timestamp
    receiver_id: ReceiverId
    signer: SignerCertB64
    signature: Ed25519SignatureB64 = Field(
        description="Ed25519 signature by the signer's key over the signed bytes."
    )

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers: :data:`RECEIPT_SIGNING_CONTEXT` then the receipt's
        canonical JSON (as :meth:`to_payload` writes it) without ``signature``."""
        return _signed_bytes(self, RECEIPT_SIGNING_CONTEXT)

    def signature_bytes(self) -> bytes:
        """The 64-byte Ed25519 signature, decoded."""
        return base64.b64decode(self.signature)

    @classmethod
    def signed(
        cls,
        *,
        site_id: str,
        device_id: str,
        clip_id: str,
        sha256: str,
        stored_at: datetime,
        receiver_id: str,
        signer: str,
        sign: Callable[[bytes], bytes],
    ) -> Self:
        """A receipt signed by *sign* (e.g. an Ed25519 private key's ``sign``), which is given
        :meth:`signed_bytes` and returns the 64-byte signature; *signer* is the certificate of
        that key (base64 DER)."""
        draft = cls(
            site_id=site_id,
            device_id=device_id,
            clip_id=clip_id,
            sha256=sha256,
            stored_at=stored_at,
            receiver_id=receiver_id,
            signer=signer,
            signature=_UNSIGNED,
        )
        return _sign(draft, RECEIPT_SIGNING_CONTEXT, sign)

    def topic_mismatch(self, topic: Topic) -> str | None:
        """A receipt may only be sent on the topic of the unit it names."""
        return _unit_mismatch(self.site_id, self.device_id, topic)


@dataclass(frozen=True)
class LegacyReceipt:
    """A ``receipts/1`` payload, for units of the previous version during an upgrade: the same
    statement as *receipt*, without ``signer``, signed by *sign* (the site's old shared receipt
    key) over ``painav-receipt/1`` and a newline, then its canonical JSON without
    ``signature``. Units of this version ignore it."""

    site_id: str
    device_id: str
    payload: bytes

    @classmethod
    def of(cls, receipt: Receipt, sign: Callable[[bytes], bytes]) -> LegacyReceipt:
        body = receipt.model_dump(mode="json", by_alias=True, exclude={"signature", "signer"})
        body["schema"] = LEGACY_RECEIPT_SCHEMA
        raw = sign(_LEGACY_RECEIPT_CONTEXT + dump_json(body))
        if not isinstance(raw, bytes) or len(raw) != 64:
            raise MessageError("receipts message: sign() must return a 64-byte Ed25519 signature")
        payload = dump_json({**body, "signature": base64.b64encode(raw).decode()})
        return cls(receipt.site_id, receipt.device_id, payload)


class QcVerdict(MessageModel):
    """The hospital's quality-control verdict on one of the unit's clips, on ``qc``.

    ``usable``: nothing to do. ``check``: a person should look at the clip; the nurse need not
    act. ``repeat``: the clip will not serve the study; if it is the unit's latest clip, the
    light asks the nurse to record again while the participant is still there. ``pass`` says
    which quality check gave it: ``quick`` (right after the clip is stored) or ``full`` (after
    feature extraction); a later verdict on the same clip replaces an earlier one. ``reasons``
    are short codes (e.g. ``no_face``, ``audio_clipping``), most important first, no personal
    data; at least one for ``check`` and ``repeat``. The topic names the unit; the verdict
    itself only names the clip.
    """

    # By name too, so Python callers can write pass_=...; the wire is always read by alias.
    model_config = ConfigDict(validate_by_name=True)

    KIND: ClassVar[Kind] = Kind.QC
    schema_id: Literal["painav.qc/1"] = Field(default="painav.qc/1", alias="schema")
    clip_id: ClipId
    verdict: Literal["usable", "check", "repeat"] = Field(
        description="usable: nothing to do; check: a person should look; repeat: record again."
    )
    reasons: Annotated[tuple[ReasonCode, ...], Field(max_length=MAX_QC_REASONS)] = Field(
        json_schema_extra={"uniqueItems": True},
        description=(
            f"Short reason codes, most important first, at most {MAX_QC_REASONS}, no repeats; "
            "at least one unless the verdict is usable."
        ),
    )
    pass_: Literal["quick", "full"] = Field(
        alias="pass",
        description="quick: checked as soon as the clip was stored; full: after extraction.",
    )
    issued_at: Timestamp

    @field_validator("reasons")
    @classmethod
    def _reasons_fit_the_verdict(
        cls, value: tuple[str, ...], info: ValidationInfo
    ) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise PydanticCustomError("painav_unique", "must not repeat a reason")
        if not value and info.data.get("verdict") in ("check", "repeat"):
            raise PydanticCustomError("painav_required", "at least one for check and repeat")
        return value


MAX_ACKED_EVENTS: Final = 64
"""The most event ids one acknowledgement names."""


class EventAck(MessageModel):
    """The receiver's word, on ``event-acks``, that it recorded these events of the unit (by
    their ``event_id``, :class:`~protocol.unit_messages.Event` version 2): the unit may forget
    them. Not signed, unlike a receipt: only a receiver may publish on a unit's ``event-acks``
    (the broker's ACL), and a forged one (by whoever controls the broker) only stops the unit
    publishing events that broker could as well keep from every receiver; it deletes no data,
    and the unit's system journal logged each event too. The topic names the unit."""

    KIND: ClassVar[Kind] = Kind.EVENT_ACKS
    schema_id: Literal["painav.event-acks/1"] = Field(default="painav.event-acks/1", alias="schema")
    event_ids: Annotated[tuple[EventId, ...], Field(min_length=1, max_length=MAX_ACKED_EVENTS)] = (
        Field(
            json_schema_extra={"uniqueItems": True},
            description=f"The events recorded, 1 to {MAX_ACKED_EVENTS}, no repeats.",
        )
    )
    recorded_at: Timestamp

    @field_validator("event_ids")
    @classmethod
    def _no_repeats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise PydanticCustomError("painav_unique", "must not repeat an event id")
        return value


class CrlMessage(MessageModel):
    """The site root's certificate revocation list, retained on each unit's ``crl`` topic by
    the receivers. Not signed as a message: the CRL is signed by the site root itself, and a
    unit keeps it only if that signature verifies and it is newer than the one it holds."""

    KIND: ClassVar[Kind] = Kind.CRL
    schema_id: Literal["painav.crl/1"] = Field(default="painav.crl/1", alias="schema")
    crl: str = Field(
        pattern=r"^[A-Za-z0-9+/]{4,43000}={0,2}$",
        max_length=43692,
        description="The site root's X.509 CRL, DER in padded base64.",
    )

    def crl_der(self) -> bytes:
        """The CRL, decoded (DER)."""
        return base64.b64decode(self.crl)
