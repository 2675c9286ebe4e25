"""Hospital-signed messages: who a unit accepts receipts and arm commands from."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from protocol.errors import BadSignatureError, KeyFormatError
from protocol.hospital_signature import (
    SIGNING_EKU,
    CrlError,
    HospitalSigner,
    RevokedSignerError,
    SignerError,
    check_crl,
    crl_is_newer,
    decode_certificate,
    encode_certificate,
    verify_signed,
)
from provisioning import pki
from tests.support.hospital_pki import SITE, MiniSite

NOW = datetime.now(UTC)


def test_a_certified_receiver_signs_and_the_unit_verifies() -> None:
    site = MiniSite()
    signer = site.signer("receiver-2")
    sig = signer.sign(b"message")
    assert verify_signed(site.trust(), signer.certificate, sig, b"message", NOW) == "receiver-2"
    with pytest.raises(BadSignatureError, match="forged or altered"):
        verify_signed(site.trust(), signer.certificate, sig, b"massage", NOW)


def test_the_signing_certificate_is_for_signing_only() -> None:
    cert = MiniSite().signer().cert
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [SIGNING_EKU]
    assert ExtendedKeyUsageOID.CLIENT_AUTH not in usages
    key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert key_usage.digital_signature and not key_usage.key_agreement


def test_signers_the_unit_refuses() -> None:
    site, other = MiniSite(), MiniSite()
    trust = site.trust()

    def refused(cert_b64: str, sig: bytes, now: datetime = NOW) -> str:
        with pytest.raises(SignerError) as info:
            verify_signed(trust, cert_b64, sig, b"m", now)
        return str(info.value)

    # A self-made root's certificate for a receiver name.
    forged = other.signer()
    assert "not issued by the site root" in refused(forged.certificate, forged.sign(b"m"))
    # The site root certified it, but not as a receiver.
    unit = site.signer("cart-01")
    assert "not a receiver" in refused(unit.certificate, unit.sign(b"m"))
    # A receiver's TLS certificate is no signing certificate.
    tls = pki.issue_leaf(site.root, "receiver", SITE, days=30, server=False, client=True)
    assert "not for signing" in refused(encode_certificate(tls.cert), b"x" * 64)
    good = site.signer()
    assert "not valid now" in refused(good.certificate, good.sign(b"m"), NOW + timedelta(days=31))
    assert "not base64" in refused("!!!!", b"x" * 64)
    assert "not a DER" in refused("AAAA", b"x" * 64)


def test_a_revoked_receiver_is_refused_once_the_unit_holds_the_crl() -> None:
    site = MiniSite()
    stolen, kept = site.signer("receiver-2"), site.signer("receiver-3")
    trust = site.trust()
    assert verify_signed(trust, stolen.certificate, stolen.sign(b"m"), b"m", NOW)
    site.held = site.crl(stolen.cert)
    with pytest.raises(RevokedSignerError, match=r"receiver-2.*revoked"):
        verify_signed(trust, stolen.certificate, stolen.sign(b"m"), b"m", NOW)
    assert verify_signed(trust, kept.certificate, kept.sign(b"m"), b"m", NOW) == "receiver-3"


def test_crls_only_from_the_root_and_only_newer() -> None:
    site, other = MiniSite(), MiniSite()
    first = site.crl()
    assert check_crl(first, [site.root.cert]) == site.root.cert
    with pytest.raises(CrlError, match="not signed by a site root"):
        check_crl(other.crl(), [site.root.cert])
    # Same issuer name, another key: a forgery by name only.
    impostor = pki.Authority(site.root.cert, other.root.key)
    forged = pki.make_crl(impostor, {}, days=30)
    with pytest.raises(CrlError):
        check_crl(forged, [site.root.cert])
    later = site.crl(site.signer().cert)  # within the same second: the number still grows
    assert crl_is_newer(first, None)
    assert crl_is_newer(later, first)
    assert not crl_is_newer(first, first)
    assert not crl_is_newer(first, later)


def test_a_certificate_field_is_bounded() -> None:
    with pytest.raises(SignerError, match="over 2048"):
        decode_certificate(base64.b64encode(bytes(3000)).decode())


def test_a_signing_key_file_is_refused_in_one_line_naming_it(tmp_path: Path) -> None:
    site = MiniSite()
    signer = site.signer("receiver-2")
    key, cert = tmp_path / "signing.key", tmp_path / "signing.crt"
    pki.write_private_key(key, signer.key)
    pki.write_cert(cert, signer.cert)
    assert HospitalSigner.from_files(key, cert).receiver_id == "receiver-2"
    other = tmp_path / "other.crt"
    pki.write_cert(other, site.signer("receiver-3").cert)
    with pytest.raises(KeyFormatError, match="does not belong to the certificate"):
        HospitalSigner.from_files(key, other)
    with pytest.raises(KeyFormatError, match="not a PEM certificate"):
        HospitalSigner.from_files(key, key)
    with pytest.raises(KeyFormatError, match="cannot read the signing key"):
        HospitalSigner.from_files(tmp_path / "gone.key", cert)
    key.chmod(0o640)
    with pytest.raises(KeyFormatError, match="readable by others"):
        HospitalSigner.from_files(key, cert)
    cert.chmod(0o600)
    cert_as_key = tmp_path / "tls.key"
    pki.write_private_key(cert_as_key, pki.new_key())
    with pytest.raises(KeyFormatError, match="not an Ed25519 key"):
        HospitalSigner.from_files(cert_as_key, cert)
