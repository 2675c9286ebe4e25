"""Hospital-signed messages: Ed25519 signatures by a receiver's own key, certified by the site root.

Each receiver holds a signing key and an X.509 certificate for it, issued by the site root with
painav's own extended key usage (:data:`SIGNING_EKU`, not TLS): a message it signs (a receipt, an
arm command) carries that certificate, so a unit trusts the set of receivers the root certifies
and not one shared key. One receiver is rotated or revoked (the root's CRL) without touching the
units' bundles. The signature covers a context prefix per message kind, then the message's
canonical JSON without the signature, so a key never signs one kind where another is expected.

A unit checks, cheapest first: the certificate parses, is issued directly by a site root it
trusts, is valid now, carries :data:`SIGNING_EKU` and only digital signature as key usage,
names a receiver of the site, and is not in the newest root CRL the unit holds; then the
signature. Each failure is a :class:`SignerError` (or :class:`BadSignatureError`) of one line.
"""

from __future__ import annotations

import base64
import binascii
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from .atomic import StrPath
from .errors import BadSignatureError, KeyFormatError, SignatureError
from .registry import names_a_receiver

__all__ = [
    "SIGNING_EKU",
    "CrlError",
    "HospitalSigner",
    "HospitalTrust",
    "RevokedSignerError",
    "SignerError",
    "check_crl",
    "crl_is_newer",
    "decode_certificate",
    "encode_certificate",
    "verify_signed",
]

SIGNING_EKU: Final = x509.ObjectIdentifier("2.25.3527011702544288366974585543575826587")
"""painav's extended key usage "signs hospital messages to units" (an OID under 2.25 from a
random UUID): a receiver's signing certificate carries it, its TLS certificate does not."""

MAX_CERT_BYTES: Final = 2048
"""The largest signer certificate (DER) accepted; a painav one is about 450 bytes."""


class SignerError(SignatureError):
    """The certificate a hospital-signed message carries is not one the unit trusts."""


class RevokedSignerError(SignerError):
    """The signer's certificate is listed in the site root's CRL."""


class CrlError(SignatureError):
    """A CRL is malformed or not issued by a site root this unit trusts."""


def encode_certificate(cert: x509.Certificate) -> str:
    """*cert* as a message carries it: DER, standard padded base64."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return base64.b64encode(der).decode("ascii")


def decode_certificate(text: str) -> x509.Certificate:
    """The certificate in a message's ``signer`` field; SignerError if it is not one."""
    try:
        der = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignerError("signer: not base64") from None
    if len(der) > MAX_CERT_BYTES:
        raise SignerError(f"signer: certificate of {len(der)} bytes, over {MAX_CERT_BYTES}")
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise SignerError("signer: not a DER X.509 certificate") from None


