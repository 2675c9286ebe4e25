"""The audit log on SQLite and PostgreSQL: the chain, and every kind of tampering it reveals."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, delete, select, text, update
from sqlalchemy.orm import Session

from server.audit import (
    GENESIS_HASH,
    AuditHead,
    AuditLog,
    audit_head,
    audit_log,
    chain_hash,
    main,
    verify,
)
from server.catalog import Catalog
from tests.protocol.message_examples import clip_id_of

from .conftest import T0, Announce

CLIPS = 3
ROWS = 4 * CLIPS  # ingest, fetch, stored, receipt for each clip


def fill(catalog: Catalog, announce: Announce, clips: int = CLIPS) -> None:
    """Take *clips* clips through ingest, fetch, store and receipt: four audit rows each."""
    for n in range(clips):
        at = T0 + timedelta(minutes=n)
        catalog.record_announcement(announce(clip_id_of(n=n)), received_at=at)
        claimed = catalog.claim_next(worker="w1", now=at, lease_s=60)
        assert claimed is not None
        catalog.mark_stored(claimed.clip_id, store_key=f"k{n}", stored_at=at, worker="w1")
        catalog.mark_receipted(claimed.clip_id, at=at)


@pytest.fixture
def raw(db_url: str) -> Iterator[Engine]:
    """A plain engine on the catalog database: the hand of someone editing it directly."""
    engine = create_engine(db_url)
    yield engine
    engine.dispose()


def test_the_chain_verifies_after_many_operations(catalog: Catalog, announce: Announce) -> None:
    fill(catalog, announce, clips=10)
    for n in range(5):
        catalog.record_announcement(
            announce(clip_id_of(n=0xB0 + n), sha256="c" * 64), received_at=T0
        )
        catalog.record_announcement(
            announce(clip_id_of(n=0xB0 + n), sha256="d" * 64), received_at=T0
        )
    report = catalog.audit.verify()
    assert report.ok and report.rows == 50 and report.first_bad_seq is None
    assert str(report) == "audit log intact: 50 rows"
    entries = catalog.audit.entries()
    assert [e.seq for e in entries] == list(range(1, 51))
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert catalog.audit.head() == AuditHead(50, entries[-1].hash)
    assert {e.action for e in entries} == {"ingest", "fetch", "stored", "receipt", "quarantine"}
    assert all(e.at.tzinfo is UTC and e.actor for e in entries)


def test_an_empty_log_verifies(catalog: Catalog) -> None:
    assert catalog.audit.verify().ok
    assert catalog.audit.head() == AuditHead(0, GENESIS_HASH)


def test_the_hash_is_the_documented_one() -> None:
    # What an outside checker computes from the module docstring alone.
    at = datetime(2025, 3, 1, 9, 30, 0, 250000, tzinfo=UTC)
    canonical = (
        '{"action":"ingest","actor":"receiver-1","at":"2025-03-01T09:30:00.25Z",'
        '"clip_id":"clip-1","detail":{"a":[1,2],"é":null},"seq":1}'
    )
    expected = hashlib.sha256((GENESIS_HASH + canonical).encode()).hexdigest()
    detail = {"é": None, "a": [1, 2]}
    got = chain_hash(
        GENESIS_HASH, seq=1, at=at, action="ingest", clip_id="clip-1", actor="receiver-1",
        detail=detail,
    )  # fmt: skip
    assert got == expected


def test_an_append_rolled_back_leaves_no_trace(catalog: Catalog, raw: Engine) -> None:
    log = AuditLog(raw)
    with Session(raw) as session, session.begin():
        log.append(session, "export", actor="dm-0001", detail={"clips": ("clip-1", "clip-2")})
    with pytest.raises(RuntimeError), Session(raw) as session, session.begin():
        log.append(session, "erase", clip_id="clip-1", actor="dm-0001")
        raise RuntimeError("the erase failed")
    (entry,) = log.entries()
    assert entry.detail == {"clips": ["clip-1", "clip-2"]}  # stored as JSON reads it back
    assert log.head().seq == 1 and log.verify().ok


def test_a_detail_json_cannot_hold_is_refused(catalog: Catalog, raw: Engine) -> None:
    log = AuditLog(raw)
    with Session(raw) as session, session.begin():
        with pytest.raises(TypeError):
            log.append(session, "export", actor="dm-0001", detail={"when": datetime.now(UTC)})
        with pytest.raises(ValueError):
            log.append(session, "export", actor="dm-0001", detail={"ratio": float("nan")})
    assert log.head() == AuditHead(0, GENESIS_HASH)


# --- tampering ------------------------------------------------------------------------------


def set_row(conn: Connection, which: int, /, **values: Any) -> None:
    conn.execute(update(audit_log).where(audit_log.c.seq == which).values(**values))


def delete_rows(conn: Connection, *seqs: int) -> None:
    conn.execute(delete(audit_log).where(audit_log.c.seq.in_(seqs)))


def edit_detail_by_sql(conn: Connection) -> None:
    detail = '{"store_key": "elsewhere"}'
    conn.execute(text(f"UPDATE audit_log SET detail = '{detail}' WHERE seq = 7"))


def swap(conn: Connection, first: int, second: int) -> None:
    set_row(conn, first, seq=-1)
    set_row(conn, second, seq=first)
    set_row(conn, -1, seq=second)


def rehash(conn: Connection, seq: int) -> None:
    """Edit row *seq* and give it the hash its new content has: the next row's link breaks."""
    row = conn.execute(select(audit_log).where(audit_log.c.seq == seq)).one()
    detail = {**row.detail, "store_key": "elsewhere"}
    content = {key: getattr(row, key) for key in ("seq", "at", "action", "clip_id", "actor")}
    set_row(conn, seq, detail=detail, hash=chain_hash(row.prev_hash, **content, detail=detail))


