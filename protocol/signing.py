"""Clip signatures and receipts.

A clip's signature is a minisign signature over the ciphertext whose trusted comment binds the
clip id, the unit, the ciphertext's SHA-256 and the participant and visit the unit was armed
with, so a valid signature cannot be moved to another clip or unit, nor the clip relabelled
with another pseudonym. A receipt is signed by a receiver's own key, certified by the site root
(:mod:`.hospital_signature`), and only a receipt that verifies and names the clip's SHA-256 lets
the unit delete the clip.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Final

from .atomic import StrPath
from .errors import (
    BindingError,
    RelabelledError,
    SignatureError,
    SignatureFormatError,
)
from .hospital_messages import Receipt
from .hospital_signature import HospitalSigner, HospitalTrust, verify_signed
from .message_fields import PSEUDONYM_PATTERN, VISIT_PATTERN
from .minisign import DEFAULT_UNTRUSTED_COMMENT, PublicKey, Signature, SigningKey

__all__ = [
    "BINDING_VERSION",
    "ClipBinding",
    "ClipDigests",
    "ClipHasher",
    "ClipSigner",
    "PublicKey",
    "Signature",
    "SigningKey",
    "clip_digests",
    "sign_clip",
    "sign_receipt",
    "verify_clip",
    "verify_clip_digests",
    "verify_receipt",
]

Source = StrPath | BinaryIO
_CHUNK = 1024 * 1024

BINDING_VERSION: Final = 2
"""The binding form units sign: ``painav-clip/2``. Form 1 (units of 0.1.0 before issue 11) is
still read."""

_ID = r"[A-Za-z0-9._-]{1,64}"
_PSEUDONYM = PSEUDONYM_PATTERN.removeprefix("^").removesuffix("$")
_VISIT = VISIT_PATTERN.removeprefix("^").removesuffix("$")
_COMMON = rf"clip:({_ID}) device:({_ID}) sha256:([0-9a-f]{{64}}) timestamp:(0|[1-9][0-9]{{0,18}})"
_BINDINGS = {
    1: re.compile(rf"painav-clip/1 {_COMMON}"),
    # '-' for none: neither a pseudonym nor a visit label can be '-' alone.
    2: re.compile(rf"painav-clip/2 {_COMMON} participant:(-|{_PSEUDONYM}) visit:(-|{_VISIT})"),
}


@dataclass(frozen=True)
class ClipBinding:
    """What a clip signature's trusted comment vouches for: clip, device, ciphertext SHA-256,
    time, and (form 2) the participant and visit the clip was recorded for.

    Written ``painav-clip/2 clip:<id> device:<id> sha256:<64 hex> timestamp:<unix s>
    participant:<pseudonym or -> visit:<label or ->`` (one line; ``-``: not armed, or no visit).
    Form 1, ``painav-clip/1`` up to the timestamp, is what earlier units sign: it vouches for
    no participant (*participant* and *visit* are None, and :meth:`check_labels` says so).
    """

    clip_id: str
    device_id: str
    sha256: str
    timestamp: int
    participant: str | None = None
    visit: str | None = None
    version: int = BINDING_VERSION

    def __post_init__(self) -> None:
        for name, value in (("clip id", self.clip_id), ("device id", self.device_id)):
            if not re.fullmatch(_ID, value):
                raise BindingError(f"{name} {value!r}: must be 1 to 64 of [A-Za-z0-9._-]")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise BindingError(f"sha256 {self.sha256!r}: must be 64 lower-case hex digits")
        if type(self.timestamp) is not int or not 0 <= self.timestamp < 10**19:
            raise BindingError(f"timestamp {self.timestamp!r}: must be Unix seconds")
        if self.version not in _BINDINGS:
            raise BindingError(f"binding form {self.version!r}: must be 1 or 2")
        if self.version == 1 and (self.participant, self.visit) != (None, None):
            raise BindingError("binding form 1 cannot name a participant or visit")
        # No values in these messages: a pseudonym is personal data of a kind.
        if self.participant is not None and not re.fullmatch(_PSEUDONYM, self.participant):
            raise BindingError("participant: must be a study pseudonym like PAIN-0042")
        if self.visit is not None and not re.fullmatch(_VISIT, self.visit):
            raise BindingError("visit: must be a visit label of [A-Za-z0-9_-], not '-' alone")

    def to_comment(self) -> str:
        common = (
            f"painav-clip/{self.version} clip:{self.clip_id} device:{self.device_id} "
            f"sha256:{self.sha256} timestamp:{self.timestamp}"
        )
        if self.version == 1:
            return common
        return f"{common} participant:{self.participant or '-'} visit:{self.visit or '-'}"

    @classmethod
    def from_comment(cls, text: str) -> ClipBinding:
        for version, pattern in _BINDINGS.items():
            match = pattern.fullmatch(text)
            if match is None:
                continue
            clip_id, device_id, sha256, timestamp, *labels = match.groups()
            participant, visit = [None if v == "-" else v for v in labels] or [None, None]
            return cls(clip_id, device_id, sha256, int(timestamp), participant, visit, version)
        raise BindingError(f"trusted comment is not a painav clip binding: {text[:120]!r}")

    def check_labels(self, participant: str | None, visit: str | None) -> bool:
        """Whether this binding vouches that the clip was recorded for *participant* at *visit*
        (a manifest's): True if it does; False for form 1, which signs neither; raises
        :class:`RelabelledError` if it names another participant or visit."""
        if self.version == 1:
            return False
        if (self.participant, self.visit) != (participant, visit):
            what = "participant" if self.participant != participant else "visit"
            raise RelabelledError(
                f"clip {self.clip_id}: the manifest's {what} is not the one the unit signed"
            )
        return True


@dataclass(frozen=True)
class ClipDigests:
    """What one pass over a clip's ciphertext yields: its size, its SHA-256 (what bindings,
    announcements and the store name) and its BLAKE2b-512 (what the minisign signature covers)."""

    size: int
    sha256: str
    blake2b: bytes


class ClipHasher:
    """Both digests of a clip, fed incrementally; memory stays flat however long the clip."""

    def __init__(self) -> None:
        self.blake2b = hashlib.blake2b()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self.blake2b.update(chunk)
        self.sha256.update(chunk)
        self.size += memoryview(chunk).nbytes

    def digests(self) -> ClipDigests:
        return ClipDigests(self.size, self.sha256.hexdigest(), self.blake2b.digest())


class ClipSigner:
    """A clip signer fed incrementally: hashes ciphertext as it flows, signs at :meth:`finish`::

    signer = ClipSigner(key)
    for chunk in ciphertext_chunks:
        signer.update(chunk)
    signature, binding = signer.finish(
        "cart-3-20250301T093000Z-a1b2", "cart-3", participant="PAIN-0042", visit="baseline"
    )
    """

    def __init__(self, key: SigningKey) -> None:
        self._key = key
        self._hasher = ClipHasher()
        self._finished = False

    @property
    def sha256_hex(self) -> str:
        return self._hasher.sha256.hexdigest()

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._hasher.size

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._finished:
            raise ValueError("ClipSigner: update after finish")
        self._hasher.update(chunk)

    def write(self, chunk: bytes | bytearray | memoryview) -> int:
        """Like :meth:`update`, shaped as a file's ``write`` so the signer can sit in a tee."""
        self.update(chunk)
        return memoryview(chunk).nbytes

    def finish(
        self,
        clip_id: str,
        device_id: str,
        *,
        participant: str | None,
        visit: str | None,
        timestamp: int | None = None,
        untrusted_comment: str = DEFAULT_UNTRUSTED_COMMENT,
    ) -> tuple[Signature, ClipBinding]:
        """Sign what was fed, binding *clip_id*, *device_id*, its SHA-256, *timestamp* (now),
        and the *participant* and *visit* the unit was armed with (None: not armed, no visit),
        which must be the manifest's: the receiver refuses a clip whose manifest names others."""
        if self._finished:
            raise ValueError("ClipSigner: finish called twice")
        when = int(time.time()) if timestamp is None else timestamp
        binding = ClipBinding(clip_id, device_id, self.sha256_hex, when, participant, visit)
        signature = self._key.sign_digest(
            self._hasher.blake2b.digest(), binding.to_comment(), untrusted_comment
        )
        self._finished = True
        return signature, binding


