"""The unit's copy of the site root's CRL: the newest it has seen, kept durably.

It starts from the bundle's CRL (what was revoked when the unit was provisioned) and the copy it
kept in its state folder, whichever is newer; the hospital's retained ``crl`` message brings
later ones. A CRL is kept only if the site root signed it and it is newer (CRL number, then
``lastUpdate``) than the one held: an older one could only un-revoke a certificate. An expired
CRL is still used: revocations are never withdrawn, so the newest list held stays the best
one, and refusing every receiver because IT was late with the next CRL would stop all ingest.

Read from any thread (the clip server's connections, the loop); replaced by the loop's thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from protocol.atomic import write_atomic
from protocol.hospital_signature import CrlError, check_crl, crl_is_newer

__all__ = ["CrlStore", "Offered"]

log = logging.getLogger("painav.device")


class Offered(Enum):
    """What became of a CRL offered to the store."""

    KEPT = "kept"  # newer than the one held: in force, and written to the state folder
    NOT_NEWER = "not_newer"  # the one held already, or an older one: ignored


def _load(data: bytes) -> x509.CertificateRevocationList:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise CrlError("not an X.509 CRL (PEM or DER)") from None


class CrlStore:
    """The newest root CRL signed by one of *roots*; kept in *state* (PEM), seeded from
    *baseline* (the bundle's, if any). A missing or bad file is logged and skipped."""

    def __init__(
        self, roots: Sequence[x509.Certificate], state: Path, baseline: Path | None = None
    ) -> None:
        self._roots = tuple(roots)
        self._state = state
        self._lock = threading.Lock()
        self._crl: x509.CertificateRevocationList | None = None
        for path in (state, baseline):
            if path is None or not path.exists():
                continue
            try:
                crl = _load(path.read_bytes())
                check_crl(crl, self._roots)
            except (OSError, CrlError) as exc:
                log.warning("%s: CRL ignored: %s", path, exc)
                continue
            if crl_is_newer(crl, self._crl):
                self._crl = crl
        if self._crl is not None and not _same(state, self._crl):
            try:
                self._write(self._crl)
            except OSError as exc:  # still in force in memory; the bundle's copy stays
                log.warning("%s: cannot keep the CRL: %s", state, exc)

    def current(self) -> x509.CertificateRevocationList | None:
        """The CRL in force (None: none yet, nothing is revoked)."""
        with self._lock:
            return self._crl

    def offer(self, data: bytes) -> Offered:
        """Keep *data* (a CRL, DER or PEM) if a site root signed it and it is newer than the one
        held; CrlError (one line) if it is not a CRL or no site root signed it."""
        crl = _load(data)
        check_crl(crl, self._roots)
        with self._lock:
            if not crl_is_newer(crl, self._crl):
                return Offered.NOT_NEWER
        # Durable before in force: after a crash the unit never falls back to an older list.
        self._write(crl)
        with self._lock:
            self._crl = crl
        return Offered.KEPT

    def _write(self, crl: x509.CertificateRevocationList) -> None:
        self._state.parent.mkdir(parents=True, exist_ok=True)
        pem = crl.public_bytes(serialization.Encoding.PEM)
        write_atomic(self._state, pem, mode=0o644, overwrite=True)


def _same(path: Path, crl: x509.CertificateRevocationList) -> bool:
    try:
        return path.read_bytes() == crl.public_bytes(serialization.Encoding.PEM)
    except OSError:
        return False
