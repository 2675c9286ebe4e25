"""Certificate revocation lists for the site's two CAs, and keeping them fresh.

An expired CRL makes OpenSSL refuse every certificate of its CA: the whole fleet would be locked
out. So CRLs are valid for 30 days and re-issued once fewer than 20 days remain; the daily
``painav-crl-refresh.timer`` therefore has three weeks of failed runs before anything breaks.
Mosquitto reads ``crl.pem`` again on SIGHUP (``systemctl reload mosquitto``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509

from protocol.atomic import write_atomic

from . import pki
from .errors import SiteError
from .layout import Report, Site

__all__ = [
    "CRL_DAYS",
    "REFRESH_BEFORE",
    "CrlStatus",
    "read_revoked",
    "refresh_crl",
    "revoke_serial",
]

CRL_DAYS = 30
REFRESH_BEFORE = timedelta(days=20)


@dataclass(frozen=True)
class CrlStatus:
    """What ``crl refresh`` found and did."""

    refreshed: bool
    next_update: datetime
    revoked: int


def read_revoked(site: Site) -> dict[str, dict[int, datetime]]:
    """Revoked serials of each CA (``root``, ``devices``) with their revocation times."""
    try:
        raw = json.loads(site.paths.revoked.read_text())
        return {
            ca: {int(serial, 16): datetime.fromisoformat(when) for serial, when in raw[ca].items()}
            for ca in ("root", "devices")
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SiteError(f"{site.paths.revoked}: unreadable revocation list ({exc})") from None


def revoke_serial(site: Site, ca: str, serial: int) -> None:
    """Record *serial* of *ca* as revoked (the caller then writes new CRLs)."""
    revoked = read_revoked(site)
    revoked[ca].setdefault(serial, datetime.now(UTC))
    text = json.dumps(
        {c: {f"{s:x}": t.isoformat() for s, t in sorted(v.items())} for c, v in revoked.items()},
        indent=2,
    )
    write_atomic(site.paths.revoked, (text + "\n").encode(), mode=0o644, overwrite=True)


def write_crls(site: Site, report: Report) -> CrlStatus:
    """Issue fresh CRLs for both CAs and replace ``crl.pem``."""
    revoked = read_revoked(site)
    root_crl = pki.make_crl(site.root(), revoked["root"], days=CRL_DAYS)
    device_crl = pki.make_crl(site.device_ca(), revoked["devices"], days=CRL_DAYS)
    pki.write_cert(site.paths.crl, root_crl, device_crl)
    count = len(revoked["root"]) + len(revoked["devices"])
    next_update = _next_update(device_crl)
    report(
        f"CRLs issued, {count} revoked, valid until {next_update:%Y-%m-%d %H:%M} UTC: "
        f"{site.paths.crl}"
    )
    return CrlStatus(True, next_update, count)


def _next_update(crl: x509.CertificateRevocationList) -> datetime:
    when = crl.next_update_utc
    if when is None:
        raise SiteError("CRL without nextUpdate")
    return when


def _read_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    marker = b"-----BEGIN X509 CRL-----"
    return [x509.load_pem_x509_crl(marker + part) for part in data.split(marker)[1:]]


def refresh_crl(site: Site, *, force: bool = False, report: Report = lambda _: None) -> CrlStatus:
    """Re-issue the CRLs if they expire within :data:`REFRESH_BEFORE` (or with *force*)."""
    try:
        current = _read_crls(site.paths.crl.read_bytes())
    except (OSError, ValueError):
        current = []  # missing or damaged: issue new ones
    if current and not force:
        soonest = min(_next_update(c) for c in current)
        if soonest - datetime.now(UTC) > REFRESH_BEFORE:
            revoked = sum(len(list(c)) for c in current)
            report(f"CRLs valid until {soonest:%Y-%m-%d %H:%M} UTC; nothing to do")
            return CrlStatus(False, soonest, revoked)
    return write_crls(site, report)
