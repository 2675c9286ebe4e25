"""Certificate revocation lists for the site's two CAs, and keeping them fresh.

An expired CRL makes OpenSSL refuse every certificate of its CA: the whole fleet would be locked
out. So CRLs are valid for 30 days and re-issued once fewer than 20 days remain; the daily
``painav-crl-refresh.timer`` therefore has three weeks of failed runs before anything breaks.
Mosquitto reads ``crl.pem`` again on SIGHUP (``systemctl reload mosquitto``).

The root CRL (receivers' TLS and signing certificates) also goes to each receiver's folder as
``crl.pem``: receivers publish it, retained, to every unit, which checks receipts, arm commands
and clip-server clients against it (:mod:`protocol.hospital_signature`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
    "read_revoked_receivers",
    "receiver_folders",
    "refresh_crl",
    "revoke_receiver_id",
    "revoke_serial",
    "root_crl",
]

RECEIVER_CRL = "crl.pem"
"""The root CRL in each receiver's folder, which it publishes to the units."""

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


def read_revoked_receivers(site: Site) -> dict[str, datetime]:
    """Revoked receiver ids with their revocation times (none in a site made before them)."""
    try:
        raw = json.loads(site.paths.revoked.read_text()).get("receivers", {})
        return {str(r): datetime.fromisoformat(when) for r, when in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise SiteError(f"{site.paths.revoked}: unreadable revocation list ({exc})") from None


def _write_revoked(
    site: Site, revoked: dict[str, dict[int, datetime]], receivers: dict[str, datetime]
) -> None:
    data: dict[str, dict[str, str]] = {
        c: {f"{s:x}": t.isoformat() for s, t in sorted(v.items())} for c, v in revoked.items()
    }
    data["receivers"] = {r: t.isoformat() for r, t in sorted(receivers.items())}
    text = json.dumps(data, indent=2)
    write_atomic(site.paths.revoked, (text + "\n").encode(), mode=0o644, overwrite=True)


def revoke_serial(site: Site, ca: str, serial: int) -> None:
    """Record *serial* of *ca* as revoked (the caller then writes new CRLs)."""
    revoked = read_revoked(site)
    revoked[ca].setdefault(serial, datetime.now(UTC))
    _write_revoked(site, revoked, read_revoked_receivers(site))


def revoke_receiver_id(site: Site, receiver_id: str, serials: list[int]) -> None:
    """Record receiver *receiver_id* and its certificates' *serials* (all issued by the root)
    as revoked, in one write (the caller then writes new CRLs)."""
    now = datetime.now(UTC)
    revoked = read_revoked(site)
    for serial in serials:
        revoked["root"].setdefault(serial, now)
    receivers = read_revoked_receivers(site)
    receivers.setdefault(receiver_id, now)
    _write_revoked(site, revoked, receivers)


def receiver_folders(site: Site) -> list[Path]:
    """The credentials folders of the site's receivers that are not revoked."""
    revoked = read_revoked_receivers(site)
    ids = [r for r in site.registry().receiver_ids() if r not in revoked]
    return [
        site.paths.receiver_dir if r == site.receiver_id else site.dir / "receivers" / r
        for r in ids
    ]


def write_crls(site: Site, report: Report) -> CrlStatus:
    """Issue fresh CRLs for both CAs and replace ``crl.pem``."""
    revoked = read_revoked(site)
    root_crl = pki.make_crl(site.root(), revoked["root"], days=CRL_DAYS)
    device_crl = pki.make_crl(site.device_ca(), revoked["devices"], days=CRL_DAYS)
    pki.write_cert(site.paths.crl, root_crl, device_crl)
    for folder in receiver_folders(site):
        if folder.is_dir():
            pki.write_cert(folder / RECEIVER_CRL, root_crl)
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


def root_crl(site: Site) -> x509.CertificateRevocationList:
    """The site root's current CRL, from ``crl.pem`` (issued afresh if that is unreadable)."""
    root = site.root().cert
    try:
        current = _read_crls(site.paths.crl.read_bytes())
    except (OSError, ValueError):
        current = []
    for crl in current:
        if crl.issuer == root.subject:
            return crl
    write_crls(site, lambda _: None)
    return root_crl(site)
