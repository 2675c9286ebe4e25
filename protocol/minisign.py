"""minisign's file formats: Ed25519 public and secret keys, and signatures with trusted comments."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .atomic import StrPath, exists_error, write_atomic
from .errors import BadSignatureError, KeyFormatError, SignatureFormatError

__all__ = [
    "DEFAULT_UNTRUSTED_COMMENT",
    "SCRYPT_MEMLIMIT_SENSITIVE",
    "SCRYPT_OPSLIMIT_SENSITIVE",
    "PassphraseError",
    "PublicKey",
    "Signature",
    "SigningKey",
]


DEFAULT_UNTRUSTED_COMMENT = "signature from minisign secret key"
# libsodium's crypto_pwhash_scryptsalsa208sha256_*LIMIT_SENSITIVE: what `minisign -G` uses.
SCRYPT_OPSLIMIT_SENSITIVE = 33554432
SCRYPT_MEMLIMIT_SENSITIVE = 1073741824

_ALG_PURE = b"Ed"  # Ed25519 over the message itself: keys, and legacy (`minisign -l`) signatures
_ALG_HASHED = b"ED"  # Ed25519 over BLAKE2b-512 of the message: minisign's default signature
_KDF_SCRYPT = b"Sc"
_KDF_NONE = b"\0\0"
_CHK_BLAKE2B = b"B2"
_UNTRUSTED = "untrusted comment: "
_TRUSTED = "trusted comment: "
# minisign reads each line with fgets() into 1024 (untrusted) or 8192 (trusted) bytes, prefix and
# newline included; a longer comment spills into the next read and minisign rejects the file.
_MAX_UNTRUSTED = 1024 - len(_UNTRUSTED) - 2
_MAX_TRUSTED = 8192 - len(_TRUSTED) - 2
_MAX_FILE = 16 * 1024
_CHUNK = 1024 * 1024
_SECRET_KEY_SIZE = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32


class PassphraseError(KeyFormatError):
    """An encrypted secret key file given no passphrase, or the wrong one."""


def _key_id_hex(key_id: bytes) -> str:
    # minisign prints the key id as a little-endian u64; 0.11 drops leading zeros, 0.12 keeps them.
    return f"{int.from_bytes(key_id, 'little'):016X}"


def _lines(text: str) -> list[str]:
    # "\n"-separated, optional final newline; a trailing "\r" goes, as minisign's trim() does.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _b64decode(text: str, size: int, what: str, error: type[ValueError]) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise error(f"{what}: not valid base64") from None
    if len(raw) != size:
        raise error(f"{what}: {len(raw)} bytes, expected {size}")
    if base64.b64encode(raw).decode() != text:
        raise error(f"{what}: not canonical base64")
    return raw


def _check_comment(text: str, what: str, limit: int) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise SignatureFormatError(f"{what}: not encodable as UTF-8") from None
    if any(c in text for c in "\r\n\0"):
        raise SignatureFormatError(f"{what}: must be one line without NUL")
    if size > limit:
        raise SignatureFormatError(f"{what}: {size} bytes, minisign allows at most {limit}")


def _read_small(path: StrPath, error: type[ValueError]) -> str:
    with open(path, "rb") as f:
        data = f.read(_MAX_FILE + 1)
    if len(data) > _MAX_FILE:
        raise error(f"{os.fspath(path)}: larger than {_MAX_FILE} bytes, not a minisign file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{os.fspath(path)}: not UTF-8 text") from None


def _scrypt_params(opslimit: int, memlimit: int) -> tuple[int, int, int]:
    """libsodium's pickparams(): the scrypt N, r, p an opslimit and a memlimit stand for."""
    opslimit = max(opslimit, 32768)
    r = 8
    cpu_bound = opslimit < memlimit // 32
    max_n = opslimit // (r * 4) if cpu_bound else memlimit // (r * 128)
    n_log2 = 1
    while n_log2 < 63 and (1 << n_log2) <= max_n // 2:
        n_log2 += 1
    p = 1 if cpu_bound else min((opslimit // 4) >> n_log2, 0x3FFFFFFF) // r
    return 1 << n_log2, r, p


def _scrypt(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int, size: int) -> bytes:
    n, r, p = _scrypt_params(opslimit, memlimit)
    try:
        # OpenSSL's own bound: the B and V arrays, 128·r·p + 128·r·(N + 2) bytes.
        maxmem = 128 * r * p + 128 * r * (n + 2)
        return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=size)
    except (ValueError, OverflowError, MemoryError) as exc:
        raise KeyFormatError(f"scrypt N={n} r={r} p={p} is unusable here: {exc}") from None


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


@dataclass(frozen=True)
class PublicKey:
    """A unit's minisign public key: an 8-byte key id and a 32-byte Ed25519 point."""

    key_id: bytes
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.key_id) != 8 or len(self.raw) != 32:
            raise KeyFormatError("public key: needs an 8-byte key id and a 32-byte key")

    @property
    def key_id_hex(self) -> str:
        """The key id in upper-case hex, as minisign prints it (zero-padded to 16 digits)."""
        return _key_id_hex(self.key_id)

    @classmethod
    def from_string(cls, text: str) -> PublicKey:
        """Parse the base64 line (what ``minisign -P`` takes) or a whole ``minisign.pub``."""
        lines = _lines(text.strip())
        if len(lines) == 2 and lines[0].startswith(_UNTRUSTED):
            lines = lines[1:]
        if len(lines) != 1:
            raise KeyFormatError("public key: expected one base64 line, or a comment and one")
        raw = _b64decode(lines[0].strip(), 42, "public key", KeyFormatError)
        if raw[:2] != _ALG_PURE:
            raise KeyFormatError(f"public key: unsupported algorithm {raw[:2]!r}, expected b'Ed'")
        return cls(raw[2:10], raw[10:])

    @classmethod
    def from_file(cls, path: StrPath) -> PublicKey:
        try:
            return cls.from_string(_read_small(path, KeyFormatError))
        except KeyFormatError as exc:
            raise KeyFormatError(f"{os.fspath(path)}: {exc}") from None

    def to_string(self) -> str:
        """The base64 line, what ``minisign -P`` takes."""
        return base64.b64encode(_ALG_PURE + self.key_id + self.raw).decode()

    def to_file_text(self) -> str:
        return f"{_UNTRUSTED}minisign public key {self.key_id_hex}\n{self.to_string()}\n"

    def save(self, path: StrPath, *, overwrite: bool = False) -> None:
        write_atomic(path, self.to_file_text().encode(), mode=0o644, overwrite=overwrite)

    def verify_raw(self, signature: bytes, data: bytes) -> None:
        """Check a bare Ed25519 *signature* over *data* (not a minisign signature: for small
        statements such as receipts, which carry their signature inline)."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (InvalidSignature, ValueError):
            raise BadSignatureError(
                f"signature does not verify with key {self.key_id_hex}"
            ) from None

    def verify(self, signature: Signature, data: bytes) -> None:
        """Check *signature* over *data* (prehashed or legacy) and over its trusted comment."""
        self.check_key_id(signature)
        self.verify_message(
            signature, hashlib.blake2b(data).digest() if signature.prehashed else data
        )

    def check_key_id(self, signature: Signature) -> None:
        """Raise :class:`BadSignatureError` unless *signature* names this key."""
        if signature.key_id != self.key_id:
            raise BadSignatureError(
                f"signed by key {_key_id_hex(signature.key_id)}, expected {self.key_id_hex}"
            )

    def verify_message(self, signature: Signature, message: bytes) -> None:
        """Check *signature* over *message* (for ``ED`` signatures, the BLAKE2b-512 digest of
        the data) and over its trusted comment."""
        try:
            key = Ed25519PublicKey.from_public_bytes(self.raw)
        except ValueError:
            raise BadSignatureError(f"public key {self.key_id_hex} is not a valid point") from None
        try:
            key.verify(signature.signature, message)
        except InvalidSignature:
            raise BadSignatureError(
                f"signature does not match the data (altered, or not by key {self.key_id_hex})"
            ) from None
        try:
            key.verify(signature.global_signature, signature.signed_comment())
        except InvalidSignature:
            raise BadSignatureError("trusted comment was altered") from None


@dataclass(frozen=True)
class Signature:
    """A minisign signature: the four lines of a ``.minisig`` file, decoded."""

    key_id: bytes
    signature: bytes
    trusted_comment: str
    global_signature: bytes
    untrusted_comment: str = DEFAULT_UNTRUSTED_COMMENT
    prehashed: bool = True

    def __post_init__(self) -> None:
        if len(self.key_id) != 8 or len(self.signature) != 64 or len(self.global_signature) != 64:
            raise SignatureFormatError("signature: needs an 8-byte key id and 64-byte signatures")
        _check_comment(self.untrusted_comment, "untrusted comment", _MAX_UNTRUSTED)
        _check_comment(self.trusted_comment, "trusted comment", _MAX_TRUSTED)

    @classmethod
    def from_text(cls, text: str | bytes) -> Signature:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise SignatureFormatError("signature: not UTF-8 text") from None
        lines = _lines(text)
        if len(lines) != 4:
            raise SignatureFormatError(f"signature: {len(lines)} lines, expected 4")
        untrusted, sig_line, trusted, global_line = lines
        if not untrusted.startswith(_UNTRUSTED):
            raise SignatureFormatError(f"signature: line 1 does not start with {_UNTRUSTED!r}")
        if not trusted.startswith(_TRUSTED):
            raise SignatureFormatError(f"signature: line 3 does not start with {_TRUSTED!r}")
        blob = _b64decode(sig_line, 74, "signature line 2", SignatureFormatError)
        if blob[:2] not in (_ALG_HASHED, _ALG_PURE):
            raise SignatureFormatError(f"signature: unsupported algorithm {blob[:2]!r}")
        global_sig = _b64decode(global_line, 64, "signature line 4", SignatureFormatError)
        return cls(
            key_id=blob[2:10],
            signature=blob[10:],
            trusted_comment=trusted.removeprefix(_TRUSTED),
            global_signature=global_sig,
            untrusted_comment=untrusted.removeprefix(_UNTRUSTED),
            prehashed=blob[:2] == _ALG_HASHED,
        )

    @classmethod
    def from_file(cls, path: StrPath) -> Signature:
        try:
            return cls.from_text(_read_small(path, SignatureFormatError))
        except SignatureFormatError as exc:
            raise SignatureFormatError(f"{os.fspath(path)}: {exc}") from None

    def to_text(self) -> str:
        alg = _ALG_HASHED if self.prehashed else _ALG_PURE
        blob = base64.b64encode(alg + self.key_id + self.signature).decode()
        global_sig = base64.b64encode(self.global_signature).decode()
        return (
            f"{_UNTRUSTED}{self.untrusted_comment}\n{blob}\n"
            f"{_TRUSTED}{self.trusted_comment}\n{global_sig}\n"
        )

    def signed_comment(self) -> bytes:
        """What the global signature covers: the signature, then the trusted comment's bytes."""
        return self.signature + self.trusted_comment.encode("utf-8")


