"""The catalog on SQLite and PostgreSQL: migrations, announcements, lifecycle, queue, units."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, inspect, text

from protocol.messages import Event, Status, Telemetry
from server.audit import metadata as audit_metadata
from server.catalog import (
    TRANSITIONS,
    Catalog,
    CatalogDatabaseError,
    CatalogError,
    ClipNotFoundError,
    ClipState,
    IllegalTransitionError,
    LeaseLostError,
)
from server.catalog.engine import alembic_config
from server.catalog.models import Base
from tests.protocol.message_examples import clip_id_of

from .conftest import T0, Announce

SITE, A, B, C = "ward7", "cart-01", "cart-02", "cart-03"
LONG_LEASE_S = 600.0


def actions(catalog: Catalog, clip_id: str) -> list[str]:
    return [entry.action for entry in catalog.audit.entries(clip_id=clip_id)]


# --- migrations -----------------------------------------------------------------------------


def test_migrations_build_the_models_schema_and_are_idempotent(db_url: str) -> None:
    Catalog(db_url).close()
    Catalog(db_url).close()  # a second start finds the schema at head and changes nothing
    models = MetaData()
    for table in [*Base.metadata.tables.values(), *audit_metadata.tables.values()]:
        table.to_metadata(models)
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            # The hand-written migration and the models describe the same schema.
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), models
            )
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert current == ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert diff == []
    assert {"units", "clips", "unit_events", "audit_log", "audit_head"} <= tables


def test_a_schema_newer_than_this_build_is_refused(db_url: str) -> None:
    Catalog(db_url).close()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(CatalogError, match="9999"):
        Catalog(db_url)


def test_receivers_starting_together_migrate_once(db_url: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            Catalog(db_url).close()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        "mysql://root@127.0.0.1/catalog",
        "sqlite://",
    ],
)
def test_a_catalog_that_cannot_open_says_so(url: str) -> None:
    with pytest.raises(CatalogError, match="catalog"):
        Catalog(url)


def test_unreachable_database_is_a_database_error() -> None:
    with pytest.raises(CatalogDatabaseError, match=r"127\.0\.0\.1"):
        Catalog("postgresql://postgres@127.0.0.1:1/nowhere")


# --- announcements --------------------------------------------------------------------------


def test_the_same_clip_announced_twice_is_one_clip(catalog: Catalog, announce: Announce) -> None:
    ann = announce("cart-03-20250301T093000Z-0001")
    first, new = catalog.record_announcement(ann, received_at=T0)
    again, new_again = catalog.record_announcement(ann, received_at=T0 + timedelta(seconds=30))
    assert (new, new_again) == (True, False)
    assert first.state is ClipState.ANNOUNCED and first.announce_count == 1
    assert again.announce_count == 2
    assert again.announced_at == T0 and again.last_announced_at == T0 + timedelta(seconds=30)
    assert again.manifest == ann.manifest and again.participant == "PAIN-0042"
    assert again.announced_at.tzinfo is UTC
    assert [clip.clip_id for clip in catalog.clips()] == ["cart-03-20250301T093000Z-0001"]
    assert actions(catalog, "cart-03-20250301T093000Z-0001") == ["ingest"]


def test_a_clip_reannounced_with_a_different_hash_is_quarantined(
    catalog: Catalog, announce: Announce
) -> None:
    catalog.record_announcement(
        announce("cart-03-20250301T093000Z-0001", sha256="a" * 64), received_at=T0
    )
    clip, new = catalog.record_announcement(
        announce("cart-03-20250301T093000Z-0001", sha256="b" * 64), received_at=T0
    )
    assert not new
    assert clip.state is ClipState.QUARANTINED
    assert clip.quarantine_reason == "reannounced_with_different_hash"
    assert clip.sha256 == "a" * 64  # the first claim stands; neither is fetched
    assert clip.announce_count == 2
    entry = catalog.audit.entries(clip_id="cart-03-20250301T093000Z-0001")[-1]
    assert entry.action == "quarantine"
    assert entry.detail["announced_sha256"] == "b" * 64
    assert catalog.claim_next(worker="w1", now=T0, lease_s=LONG_LEASE_S) is None


def test_a_different_hash_during_a_fetch_voids_the_fetch(
    catalog: Catalog, announce: Announce
) -> None:
    catalog.record_announcement(
        announce("cart-03-20250301T093000Z-0001", sha256="a" * 64), received_at=T0
    )
    assert catalog.claim_next(worker="w1", now=T0, lease_s=LONG_LEASE_S) is not None
    catalog.record_announcement(
        announce("cart-03-20250301T093000Z-0001", sha256="b" * 64), received_at=T0
    )
    with pytest.raises(LeaseLostError):
        catalog.mark_stored(
            "cart-03-20250301T093000Z-0001", store_key="k", stored_at=T0, worker="w1"
        )
    assert catalog.clip("cart-03-20250301T093000Z-0001").state is ClipState.QUARANTINED


def test_a_stored_clip_reannounced_with_a_different_hash_stays_stored(
    catalog: Catalog, announce: Announce
) -> None:
    catalog.record_announcement(
        announce("cart-03-20250301T093000Z-0001", sha256="a" * 64), received_at=T0
    )
    catalog.claim_next(worker="w1", now=T0, lease_s=LONG_LEASE_S)
    catalog.mark_stored("cart-03-20250301T093000Z-0001", store_key="store/aa", stored_at=T0)
    clip, _ = catalog.record_announcement(
        announce("cart-03-20250301T093000Z-0001", sha256="b" * 64), received_at=T0
    )
    assert clip.state is ClipState.STORED and clip.quarantine_reason is None
    assert actions(catalog, "cart-03-20250301T093000Z-0001") == [
        "ingest",
        "fetch",
        "stored",
        "conflict",
    ]
    conflict = catalog.audit.entries(clip_id="cart-03-20250301T093000Z-0001")[-1]
    assert conflict.detail["reason"] == "reannounced_with_different_hash"


def test_a_clip_id_announced_by_another_unit_is_refused_and_quarantines_nothing(
    catalog: Catalog, announce: Announce, caplog: pytest.LogCaptureFixture
) -> None:
    ann = announce(clip_id_of(A), A)
    catalog.record_announcement(ann, received_at=T0)
    # The manifest model refuses B naming A's clip (test_clip_ownership.py); copied past it,
    # this stands for a row written before that rule, or for a check that failed.
    foreign = ann.model_copy(update={"manifest": ann.manifest.model_copy(update={"device_id": B})})
    for n in range(3):
        clip, new = catalog.record_announcement(foreign, received_at=T0 + timedelta(seconds=n))
        assert not new and clip.device_id == A
    clip = catalog.clip(clip_id_of(A))
    assert (clip.state, clip.quarantine_reason, clip.announce_count) == (
        ClipState.ANNOUNCED,
        None,
        1,
    )
    refusals = catalog.audit.entries(clip_id=clip_id_of(A))[1:]
    assert [(e.action, e.detail["reason"]) for e in refusals] == [
        ("conflict", "announced_by_other_unit")
    ] * 3
    assert refusals[0].detail["announced_device_id"] == B
    assert f"refused an announcement of clip {clip_id_of(A)} by unit {B}" in caplog.text
    # A stored clip is left as it is too, and its own unit's announcements still count.
    catalog.claim_next(worker="w1", now=T0, lease_s=LONG_LEASE_S)
    catalog.mark_stored(clip_id_of(A), store_key="k", stored_at=T0, worker="w1")
    clip, _ = catalog.record_announcement(foreign, received_at=T0)
    assert clip.state is ClipState.STORED
    clip, new = catalog.record_announcement(ann, received_at=T0)
    assert not new and clip.announce_count == 2


# --- lifecycle ------------------------------------------------------------------------------


def test_a_clip_goes_from_announced_to_receipted(catalog: Catalog, announce: Announce) -> None:
    catalog.record_announcement(announce("cart-03-20250301T093000Z-0001"), received_at=T0)
    claimed = catalog.claim_next(worker="w1", now=T0 + timedelta(seconds=1), lease_s=60)
    assert claimed is not None and claimed.clip_id == "cart-03-20250301T093000Z-0001"
    assert claimed.state is ClipState.FETCHING and claimed.lease_owner == "w1"
    assert claimed.lease_expires_at == T0 + timedelta(seconds=61)
    stored = catalog.mark_stored(
        "cart-03-20250301T093000Z-0001",
        store_key="ab/cd",
        stored_at=T0 + timedelta(seconds=5),
        worker="w1",
    )
    assert stored.state is ClipState.STORED and stored.store_key == "ab/cd"
    assert stored.lease_owner is None and stored.lease_expires_at is None
    receipted = catalog.mark_receipted(
        "cart-03-20250301T093000Z-0001", at=T0 + timedelta(seconds=6)
    )
    assert receipted.state is ClipState.RECEIPTED
    assert receipted.receipted_at == T0 + timedelta(seconds=6)
    assert receipted.state_changed_at == receipted.receipted_at
    assert catalog.clip("cart-03-20250301T093000Z-0001") == receipted
    assert actions(catalog, "cart-03-20250301T093000Z-0001") == [
        "ingest",
        "fetch",
        "stored",
        "receipt",
    ]
    # The unit repeats its announcement until the receipt reaches it: still one clip.
    again, new = catalog.record_announcement(
        announce("cart-03-20250301T093000Z-0001"), received_at=T0
    )
    assert not new and again.state is ClipState.RECEIPTED


def claim_only(catalog: Catalog, clip_id: str) -> None:
    claimed = catalog.claim_next(worker="w1", now=T0, lease_s=LONG_LEASE_S)
    assert claimed is not None and claimed.clip_id == clip_id


Step = Callable[[Catalog, str], object]
STEPS: dict[str, Step] = {
    "claim": lambda c, clip_id: claim_only(c, clip_id),
    "store": lambda c, clip_id: c.mark_stored(clip_id, store_key="k", stored_at=T0),
    "receipt": lambda c, clip_id: c.mark_receipted(clip_id, at=T0),
    "fail": lambda c, clip_id: c.fetch_failed(clip_id, error="refused", retry_at=T0),
    "quarantine": lambda c, clip_id: c.quarantine(clip_id, "bad_signature"),
}
ILLEGAL = [
    # steps taken, the step refused, and the move it would have been
    ([], "store", "announced", "stored"),
    ([], "receipt", "announced", "receipted"),
    ([], "fail", "announced", "announced"),
    (["claim"], "receipt", "fetching", "receipted"),
    (["claim", "store"], "store", "stored", "stored"),
    (["claim", "store"], "fail", "stored", "announced"),
    (["claim", "store", "receipt"], "store", "receipted", "stored"),
    (["quarantine"], "quarantine", "quarantined", "quarantined"),
    (["quarantine"], "receipt", "quarantined", "receipted"),
]


def test_an_illegal_transition_is_refused_and_changes_nothing(
    catalog: Catalog, announce: Announce, subtests: pytest.Subtests
) -> None:
    # One database, a clip per case: a database per case would cost more than the cases.
    for n, (path, illegal, current, target) in enumerate(ILLEGAL):
        with subtests.test(path=path, illegal=illegal):
            clip_id = clip_id_of(C, n)
            catalog.record_announcement(announce(clip_id), received_at=T0)
            for step in path:
                STEPS[step](catalog, clip_id)
            before, head = catalog.clip(clip_id), catalog.audit.head()
            with pytest.raises(IllegalTransitionError) as caught:
                STEPS[illegal](catalog, clip_id)
            error = caught.value
            assert (error.clip_id, error.current, error.target) == (clip_id, current, target)
            assert f"{clip_id!r} cannot go from {current} to {target}" in str(error)
            assert catalog.clip(clip_id) == before
            assert catalog.audit.head() == head
            if before.state is ClipState.ANNOUNCED:  # out of the next case's queue
                catalog.quarantine(clip_id, "test_case_done")


def test_every_state_is_in_the_transition_table() -> None:
    assert set(TRANSITIONS) == set(ClipState)
    reachable = {ClipState.ANNOUNCED} | set().union(*TRANSITIONS.values())
    assert reachable == set(ClipState)


def test_an_unknown_clip_is_not_found(catalog: Catalog) -> None:
    with pytest.raises(ClipNotFoundError, match="nope"):
        catalog.clip("nope")
    with pytest.raises(ClipNotFoundError):
        catalog.mark_receipted("nope", at=T0)


def test_quarantine_takes_a_reason_code_and_aware_times(
    catalog: Catalog, announce: Announce
) -> None:
    catalog.record_announcement(announce("cart-03-20250301T093000Z-0001"), received_at=T0)
    with pytest.raises(ValueError, match="reason"):
        catalog.quarantine(
            "cart-03-20250301T093000Z-0001", "Signature did not verify for PAIN-0042"
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        catalog.mark_receipted("cart-03-20250301T093000Z-0001", at=datetime(2025, 3, 1, 9, 30))
    clip = catalog.quarantine(
        "cart-03-20250301T093000Z-0001", "bad_signature", at=T0 + timedelta(minutes=1)
    )
    assert clip.quarantine_reason == "bad_signature" and clip.state is ClipState.QUARANTINED
    assert clip.state_changed_at == T0 + timedelta(minutes=1)


# --- the fetch queue ------------------------------------------------------------------------


def test_a_failed_fetch_waits_until_its_retry_time(catalog: Catalog, announce: Announce) -> None:
    catalog.record_announcement(announce("cart-03-20250301T093000Z-0001"), received_at=T0)
    catalog.claim_next(worker="w1", now=T0, lease_s=60)
    failed = catalog.fetch_failed(
        "cart-03-20250301T093000Z-0001",
        error="connection refused\n  by cart-03",
        retry_at=T0 + timedelta(seconds=60),
    )
    assert failed.state is ClipState.ANNOUNCED and failed.attempts == 1
    assert failed.last_error == "connection refused by cart-03"
    assert catalog.claim_next(worker="w1", now=T0 + timedelta(seconds=59), lease_s=60) is None
    again = catalog.claim_next(worker="w2", now=T0 + timedelta(seconds=60), lease_s=60)
    assert (
        again is not None
        and again.clip_id == "cart-03-20250301T093000Z-0001"
        and again.lease_owner == "w2"
    )
    assert actions(catalog, "cart-03-20250301T093000Z-0001") == [
        "ingest",
        "fetch",
        "fetch_failed",
        "fetch",
    ]


def test_claims_go_round_the_units(catalog: Catalog, announce: Announce) -> None:
    # A has the oldest and longest queue, C a single newest clip.
    queues = {A: 5, B: 2, C: 1}
    at = T0
    for device, count in queues.items():
        for n in range(1, count + 1):
            catalog.record_announcement(announce(clip_id_of(device, n), device), received_at=at)
            at += timedelta(seconds=1)
    now = at

    def claim() -> str | None:
        clip = catalog.claim_next(worker="w1", now=now, lease_s=LONG_LEASE_S)
        return None if clip is None else clip.clip_id

    # One each before any unit gets a second, the longest-waiting unit first.
    assert [claim() for _ in range(3)] == [clip_id_of(A, 1), clip_id_of(B, 1), clip_id_of(C, 1)]
    # A's fetch finishes: A has none in flight, B and C one each, so A goes next; then A and
    # B have one each, and A has waited longer; then B, with fewer in flight than A.
    catalog.mark_stored(clip_id_of(A, 1), store_key="k", stored_at=now)
    assert [claim() for _ in range(6)] == [
        *(clip_id_of(A, 2), clip_id_of(A, 3), clip_id_of(B, 2)),
        *(clip_id_of(A, 4), clip_id_of(A, 5), None),
    ]


def test_an_expired_lease_is_taken_over(catalog: Catalog, announce: Announce) -> None:
    catalog.record_announcement(announce("cart-03-20250301T093000Z-0001"), received_at=T0)
    assert catalog.claim_next(worker="w1", now=T0, lease_s=30) is not None
    assert catalog.claim_next(worker="w2", now=T0 + timedelta(seconds=29), lease_s=30) is None
    taken = catalog.claim_next(worker="w2", now=T0 + timedelta(seconds=30), lease_s=30)
    assert taken is not None and taken.clip_id == "cart-03-20250301T093000Z-0001"
    assert taken.lease_owner == "w2" and taken.attempts == 1
    assert taken.last_error == "lease of w1 expired"
    # The receiver that hung comes back too late: its report is refused.
    with pytest.raises(LeaseLostError, match="w2"):
        catalog.mark_stored(
            "cart-03-20250301T093000Z-0001", store_key="k", stored_at=T0, worker="w1"
        )
    with pytest.raises(LeaseLostError):
        catalog.fetch_failed(
            "cart-03-20250301T093000Z-0001", error="late", retry_at=T0, worker="w1"
        )
    stored = catalog.mark_stored(
        "cart-03-20250301T093000Z-0001", store_key="k", stored_at=T0, worker="w2"
    )
    assert stored.state is ClipState.STORED
    assert (
        catalog.audit.entries(clip_id="cart-03-20250301T093000Z-0001")[2].detail["taken_from"]
        == "w1"
    )


def test_a_restarted_receiver_takes_back_its_own_leases_at_once(
    catalog: Catalog, announce: Announce
) -> None:
    for n, worker in enumerate(("rx@host/0", "rx@host/1", "rx@other/0", "rx_host/0")):
        catalog.record_announcement(
            announce(clip_id_of(f"cart-0{n}"), f"cart-0{n}"), received_at=T0
        )
        assert catalog.claim_next(worker=worker, now=T0, lease_s=LONG_LEASE_S) is not None
    later = T0 + timedelta(seconds=5)
    # Only this receiver's workers ("_" is a LIKE wildcard: escaped, it matches only itself).
    assert sorted(catalog.release_leases("rx@host/", now=later)) == [
        clip_id_of("cart-00"),
        clip_id_of("cart-01"),
    ]
    released = catalog.clip(clip_id_of("cart-00"))
    assert (released.state, released.lease_owner, released.attempts) == (
        ClipState.ANNOUNCED,
        None,
        1,
    )
    assert released.last_error == "rx@host/0 stopped while fetching"
    assert actions(catalog, clip_id_of("cart-00"))[-1] == "fetch_failed"
    assert catalog.clip(clip_id_of("cart-02")).state is ClipState.FETCHING
    assert catalog.clip(clip_id_of("cart-03")).state is ClipState.FETCHING
    # Due now, not when the lease would have ended.
    again = catalog.claim_next(worker="rx@host/0", now=later, lease_s=LONG_LEASE_S)
    assert again is not None and again.clip_id in (clip_id_of("cart-00"), clip_id_of("cart-01"))
    assert catalog.release_leases("nobody/", now=later) == []


def test_stored_with_hash_sees_only_clips_whose_bytes_are_kept(
    catalog: Catalog, announce: Announce
) -> None:
    ann = announce("cart-03-20250301T093000Z-0001")
    sha256 = ann.manifest.sha256
    catalog.record_announcement(ann, received_at=T0)
    assert not catalog.stored_with_hash(sha256)
    catalog.claim_next(worker="w", now=T0, lease_s=LONG_LEASE_S)
    assert not catalog.stored_with_hash(sha256)
    catalog.mark_stored("cart-03-20250301T093000Z-0001", store_key=sha256, stored_at=T0, worker="w")
    assert catalog.stored_with_hash(sha256)
    catalog.quarantine("cart-03-20250301T093000Z-0001", "found_later")
    assert not catalog.stored_with_hash(sha256)


def test_concurrent_claimers_never_share_a_clip(db_url: str, announce: Announce) -> None:
    total, units = 200, [f"cart-{n:02d}" for n in range(1, 6)]
    # Two catalogs are two engines (two receivers); two threads each share an engine.
    catalogs = [Catalog(db_url, actor=f"receiver-{n}") for n in (1, 2)]
    try:
        for n in range(total):
            ann = announce(clip_id_of(units[n % len(units)], n), units[n % len(units)])
            catalogs[n % 2].record_announcement(ann, received_at=T0 + timedelta(milliseconds=n))
        now = T0 + timedelta(seconds=1)
        claimed: dict[str, list[str]] = {}
        errors: list[BaseException] = []

        start = threading.Barrier(4)  # all claim from the first clip on, none runs ahead

        def work(catalog: Catalog, worker: str) -> None:
            mine = claimed.setdefault(worker, [])
            try:
                start.wait(timeout=30)
                while True:
                    clip = catalog.claim_next(worker=worker, now=now, lease_s=LONG_LEASE_S)
                    if clip is None:
                        # SKIP LOCKED may come back empty while others hold rows: look again.
                        if not catalog.clips(state=ClipState.ANNOUNCED, limit=1):
                            return
                        continue
                    mine.append(clip.clip_id)
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [
            threading.Thread(target=work, args=(catalog, f"w{n}-{t}"))
            for n, catalog in enumerate(catalogs)
            for t in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        every = [clip_id for clips in claimed.values() for clip_id in clips]
        assert len(every) == len(set(every)) == total
        # The work is shared. On SQLite, whose writers take turns at one lock, a thread can lose
        # every turn to the others on a loaded machine; on PostgreSQL every worker gets clips.
        busy = [worker for worker, clips in claimed.items() if clips]
        assert len(busy) == 4 if db_url.startswith("postgresql") else len(busy) >= 2, claimed
        # The catalog agrees on who holds each clip.
        holders = {c.clip_id: c.lease_owner for c in catalogs[1].clips(limit=total + 1)}
        assert holders == {clip_id: w for w, clips in claimed.items() for clip_id in clips}
        report = catalogs[1].audit.verify()
        assert report.ok and report.rows == 2 * total
    finally:
        for catalog in catalogs:
            catalog.close()


def test_one_clip_announced_to_two_receivers_at_once_is_one_clip(
    db_url: str, announce: Announce
) -> None:
    # QoS 1 redelivery can hand the same announcement to two receivers at the same moment.
    anns = [announce(clip_id_of(f"cart-{n % 3:02d}", n), f"cart-{n % 3:02d}") for n in range(40)]
    catalogs = [Catalog(db_url, actor=f"receiver-{n}") for n in (1, 2)]
    news: list[bool] = []
    errors: list[BaseException] = []

    def ingest(catalog: Catalog) -> None:
        try:
            for ann in anns:
                news.append(catalog.record_announcement(ann, received_at=T0)[1])
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    try:
        threads = [threading.Thread(target=ingest, args=(catalog,)) for catalog in catalogs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert news.count(True) == len(anns) and news.count(False) == len(anns)
        clips = catalogs[0].clips()
        assert len(clips) == len(anns) and {c.announce_count for c in clips} == {2}
        entries = catalogs[0].audit.entries()
        assert [e.action for e in entries] == ["ingest"] * len(anns)
        assert catalogs[0].audit.verify().ok
    finally:
        for catalog in catalogs:
            catalog.close()


# --- units ----------------------------------------------------------------------------------


def test_status_telemetry_and_offline_will(catalog: Catalog) -> None:
    online = Status(state="online", since=T0, software_version="0.1.0", armed=True)
    unit = catalog.upsert_status(SITE, C, online, seen_at=T0 + timedelta(seconds=1))
    assert (unit.status, unit.status_since, unit.armed) == ("online", T0, True)
    assert unit.first_seen_at == unit.last_seen_at == T0 + timedelta(seconds=1)

    def sample(at: datetime, depth: int) -> Telemetry:
        return Telemetry(
            at=at,
            uptime_s=10.0,
            free_bytes=10**9,
            queue_depth=depth,
            oldest_unreceipted_s=5.0 if depth else None,
            clock_synced=True,
        )

    newer, older = sample(T0 + timedelta(seconds=60), 2), sample(T0 + timedelta(seconds=30), 0)
    catalog.record_telemetry(SITE, C, newer, seen_at=T0 + timedelta(seconds=61))
    # QoS 0 and several receivers: an older sample may arrive later, and must not win.
    unit = catalog.record_telemetry(SITE, C, older, seen_at=T0 + timedelta(seconds=62))
    assert unit.last_telemetry == newer and unit.telemetry_at == newer.at
    assert unit.last_seen_at == T0 + timedelta(seconds=62)

    will_at = T0 + timedelta(minutes=5)
    unit = catalog.upsert_status(SITE, C, Status.last_will(), seen_at=will_at)
    assert (unit.status, unit.status_since) == ("offline", will_at)
    assert unit.last_seen_at == T0 + timedelta(seconds=62)  # the broker spoke, not the unit
    assert (unit.software_version, unit.armed) == ("0.1.0", True)
    assert catalog.units() == [unit]


def test_an_announcement_makes_its_unit_known(catalog: Catalog, announce: Announce) -> None:
    catalog.record_announcement(announce(clip_id_of(A, 1), A), received_at=T0)
    catalog.record_announcement(
        announce(clip_id_of(B, 2), B), received_at=T0 + timedelta(seconds=1)
    )
    catalog.record_announcement(
        announce(clip_id_of(A, 3), A), received_at=T0 + timedelta(seconds=2)
    )
    units = {unit.device_id: unit for unit in catalog.units()}
    assert set(units) == {A, B}
    assert units[A].last_seen_at == T0 + timedelta(seconds=2) and units[A].status is None
    assert [clip.clip_id for clip in catalog.clips(device_id=A)] == [
        clip_id_of(A, 1),
        clip_id_of(A, 3),
    ]


def test_a_units_latest_clip_gives_its_address(catalog: Catalog, announce: Announce) -> None:
    assert catalog.latest_clip(A) is None
    catalog.record_announcement(
        announce(clip_id_of(A, 2), A), received_at=T0 + timedelta(seconds=5)
    )
    catalog.record_announcement(announce(clip_id_of(A, 1), A), received_at=T0)
    catalog.record_announcement(
        announce(clip_id_of(B, 3), B), received_at=T0 + timedelta(seconds=9)
    )
    latest = catalog.latest_clip(A)
    assert latest is not None and latest.clip_id == clip_id_of(A, 2)  # by announcement, not by id
    assert latest.url.startswith(f"https://{A}.ward7.example:8443/")
    assert catalog.latest_clip("cart-99") is None


def test_unit_events_are_kept_once(catalog: Catalog) -> None:
    event = Event(
        event_id="e-1",
        kind="discarded",
        at=T0,
        clip_id="cart-03-20250301T093000Z-0009",
        reason="nurse_discard",
    )
    assert catalog.record_event(SITE, C, event, received_at=T0) is True
    assert catalog.record_event(SITE, C, event, received_at=T0 + timedelta(seconds=9)) is False
    # Published again until acknowledged, perhaps rebuilt: one event per unit and id.
    again = event.model_copy(update={"detail": "published again"})
    assert catalog.record_event(SITE, C, again, received_at=T0 + timedelta(seconds=60)) is False
    later = Event(
        event_id="e-2", kind="aborted", at=T0 + timedelta(seconds=1), reason="camera_timeout"
    )
    assert catalog.record_event(SITE, C, later, received_at=T0) is True
    assert catalog.record_event(SITE, A, later, received_at=T0) is True  # another unit's e-2
    kept = catalog.events(device_id=C)
    assert [(e.event_id, e.kind, e.clip_id, e.reason) for e in kept] == [
        ("e-2", "aborted", None, "camera_timeout"),
        ("e-1", "discarded", "cart-03-20250301T093000Z-0009", "nurse_discard"),
    ]
    assert kept[1].received_at == T0 and kept[1].detail == ""


def test_events_of_a_unit_of_the_previous_version_are_kept_once_by_payload(
    catalog: Catalog,
) -> None:
    def old(reason: str) -> Event:  # painav.events/1: no event_id
        payload = (
            b'{"at":"2025-03-01T09:30:00Z","clip_id":null,"detail":"","kind":"refused",'
            b'"reason":"' + reason.encode() + b'","schema":"painav.events/1"}'
        )
        return Event.parse(payload)

    assert catalog.record_event(SITE, C, old("busy"), received_at=T0) is True
    assert catalog.record_event(SITE, C, old("busy"), received_at=T0) is False  # redelivered
    assert catalog.record_event(SITE, C, old("not_ready"), received_at=T0) is True
    kept = catalog.events(device_id=C)
    assert {(e.event_id, e.reason) for e in kept} == {(None, "busy"), (None, "not_ready")}


def test_migration_0003_goes_down_and_up_again(db_url: str) -> None:
    event = Event(event_id="e-1", kind="refused", at=T0, reason="busy")
    with Catalog(db_url) as catalog:
        assert catalog.record_event(SITE, C, event, received_at=T0)
    command.downgrade(alembic_config(db_url), "0002")
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("unit_events")}
            kept = conn.execute(text("SELECT count(*) FROM unit_events")).scalar_one()
    finally:
        engine.dispose()
    assert "event_id" not in columns and kept == 1
    with Catalog(db_url) as catalog:  # opening migrates to head again; the id column is new
        assert [e.event_id for e in catalog.events(device_id=C)] == [None]
        # Still recorded once: its key (device and event id) survived.
        assert not catalog.record_event(SITE, C, event, received_at=T0)
        other = event.model_copy(update={"event_id": "e-2"})
        assert catalog.record_event(SITE, C, other, received_at=T0)
