"""The receiver's and the extraction worker's Prometheus endpoints, scraped over real HTTP(S)
from real services: a clip from a real unit shows in the latency histogram and the clips by
state; a quarantine in its counter and gauge; ``/healthz`` turns 503 when the catalog's
PostgreSQL database is dropped; the worker's histogram counts the clip it extracted."""

from __future__ import annotations

import ssl
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from painav.cli import main
from painav.localsite import free_port
from protocol.extract_config import (
    CatalogSection,
    ExtractConfig,
    FeaturesSection,
    KeysSection,
    SiteSection,
    StoreSection,
    WorkSection,
)
from protocol.metrics_config import WorkerMetricsSection
from server.catalog import ClipState
from server.extract.worker import ExtractionWorker, load_identities
from tests.server.conftest import POSTGRES_URL, enrolled
from tests.server.test_receiver_e2e import wait_for
from tests.support.mosquitto import Broker, unit_identity
from tests.support.unit import make_unit, start_receiver

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    """The status and body of GET *url* (an error status too, not an exception)."""
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def answer(url: str) -> tuple[int, str] | None:
    """:func:`get`, or None while nothing listens there yet."""
    try:
        return get(url)
    except urllib.error.URLError:
        return None


def scrape(url: str, context: ssl.SSLContext | None = None) -> Samples:
    """Every sample at *url*/metrics, by name and labels, parsed by prometheus-client."""
    status, body = get(f"{url}/metrics", context)
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def issue(site, name: str, folder: Path, *hosts: str) -> tuple[Path, Path]:
    """*name*'s certificate from the site root, by ``painav provision metrics cert``: a server
    certificate for *hosts*, else a client one (Prometheus's)."""
    args = ["provision", "metrics", "cert", name, "--dir", str(site.dir), "--out", str(folder)]
    assert main([*args, *(a for host in hosts for a in ("--host", host))]) == 0
    return folder / f"{name}.crt", folder / f"{name}.key"


def client_context(site, identity: tuple[Path, Path] | None) -> ssl.SSLContext:
    """A client trusting the site root, presenting *identity* (certificate, key) if given."""
    context = ssl.create_default_context(cafile=str(site.paths.root_cert))
    if identity is not None:
        context.load_cert_chain(*map(str, identity))
    return context


def test_the_receiver_reports_a_stored_clip_over_https_with_client_certificates(
    broker_site, broker: Broker, tmp_path: Path
) -> None:
    site = broker_site
    port = free_port()
    cert, key = issue(site, "receiver-metrics", tmp_path / "metrics", "127.0.0.1")
    prometheus = issue(site, "prometheus", tmp_path / "prometheus")
    receiver = start_receiver(
        site,
        broker,
        tmp_path / "receiver",
        metrics={"port": port, "tls": True, "cert": str(cert), "key": str(key)},
    )
    url = f"https://127.0.0.1:{port}"
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=1.0).start()
    catalog = receiver.service.catalog
    try:
        context = client_context(site, prometheus)
        before = scrape(url, context)
        assert before[("painav_announce_to_stored_seconds_count", ())] == 0
        assert before[("painav_catalog_up", ())] == 1
        unit.press()
        wait_for(lambda: catalog.clips(state=ClipState.RECEIPTED), "a receipted clip", 30)
        # The unit's first telemetry comes 5 s after it starts.
        (record,) = wait_for(
            lambda: [u for u in catalog.units() if u.last_telemetry is not None] or None,
            "the unit's telemetry",
            30,
        )
        after = scrape(url, context)
        assert after[("painav_announce_to_stored_seconds_count", ())] == 1
        assert after[("painav_clips", (("state", "receipted"),))] == 1
        assert after[("painav_clips", (("state", "quarantined"),))] == 0
        device = (("device", "cart-01"),)
        assert after[("painav_unit_online", device)] == 1
        assert after[("painav_units", (("state", "online"),))] == 1
        assert record.last_telemetry is not None
        depth = after[("painav_unit_outbox_depth", device)]
        assert depth == record.last_telemetry.queue_depth
        assert after[("painav_broker_connected", ())] == 1
        assert after[("painav_certificate_expiry_timestamp_seconds", (("certificate", "tls"),))] > (
            datetime.now(UTC).timestamp()
        )
        assert ("process_resident_memory_bytes", ()) in after  # the standard process metrics
        assert get(f"{url}/healthz", context) == (200, "ok\n")
        # Without a certificate from the site root, no answer at all: none, or a unit's.
        unit_cert = unit_identity(site, "cart-01")
        assert unit_cert.cert is not None and unit_cert.key is not None
        for refused in (None, (unit_cert.cert, unit_cert.key)):
            with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
                get(f"{url}/healthz", client_context(site, refused))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            get(f"http://127.0.0.1:{port}/healthz")  # and not in plain HTTP either
    finally:
        assert unit.stop() == 0, unit.log()
        receiver.stop()
    with pytest.raises(urllib.error.URLError):  # stopped with the receiver
        get(f"{url}/healthz", client_context(site, prometheus))


