"""A site root, receivers' signing certificates and root CRLs, made in memory with the real
provisioning code: what the hospital-signature tests sign and verify with."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509

from protocol.hospital_signature import HospitalSigner, HospitalTrust
from provisioning import pki

SITE = "ward7"


@dataclass
class MiniSite:
    """A root CA, its receivers' signing certificates, and the CRL the unit holds."""

    root: pki.Authority = field(
        default_factory=lambda: pki.issue_ca("test root", SITE, days=30, path_length=1)
    )
    held: x509.CertificateRevocationList | None = None

    def signer(
        self, receiver_id: str = "receiver", *, root: pki.Authority | None = None
    ) -> HospitalSigner:
        issued = pki.issue_signing(root or self.root, receiver_id, SITE, days=30)
        return HospitalSigner(issued.key, issued.cert)

    def crl(self, *revoked: x509.Certificate) -> x509.CertificateRevocationList:
        now = datetime.now(UTC)
        return pki.make_crl(self.root, {c.serial_number: now for c in revoked}, days=30)

    def trust(self, receiver_id: str = "receiver") -> HospitalTrust:
        return HospitalTrust(
            roots=(self.root.cert,), receiver_id=receiver_id, crl=lambda: self.held
        )
