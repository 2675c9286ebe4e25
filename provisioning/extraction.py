"""The extraction worker's config file (``extract.toml``), written from its model."""

from __future__ import annotations

from pathlib import Path

from protocol.extract_config import (
    CatalogSection,
    ExtractConfig,
    FeaturesSection,
    KeysSection,
    SiteSection,
    StoreSection,
)
from protocol.metrics_config import WORKER_METRICS_PORT, WorkerMetricsSection
from protocol.store_config import StoreLocation

from .config_files import build, toml_text
from .layout import Site
from .stores import store_fields

__all__ = ["extract_config"]

# Where painav-extract@.service's credential comes from; the service passes it on in
# $PAINAV_DATA_KEY_FILE, which the worker prefers.
DEFAULT_DATA_KEY = Path("/etc/painav/keys/data-key.txt")


def extract_config(
    site: Site,
    *,
    catalog_url: str,
    store_dir: Path | StoreLocation,
    features_dir: Path,
    data_key: Path = DEFAULT_DATA_KEY,
    metrics_listen: str = "127.0.0.1",
    metrics_port: int = WORKER_METRICS_PORT,
) -> str:
    """``extract.toml`` for a worker of *site*: the catalog and store it shares with the
    receivers, where it writes per-frame features, where its data key is, where its metrics
    endpoint listens (worker N on *metrics_port* + N - 1; 0: none)."""
    config = build(
        "extract.toml",
        lambda: ExtractConfig(
            site=SiteSection(site_id=site.name),
            catalog=CatalogSection(url=catalog_url),
            store=StoreSection(**store_fields(store_dir)),
            keys=KeysSection(data_key=data_key),
            features=FeaturesSection(dir=features_dir),
            metrics=WorkerMetricsSection.model_validate(
                {"listen": metrics_listen, "port": metrics_port}
            ),
        ),
    )
    header = (
        f"# painav extraction worker of site {site.name}, made by painav provisioning.\n"
        "# [features], [work] and [qc] take their defaults: README.md, central extraction.\n"
        "# [metrics]: worker N serves /metrics and /healthz on port + N - 1 (README: Monitoring).\n"
        "\n"
    )
    return toml_text(config, header=header)
