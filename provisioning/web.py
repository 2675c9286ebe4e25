"""The dashboard's credentials and config: an HTTPS certificate from the site root for the
names it is reached by, a bearer token for Prometheus, and ``web.toml``, in ``web/`` of the site
folder (keys and token 0600), for IT to copy to the dashboard's host."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path

from protocol.atomic import write_atomic
from protocol.web_config import (
    CatalogSection,
    ExportsSection,
    FeaturesSection,
    HttpSection,
    MetricsSection,
    SiteSection,
    WebConfig,
)

from . import pki
from .config_files import build, toml_text
from .errors import SiteError
from .site import SERVICE_DAYS, Report, Site, locked

__all__ = ["provision_web"]

DEFAULT_CREDENTIALS = Path("/etc/painav/web")


def provision_web(
    site: Site,
    *,
    hosts: Sequence[str],
    catalog_url: str,
    features_dir: Path,
    registry: Path,
    exports_dir: Path | None = None,
    credentials: Path = DEFAULT_CREDENTIALS,
    listen: str = "0.0.0.0",
    port: int = 8443,
    report: Report = lambda _: None,
) -> Path:
    """Issue (or re-issue) the dashboard's certificate for *hosts* and write its ``web.toml``,
    naming its files as they will be under *credentials* on its host. Returns the folder."""
    if not hosts:
        raise SiteError("--host: at least one name or address the dashboard is reached by")
    folder = site.dir / "web"
    with locked(site.dir):
        folder.mkdir(mode=0o700, exist_ok=True)
        root = site.root()
        issued = pki.issue_leaf(
            root, "web", site.name, days=SERVICE_DAYS, server=True, client=False, hosts=hosts
        )
        pki.write_private_key(folder / "tls.key", issued.key)
        pki.write_cert(folder / "tls.crt", issued.cert)
        pki.write_cert(folder / "ca.pem", root.cert)
        token = folder / "metrics-token"
        if not token.exists():  # kept across re-issues: Prometheus has it too
            write_atomic(token, secrets.token_urlsafe(32).encode() + b"\n", mode=0o600,
                         overwrite=False)  # fmt: skip
        config = build(
            "web.toml",
            lambda: WebConfig(
                site=SiteSection(site_id=site.name, registry=registry),
                catalog=CatalogSection(url=catalog_url),
                http=HttpSection(
                    listen=listen,
                    port=port,
                    cert=credentials / "tls.crt",
                    key=credentials / "tls.key",
                    ca=credentials / "ca.pem",
                ),
                features=FeaturesSection(dir=features_dir),
                exports=ExportsSection(dir=exports_dir),
                metrics=MetricsSection(token_file=credentials / "metrics-token"),
            ),
        )
        header = (
            f"# painav dashboard of site {site.name}, made by painav provisioning.\n"
            "# Playing video is off: an admin enables it in [video] (README.md, the dashboard).\n\n"
        )
        write_atomic(folder / "web.toml", toml_text(config, header=header).encode(), mode=0o644,
                     overwrite=True)  # fmt: skip
    report(
        f"dashboard: {folder}/ (web.toml, HTTPS certificate for {', '.join(hosts)}, key, "
        f"metrics token); copy it to {credentials}/ on the dashboard's host"
    )
    return folder
