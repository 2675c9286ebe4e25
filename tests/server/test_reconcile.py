"""Reconciliation against real unit clip servers: a clip whose announcement was lost is caught."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.outbox import Outbox, OutboxEntry
from painav.cli import main
from protocol.messages import ClipAnnouncement, ClipManifest, Status
from provisioning.receivers import receiver_config
from provisioning.site import Site
from server.audit import verify
from server.catalog import Catalog, ClipRecord, ClipState
from server.config import load_config
from server.fetch import FetchError, FetchErrorKind
from server.puller import Puller
from server.reconcile import ReconcileReport, clip_server_url, reconcile_once
from server.service import ReceiverService
from server.store import LocalStore
from tests.daemon.test_outbox import open_outbox
from tests.protocol.message_examples import MINISIGN, clip_id_of, manifest
from tests.server.test_fetch import (
    HOST,
    FakeUnit,
    clip_server,
    receiver_client,
    seal_clip,
    unit_tls,
)
from tests.server.test_receiver_e2e import wait_for
from tests.server.test_verify import OTHER, UNIT, Ward, make_ward
from tests.support.mosquitto import Broker
from tests.support.unit import Receiver, make_unit

T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
T1, T2 = T0 + timedelta(minutes=5), T0 + timedelta(minutes=10)


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory) -> Ward:
    return make_ward(tmp_path_factory.mktemp("ward"))


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with open_outbox(tmp_path / "outbox") as box:
        yield box


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    # SQLite only (overriding conftest's catalog of both kinds): what is under test here is
    # the conversation with units; the one catalog query added is tested in test_catalog.
    with Catalog(catalog_url) as opened:
        yield opened


def set_status(catalog: Catalog, device_id: str, state: str, at: datetime = T0) -> None:
    status = (
        Status(state="offline")
        if state == "offline"
        else Status(
            state=state,  # type: ignore[arg-type]
            since=at,
            software_version="0.1.0",
            armed=False,
            reason="camera_timeout" if state == "error" else None,
        )
    )
    catalog.upsert_status("ward7", device_id, status, seen_at=at)


def announce(catalog: Catalog, entry: OutboxEntry, base: str) -> None:
    """Record *entry* as the unit announces it over MQTT."""
    assert entry.manifest_json is not None and entry.signature is not None
    announcement = ClipAnnouncement(
        manifest=ClipManifest.model_validate_json(entry.manifest_json),
        signature=entry.signature,
        url=f"{base}/v1/clips/{entry.clip_id}.age",
    )
    catalog.record_announcement(announcement, received_at=T0)


def test_a_clip_whose_announcement_was_lost_is_catalogued_once_and_then_pulled(
    ward: Ward, outbox: Outbox, catalog: Catalog, catalog_url: str, tmp_path: Path
) -> None:
    announced = seal_clip(outbox, ward, "cart-01-20250301T093000Z-0001", 5000)
    lost = seal_clip(outbox, ward, "cart-01-20250301T093000Z-0002", 7000)
    client = receiver_client(ward)
    with clip_server(outbox, ward, unit_tls(ward, UNIT)) as unit:
        base = f"https://{HOST}:{unit.port}"
        set_status(catalog, UNIT, "online")
        announce(catalog, announced, base)

        assert reconcile_once(catalog, client, now=T1) == ReconcileReport(1, 2, 1, 0, 0)
        clip = catalog.clip("cart-01-20250301T093000Z-0002")
        assert (clip.state, clip.device_id, clip.sha256, clip.size_bytes) == (
            ClipState.ANNOUNCED,
            UNIT,
            lost.sha256,
            lost.size_bytes,
        )
        assert clip.manifest.model_dump_json() == lost.manifest_json
        assert clip.signature == lost.signature
        assert clip.url == f"{base}/v1/clips/cart-01-20250301T093000Z-0002.age"
        assert clip.announced_at == T1

        # Idempotent: a second pass finds both clips known, and only counts them.
        assert reconcile_once(catalog, client, now=T2) == ReconcileReport(1, 2, 0, 0, 0)
        assert [(c.clip_id, c.announce_count) for c in catalog.clips()] == [
            ("cart-01-20250301T093000Z-0001", 3),
            ("cart-01-20250301T093000Z-0002", 2),
        ]

        # What was recorded is a whole announcement: the puller fetches, verifies and stores it.
        stored: list[ClipRecord] = []
        puller = Puller(
            catalog=catalog,
            store=LocalStore(tmp_path / "store"),
            fetcher=client,
            registry_path=ward.site.paths.registry,
            data_key_recipient=ward.data_key,
            spool=tmp_path / "spool",
            on_stored=stored.append,
            worker_id="receiver-1",
        )
        while (
            job := catalog.claim_next(worker="w", now=datetime.now(UTC), lease_s=60)
        ) is not None:
            puller.pull(job, "w")
    assert sorted((c.clip_id, c.sha256) for c in stored) == [
        ("cart-01-20250301T093000Z-0001", announced.sha256),
        ("cart-01-20250301T093000Z-0002", lost.sha256),
    ]
    assert {c.state for c in catalog.clips()} == {ClipState.STORED}
    assert verify(catalog_url).ok


def test_units_not_online_or_of_no_known_address_are_skipped(
    ward: Ward, outbox: Outbox, catalog: Catalog
) -> None:
    announced = seal_clip(outbox, ward, "cart-01-20250301T093000Z-0001", 1000)
    seal_clip(outbox, ward, "cart-01-20250301T093000Z-0002", 1000)
    client = receiver_client(ward)
    with clip_server(outbox, ward, unit_tls(ward, UNIT)) as unit:
        announce(catalog, announced, f"https://{HOST}:{unit.port}")
        set_status(catalog, OTHER, "online")  # never announced a clip: no address known
        for state in ("offline", "error"):
            set_status(catalog, UNIT, state)
            assert reconcile_once(catalog, client, now=T1) == ReconcileReport(skipped=2)
        assert [c.clip_id for c in catalog.clips()] == ["cart-01-20250301T093000Z-0001"]
        set_status(catalog, UNIT, "recording")  # the clip server serves while recording
        assert reconcile_once(catalog, client, now=T1) == ReconcileReport(1, 2, 1, 0, 1)


def http_reply(body: object) -> bytes:
    """A whole HTTP response with *body* (bytes as they are, anything else as JSON)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
    return f"{head}\r\n\r\n".encode() + data


