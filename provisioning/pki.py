"""The site's X.509 material: CA, server and client certificates, CRLs, and private key files.

ECDSA P-256 throughout: every TLS stack in the path (Mosquitto's OpenSSL, Python's ssl, the Pi)
supports it and it is cheap on the unit. Keys are written mode 0600 from the first byte and are
refused on load when others can read them, as ssh does.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol.atomic import write_atomic
from protocol.hospital_signature import SIGNING_EKU

from .errors import KeyFileError, SiteError

__all__ = [
    "Authority",
    "Issued",
    "IssuedSigning",
    "cert_sha256",
    "issue_ca",
    "issue_leaf",
    "issue_signing",
    "load_authority",
    "make_crl",
    "new_key",
    "pem",
    "read_certs",
    "read_private_key",
    "write_cert",
    "write_private_key",
]

PrivateKey = ec.EllipticCurvePrivateKey


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate and the key that signs with it."""

    cert: x509.Certificate
    key: PrivateKey


@dataclass(frozen=True)
class Issued:
    """A freshly issued certificate and its key."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def serial_hex(self) -> str:
        return f"{self.cert.serial_number:x}"


def _name(common_name: str, site: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"painav site {site}"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: PrivateKey | Ed25519PrivateKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # An hour of slack: a unit whose clock is a little behind still accepts a new cert.
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )


def issue_ca(
    common_name: str, site: str, *, days: int, parent: Authority | None = None, path_length: int
) -> Authority:
    """A root CA (no *parent*) or an intermediate CA signed by *parent*."""
    key = new_key()
    subject = _name(common_name, site)
    issuer = parent.cert.subject if parent else subject
    builder = (
        _builder(subject, issuer, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    signer = parent.key if parent else key
    if parent is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), False
        )
    return Authority(builder.sign(signer, hashes.SHA256()), key)


def issue_leaf(
    ca: Authority,
    common_name: str,
    site: str,
    *,
    days: int,
    server: bool,
    client: bool,
    hosts: Sequence[str] = (),
) -> Issued:
    """An end-entity certificate for a TLS server, client, or both (a unit is both: it logs in
    to the broker and serves clips)."""
    key = new_key()
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
    builder = (
        _builder(_name(common_name, site), ca.cert.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
    )
    names = list(hosts) or [common_name]
    builder = builder.add_extension(x509.SubjectAlternativeName(_general_names(names)), False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class IssuedSigning:
    """A receiver's freshly issued signing certificate and its Ed25519 key."""

    cert: x509.Certificate
    key: Ed25519PrivateKey


def issue_signing(ca: Authority, receiver_id: str, site: str, *, days: int) -> IssuedSigning:
    """A receiver's certificate for signing hospital messages (receipts, arm commands): an
    Ed25519 key, key usage digital signature only, painav's own extended key usage
    (:data:`protocol.hospital_signature.SIGNING_EKU`) and not TLS, so neither certificate can
    stand in for the other."""
    key = Ed25519PrivateKey.generate()
    builder = (
        _builder(_name(receiver_id, site), ca.cert.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([SIGNING_EKU]), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
    )
    return IssuedSigning(builder.sign(ca.key, hashes.SHA256()), key)


def _general_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def make_crl(
    ca: Authority, revoked: dict[int, datetime], *, days: int
) -> x509.CertificateRevocationList:
    """A CRL of *ca* listing *revoked* (serial → revocation time), valid for *days*."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=days))
        # Microseconds: strictly increasing even for two CRLs in one second, as units keep a
        # CRL only if its number is higher than the one they hold (lastUpdate has whole seconds).
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1_000_000)), critical=False)
    )
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def cert_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def pem(*items: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return b"".join(item.public_bytes(serialization.Encoding.PEM) for item in items)


def write_cert(path: Path, *items: x509.Certificate | x509.CertificateRevocationList) -> None:
    """Write certificates or CRLs (public) as PEM, replacing the file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, pem(*items), mode=0o644, overwrite=True)


def write_private_key(
    path: Path, key: PrivateKey | Ed25519PrivateKey, *, overwrite: bool = False
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, data, mode=0o600, overwrite=overwrite)


def check_private(path: Path) -> None:
    """Refuse a private file that others can read: it may already have leaked."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise SiteError(f"{path}: missing") from None
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: private key is readable by others (mode {mode:04o}); "
            f"check who had access, then 'chmod 600 {path}'"
        )


def read_private_key(path: Path) -> PrivateKey:
    check_private(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except PermissionError:
        raise KeyFileError(f"{path}: not readable by this user ({os.getuid()})") from None
    except ValueError:
        raise SiteError(f"{path}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SiteError(f"{path}: not an ECDSA key")
    return key


def read_certs(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise SiteError(f"{path}: missing") from None
    except ValueError:
        raise SiteError(f"{path}: not a PEM certificate") from None


def load_authority(cert_path: Path, key_path: Path) -> Authority:
    cert = read_certs(cert_path)[0]
    key = read_private_key(key_path)
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*der) != key.public_key().public_bytes(*der):
        raise SiteError(f"{key_path}: does not belong to the certificate {cert_path}")
    return Authority(cert, key)