def add_past_head(conn: Connection) -> None:
    last = conn.execute(select(audit_log).where(audit_log.c.seq == ROWS)).one()
    forged = {**last._asdict(), "seq": ROWS + 1, "prev_hash": last.hash, "action": "erase"}
    conn.execute(audit_log.insert().values(**forged))


def roll_back_head(conn: Connection) -> None:
    """Set the head one row back, consistently: the last row then looks added by hand."""
    previous = conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == ROWS - 1)).one()
    conn.execute(update(audit_head).values(seq=ROWS - 1, hash=previous.hash))


Tamper = Callable[[Connection], object]
TAMPERING: list[tuple[str, Tamper, int, str]] = [
    # what was done, how, the first seq verify names, and words of its reason
    ("edited detail", edit_detail_by_sql, 7, "row 7 was changed"),
    ("edited action", lambda c: set_row(c, 6, action="erase"), 6, "row 6 was changed"),
    ("edited actor", lambda c: set_row(c, 2, actor="someone"), 2, "changed"),
    ("edited time", lambda c: set_row(c, 3, at=T0 - timedelta(days=1)), 3, "changed"),
    ("edited clip", lambda c: set_row(c, 9, clip_id="clip-x"), 9, "changed"),
    ("deleted middle row", lambda c: delete_rows(c, 4), 4, "row 4 is missing"),
    ("deleted first row", lambda c: delete_rows(c, 1), 1, "row 1 is missing"),
    ("deleted last row", lambda c: delete_rows(c, ROWS), ROWS, f"after {ROWS - 1} are missing"),
    ("deleted last rows", lambda c: delete_rows(c, 10, 11, 12), 10, "after 9 are missing"),
    ("reordered pair", lambda c: swap(c, 5, 6), 5, "row 5 does not follow row 4"),
    ("edited and rehashed", lambda c: rehash(c, 7), 8, "row 8 does not follow row 7"),
    ("edited head", lambda c: c.execute(update(audit_head).values(hash="f" * 64)), ROWS, "head"),
    ("head from an old backup", roll_back_head, ROWS, "past the head"),
    ("removed head", lambda c: c.execute(delete(audit_head)), 1, "audit_head row is missing"),
    ("forged row past the head", add_past_head, ROWS + 1, "added by hand"),
]


def test_verify_finds_every_kind_of_tampering(
    catalog: Catalog, announce: Announce, raw: Engine, subtests: pytest.Subtests
) -> None:
    fill(catalog, announce)
    with raw.connect() as conn:
        rows = [row._asdict() for row in conn.execute(select(audit_log))]
        head = conn.execute(select(audit_head)).one()._asdict()
    assert len(rows) == ROWS

    def restore(conn: Connection) -> None:
        # As from a backup: one database for all cases is cheaper than one per case.
        conn.execute(delete(audit_log))
        conn.execute(delete(audit_head))
        conn.execute(audit_log.insert(), rows)
        conn.execute(audit_head.insert().values(**head))

    for what, tamper, first_bad, reason in TAMPERING:
        with subtests.test(what):
            with raw.begin() as conn:
                restore(conn)
            assert catalog.audit.verify().ok
            with raw.begin() as conn:
                tamper(conn)
            report = verify(raw)
            assert not report.ok
            assert report.first_bad_seq == first_bad
            assert report.problem is not None and reason in report.problem
            assert str(report).startswith(f"audit log damaged at seq {first_bad}: ")


def test_the_verify_command(
    catalog: Catalog,
    announce: Announce,
    db_url: str,
    raw: Engine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fill(catalog, announce, clips=1)
    assert main(["verify", db_url]) == 0
    out = capsys.readouterr().out
    assert "audit log intact: 4 rows" in out and str(catalog.audit.head()) in out
    with raw.begin() as conn:
        set_row(conn, 2, detail=json.loads('{"lease_s": 1}'))
    assert main(["verify", db_url]) == 1
    assert "damaged at seq 2" in capsys.readouterr().out


def test_the_verify_command_names_a_database_it_cannot_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "postgresql://postgres@127.0.0.1:1/nowhere"
    assert main(["verify", url]) == 2
    assert f"cannot read the audit log at {url}" in capsys.readouterr().err
