"""Attacks 1, 2 and 8 of issue 11 on the receiver's pull path, with a real broker, the real
receiver and a stolen unit: its certificate in a hostile clip server (real TLS, so the
receiver's identity check passes) that dribbles or cuts its answers, and its announcements
published through the broker with its own certificate. An honest real unit records beside it.

1. A clip server that sends one byte a second must not hold the pull workers (honest clips are
   stored within a bound while it does) nor, through its outbox listing, the reconciliation of
   other units or the receiver's main loop.
2. A size over MAX_CLIP_BYTES is refused when the announcement is parsed; a unit's partial
   downloads stay under its spool quota; attempts are bounded; a resume does not hash the
   partial file again.
8. An announced URL outside ``[pull] unit_networks``/``unit_ports`` makes no connection at all.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import tomli_w
from pydantic import ValidationError

from daemon.outbox import Outbox
from protocol.clip_manifest import MAX_CLIP_BYTES
from protocol.messages import ClipAnnouncement, ClipManifest
from protocol.receiver_config import PRIVATE_NETWORKS
from protocol.schemas import json_schema
from protocol.topics import Kind
from provisioning.receivers import receiver_config
from provisioning.site import Site, init_site
from server.catalog import Catalog, ClipRecord, ClipState
from server.fetch import FetchClient, FetchError, FetchErrorKind, FetchResult, UnitAddressPolicy
from tests.protocol.message_examples import clip_id_of
from tests.server.test_receiver_faults import run_in_process, unit_clip_server, wait_for
from tests.support.hostile_clipserver import (
    AcceptRecorder,
    HostileClipServer,
    Served,
    as_unit,
    sealed,
)
from tests.support.mosquitto import Broker, Client
from tests.support.unit import (
    ReceiverProcess,
    Unit,
    make_unit,
    receiver_process,
)

MakeClient = Callable[..., Client]

HONEST, HOSTILE, OTHER = "cart-01", "cart-02", "cart-03"
MIB = 1 << 20


def set_pull(receiver: ReceiverProcess, **settings: object) -> None:
    """Set ``[pull]`` keys of the receiver's config (lists too, which receiver_process's
    line editing does not handle)."""
    config = tomllib.loads(receiver.config.read_text())
    config["pull"].update(settings)
    receiver.config.write_text(tomli_w.dumps(config))


def catalog_of(receiver: ReceiverProcess) -> Catalog:
    return Catalog(f"sqlite:///{receiver.work / 'catalog.db'}")


def clip_state(receiver: ReceiverProcess, clip_id: str) -> tuple[ClipState, str | None] | None:
    with catalog_of(receiver) as catalog:
        clips = [c for c in catalog.clips() if c.clip_id == clip_id]
    return (clips[0].state, clips[0].quarantine_reason) if clips else None


def honest_latency_s(unit: Unit) -> float:
    """Record a clip on the honest unit; seconds from its sealing to its receipt (the unit
    deletes it from its queue only then)."""
    unit.press()
    clip_id: str = unit.wait_state("recording")["clip_id"]
    wait_for(lambda: clip_id in unit.status()["queue"], f"{clip_id} to be sealed")
    sealed_at = time.monotonic()
    wait_for(lambda: clip_id not in unit.status()["queue"], f"{clip_id} to be receipted", 30)
    latency = time.monotonic() - sealed_at
    unit.wait_state("idle")
    return latency


# --- 1. slow clip servers ------------------------------------------------------------------------


def test_a_dribbling_unit_holds_one_worker_and_honest_clips_are_stored_in_time(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    site = broker_site
    honest = make_unit(site, broker, tmp_path / "unit", max_seconds=1.0, width=320, height=240)
    # A 64 KiB clip at 20 kB/s may take 2 + 3.3 s; the hostile unit sends a byte a second, so
    # without the deadline each of its downloads would last 18 hours.
    receiver = receiver_process(
        site,
        broker,
        tmp_path / "receiver",
        concurrency=4,
        min_rate_bytes_s=20_000,
        handshake_allowance_s=2.0,
        reconcile_interval_s=3600,
    )
    evil = sealed(site, tmp_path, HOSTILE, 8, 64 * 1024)
    server = HostileClipServer(site, HOSTILE, "dribble", interval_s=1.0)
    for clip in evil:
        server.files[f"/v1/clips/{clip.clip_id}.age"] = clip.served()
    with server:
        honest.start()
        receiver.start()
        try:
            calm = [honest_latency_s(honest) for _ in range(3)]
            # Eight clips, twice the workers: each would hold one for as long as it likes.
            announcements = [c.announcement("127.0.0.1", server.port) for c in evil]
            as_unit(make_client, site, HOSTILE, *(a.to_payload() for a in announcements))
            wait_for(lambda: server.accepted >= 1, "the hostile unit to be fetched from")
            attacked = [honest_latency_s(honest) for _ in range(4)]
            # One worker at a time on the hostile unit, cut off at its deadline and retried.
            wait_for(lambda: server.accepted >= 2, "a hostile download cut off and retried", 30)
        finally:
            assert receiver.stop() == 0, receiver.log()[-4000:]
            assert honest.stop() == 0, honest.log()
    print(
        f"honest clip latency, calm: p50 {statistics.median(calm):.2f} s max {max(calm):.2f} s; "
        f"while a unit dribbles: p50 {statistics.median(attacked):.2f} s "
        f"max {max(attacked):.2f} s; hostile connections {server.accepted}"
    )
    assert max(attacked) < 15.0, attacked
    log = receiver.log()
    assert "not done in the" in log, log[-4000:]  # the deadline, not a per-read timeout
    with catalog_of(receiver) as catalog:
        hostile = catalog.clips(device_id=HOSTILE)
    assert hostile and all(c.state is not ClipState.STORED for c in hostile)


def test_a_dribbling_listing_holds_neither_the_main_loop_nor_other_units(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    site = broker_site
    config = receiver_process(
        site,
        broker,
        tmp_path / "receiver",
        listing_deadline_s=3.0,
        reconcile_interval_s=5,
        min_rate_bytes_s=20_000,
        handshake_allowance_s=2.0,
    ).config
    # The other unit: a real clip server over two sealed clips, one announcement of which
    # was lost (only reconciliation can find it).
    other = sealed(site, tmp_path, OTHER, 2, 16 * 1024)
    outbox = Outbox(tmp_path / f"outbox-{OTHER}", quota_bytes=1 << 30, min_free_bytes=0)
    clip_server = unit_clip_server(site, OTHER, outbox)
    evil = sealed(site, tmp_path, HOSTILE, 1, 16 * 1024)[0]
    server = HostileClipServer(site, HOSTILE, "dribble", interval_s=1.0)
    server.files["/v1/clips"] = Served(size=100_000)  # a listing of a day at a byte a second
    server.files[f"/v1/clips/{evil.clip_id}.age"] = evil.served()
    receiver = run_in_process(config)
    try:
        with server:
            hostile = evil.announcement("127.0.0.1", server.port)
            as_unit(make_client, site, HOSTILE, hostile.to_payload())
            first = other[0].announcement("127.0.0.1", clip_server.port)
            as_unit(make_client, site, OTHER, first.to_payload())
            wait_for(lambda: ("/v1/clips", "") in server.requests, "the hostile listing", 20)
            started = time.monotonic()
            lost = other[1].clip_id

            def catalogued() -> bool:
                with Catalog(receiver.service.config.catalog.url) as catalog:
                    return any(c.clip_id == lost for c in catalog.clips(device_id=OTHER))

            # While the hostile listing dribbles, the main loop goes on (it starts a verdict
            # round every tick, 1 s, on a thread of its own) and the other unit is listed.
            rounds, found_s = set(), None
            while time.monotonic() - started < 20 and (found_s is None or len(rounds) < 3):
                rounds.add(id(receiver.service._sending))
                if found_s is None and catalogued():
                    found_s = time.monotonic() - started
                time.sleep(0.05)
            held_s = time.monotonic() - started
            assert len(rounds) >= 3, (
                f"the main loop was held: {len(rounds)} rounds in {held_s:.1f} s"
            )
            assert found_s is not None, "the other unit's lost clip was not catalogued"
    finally:
        receiver.stop()
        clip_server.stop()
        outbox.close()
    print(f"the other unit's lost clip was catalogued {found_s:.1f} s into the hostile listing")
    assert found_s < 10.0


# --- 2. an announced size fills the spool ------------------------------------------------------


def test_a_size_over_the_maximum_is_refused_when_parsed(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    site = broker_site
    entry = sealed(site, tmp_path, HOSTILE, 2, 1024)
    honest_sized = entry[1].announcement("127.0.0.1", 9)
    too_big = json.loads(entry[0].announcement("127.0.0.1", 9).to_payload())
    too_big["manifest"]["size_bytes"] = MAX_CLIP_BYTES + 1
    with pytest.raises(ValidationError, match="size_bytes"):
        ClipManifest.model_validate_json(json.dumps(too_big["manifest"]))
    schema = json_schema(Kind.CLIPS)
    assert f'"maximum": {MAX_CLIP_BYTES}' in json.dumps(schema)
    receiver = receiver_process(site, broker, tmp_path / "receiver", reconcile_interval_s=3600)
    receiver.start()
    try:
        as_unit(make_client, site, HOSTILE, json.dumps(too_big).encode(), honest_sized.to_payload())
        wait_for(lambda: clip_state(receiver, entry[1].clip_id), "the second announcement")
    finally:
        assert receiver.stop() == 0
    assert clip_state(receiver, entry[0].clip_id) is None  # never recorded, nothing reserved


def test_partial_downloads_stay_under_the_spool_quota_and_attempts_are_bounded(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    site = broker_site
    quota = 4 * MIB
    receiver = receiver_process(
        site,
        broker,
        tmp_path / "receiver",
        spool_quota_bytes_per_unit=quota,
        max_attempts=3,
        retry_max_s=2,
        reconcile_interval_s=3600,
    )
    spool = receiver.work / "spool"
    evil = sealed(site, tmp_path, HOSTILE, 3, 5 * MIB // 2)
    # Fast, but a MiB per response and never past 2 MiB: partial files pile up.
    server = HostileClipServer(site, HOSTILE, "cut", cut_bytes=MIB, serve_limit=2 * MIB)
    for clip in evil:
        server.files[f"/v1/clips/{clip.clip_id}.age"] = clip.served()
    most = 0
    with server:
        receiver.start()
        try:
            as_unit(
                make_client,
                site,
                HOSTILE,
                *(c.announcement("127.0.0.1", server.port).to_payload() for c in evil),
            )

            def all_quarantined() -> bool:
                nonlocal most
                held = sum(p.stat().st_size for p in spool.glob("*.part") if p.exists())
                most = max(most, held)
                states = [clip_state(receiver, e.clip_id) for e in evil]
                return all(s is not None and s[0] is ClipState.QUARANTINED for s in states)

            wait_for(all_quarantined, "every hostile clip to be quarantined", 90)
        finally:
            assert receiver.stop() == 0, receiver.log()[-4000:]
    print(f"spool held at most {most} bytes of the hostile unit's partial downloads")
    assert most <= quota
    with catalog_of(receiver) as catalog:
        clips = catalog.clips(device_id=HOSTILE)
    assert {c.quarantine_reason for c in clips} == {"fetch_attempts_exhausted"}
    assert all(c.attempts <= 3 for c in clips), [(c.clip_id, c.attempts) for c in clips]
    assert not list(spool.glob("*.part"))  # nothing of a quarantined clip is kept
    assert "fetch_attempts_exhausted" in receiver.log()


def test_a_resume_reads_nothing_back_unless_the_receiver_restarted(
    broker_site: Site, tmp_path: Path
) -> None:
    site = broker_site
    entry = sealed(site, tmp_path, HOSTILE, 1, 3 * MIB)[0]
    served = entry.served(body=True)
    assert served.body is not None and hashlib.sha256(served.body).hexdigest() == entry.sha256
    rdir = site.paths.receiver_dir
    loopback = UnitAddressPolicy(["127.0.0.0/8"], ["1024-65535"])

    def client() -> FetchClient:
        return FetchClient(
            cert_file=rdir / "tls.crt",
            key_file=rdir / "tls.key",
            ca_file=rdir / "ca.pem",
            policy=loopback,
        )

    def fetch(fetcher: FetchClient, server: HostileClipServer, dest: Path) -> FetchResult:
        return fetcher.fetch(
            server.url(f"/v1/clips/{entry.clip_id}.age"),
            dest,
            device_id=HOSTILE,
            expected_size=entry.size,
            expected_sha256=entry.sha256,
        )

    path = f"/v1/clips/{entry.clip_id}.age"
    running = client()
    for restarted in (False, True):
        dest = tmp_path / f"spool-{restarted}.part"
        with HostileClipServer(
            site, HOSTILE, "cut", cut_bytes=MIB, cut_responses=1, files={path: served}
        ) as server:
            with pytest.raises(FetchError) as cut:
                fetch(running, server, dest)
            assert cut.value.kind is FetchErrorKind.TRUNCATED
            assert dest.stat().st_size == MIB
            result = fetch(client() if restarted else running, server, dest)
        assert result.sha256 == entry.sha256 and result.resumed
        assert result.transferred == entry.size - MIB
        # Bytes read back from the partial file before resuming: none while the receiver
        # runs (the hash state was kept), the whole partial file after a restart.
        assert result.rehashed == (MIB if restarted else 0), result


# --- 8. an announced URL pointing anywhere -----------------------------------------------------


def test_an_announced_url_outside_the_unit_networks_is_never_connected_to(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    site = broker_site
    elsewhere = AcceptRecorder("127.0.0.9")  # a host no unit may be on
    other_port = AcceptRecorder("127.0.0.1")  # a unit host, but a port no unit serves on
    receiver = receiver_process(site, broker, tmp_path / "receiver", reconcile_interval_s=5)
    # Units here are on 127.0.0.1, serving on one port.
    set_pull(receiver, unit_networks=["127.0.0.1/32"], unit_ports=[elsewhere.port])
    evil = sealed(site, tmp_path, HOSTILE, 3, 1024)
    targets = [
        ("127.0.0.9", elsewhere.port),
        ("127.0.0.1", other_port.port),
        ("localhost", other_port.port),  # a name: resolved, and refused by its address
    ]
    announcements = [c.announcement(h, p) for c, (h, p) in zip(evil, targets, strict=True)]
    receiver.start()
    try:
        as_unit(make_client, site, HOSTILE, *(a.to_payload() for a in announcements))
        for entry in evil:
            wait_for(
                lambda e=entry: (
                    clip_state(receiver, e.clip_id)  # type: ignore[misc]
                    == (ClipState.QUARANTINED, "url_not_allowed")
                ),
                f"{entry.clip_id} to be quarantined",
            )
        # A reconciliation pass too lists the unit at its newest clip's URL: refused as well.
        wait_for(lambda: "reconcile: 1 units checked" in receiver.log(), "a pass", 20)
    finally:
        assert receiver.stop() == 0, receiver.log()[-4000:]
        elsewhere.close()
        other_port.close()
    assert elsewhere.accepted == [] and other_port.accepted == []
    log = receiver.log()
    for entry, announcement in zip(evil, announcements, strict=True):
        lines = [line for line in log.splitlines() if entry.clip_id in line and "refused" in line]
        assert lines and HOSTILE in lines[0] and announcement.url in lines[0], log[-4000:]
    # The pass lists the unit at its newest clip's URL: refused too, in one line.
    passes = [line for line in log.splitlines() if f"reconcile: unit {HOSTILE}: URL" in line]
    assert passes and all("refused" in line for line in passes), log[-4000:]


# --- the pieces, over real sockets and both catalog databases ----------------------------------


def test_a_dribbled_clip_or_listing_ends_at_its_deadline_not_at_a_per_read_timeout(
    broker_site: Site, tmp_path: Path
) -> None:
    site = broker_site
    clip = sealed(site, tmp_path, HOSTILE, 1, 4096)[0]
    rdir = site.paths.receiver_dir
    # Reads time out after 5 s; the unit sends a byte every 0.2 s, so only a deadline over the
    # whole exchange ends it: 1 s + 4 KiB at 8 KiB/s = 1.5 s.
    fetcher = FetchClient(
        cert_file=rdir / "tls.crt",
        key_file=rdir / "tls.key",
        ca_file=rdir / "ca.pem",
        policy=UnitAddressPolicy(["127.0.0.0/8"], ["1024-65535"]),
        timeout_s=5.0,
        min_rate_bytes_s=8192,
        handshake_allowance_s=1.0,
        listing_deadline_s=1.0,
    )
    files = {f"/v1/clips/{clip.clip_id}.age": clip.served(), "/v1/clips": Served(size=10_000)}
    with HostileClipServer(site, HOSTILE, "dribble", interval_s=0.2, files=files) as server:
        for attempt in ("clip", "listing"):
            started = time.monotonic()
            with pytest.raises(FetchError) as cut:
                if attempt == "clip":
                    fetcher.fetch(
                        server.url(f"/v1/clips/{clip.clip_id}.age"),
                        tmp_path / "spool.part",
                        device_id=HOSTILE,
                        expected_size=clip.size,
                        expected_sha256=clip.sha256,
                    )
                else:
                    fetcher.list_clips(server.url(""), device_id=HOSTILE)
            took = time.monotonic() - started
            assert cut.value.kind is FetchErrorKind.TIMEOUT and cut.value.retryable, cut.value
            assert "allowed" in str(cut.value)
            limit = fetcher.fetch_deadline_s(clip.size) if attempt == "clip" else 1.0
            assert limit <= took < limit + 2.0, (attempt, took)
    # What arrived before the deadline is kept, to be resumed.
    assert 0 < (tmp_path / "spool.part").stat().st_size < clip.size


def test_a_unit_with_as_many_fetches_in_flight_as_allowed_gets_no_more(
    catalog: Catalog, announce: Callable[..., ClipAnnouncement]
) -> None:
    now = datetime.now(UTC)
    for n in range(4):
        catalog.record_announcement(announce(clip_id_of("cart-01", n), "cart-01"), received_at=now)
    catalog.record_announcement(announce(clip_id_of("cart-02"), "cart-02"), received_at=now)
    later = now + timedelta(seconds=1)

    def take(worker: str) -> ClipRecord | None:
        return catalog.claim_next(worker=worker, now=later, lease_s=60, per_unit=1)

    first, second, third = take("w1"), take("w2"), take("w3")
    assert first is not None and second is not None
    assert {first.device_id, second.device_id} == {"cart-01", "cart-02"}
    assert third is None  # cart-01 has one fetch in flight: its other clips wait
    held = first if first.device_id == "cart-01" else second
    catalog.fetch_failed(held.clip_id, error="cut", retry_at=later, worker=held.lease_owner)
    again = catalog.claim_next(worker="w4", now=later, lease_s=60, per_unit=1)
    assert again is not None and again.device_id == "cart-01"
    # Without the limit, the old fair order: a unit's second fetch after every unit's first.
    assert catalog.claim_next(worker="w5", now=later, lease_s=60) is not None


def test_provisioning_writes_where_units_may_be(tmp_path: Path) -> None:
    hospital = init_site(tmp_path / "hospital", "ward9", broker_hosts=("broker.ward9.example",))
    demo = init_site(tmp_path / "demo", "demo9", broker_hosts=("127.0.0.1",))
    pulls = {}
    for site in (hospital, demo):
        text = receiver_config(
            site, catalog_url="sqlite:///c.db", store_dir=tmp_path, spool_dir=tmp_path / "s"
        )
        pulls[site.name] = tomllib.loads(text)["pull"]
    assert pulls["ward9"]["unit_networks"] == list(PRIVATE_NETWORKS)
    assert pulls["ward9"]["unit_ports"] == [8443]
    # Units that reach the broker on loopback run on this machine, on picked ports.
    assert pulls["demo9"]["unit_networks"] == ["127.0.0.0/8", "::1/128"]
    assert pulls["demo9"]["unit_ports"] == ["1024-65535"]