@dataclass(frozen=True)
class HospitalSigner:
    """A receiver's signing key and its certificate: what signs receipts and arm commands."""

    key: Ed25519PrivateKey
    cert: x509.Certificate

    @property
    def receiver_id(self) -> str:
        """The receiver the certificate names (its CN)."""
        return _cn(self.cert)

    @property
    def certificate(self) -> str:
        """The certificate as messages carry it (:func:`encode_certificate`)."""
        return encode_certificate(self.cert)

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    @classmethod
    def from_files(cls, key_path: StrPath, cert_path: StrPath) -> HospitalSigner:
        """Load a signing key (PKCS#8 PEM, not readable by others) and its certificate (PEM);
        KeyFormatError naming the file if either is unusable or they do not belong together."""
        key_path, cert_path = Path(key_path), Path(cert_path)
        try:
            mode = stat.S_IMODE(key_path.stat().st_mode)
        except OSError as exc:
            raise KeyFormatError(
                f"{key_path}: cannot read the signing key: {exc.strerror}"
            ) from None
        if mode & 0o077:
            raise KeyFormatError(
                f"{key_path}: signing key is readable by others (mode {mode:04o}); "
                f"check who had access, then 'chmod 600 {key_path}'"
            )
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except OSError as exc:
            raise KeyFormatError(
                f"{key_path}: cannot read the signing key: {exc.strerror}"
            ) from None
        except ValueError:
            raise KeyFormatError(f"{key_path}: not a PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFormatError(f"{key_path}: not an Ed25519 key")
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except OSError as exc:
            raise KeyFormatError(
                f"{cert_path}: cannot read the certificate: {exc.strerror}"
            ) from None
        except ValueError:
            raise KeyFormatError(f"{cert_path}: not a PEM certificate") from None
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        if cert.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
            raise KeyFormatError(f"{key_path}: does not belong to the certificate {cert_path}")
        return cls(key, cert)


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if len(names) == 1 else "?"


def _issued_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_crl(
    crl: x509.CertificateRevocationList, roots: Sequence[x509.Certificate]
) -> x509.Certificate:
    """The root of *roots* that issued and signed *crl*; CrlError if none did."""
    for root in roots:
        if crl.issuer != root.subject:
            continue
        try:
            if crl.is_signature_valid(root.public_key()):  # type: ignore[arg-type]
                return root
        except TypeError:
            continue
    raise CrlError(f"CRL of {crl.issuer.rfc4514_string()!r} is not signed by a site root")


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return -1


def crl_is_newer(
    candidate: x509.CertificateRevocationList, held: x509.CertificateRevocationList | None
) -> bool:
    """Whether *candidate* supersedes *held* (same issuer assumed): a higher CRL number, or the
    same number and a later ``lastUpdate``. An equal or older CRL never replaces the held one:
    it could only un-revoke a certificate."""
    if held is None:
        return True
    new, old = _crl_number(candidate), _crl_number(held)
    if new != old:
        return new > old
    return candidate.last_update_utc > held.last_update_utc


@dataclass(frozen=True)
class HospitalTrust:
    """What a unit trusts hospital-signed messages by: the site roots (its ``ca-chain.pem``),
    the name of its site's first receiver, and the newest root CRL it holds (a callable, as it
    changes while the unit runs)."""

    roots: tuple[x509.Certificate, ...]
    receiver_id: str
    crl: Callable[[], x509.CertificateRevocationList | None]

    def revoked(self, cert: x509.Certificate) -> bool:
        """Whether the held root CRL lists *cert* (issued by the CRL's issuer)."""
        crl = self.crl()
        if crl is None or cert.issuer != crl.issuer:
            return False
        return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None

    def check_signer(self, cert: x509.Certificate, now: datetime) -> str:
        """The receiver id *cert* certifies; SignerError (RevokedSignerError) if it may not sign
        for this site at *now*."""
        cn = _cn(cert)
        if not any(_issued_by(cert, root) for root in self.roots):
            raise SignerError(f"signer {cn!r}: certificate not issued by the site root")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise SignerError(
                f"signer {cn!r}: certificate not valid now (valid "
                f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
            )
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        if SIGNING_EKU not in usages:
            raise SignerError(f"signer {cn!r}: certificate is not for signing hospital messages")
        if not names_a_receiver(cn, self.receiver_id):
            raise SignerError(f"signer {cn!r}: not a receiver of this site")
        if not isinstance(cert.public_key(), Ed25519PublicKey):
            raise SignerError(f"signer {cn!r}: not an Ed25519 key")
        if self.revoked(cert):
            raise RevokedSignerError(
                f"signer {cn!r}: certificate {cert.serial_number:x} is revoked"
            )
        return cn


def verify_signed(
    trust: HospitalTrust, signer: str, signature: bytes, signed_bytes: bytes, now: datetime
) -> str:
    """Check a hospital-signed message: its *signer* certificate (base64 DER) against *trust*
    at *now*, then *signature* over *signed_bytes*. Returns the signer's receiver id; raises
    :class:`SignerError` or :class:`BadSignatureError`."""
    cert = decode_certificate(signer)
    cn = trust.check_signer(cert, now)
    key = cert.public_key()
    assert isinstance(key, Ed25519PublicKey)  # check_signer made sure
    try:
        key.verify(signature, signed_bytes)
    except InvalidSignature:
        raise BadSignatureError(f"signature by {cn!r}: forged or altered message") from None
    return cn
