"""TLS for painav's network clients: a client context from a site's files, and the check that
a peer's certificate was issued directly by one of the site's roots."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from .errors import LinkError

__all__ = ["client_context", "directly_issued", "issued_by_any"]


def client_context(cert_file: Path, key_file: Path, ca_file: Path) -> ssl.SSLContext:
    """A client context (TLS 1.2 or later) that checks the server against *ca_file* and logs in
    with *cert_file* and *key_file*; an unusable file raises :class:`LinkError` naming it."""
    # Each file is read here first, because OpenSSL's errors do not say which file was bad.
    try:
        x509.load_pem_x509_certificates(cert_file.read_bytes())
    except OSError as exc:
        raise LinkError(f"certificate {cert_file}: {exc.strerror}") from exc
    except ValueError as exc:
        raise LinkError(f"certificate {cert_file}: not a PEM certificate") from exc
    try:
        serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except OSError as exc:
        raise LinkError(f"key {key_file}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise LinkError(f"key {key_file}: not an unencrypted PEM private key") from exc
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise LinkError(f"CA chain {ca_file}: no PEM certificates in it") from exc
    except OSError as exc:
        raise LinkError(f"CA chain {ca_file}: {exc.strerror}") from exc
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as exc:
        raise LinkError(
            f"key {key_file} does not belong to certificate {cert_file} ({exc.reason})"
        ) from exc
    return context


def directly_issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether *issuer* signed *cert* itself (not through an intermediate)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):  # another issuer, key type or signature
        return False
    return True


def issued_by_any(cert: x509.Certificate, roots: Iterable[x509.Certificate]) -> bool:
    """Whether one of *roots* signed *cert* directly. The site's root issues the service
    certificates (receiver, broker) itself and unit certificates only through the device CA,
    so this tells a service's certificate from a unit's."""
    return any(directly_issued(cert, root) for root in roots)