def _feed(source: Source, update: Callable[[bytes], None]) -> None:
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            _feed(f, update)
        return
    while chunk := source.read(_CHUNK):
        update(chunk)


def clip_digests(source: Source) -> ClipDigests:
    """Both digests of a whole clip (a path or a binary file object), streaming it."""
    hasher = ClipHasher()
    _feed(source, hasher.update)
    return hasher.digests()


def sign_clip(
    key: SigningKey,
    source: Source,
    clip_id: str,
    device_id: str,
    *,
    participant: str | None = None,
    visit: str | None = None,
    timestamp: int | None = None,
) -> tuple[Signature, ClipBinding]:
    """Sign a whole clip file (a path or a binary file object), streaming it; *participant*
    and *visit* as :meth:`ClipSigner.finish` (None: a clip recorded unarmed)."""
    signer = ClipSigner(key)
    _feed(source, signer.update)
    return signer.finish(
        clip_id, device_id, participant=participant, visit=visit, timestamp=timestamp
    )


def verify_clip(
    public_key: PublicKey,
    signature: Signature,
    source: Source,
    *,
    clip_id: str | None = None,
    device_id: str | None = None,
) -> ClipBinding:
    """Check a clip's signature and binding, streaming the clip; return the binding.

    Raises as :func:`verify_clip_digests`, which it calls with the clip's digests.
    """
    return verify_clip_digests(
        public_key, signature, clip_digests(source), clip_id=clip_id, device_id=device_id
    )