def test_a_quarantine_is_counted_and_stays_in_the_gauge(
    broker_site, broker: Broker, tmp_path: Path
) -> None:
    from provisioning.devices import revoke_device

    site = broker_site
    port = free_port()
    receiver = start_receiver(site, broker, tmp_path / "receiver", metrics={"port": port})
    url = f"http://127.0.0.1:{port}"
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=1.0).start()
    try:
        revoke_device(site, "cart-01")  # after it connected: its clip is quarantined
        unit.press()
        catalog = receiver.service.catalog
        wait_for(lambda: catalog.clips(state=ClipState.QUARANTINED), "a quarantined clip", 30)
        samples = scrape(url)
        reason = (("reason", "revoked_unit"),)
        assert samples[("painav_quarantines_total", reason)] == 1
        assert samples[("painav_quarantined_clips", reason)] == 1
        assert samples[("painav_clips", (("state", "quarantined"),))] == 1
        assert samples[("painav_units", (("state", "revoked"),))] == 1
        assert ("painav_unit_online", (("device", "cart-01"),)) not in samples
    finally:
        assert unit.stop() == 0, unit.log()
        receiver.stop()
    # A receiver started again has lost its counter, not the catalog's gauge.
    again = start_receiver(site, broker, tmp_path / "receiver", metrics={"port": port})
    try:
        samples = scrape(url)
        assert ("painav_quarantines_total", (("reason", "revoked_unit"),)) not in samples
        assert samples[("painav_quarantined_clips", (("reason", "revoked_unit"),))] == 1
    finally:
        again.stop()


def test_healthz_fails_when_the_catalog_database_is_dropped(
    broker_site, broker: Broker, tmp_path: Path, postgres_url: str
) -> None:
    port = free_port()
    receiver = start_receiver(
        broker_site, broker, tmp_path / "receiver", postgres_url, metrics={"port": port}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert get(f"{url}/healthz") == (200, "ok\n")
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            name = make_url(postgres_url).database
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
        status, body = get(f"{url}/healthz")
        assert status == 503
        assert body.startswith("catalog does not answer: ") and body.count("\n") == 1, body
        samples = scrape(url)  # the scrape itself still works, and says so
        assert samples[("painav_catalog_up", ())] == 0
        assert ("painav_clips", (("state", "stored"),)) not in samples
    finally:
        receiver.stop()


def test_healthz_fails_when_the_loop_stops(broker_site, broker: Broker, tmp_path: Path) -> None:
    port = free_port()
    receiver = start_receiver(broker_site, broker, tmp_path / "receiver", metrics={"port": port})
    try:
        service = receiver.service
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        # The loop's heartbeat as if its last beat were long ago: what a hung tick looks like.
        service._heartbeat.max_age_s = -1.0
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 503 and "the receiver's main loop last went round" in body, body
    finally:
        receiver.stop()


def test_the_worker_reports_the_clip_it_extracted(
    broker_site, broker: Broker, tmp_path: Path
) -> None:
    site = broker_site
    receiver = start_receiver(site, broker, tmp_path / "receiver")
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=3.0).start()
    port = free_port()
    work = tmp_path / "worker"
    config = ExtractConfig(
        site=SiteSection(site_id=site.name),
        catalog=CatalogSection(url=f"sqlite:///{tmp_path / 'receiver' / 'catalog.db'}"),
        store=StoreSection(dir=tmp_path / "receiver" / "store"),
        keys=KeysSection(data_key=site.paths.data_key),
        features=FeaturesSection(dir=work / "features"),
        work=WorkSection(idle_poll_s=0.2),
        metrics=WorkerMetricsSection(port=port),
    )
    worker = ExtractionWorker(
        config, worker_id="x1@test", identities=load_identities(site.paths.data_key)
    )
    stop = threading.Event()
    running = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    url = f"http://127.0.0.1:{port}"
    try:
        unit.press()
        catalog = receiver.service.catalog
        (clip,) = wait_for(lambda: catalog.clips(state=ClipState.RECEIPTED) or None, "stored", 60)
        enrolled(catalog)  # the consent gate: only an assigned clip is extracted
        catalog.open_visit("PAIN-0042", on=datetime.now(UTC).date())
        catalog.assign_clip(clip.clip_id, "PAIN-0042", 1)
        running.start()
        wait_for(lambda: answer(f"{url}/healthz") == (200, "ok\n"), "the worker's endpoint", 30)
        wait_for(lambda: catalog.clip(clip.clip_id).state is ClipState.EXTRACTED, "extraction", 120)
        samples = wait_for(
            lambda: (
                (s := scrape(url)).get(("painav_extractions_total", (("result", "extracted"),)))
                and s
            ),
            "the worker's count",
        )
        assert samples[("painav_stored_to_extracted_seconds_count", ())] == 1
        assert samples[("painav_extraction_duration_seconds_count", ())] == 1
        assert samples[("painav_extraction_failures_total", (("reason", "media"),))] == 0
        assert ("painav_clips", (("state", "extracted"),)) not in samples  # the receiver's
    finally:
        stop.set()
        running.join(timeout=60)
        worker.close()
        assert unit.stop() == 0, unit.log()
        receiver.stop()
