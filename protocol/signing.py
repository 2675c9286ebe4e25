"""Clip signatures and receipts.

A clip's signature is a minisign signature over the ciphertext whose trusted comment binds the
clip id, the unit and the ciphertext's SHA-256, so a valid signature cannot be moved to another
clip or unit. A receipt is signed by a receiver's own key, certified by the site root
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
from typing import BinaryIO

from .atomic import StrPath
from .errors import BindingError, SignatureError, SignatureFormatError
from .hospital_messages import Receipt
from .hospital_signature import HospitalSigner, HospitalTrust, verify_signed
from .minisign import DEFAULT_UNTRUSTED_COMMENT, PublicKey, Signature, SigningKey

__all__ = [
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

_ID = r"[A-Za-z0-9._-]{1,64}"
_BINDING = re.compile(
    rf"painav-clip/1 clip:({_ID}) device:({_ID}) sha256:([0-9a-f]{{64}}) "
    r"timestamp:(0|[1-9][0-9]{0,18})"
)


@dataclass(frozen=True)
class ClipBinding:
    """What a clip signature's trusted comment vouches for: clip, device, ciphertext SHA-256, time.

    Written ``painav-clip/1 clip:<id> device:<id> sha256:<64 hex> timestamp:<unix s>``.
    """

    clip_id: str
    device_id: str
    sha256: str
    timestamp: int

    def __post_init__(self) -> None:
        for name, value in (("clip id", self.clip_id), ("device id", self.device_id)):
            if not re.fullmatch(_ID, value):
                raise BindingError(f"{name} {value!r}: must be 1 to 64 of [A-Za-z0-9._-]")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise BindingError(f"sha256 {self.sha256!r}: must be 64 lower-case hex digits")
        if type(self.timestamp) is not int or not 0 <= self.timestamp < 10**19:
            raise BindingError(f"timestamp {self.timestamp!r}: must be Unix seconds")

    def to_comment(self) -> str:
        return (
            f"painav-clip/1 clip:{self.clip_id} device:{self.device_id} "
            f"sha256:{self.sha256} timestamp:{self.timestamp}"
        )

    @classmethod
    def from_comment(cls, text: str) -> ClipBinding:
        match = _BINDING.fullmatch(text)
        if match is None:
            raise BindingError(f"trusted comment is not a painav clip binding: {text[:120]!r}")
        clip_id, device_id, sha256, timestamp = match.groups()
        return cls(clip_id, device_id, sha256, int(timestamp))


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
    signature, binding = signer.finish("clip-0042", "cart-3")
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
        timestamp: int | None = None,
        untrusted_comment: str = DEFAULT_UNTRUSTED_COMMENT,
    ) -> tuple[Signature, ClipBinding]:
        """Sign what was fed, binding *clip_id*, *device_id*, its SHA-256 and *timestamp* (now)."""
        if self._finished:
            raise ValueError("ClipSigner: finish called twice")
        when = int(time.time()) if timestamp is None else timestamp
        binding = ClipBinding(clip_id, device_id, self.sha256_hex, when)
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
    key: SigningKey, source: Source, clip_id: str, device_id: str, *, timestamp: int | None = None
) -> tuple[Signature, ClipBinding]:
    """Sign a whole clip file (a path or a binary file object), streaming it."""
    signer = ClipSigner(key)
    _feed(source, signer.update)
    return signer.finish(clip_id, device_id, timestamp=timestamp)


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
    or hash, and :class:`SignatureFormatError` for a legacy (non-prehashed) signature, which
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
