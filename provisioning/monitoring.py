"""Certificates for monitoring, from the site root: a server certificate for a metrics endpoint
listening beyond loopback (the services' own TLS certificates are for clients only), and a
client certificate for Prometheus, which the endpoints ask for (``[metrics]``, README:
Monitoring)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from . import pki
from .errors import SiteError
from .layout import Site
from .site import SERVICE_DAYS, Report

__all__ = ["issue_monitoring_certificate"]

_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")


def issue_monitoring_certificate(
    site: Site,
    name: str,
    out: Path,
    *,
    hosts: Sequence[str] = (),
    report: Report = lambda _: None,
) -> tuple[Path, Path]:
    """Issue *name*'s certificate from *site*'s root into *out* (``NAME.crt``, ``NAME.key``
    0600): a server certificate for *hosts* (the addresses Prometheus scrapes) if any are
    given, else a client certificate (Prometheus's). Refuses to overwrite."""
    if not _NAME.fullmatch(name):
        raise SiteError(f"{name!r}: a certificate name is a-z, 0-9, '.' and '-', e.g. prometheus")
    cert, key = out / f"{name}.crt", out / f"{name}.key"
    if cert.exists() or key.exists():
        raise SiteError(f"{cert} or {key} exists already: remove it to issue a new one")
    server = bool(hosts)
    issued = pki.issue_leaf(
        site.root(),
        name,
        site.name,
        days=SERVICE_DAYS,
        server=server,
        client=not server,
        hosts=hosts,
    )
    out.mkdir(parents=True, exist_ok=True, mode=0o755)
    pki.write_private_key(key, issued.key)
    pki.write_cert(cert, issued.cert)
    kind = f"server certificate for {', '.join(hosts)}" if server else "client certificate"
    report(f"{name}: {kind} from the site root, {SERVICE_DAYS} days: {cert}, {key}")
    return cert, key
