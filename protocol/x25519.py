"""age's X25519 recipient (``age1…``) and identity (``AGE-SECRET-KEY-1…``): wrap and unwrap.

The unit holds only recipients, so it can encrypt a clip but never read it back; the identity
lives on the extraction host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import bech32
from .errors import HeaderError, KeyFormatError
from .format import Stanza, b64decode, b64encode

__all__ = ["STANZA_TYPE", "X25519Identity", "X25519Recipient"]

STANZA_TYPE = "X25519"
_LABEL = b"age-encryption.org/v1/X25519"
_RECIPIENT_HRP = "age"
_IDENTITY_HRP = "age-secret-key-"
_FILE_KEY_SIZE = 16
_ZERO_NONCE = bytes(12)


def _wrap_key(shared: bytes, salt: bytes) -> bytes:
    if shared == bytes(32):
        # A low-order point gives an all-zero secret; age refuses it (RFC 7748, section 6.1).
        raise HeaderError("X25519 stanza: low-order point gives an all-zero shared secret")
    return HKDF(hashes.SHA256(), 32, salt, _LABEL).derive(shared)


@dataclass(frozen=True)
class X25519Recipient:
    """A public key a clip is encrypted to, written ``age1…`` (what ``age-keygen -y`` prints)."""

    public_bytes: bytes

    @classmethod
    def from_string(cls, text: str) -> X25519Recipient:
        try:
            hrp, data = bech32.decode(text.strip())
        except KeyFormatError as exc:
            raise KeyFormatError(f"age recipient {text!r}: {exc}") from None
        if hrp != _RECIPIENT_HRP or len(data) != 32 or text.strip().lower() != text.strip():
            raise KeyFormatError(f"age recipient {text!r}: not an age1… X25519 public key")
        return cls(data)

    def __str__(self) -> str:
        return bech32.encode(_RECIPIENT_HRP, self.public_bytes)

    def wrap(self, file_key: bytes) -> Stanza:
        """Wrap *file_key* for this recipient in a fresh ephemeral exchange."""
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(self.public_bytes))
        key = _wrap_key(shared, share + self.public_bytes)
        body = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)
        return Stanza(STANZA_TYPE, [b64encode(share)], body)


@dataclass(frozen=True)
class X25519Identity:
    """A private key that can unwrap clips, written ``AGE-SECRET-KEY-1…`` (``age-keygen``)."""

    private_bytes: bytes

    @classmethod
    def generate(cls) -> X25519Identity:
        return cls(os.urandom(32))

    @classmethod
    def from_string(cls, text: str) -> X25519Identity:
        text = text.strip()
        try:
            hrp, data = bech32.decode(text)
        except KeyFormatError as exc:
            raise KeyFormatError(f"age identity: {exc}") from None
        if hrp != _IDENTITY_HRP or len(data) != 32 or text.upper() != text:
            raise KeyFormatError("age identity: not an AGE-SECRET-KEY-1… X25519 secret key")
        return cls(data)

    def __str__(self) -> str:
        return bech32.encode(_IDENTITY_HRP, self.private_bytes).upper()

    def __repr__(self) -> str:
        return f"X25519Identity(recipient={self.recipient})"  # never print the secret

    @property
    def recipient(self) -> X25519Recipient:
        private = X25519PrivateKey.from_private_bytes(self.private_bytes)
        return X25519Recipient(private.public_key().public_bytes_raw())

    def unwrap(self, stanza: Stanza) -> bytes | None:
        """Return the file key if *stanza* was made for this identity, None if it was not.

        A malformed X25519 stanza raises :class:`HeaderError` whoever it is for.
        """
        if len(stanza.args) != 1:
            raise HeaderError("X25519 stanza: expected exactly one argument")
        share = b64decode(stanza.args[0], "X25519 stanza share")
        if len(share) != 32:
            raise HeaderError("X25519 stanza: share is not 32 bytes")
        if len(stanza.body) != _FILE_KEY_SIZE + 16:
            raise HeaderError("X25519 stanza: body is not a wrapped 16-byte file key")
        private = X25519PrivateKey.from_private_bytes(self.private_bytes)
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:
            # OpenSSL refuses the all-zero result of a low-order point, as age requires.
            shared = bytes(32)
        key = _wrap_key(shared, share + self.recipient.public_bytes)
        try:
            return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, stanza.body, None)
        except InvalidTag:
            return None
