"""The audit log: an append-only, hash-chained record of what happened to clips, and its check.

Every ingest, claim, fetch failure, store, quarantine, receipt and conflict (later: decrypt,
export, erase) is one row, appended in the same database transaction as the change it records,
so the log and the catalog never disagree. Row ``seq`` carries::

    hash = sha256(prev_hash + canonical JSON of {seq, at, action, clip_id, actor, detail})

with ``prev_hash`` the previous row's hash (64 zeros for row 1), hex digests as ASCII, and
canonical JSON as :func:`protocol.message_codec.dump_json` writes it (compact, sorted keys,
UTF-8, ``at`` as RFC 3339 UTC with ``Z``). A one-row table ``audit_head`` holds the last seq and
hash; appends lock it (``FOR UPDATE`` on PostgreSQL; SQLite has a single writer), which orders
them, and it lets :func:`verify` see a removed last row, not only a removed middle one.

What this protects against: an accidental or casual change — a row edited, removed or
reordered by hand, a restore from the wrong backup — which :func:`verify` (``python -m
server.audit verify URL``) finds and names by seq. What it cannot stop: someone with full write
access to the database can rewrite the whole chain and the head. Against that, the receiver
writes :meth:`AuditLog.head` to the system journal periodically; a chain that no longer
contains a head once journalled has been rewritten.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    CursorResult,
    DateTime,
    Dialect,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    func,
    select,
    update,
)
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

from protocol.message_codec import dump_json
from protocol.message_fields import format_timestamp

from .database import READ_ONLY, make_engine

__all__ = [
    "GENESIS_HASH",
    "NAMING_CONVENTION",
    "AuditEntry",
    "AuditError",
    "AuditHead",
    "AuditLog",
    "AuditReport",
    "UtcDateTime",
    "chain_hash",
    "main",
    "metadata",
    "verify",
]

GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` of row 1, and the head's hash while the log is empty."""

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint names, fixed so that a later migration can name what it alters on any backend."""

_VERIFY_BATCH: Final = 1000


class AuditError(Exception):
    """The audit log cannot be appended to (e.g. its head row is missing)."""


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC instant on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored as naive
    UTC text of fixed width, which also keeps comparisons in SQL correct. Naive values are
    refused: their zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("a naive datetime cannot be stored: give it a time zone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(naming_convention=NAMING_CONVENTION)
"""The audit tables; the catalog's migrations create them."""

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", UtcDateTime, nullable=False),
    Column("action", String(32), nullable=False),
    Column("clip_id", String(64), nullable=True, index=True),
    Column("actor", String(64), nullable=False),
    Column("detail", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit log."""

    seq: int
    at: datetime
    action: str
    clip_id: str | None
    actor: str
    detail: Mapping[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditHead:
    """The last row's seq and hash (seq 0 and :data:`GENESIS_HASH` while the log is empty)."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"audit head seq={self.seq} hash={self.hash}"


@dataclass(frozen=True)
class AuditReport:
    """What :func:`verify` found: ``ok``, rows checked, and the first bad seq with why."""

    ok: bool
    rows: int
    first_bad_seq: int | None = None
    problem: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"audit log intact: {self.rows} rows"
        return f"audit log damaged at seq {self.first_bad_seq}: {self.problem}"


def chain_hash(
    prev_hash: str,
    *,
    seq: int,
    at: datetime,
    action: str,
    clip_id: str | None,
    actor: str,
    detail: Mapping[str, Any],
) -> str:
    """The hash of row *seq* following a row whose hash is *prev_hash*."""
    content = {
        "seq": seq,
        "at": format_timestamp(at),
        "action": action,
        "clip_id": clip_id,
        "actor": actor,
        "detail": detail,
    }
    return hashlib.sha256(prev_hash.encode("ascii") + dump_json(content)).hexdigest()


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """The audit log of one catalog database: append inside a transaction, read, verify."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._engine = _reading(engine)  # appends use the caller's session, not this
        self._clock = clock

    def append(
        self,
        session: Session,
        action: str,
        *,
        clip_id: str | None = None,
        actor: str,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Add a row in *session*'s transaction; it commits or rolls back with the change.

        Call it last in the transaction: it holds the head row's lock until commit, and every
        other writer of the audit log waits for that lock.
        """
        if not (0 < len(action) <= 32 and 0 < len(actor) <= 64):
            raise ValueError("an audit action is 1-32 characters, an actor 1-64")
        # What is hashed must be exactly what reads back: a JSON round trip fixes the types
        # (tuples become lists) and refuses what JSON cannot hold.
        body = json.loads(dump_json(dict(detail or {})))
        head = session.execute(
            select(audit_head.c.seq, audit_head.c.hash)
            .where(audit_head.c.id == 1)
            .with_for_update()
        ).one_or_none()
        if head is None:
            raise AuditError("the audit_head row is missing: run the catalog's migrations")
        seq = head.seq + 1
        # Read under the lock, so that times follow seq. Both backends keep the microseconds.
        at = self._clock().astimezone(UTC)
        digest = chain_hash(
            head.hash, seq=seq, at=at, action=action, clip_id=clip_id, actor=actor, detail=body
        )
        session.execute(
            audit_log.insert().values(
                seq=seq,
                at=at,
                action=action,
                clip_id=clip_id,
                actor=actor,
                detail=body,
                prev_hash=head.hash,
                hash=digest,
            )
        )
        # The seq condition makes a lost lock (a writer outside these rules) fail loudly.
        moved = cast(
            "CursorResult[Any]",
            session.execute(
                update(audit_head)
                .where(audit_head.c.id == 1, audit_head.c.seq == head.seq)
                .values(seq=seq, hash=digest)
            ),
        )
        if moved.rowcount != 1:
            raise AuditError(f"the audit head moved while appending row {seq}")
        return AuditEntry(seq, at, action, clip_id, actor, body, head.hash, digest)

    def head(self) -> AuditHead:
        """The current head, for the receiver to write to the journal now and then."""
        with self._engine.connect() as conn:
            return _read_head(conn) or AuditHead(0, GENESIS_HASH)

    def entries(
        self, *, clip_id: str | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditEntry]:
        """Rows after *after_seq* in order, optionally only those about *clip_id*."""
        query = select(audit_log).where(audit_log.c.seq > after_seq)
        if clip_id is not None:
            query = query.where(audit_log.c.clip_id == clip_id)
        with self._engine.connect() as conn:
            rows = conn.execute(query.order_by(audit_log.c.seq).limit(limit))
            return [AuditEntry(**row._asdict()) for row in rows]

    def verify(self) -> AuditReport:
        """Check the whole chain; see :func:`verify`."""
        return verify(self._engine)


def _read_head(conn: Connection) -> AuditHead | None:
    row = conn.execute(
        select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
    ).one_or_none()
    return None if row is None else AuditHead(row.seq, row.hash)


def verify(engine_or_url: Engine | str) -> AuditReport:
    """Check every row's link and hash, in seq order, and the last row against the head.

    Finds an edited row (its hash no longer matches its content), a removed or inserted row
    (a gap in seq, or a broken link), reordered rows (broken links), a removed last row or an
    edited head (the head no longer matches the last row), and a row added past the head. Rows
    appended while it runs are left for the next check: it reads the head, then rows up to it.
    """
    engine = _engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    try:
        with _reading(engine).connect() as conn:
            return _verify(conn)
    finally:
        if isinstance(engine_or_url, str):
            engine.dispose()


def _engine(url: str) -> Engine:
    return make_engine(url)


def _reading(engine: Engine) -> Engine:
    """*engine* for reading only: on SQLite, a snapshot that does not hold the write lock."""
    return engine.execution_options(**{READ_ONLY: True})


def _verify(conn: Connection) -> AuditReport:
    head = _read_head(conn)
    if head is None:
        return AuditReport(False, 0, 1, "the audit_head row is missing")
    prev_hash, checked, after = GENESIS_HASH, 0, 0
    # Batches by seq keep memory flat on a long log without a server-side cursor.
    while True:
        batch = conn.execute(
            select(audit_log)
            .where(audit_log.c.seq > after, audit_log.c.seq <= head.seq)
            .order_by(audit_log.c.seq)
            .limit(_VERIFY_BATCH)
        ).all()
        for row in batch:
            expected = checked + 1
            if row.seq != expected:
                return AuditReport(False, checked, expected, f"row {expected} is missing")
            if row.prev_hash != prev_hash:
                problem = f"row {row.seq} does not follow row {row.seq - 1}: rows removed or moved"
                return AuditReport(False, checked, row.seq, problem)
            digest = chain_hash(
                prev_hash,
                seq=row.seq,
                at=row.at,
                action=row.action,
                clip_id=row.clip_id,
                actor=row.actor,
                detail=row.detail,
            )
            if digest != row.hash:
                problem = f"row {row.seq} was changed: its hash does not match its content"
                return AuditReport(False, checked, row.seq, problem)
            prev_hash, checked = row.hash, row.seq
        if len(batch) < _VERIFY_BATCH:
            break
        after = checked
    if checked < head.seq:
        problem = f"rows after {checked} are missing: the head records {head.seq} rows"
        return AuditReport(False, checked, checked + 1, problem)
    if prev_hash != head.hash:
        problem = f"the head does not match row {head.seq}: the head or the last row was changed"
        return AuditReport(False, checked, head.seq, problem)
    # A row past the head is either appended since the head was read (the head has moved
    # with it: both commit together) or added by hand, which would also block the next append.
    past = conn.execute(select(func.min(audit_log.c.seq)).where(audit_log.c.seq > head.seq))
    extra = past.scalar_one()
    if extra is not None and _read_head(conn) == head:
        problem = f"row {extra} is past the head (seq {head.seq}): it was added by hand"
        return AuditReport(False, checked, extra, problem)
    return AuditReport(True, checked)


def _one_line(exc: Exception) -> str:
    cause = getattr(exc, "orig", None) or exc
    return str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m server.audit verify URL``: print the check's result; exit 0 only if intact."""
    parser = argparse.ArgumentParser(
        prog="python -m server.audit", description="Check the catalog's hash-chained audit log."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="check every row and the head")
    check.add_argument("url", help="catalog database URL, e.g. sqlite:////var/lib/painav/c.db")
    args = parser.parse_args(argv)
    try:
        engine = _engine(args.url)
        try:
            report = verify(engine)
            with engine.connect() as conn:
                head = _read_head(conn)
        finally:
            engine.dispose()
    except (ArgumentError, SQLAlchemyError) as exc:
        print(f"cannot read the audit log at {args.url}: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(report)
    if head is not None:
        print(head)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