def verify_clip_digests(
    public_key: PublicKey,
    signature: Signature,
    digests: ClipDigests,
    *,
    clip_id: str | None = None,
    device_id: str | None = None,
) -> ClipBinding:
    """Check a clip's signature and binding against the clip's *digests*; return the binding.

    For a caller that hashed the clip as it arrived (the receiver, while downloading) and so
    need not read it again. Raises :class:`BadSignatureError` for another key, altered data or
    an altered trusted comment, :class:`BindingError` for a comment naming another clip, device
    or hash (whether it names the manifest's participant is :meth:`ClipBinding.check_labels`'s
    to say), and :class:`SignatureFormatError` for a legacy (non-prehashed) signature, which
    clips never use.
    """
    if not signature.prehashed:
        raise SignatureFormatError("legacy non-prehashed ('Ed') signature; clips are signed 'ED'")
    public_key.check_key_id(signature)
    public_key.verify_message(signature, digests.blake2b)
    binding = ClipBinding.from_comment(signature.trusted_comment)
    if binding.sha256 != digests.sha256:
        raise BindingError(f"binding names SHA-256 {binding.sha256}, clip has {digests.sha256}")
    if clip_id is not None and binding.clip_id != clip_id:
        raise BindingError(f"signature is for clip {binding.clip_id!r}, expected {clip_id!r}")
    if device_id is not None and binding.device_id != device_id:
        raise BindingError(f"signature is for device {binding.device_id!r}, expected {device_id!r}")
    return binding


def sign_receipt(
    signer: HospitalSigner,
    *,
    site_id: str,
    device_id: str,
    clip_id: str,
    sha256: str,
    stored_at: datetime,
) -> Receipt:
    """The receiver's receipt for a stored clip (``receipts/2``), signed with its own
    certified signing key; the receipt names the receiver its certificate names."""
    return Receipt.signed(
        site_id=site_id,
        device_id=device_id,
        clip_id=clip_id,
        sha256=sha256,
        stored_at=stored_at,
        receiver_id=signer.receiver_id,
        signer=signer.certificate,
        sign=signer.sign,
    )


def verify_receipt(trust: HospitalTrust, receipt: Receipt, *, sha256: str, now: datetime) -> str:
    """Check that *receipt* was signed by a receiver the site root certifies (and has not
    revoked) and names *sha256*, the hash of the clip the unit holds; return that receiver's
    id. Raises :class:`SignerError`, :class:`BadSignatureError` or :class:`BindingError`."""
    try:
        signed_by = verify_signed(
            trust, receipt.signer, receipt.signature_bytes(), receipt.signed_bytes(), now
        )
    except SignatureError as exc:
        raise type(exc)(f"receipt for clip {receipt.clip_id}: {exc}") from None
    if receipt.receiver_id != signed_by:
        raise BindingError(
            f"receipt for clip {receipt.clip_id} names receiver {receipt.receiver_id!r}, "
            f"signed by {signed_by!r}"
        )
    if receipt.sha256 != sha256:
        raise BindingError(
            f"receipt for clip {receipt.clip_id} names SHA-256 {receipt.sha256}, "
            f"the clip has {sha256}"
        )
    return signed_by
