"""The receiver's Prometheus metrics: what it observes as it works (announcement → stored
latency, quarantines, failed fetches) and what the catalog says at scrape time (clips by state,
quarantined clips by reason, the fleet, each unit's outbox from its last telemetry).

The catalog's figures are read by a collector at every scrape, in the receiver only, so that a
site's workers do not report them twice; being read from the catalog, they survive restarts and
agree across several receivers. Labels stay bounded: states and reasons are small fixed sets,
device ids are the fleet.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from protocol.errors import ProtocolError
from protocol.registry import Registry

from .catalog import Catalog, CatalogError, ClipRecord
from .fleet import fleet
from .metrics_http import new_registry

__all__ = ["CatalogCollector", "ReceiverMetrics", "certificate_expiry"]

log = logging.getLogger("painav.metrics")

# From a unit's button to the store: seconds on a quiet network, hours for a unit that was off.
LATENCY_BUCKETS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)


class CatalogCollector(Collector):
    """The catalog's figures, read at each scrape; ``painav_catalog_up`` 0 (and nothing else
    from the catalog) while it does not answer, so a scrape never fails for it."""

    def __init__(self, catalog: Catalog, registry_path: Path) -> None:
        self._catalog = catalog
        self._registry_path = registry_path
        self._registry: Registry | None = None

    def describe(self) -> list[Metric]:
        return []  # nothing to check against other collectors: do not read the catalog now

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("painav_catalog_up", "1 if the catalog answered this scrape")
        try:
            families = self._read()
        except CatalogError as exc:
            log.warning("metrics: cannot read the catalog: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[Metric]:
        catalog = self._catalog
        clips = GaugeMetricFamily("painav_clips", "Clips in the catalog by state", labels=["state"])
        for state, count in catalog.clip_counts().items():
            clips.add_metric([state.value], count)
        quarantined = GaugeMetricFamily(
            "painav_quarantined_clips",
            "Clips quarantined in the catalog, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(catalog.quarantine_counts().items()):
            quarantined.add_metric([reason], count)
        units_heard = catalog.units()
        try:
            self._registry = Registry.load(self._registry_path)
        except ProtocolError as exc:  # mid-rewrite, or broken: the last good copy serves
            log.warning("metrics: %s", exc)
        if self._registry is None:
            return [clips, quarantined]
        rows = fleet(units_heard, self._registry)
        by_state: dict[str, int] = {"online": 0, "offline": 0}
        for row in rows:
            by_state[row.state] = by_state.get(row.state, 0) + 1
        units = GaugeMetricFamily(
            "painav_units", "Units by last status (online, offline, revoked, …)", labels=["state"]
        )
        for unit_state, count in sorted(by_state.items()):
            units.add_metric([unit_state], count)

        def device_gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=["device"])

        per_unit = {
            "online": device_gauge("painav_unit_online", "1 if the unit's last status is online"),
            "since": device_gauge(
                "painav_unit_status_since_timestamp_seconds", "When the unit's last status began"
            ),
            "seen": device_gauge(
                "painav_unit_last_seen_timestamp_seconds", "When the unit itself was last heard"
            ),
            "depth": device_gauge(
                "painav_unit_outbox_depth",
                "Sealed clips not yet receipted, from the unit's last telemetry",
            ),
            "oldest": device_gauge(
                "painav_unit_oldest_unreceipted_seconds",
                "Age of the unit's oldest unreceipted clip at its last telemetry (0: none)",
            ),
            "free": device_gauge(
                "painav_unit_free_bytes",
                "Free space on the unit's outbox volume, from its last telemetry",
            ),
            "synced": device_gauge(
                "painav_unit_clock_synced",
                "1 if the unit's clock was NTP-synchronised at its last telemetry",
            ),
            "telemetry": device_gauge(
                "painav_unit_telemetry_timestamp_seconds",
                "When the unit's last telemetry was taken",
            ),
        }
        for row in rows:
            record, label = row.record, [row.device_id]
            if record is None or row.state == "revoked":
                continue  # a revoked unit is no longer watched; painav_units counts it
            per_unit["online"].add_metric(label, 1 if row.state == "online" else 0)
            if record.status_since is not None:
                per_unit["since"].add_metric(label, record.status_since.timestamp())
            per_unit["seen"].add_metric(label, record.last_seen_at.timestamp())
            t = record.last_telemetry
            if t is not None:
                per_unit["depth"].add_metric(label, t.queue_depth)
                per_unit["oldest"].add_metric(label, t.oldest_unreceipted_s or 0.0)
                per_unit["free"].add_metric(label, t.free_bytes)
                per_unit["synced"].add_metric(label, 1 if t.clock_synced else 0)
                per_unit["telemetry"].add_metric(label, t.at.timestamp())
        return [clips, quarantined, units, *per_unit.values()]


def certificate_expiry(path: Path) -> float | None:
    """The Unix time *path*'s (first) certificate expires, or None if it cannot be read."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc.timestamp()


class ReceiverMetrics:
    """The receiver's registry and the instruments it updates as it works."""

    def __init__(
        self, catalog: Catalog, registry_path: Path, certificates: Mapping[str, Path]
    ) -> None:
        self.registry: CollectorRegistry = new_registry()
        self.announce_to_stored = Histogram(
            "painav_announce_to_stored_seconds",
            "From a clip's announcement (its first arrival here) to it being stored",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.quarantines = Counter(
            "painav_quarantines",
            "Clips this receiver quarantined since it started, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.fetch_failures = Counter(
            "painav_fetch_failures",
            "Failed fetches from units since start, by kind (unreachable, timeout, tls, …)",
            ["kind"],
            registry=self.registry,
        )
        self.broker_connected = Gauge(
            "painav_broker_connected",
            "1 while the receiver is connected to the broker",
            registry=self.registry,
        )
        expiry = Gauge(
            "painav_certificate_expiry_timestamp_seconds",
            "When the receiver's certificates expire",
            ["certificate"],
            registry=self.registry,
        )
        for name, path in certificates.items():
            at = certificate_expiry(path)
            if at is not None:
                expiry.labels(name).set(at)
        self.registry.register(CatalogCollector(catalog, registry_path))

    def stored(self, clip: ClipRecord) -> None:
        """*clip* was stored: its latency since its announcement."""
        stored_at = clip.stored_at or datetime.now(UTC)
        self.announce_to_stored.observe(max(0.0, (stored_at - clip.announced_at).total_seconds()))

    def quarantined(self, reason: str) -> None:
        self.quarantines.labels(reason).inc()

    def fetch_failed(self, kind: str) -> None:
        self.fetch_failures.labels(kind).inc()
