"""Withdrawal of consent (SQLite and PostgreSQL): nothing of the participant is left in the
catalog, the store or the feature folder; others' data stays; only a tombstone remains."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from protocol.messages import ClipAnnouncement
from server.catalog import Catalog, ClipState, StudyError
from server.research.withdrawal import withdraw
from tests.protocol.message_examples import MINISIGN, manifest

from .conftest import enrolled
from .study_data import NOW, StudySite

KEPT_TABLES = {"audit_log", "audit_head", "tombstones", "erased_clips", "alembic_version"}


@pytest.fixture
def site(db_url: str, tmp_path: Path) -> Iterator[StudySite]:
    with Catalog(db_url, actor="datamanager") as catalog:
        yield StudySite(catalog, tmp_path)


def _rows_as_text(db_url: str) -> str:
    """Every row of every table a participant's data may be in, as one text."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names()) - KEPT_TABLES
            return "\n".join(
                repr(row)
                for table in sorted(tables)
                for row in conn.execute(text(f"SELECT * FROM {table}"))
            )
    finally:
        engine.dispose()


def test_nothing_of_a_withdrawn_participant_remains(site: StudySite, db_url: str) -> None:
    enrolled(site.catalog, "PAIN-0042")
    enrolled(site.catalog, "PAIN-0043")
    mine = {
        f"cart-03-20261129T09000{n}Z-ab1{n}": site.extracted_clip(
            f"cart-03-20261129T09000{n}Z-ab1{n}", "PAIN-0042", f"gone_marker_{n}"
        )
        for n in (1, 2)
    }
    theirs = site.extracted_clip("cart-03-20261129T090009Z-ab19", "PAIN-0043", "kept_marker")
    before = _rows_as_text(db_url)
    assert "gone_marker_1" in before and "PAIN-0042" in before  # the search below can find it

    tombstone = withdraw(site.catalog, site.store, site.features, "PAIN-0042")

    assert tombstone.erased == {
        "clips": 2, "feature_sets": 4, "quality_checks": 2, "visits": 0, "clinical_records": 0,
        "files": 4,
    }  # fmt: skip
    after = _rows_as_text(db_url)
    for needle in ("PAIN-0042", "gone_marker", *mine, *mine.values()):
        assert needle not in after
    assert "kept_marker" in after and theirs in after
    assert not any(site.store.exists(digest) for digest in mine.values())
    assert site.store.exists(theirs)
    assert sorted(p.name for p in site.features.iterdir()) == ["cart-03-20261129T090009Z-ab19"]
    if db_url.startswith("sqlite"):  # and not in the file's free pages or its log either
        files = Path(db_url.removeprefix("sqlite:///")).parent.glob("catalog.db*")
        raw = b"".join(path.read_bytes() for path in files)
        assert b"gone_marker" not in raw and b"kept_marker" in raw

    assert site.catalog.tombstone("PAIN-0042") == tombstone
    assert site.catalog.discarded_on_arrival("cart-03-20261129T090001Z-ab11", None)
    assert site.catalog.discarded_on_arrival("cart-03-20261129T090555Z-ffff", "PAIN-0042")
    assert not site.catalog.discarded_on_arrival("cart-03-20261129T090555Z-ffff", "PAIN-0043")
    [entry] = [e for e in site.catalog.audit.entries() if e.action == "participant_withdrawn"]
    assert entry.actor == "datamanager" and entry.detail["clips"] == 2
    assert site.catalog.audit.verify().ok
    with pytest.raises(StudyError, match="withdrew on"):
        withdraw(site.catalog, site.store, site.features, "PAIN-0042")


def test_the_gate_closes_at_once_and_a_held_clip_is_waited_for(site: StudySite) -> None:
    enrolled(site.catalog, "PAIN-0042")
    part = site.spool / "c"
    part.write_bytes(b"x" * 100)
    digest = hashlib.sha256(part.read_bytes()).hexdigest()
    key = site.store.put(digest, part, "untrusted comment: test\n", move=True)
    clip_id = "cart-03-20261129T090001Z-ab11"
    ann = ClipAnnouncement(
        manifest=manifest(clip_id=clip_id, participant="PAIN-0042", sha256=digest),
        signature=MINISIGN,
        url=f"https://cart-03.ward7.example:8443/v1/clips/{clip_id}.age",
    )
    site.catalog.record_announcement(ann, received_at=NOW)
    assert site.catalog.claim_next(worker="rx", now=NOW, lease_s=60) is not None
    site.catalog.mark_stored(clip_id, store_key=key, stored_at=NOW, worker="rx")
    site.catalog.mark_receipted(clip_id, at=NOW)
    held = site.catalog.claim_for_extraction(
        worker="x1", now=datetime.now(UTC), lease_s=600, max_attempts=3
    )
    assert held is not None and held.state is ClipState.EXTRACTING
    waits: list[str] = []
    with pytest.raises(StudyError, match="still held by a worker"):
        withdraw(site.catalog, site.store, site.features, "PAIN-0042", wait_s=0.05,
                 poll_s=0.01, say=waits.append)  # fmt: skip
    assert waits and site.store.exists(digest)  # nothing erased under the worker's feet
    assert not site.catalog.participant("PAIN-0042").consented  # but the gate is closed
    site.catalog.extraction_failed(clip_id, worker="x1", reason="stopped", now=NOW,
                                   retry_at=NOW, max_attempts=3)  # fmt: skip
    later = NOW + timedelta(hours=1)
    assert (
        site.catalog.claim_for_extraction(worker="x1", now=later, lease_s=60, max_attempts=3)
        is None
    )
    tombstone = withdraw(site.catalog, site.store, site.features, "PAIN-0042")
    assert tombstone.erased["clips"] == 1 and not site.store.exists(digest)


def test_a_clip_not_yet_fetched_is_never_fetched_once_withdrawal_begins(site: StudySite) -> None:
    enrolled(site.catalog, "PAIN-0042")
    clip_id = "cart-03-20261129T090001Z-ab11"
    ann = ClipAnnouncement(
        manifest=manifest(clip_id=clip_id, participant="PAIN-0042", sha256="a" * 64),
        signature=MINISIGN,
        url=f"https://cart-03.ward7.example:8443/v1/clips/{clip_id}.age",
    )
    site.catalog.record_announcement(ann, received_at=NOW)
    site.catalog.begin_withdrawal("PAIN-0042")
    assert site.catalog.claim_next(worker="rx", now=NOW, lease_s=60) is None
    tombstone = withdraw(site.catalog, site.store, site.features, "PAIN-0042")
    assert tombstone.erased["clips"] == 1 and tombstone.erased["files"] == 0
    assert site.catalog.discarded_on_arrival(clip_id, "PAIN-0042")
