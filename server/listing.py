"""A unit's list of the clips it still holds (``GET /v1/clips``), parsed and checked."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from pydantic import ValidationError

from protocol.clip_manifest import ClipManifest
from protocol.message_codec import describe
from protocol.message_fields import CLIP_ID_PATTERN

__all__ = ["MAX_SIGNATURE_BYTES", "SHA256_HEX", "ListedClip", "parse_listing"]

MAX_SIGNATURE_BYTES: Final = 16 * 1024  # a minisign signature is under 1 KiB
SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_LISTED_KEYS: Final = frozenset(
    {"clip_id", "size_bytes", "sha256", "state", "sealed_at", "manifest", "signature"}
)


@dataclass(frozen=True)
class ListedClip:
    """One entry of a unit's ``/v1/clips`` list: a sealed clip it still holds, with what its
    announcement carries (manifest, minisign text), checked to agree with the entry."""

    clip_id: str
    size_bytes: int
    sha256: str
    state: str
    sealed_at: datetime | None
    manifest: ClipManifest
    signature: str


def parse_listing(data: object, device_id: str) -> list[ListedClip]:
    """The entries of a ``/v1/clips`` body; ValueError naming the first bad one.

    One bad entry refuses the whole list: a unit that serves it is broken or not ours to trust.
    """
    if not isinstance(data, list):
        raise ValueError("not a JSON list")
    clips = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"item {i} is not an object")
        if item.keys() != _LISTED_KEYS:  # unknown keys refused, as in every painav message
            missing = sorted(_LISTED_KEYS - item.keys())
            unknown = sorted(item.keys() - _LISTED_KEYS)
            what = f"missing {missing[0]!r}" if missing else f"unknown key {unknown[0][:40]!r}"
            raise ValueError(f"item {i}: {what}")
        clip_id, size, sha256 = item["clip_id"], item["size_bytes"], item["sha256"]
        state, sealed_at = item["state"], item["sealed_at"]
        manifest, signature = _listed_manifest(item["manifest"], i), item["signature"]
        if not isinstance(clip_id, str) or not re.fullmatch(CLIP_ID_PATTERN, clip_id):
            raise ValueError(f"item {i}: bad clip_id")
        if type(size) is not int or size <= 0:
            raise ValueError(f"item {i}: bad size_bytes")
        if not isinstance(sha256, str) or not SHA256_HEX.fullmatch(sha256):
            raise ValueError(f"item {i}: bad sha256")
        if not isinstance(state, str) or not isinstance(sealed_at, str | None):
            raise ValueError(f"item {i}: bad state or sealed_at")
        if not isinstance(signature, str) or not signature.isascii():
            raise ValueError(f"item {i}: signature is not ASCII text")
        if len(signature) > MAX_SIGNATURE_BYTES:
            raise ValueError(f"item {i}: signature longer than {MAX_SIGNATURE_BYTES} bytes")
        # The entry and its manifest must name the same clip, and a unit may only list its own
        # clips: its certificate vouches for the list, not for another unit's recordings.
        listed = (clip_id, size, sha256, device_id)
        if (manifest.clip_id, manifest.size_bytes, manifest.sha256, manifest.device_id) != listed:
            raise ValueError(f"item {i}: manifest disagrees with the entry or the unit")
        when = None if sealed_at is None else datetime.fromisoformat(sealed_at)
        clips.append(ListedClip(clip_id, size, sha256, state, when, manifest, signature))
    return clips


def _listed_manifest(data: object, i: int) -> ClipManifest:
    # Through JSON text: the model is strict about Python types (a JSON array is no tuple), and
    # must read the listing exactly as it reads an announcement's manifest.
    try:
        return ClipManifest.model_validate_json(json.dumps(data, allow_nan=False))
    except ValidationError as exc:
        raise ValueError(f"item {i}: manifest {describe(exc)}") from None
    except ValueError:  # NaN or Infinity, which JSON does not have
        raise ValueError(f"item {i}: manifest is not JSON") from None
