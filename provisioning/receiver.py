"""The receiver's config file (``receiver.toml``), written from the site like a unit's."""

from __future__ import annotations

from pathlib import Path

from protocol.receiver_config import (
    CatalogSection,
    MqttSection,
    PullSection,
    ReceiverConfig,
    SiteSection,
    StoreSection,
    TlsSection,
)

from .config_files import build, toml_text
from .receivers import receiver_dir
from .site import Site

__all__ = ["receiver_config"]


def receiver_config(
    site: Site,
    *,
    catalog_url: str,
    store_dir: Path,
    spool_dir: Path,
    broker_host: str | None = None,
    broker_port: int | None = None,
    credentials_dir: Path | None = None,
    concurrency: int = 4,
    receiver_id: str | None = None,
    registry: Path | None = None,
) -> str:
    """``receiver.toml`` for *site*'s receiver *receiver_id* (default: the first one).
    *credentials_dir* is where the receiver's TLS files and receipt key are (default: its folder
    in the site; under systemd, its credentials directory); *registry* is where the receiver
    reads the site's ``registry.json`` (default: in the site folder, which is root-only)."""
    receiver_id = receiver_id or site.receiver_id
    creds = credentials_dir or receiver_dir(site, receiver_id)
    config = build(
        "receiver.toml",
        lambda: ReceiverConfig(
            site=SiteSection(
                site_id=site.name,
                receiver_id=receiver_id,
                registry=registry or site.paths.registry,
                data_key_recipient=str(site.recipients()[0]),
            ),
            mqtt=MqttSection(
                host=broker_host or site.broker_hosts[0], port=broker_port or site.broker_port
            ),
            tls=TlsSection(
                cert=creds / "tls.crt",
                key=creds / "tls.key",
                ca=creds / "ca.pem",
                receipt_key=creds / "receipt.key",
            ),
            store=StoreSection(dir=store_dir, spool=spool_dir),
            catalog=CatalogSection(url=catalog_url),
            pull=PullSection(concurrency=concurrency),
        ),
    )
    return toml_text(
        config, header=f"# painav receiver of site {site.name}, made by painav provisioning.\n\n"
    )