def entry(clip_id: str = "cart-01-20250301T093000Z-0101", **changes: object) -> dict[str, object]:
    """A valid listing entry of cart-01's (fields in *changes* replaced, None: left out)."""
    sha256 = "cd" * 32
    m = manifest(clip_id=clip_id, device_id=UNIT, sha256=sha256, size_bytes=1000)
    item = {
        "clip_id": clip_id,
        "size_bytes": 1000,
        "sha256": sha256,
        "state": "sealed",
        "sealed_at": "2025-03-01T09:31:00Z",
        "manifest": json.loads(m.model_dump_json()),
        "signature": MINISIGN,
    }
    item.update(changes)
    return {key: value for key, value in item.items() if value is not None}


def manifest_with(**changes: object) -> dict[str, object]:
    data = entry()["manifest"]
    assert isinstance(data, dict)
    return {**data, **changes}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>busy</html>", "Expecting value"),
        ({"clips": []}, "not a JSON list"),
        (b"[" * 100_000, "recursion"),
        ([entry(manifest=None)], "item 0: missing 'manifest'"),
        ([entry(signature=None)], "item 0: missing 'signature'"),
        ([entry(size=1000)], "item 0: unknown key 'size'"),
        ([entry(manifest="{}")], "item 0: manifest"),
        ([entry(manifest=manifest_with(duration_s="42"))], "manifest field 'duration_s'"),
        ([entry(manifest=manifest_with(extra=1))], "manifest field 'extra'"),
        ([entry(manifest=manifest_with(sha256="ef" * 32))], "disagrees with the entry"),
        (
            [entry(manifest=manifest_with(clip_id="cart-01-20250301T093000Z-0102"))],
            "disagrees with the entry",
        ),
        ([entry(manifest=manifest_with(device_id=OTHER))], "announces only clips it named"),
        (
            [entry(manifest=manifest_with(device_id=OTHER, clip_id=clip_id_of(OTHER)))],
            "disagrees with the entry",
        ),
        ([entry(), entry(signature="untrusted comment: é")], "item 1: signature is not ASCII"),
        ([entry(signature=["untrusted comment:"])], "signature is not ASCII text"),
        ([entry(signature="x" * (16 * 1024 + 1))], "signature longer than 16384 bytes"),
    ],
    ids=[
        "not-json",
        "not-a-list",
        "nested-too-deep",
        "no-manifest",
        "no-signature",
        "unknown-key",
        "manifest-a-string",
        "manifest-lax-type",
        "manifest-unknown-key",
        "manifest-other-hash",
        "manifest-other-clip",
        "manifest-other-units-clip",
        "manifest-other-unit",
        "signature-not-ascii",
        "signature-not-text",
        "signature-too-long",
    ],
)
def test_a_listing_is_read_strictly(ward: Ward, body: object, why: str) -> None:
    fake = FakeUnit(ward, http_reply(body))
    try:
        with pytest.raises(FetchError) as refused:
            receiver_client(ward).list_clips(f"https://{HOST}:{fake.port}", device_id=UNIT)
    finally:
        fake.close()
    assert refused.value.kind is FetchErrorKind.PROTOCOL and not refused.value.retryable
    message = str(refused.value)
    assert message.startswith(f"unit {UNIT}: GET /v1/clips: malformed clip list: "), message
    assert why in message and "\n" not in message


