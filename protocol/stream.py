"""age's STREAM payload cipher: ChaCha20-Poly1305 over 64 KiB chunks with a counter nonce.

Each chunk's nonce is an 11-byte big-endian counter and a final byte that is 1 only on the
last chunk, so truncation, reordering and appending are all detected. Knows nothing about
headers or recipients.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import PayloadError

__all__ = [
    "CHUNK_SIZE",
    "ENCRYPTED_CHUNK_SIZE",
    "NONCE_SIZE",
    "TAG_SIZE",
    "BytesLike",
    "StreamCipher",
]

CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
ENCRYPTED_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
NONCE_SIZE = 16  # the payload nonce that salts the payload key, written after the header
_COUNTER_LIMIT = 1 << 88

BytesLike = bytes | bytearray | memoryview


class StreamCipher:
    """Seals or opens the chunks of one payload, in order, under the key derived from the
    file key and payload nonce."""

    def __init__(self, file_key: bytes, payload_nonce: bytes) -> None:
        key = HKDF(hashes.SHA256(), 32, payload_nonce, b"payload").derive(file_key)
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0
        self._done = False

    @property
    def chunks(self) -> int:
        """How many chunks have been sealed or opened so far."""
        return self._counter

    def _nonce(self, last: bool) -> bytes:
        if self._done:
            raise PayloadError("the last chunk was already processed")
        if self._counter >= _COUNTER_LIMIT:
            raise PayloadError("payload has too many chunks")
        return self._counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")

    def seal_into(self, plaintext: BytesLike, last: bool, out: bytearray | memoryview) -> int:
        """Encrypt one chunk (64 KiB; only the last may be shorter, and empty only when it
        is the only one) into the front of *out*, returning the ciphertext length."""
        if len(plaintext) > CHUNK_SIZE or (not last and len(plaintext) != CHUNK_SIZE):
            raise ValueError("STREAM chunks are exactly 64 KiB but for the last")
        if last and not plaintext and self._counter:
            raise ValueError("only an empty payload has an empty last chunk")
        size = len(plaintext) + TAG_SIZE
        written = self._aead.encrypt_into(
            self._nonce(last), plaintext, None, memoryview(out)[:size]
        )
        self._counter += 1
        self._done = last
        return written

    def open_into(self, ciphertext: BytesLike, last: bool, out: bytearray | memoryview) -> int:
        """Authenticate and decrypt one chunk into the front of *out*, returning the plaintext
        length; raises :class:`PayloadError` on any defect. On failure *out* may hold
        unauthenticated bytes, so it must be a buffer the caller never releases unchecked."""
        if last and len(ciphertext) == TAG_SIZE and self._counter:
            raise PayloadError(f"chunk {self._counter}: empty last chunk after data")
        size = len(ciphertext) - TAG_SIZE
        try:
            if size < 0:
                raise InvalidTag
            self._aead.decrypt_into(self._nonce(last), ciphertext, None, memoryview(out)[:size])
        except InvalidTag:
            where = "last chunk" if last else "chunk"
            raise PayloadError(
                f"{where} {self._counter} fails authentication: the file is truncated or altered"
            ) from None
        self._counter += 1
        self._done = last
        return size