class SigningKey:
    """A unit's minisign secret key, which signs its clips; ``repr`` shows only the key id."""

    __slots__ = ("_key", "_public")

    def __init__(self, seed: bytes, key_id: bytes) -> None:
        if len(seed) != 32:
            raise KeyFormatError("secret key: the Ed25519 seed must be 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self._public = PublicKey(key_id, self._key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(32), os.urandom(8))  # minisign's key ids are random too

    @property
    def public_key(self) -> PublicKey:
        return self._public

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self._public.key_id_hex})"

    def sign_raw(self, data: bytes) -> bytes:
        """A bare 64-byte Ed25519 signature over *data* (see :meth:`PublicKey.verify_raw`)."""
        return self._key.sign(data)

    def sign(
        self, data: bytes, trusted_comment: str, untrusted_comment: str = DEFAULT_UNTRUSTED_COMMENT
    ) -> Signature:
        """Sign *data* prehashed (``ED``), as ``minisign -S`` does."""
        return self.sign_digest(hashlib.blake2b(data).digest(), trusted_comment, untrusted_comment)

    def sign_digest(self, digest: bytes, trusted_comment: str, untrusted_comment: str) -> Signature:
        """Sign a BLAKE2b-512 *digest* computed by the caller, so data can be hashed as it
        streams by (an ``ED`` signature, identical to signing the data itself)."""
        _check_comment(trusted_comment, "trusted comment", _MAX_TRUSTED)
        _check_comment(untrusted_comment, "untrusted comment", _MAX_UNTRUSTED)
        sig = self._key.sign(digest)
        return Signature(
            key_id=self._public.key_id,
            signature=sig,
            trusted_comment=trusted_comment,
            global_signature=self._key.sign(sig + trusted_comment.encode("utf-8")),
            untrusted_comment=untrusted_comment,
        )

    @classmethod
    def from_file(cls, path: StrPath, passphrase: bytes | None = None) -> SigningKey:
        """Load a ``minisign.key``; *passphrase* is needed if it is encrypted, else ignored."""
        text = _read_small(path, KeyFormatError)
        try:
            return cls.from_file_text(text, passphrase)
        except KeyFormatError as exc:
            raise type(exc)(f"{os.fspath(path)}: {exc}") from None

    @classmethod
    def from_file_text(cls, text: str, passphrase: bytes | None = None) -> SigningKey:
        lines = _lines(text.strip())
        if len(lines) != 2 or not lines[0].startswith(_UNTRUSTED):
            raise KeyFormatError("secret key: expected a comment line and one base64 line")
        blob = _b64decode(lines[1].strip(), _SECRET_KEY_SIZE, "secret key", KeyFormatError)
        kdf, salt, secret = blob[2:4], blob[6:38], blob[54:]
        if blob[:2] != _ALG_PURE:
            raise KeyFormatError(f"secret key: unsupported algorithm {blob[:2]!r}")
        if blob[4:6] != _CHK_BLAKE2B:
            raise KeyFormatError(f"secret key: unsupported checksum {blob[4:6]!r}")
        if kdf == _KDF_SCRYPT:
            if passphrase is None:
                raise PassphraseError("secret key is encrypted; a passphrase is needed")
            opslimit = int.from_bytes(blob[38:46], "little")
            memlimit = int.from_bytes(blob[46:54], "little")
            secret = _xor(secret, _scrypt(passphrase, salt, opslimit, memlimit, len(secret)))
        elif kdf != _KDF_NONE:
            raise KeyFormatError(f"secret key: unsupported key derivation {kdf!r}")
        key_id, sk, checksum = secret[:8], secret[8:72], secret[72:]
        if checksum != hashlib.blake2b(_ALG_PURE + key_id + sk, digest_size=32).digest():
            if kdf == _KDF_SCRYPT:
                raise PassphraseError("wrong passphrase for the secret key (checksum mismatch)")
            # minisign computes the checksum only when it encrypts, so `-G -W` leaves zeros.
            if checksum != bytes(32):
                raise KeyFormatError("secret key: checksum mismatch, the file is corrupted")
        key = cls(sk[:32], key_id)
        if key.public_key.raw != sk[32:]:
            raise KeyFormatError("secret key: its public half does not match; the file is corrupt")
        return key

    def to_file_text(
        self,
        *,
        passphrase: bytes | None = None,
        kdf_opslimit: int = SCRYPT_OPSLIMIT_SENSITIVE,
        kdf_memlimit: int = SCRYPT_MEMLIMIT_SENSITIVE,
    ) -> str:
        """The ``minisign.key`` text; encrypted with scrypt like ``minisign -G`` if *passphrase*."""
        key_id = self._public.key_id
        sk = self._key.private_bytes_raw() + self._public.raw
        secret = key_id + sk + hashlib.blake2b(_ALG_PURE + key_id + sk, digest_size=32).digest()
        if passphrase is None:
            kdf, salt, opslimit, memlimit = _KDF_NONE, bytes(32), 0, 0
            comment = "minisign unencrypted secret key"
        else:
            if not passphrase or any(c in passphrase for c in b"\0\r\n"):
                # minisign reads the passphrase as one C-string line.
                raise ValueError("passphrase must be non-empty, one line, without NUL")
            kdf, salt, opslimit, memlimit = _KDF_SCRYPT, os.urandom(32), kdf_opslimit, kdf_memlimit
            secret = _xor(secret, _scrypt(passphrase, salt, opslimit, memlimit, len(secret)))
            comment = "minisign encrypted secret key"
        blob = (
            _ALG_PURE + kdf + _CHK_BLAKE2B + salt
            + opslimit.to_bytes(8, "little") + memlimit.to_bytes(8, "little") + secret
        )  # fmt: skip
        return f"{_UNTRUSTED}{comment}\n{base64.b64encode(blob).decode()}\n"

    def save(
        self,
        path: StrPath,
        *,
        passphrase: bytes | None = None,
        overwrite: bool = False,
        kdf_opslimit: int = SCRYPT_OPSLIMIT_SENSITIVE,
        kdf_memlimit: int = SCRYPT_MEMLIMIT_SENSITIVE,
    ) -> None:
        """Write the key file atomically with mode 0600; unencrypted unless *passphrase*."""
        if not overwrite and os.path.lexists(path):  # before the costly scrypt, not only after
            raise exists_error(path)
        text = self.to_file_text(
            passphrase=passphrase, kdf_opslimit=kdf_opslimit, kdf_memlimit=kdf_memlimit
        )
        write_atomic(path, text.encode(), mode=0o600, overwrite=overwrite)