def test_a_malformed_listing_is_an_error_and_the_pass_goes_on(
    ward: Ward, outbox: Outbox, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    # cart-01 is a fake with cart-01's certificate answering junk; cart-02 is a real unit.
    fake = FakeUnit(ward, http_reply([{"clip_id": "cart-01-20250301T093000Z-0101"}]))
    announced = seal_clip(outbox, ward, "cart-02-20250301T093000Z-0201", 1000, device_id=OTHER)
    seal_clip(outbox, ward, "cart-02-20250301T093000Z-0202", 1000, device_id=OTHER)
    try:
        with clip_server(outbox, ward, unit_tls(ward, OTHER)) as other:
            set_status(catalog, UNIT, "online")
            set_status(catalog, OTHER, "online")
            announce(catalog, announced, f"https://{HOST}:{other.port}")
            junk = ClipAnnouncement(
                manifest=manifest(clip_id="cart-01-20250301T093000Z-0101", device_id=UNIT),
                signature=MINISIGN,
                url=f"https://{HOST}:{fake.port}/v1/clips/cart-01-20250301T093000Z-0101.age",
            )
            catalog.record_announcement(junk, received_at=T0)
            caplog.set_level(logging.WARNING, logger="painav.receiver.reconcile")
            report = reconcile_once(catalog, receiver_client(ward), now=T1)
    finally:
        fake.close()
    assert report == ReconcileReport(units_checked=2, listed=2, recorded_new=1, errors=1)
    assert catalog.clip("cart-02-20250301T093000Z-0202").state is ClipState.ANNOUNCED
    assert f"unit {UNIT}: GET /v1/clips: malformed clip list: item 0: missing" in caplog.text


def test_a_clip_that_cannot_be_announced_is_an_error_the_rest_are_recorded(
    ward: Ward, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    # A listing the fetcher accepts, with clips no announcement could carry: of another site,
    # with a signature longer than an announcement's (1 KiB). The good one is recorded.
    listing = [
        entry("cart-01-20250301T093000Z-0101"),
        entry(
            "cart-01-20250301T093000Z-0102",
            manifest=manifest_with(clip_id="cart-01-20250301T093000Z-0102", site_id="ward9"),
        ),
        entry(
            "cart-01-20250301T093000Z-0103",
            manifest=manifest_with(clip_id="cart-01-20250301T093000Z-0103"),
            signature=MINISIGN * 8,
        ),
    ]
    fake = FakeUnit(ward, http_reply(listing))
    try:
        set_status(catalog, UNIT, "online")
        known = ClipAnnouncement(
            manifest=manifest(clip_id="cart-01-20250301T093000Z-0100", device_id=UNIT),
            signature=MINISIGN,
            url=f"https://{HOST}:{fake.port}/v1/clips/cart-01-20250301T093000Z-0100.age",
        )
        catalog.record_announcement(known, received_at=T0)
        caplog.set_level(logging.WARNING, logger="painav.receiver.reconcile")
        report = reconcile_once(catalog, receiver_client(ward), now=T1)
    finally:
        fake.close()
    assert report == ReconcileReport(units_checked=1, listed=3, recorded_new=1, errors=2)
    assert [c.clip_id for c in catalog.clips()] == [
        "cart-01-20250301T093000Z-0100",
        "cart-01-20250301T093000Z-0101",
    ]
    assert "clip cart-01-20250301T093000Z-0102: names site ward9, not ward7" in caplog.text
    assert (
        "clip cart-01-20250301T093000Z-0103: not an announcement: field 'signature'" in caplog.text
    )


def test_the_clip_server_of_a_clip_url() -> None:
    assert clip_server_url("https://10.0.0.7:8443/v1/clips/c.age") == "https://10.0.0.7:8443"
    assert clip_server_url("https://[fe80::1]:8443/v1/clips/c.age") == "https://[fe80::1]:8443"
    assert clip_server_url("https://cart-01.ward7.example/x") == "https://cart-01.ward7.example"


def test_painav_receiver_reconcile(
    ward: Ward,
    outbox: Outbox,
    catalog: Catalog,
    catalog_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "receiver.toml"
    config.write_text(
        receiver_config(
            ward.site,
            catalog_url=catalog_url,
            store_dir=tmp_path / "store",
            spool_dir=tmp_path / "spool",
            broker_host=HOST,
            broker_port=8883,  # not used by this command
        )
    )
    announced = seal_clip(outbox, ward, "cart-01-20250301T093000Z-0001", 1000)
    seal_clip(outbox, ward, "cart-01-20250301T093000Z-0002", 1000)
    with clip_server(outbox, ward, unit_tls(ward, UNIT)) as unit:
        set_status(catalog, UNIT, "online")
        announce(catalog, announced, f"https://{HOST}:{unit.port}")
        assert main(["receiver", "reconcile", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out == (
        "reconcile: 1 units checked (0 skipped), 2 clips listed, 1 new, "
        "0 receipts to send again, 0 errors\n"
    )
    assert catalog.clip("cart-01-20250301T093000Z-0002").state is ClipState.ANNOUNCED


def start_reconciling_receiver(site: Site, broker: Broker, work: Path) -> Receiver:
    """The real receiver service in a thread, reconciling every 5 s (the shortest allowed)."""
    work.mkdir(parents=True)
    config = work / "receiver.toml"
    text = receiver_config(
        site,
        catalog_url=f"sqlite:///{work / 'catalog.db'}",
        store_dir=work / "store",
        spool_dir=work / "spool",
        broker_host=HOST,
        broker_port=broker.port,
    )
    config.write_text(text.replace("[pull]\n", "[pull]\nreconcile_interval_s = 5\n"))
    service = ReceiverService(load_config(config))
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), name="receiver", daemon=True)
    thread.start()
    wait_for(lambda: service.link.connected, "the receiver to connect", 15)
    return Receiver(service, stop, thread)


def test_a_clip_announced_before_any_receiver_listened_is_reconciled_end_to_end(
    broker_site: Site, broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No receiver has subscribed yet, so the broker drops the first announcement: the unit has
    # its acknowledgement and will not repeat it until it reconnects.
    unit = make_unit(broker_site, broker, tmp_path / "unit", max_seconds=1.0).start()
    receiver = None
    try:
        unit.press()
        wait_for(lambda: "announced " in unit.log(), "the first announcement")
        (first,) = unit.status()["queue"]
        caplog.set_level(logging.INFO, logger="painav.receiver")
        receiver = start_reconciling_receiver(broker_site, broker, tmp_path / "receiver")
        unit.press()  # announced to the receiver, which so learns where the unit is
        catalog = receiver.service.catalog
        clips = wait_for(
            lambda: clips if len(clips := catalog.clips(state=ClipState.RECEIPTED)) == 2 else None,
            "both clips receipted",
        )
        wait_for(lambda: unit.status()["queue"] == [], "the unit's outbox to empty")
    finally:
        assert unit.stop() == 0, unit.log()
        if receiver is not None:
            receiver.stop()
    reconciled, announced = sorted(clips, key=lambda c: c.clip_id != first)
    assert reconciled.clip_id == first and reconciled.announced_at > announced.announced_at
    assert f"clip {first}: catalogued; its announcement never arrived" in caplog.text
    assert receiver.service.store.exists(reconciled.sha256)
