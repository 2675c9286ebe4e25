"""A unit's list of the clips it still holds: the body of ``GET /v1/clips`` (JSON list).

The unit writes each entry from its outbox; the receiver's reconciliation reads the list to
catalogue clips whose announcement was lost, so an entry carries all an announcement does but
the URL (manifest and minisign signature) and must agree with its manifest. Both ends use
:class:`ListedClip`; its JSON Schema is published beside the MQTT ones.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from .clip_manifest import ClipManifest
from .message_codec import Part
from .message_fields import ClipId, Sha256Hex, Timestamp, format_timestamp

__all__ = ["MAX_SIGNATURE_BYTES", "ListedClip", "parse_listing"]

MAX_SIGNATURE_BYTES: Final = 16 * 1024  # a minisign signature is under 1 KiB
_OWN_MESSAGES: Final = frozenset({"painav_signature", "painav_listing"})


def _signature_text(value: object) -> object:
    if not isinstance(value, str) or not value.isascii():
        raise PydanticCustomError("painav_signature", "signature is not ASCII text")
    if len(value) > MAX_SIGNATURE_BYTES:
        raise PydanticCustomError(
            "painav_signature", f"signature longer than {MAX_SIGNATURE_BYTES} bytes"
        )
    return value


class ListedClip(Part):
    """One sealed clip a unit still holds, with what its announcement carries."""

    clip_id: ClipId
    size_bytes: int = Field(gt=0, description="Ciphertext size in bytes.")
    sha256: Sha256Hex
    state: str = Field(min_length=1, max_length=32, description="Its state in the outbox.")
    sealed_at: Timestamp | None
    manifest: ClipManifest
    signature: Annotated[str, BeforeValidator(_signature_text)] = Field(
        description="The clip's minisign signature, as text."
    )

    @model_validator(mode="after")
    def _agrees_with_its_manifest(self, info: ValidationInfo) -> ListedClip:
        # A unit may only list its own clips: its certificate vouches for the list, not for
        # another unit's recordings. The reader passes the unit as context.
        unit = (info.context or {}).get("device_id", self.manifest.device_id)
        m = self.manifest
        if (m.clip_id, m.size_bytes, m.sha256, m.device_id) != (
            self.clip_id,
            self.size_bytes,
            self.sha256,
            unit,
        ):
            raise PydanticCustomError(
                "painav_listing", "manifest disagrees with the entry or the unit"
            )
        return self

    @classmethod
    def of(
        cls,
        *,
        clip_id: str,
        size_bytes: int,
        sha256: str,
        state: str,
        sealed_at: datetime | None,
        manifest_json: str,
        signature: str,
    ) -> ListedClip:
        """An entry from what the unit's outbox keeps; ValueError if it is not a valid one."""
        return cls.model_validate_json(
            json.dumps(
                {
                    "clip_id": clip_id,
                    "size_bytes": size_bytes,
                    "sha256": sha256,
                    "state": state,
                    "sealed_at": None if sealed_at is None else format_timestamp(sealed_at),
                    "manifest": json.loads(manifest_json),
                    "signature": signature,
                }
            )
        )


def _describe(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    loc = [str(part) for part in first["loc"]]
    kind, message = first["type"], first["msg"]
    if not loc or kind in _OWN_MESSAGES:
        return message
    if kind == "missing" and len(loc) == 1:
        return f"missing {loc[0]!r}"
    if kind == "extra_forbidden" and len(loc) == 1:
        return f"unknown key {loc[0][:40]!r}"
    if loc[0] == "manifest":
        return (
            f"manifest field '{'.'.join(loc[1:])}': {message}"
            if loc[1:]
            else (f"manifest {message}")
        )
    return f"bad {loc[0]}: {message}"


def parse_listing(data: Any, device_id: str) -> list[ListedClip]:
    """The entries of a ``/v1/clips`` body from unit *device_id*; ValueError naming the first
    bad one. One bad entry refuses the whole list: a unit that serves it is broken or not ours
    to trust."""
    if not isinstance(data, list):
        raise ValueError("not a JSON list")
    clips = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"item {i} is not an object")
        try:
            # Through JSON text, as an announcement is read: strict about JSON types.
            text = json.dumps(item, allow_nan=False)
        except ValueError:  # NaN or Infinity, which JSON does not have
            raise ValueError(f"item {i}: not JSON") from None
        try:
            clips.append(ListedClip.model_validate_json(text, context={"device_id": device_id}))
        except ValidationError as exc:
            raise ValueError(f"item {i}: {_describe(exc)}") from None
    return clips
