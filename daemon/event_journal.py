"""The unit's event journal: every event it reports, kept on disk until the hospital recorded it.

An event is a report (a discarded recording, a refused press, a fault) that exists nowhere else
once the unit forgets it, so it is kept like a clip: in SQLite (WAL, ``synchronous=FULL``, so an
event is on the card when :meth:`EventJournal.add` returns), published at every (re)connect and
again periodically, and deleted only when the receiver acknowledges its id on ``event-acks``
(:meth:`EventJournal.forget`). A broker's PUBACK says nothing: the broker may hand the message to
no receiver at all.

The journal is bounded: beyond *limit* events the oldest are dropped, and the drop is itself
reported by one note, an ``error`` event with reason ``events_dropped`` naming how many were
dropped, that the journal keeps outside the limit. More drops before the note is acknowledged
replace it by one with the new total, so a full journal never grows and never drops silently.

Crash points: each change is one SQLite transaction (the event and the drop it causes, or the
ids an acknowledgement names). A crash before ``add`` commits loses nothing the outbox does not
keep: an aborted clip stays "event not reported" in the outbox until its event is in the journal,
and is reported again at the next start. A crash after a publish and before the acknowledgement
leaves the event here, published again: the receiver records it once, by its id. Used from the
unit loop's thread only (:class:`daemon.uplink.Uplink`).
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Final

from protocol.errors import MessageError
from protocol.messages import Event

from .outbox import OutboxError

__all__ = ["DROPPED_REASON", "EventJournal", "EventJournalError", "new_event_id"]

log = logging.getLogger("painav.device")

SCHEMA_VERSION: Final = 1
DEFAULT_LIMIT: Final = 1000
DROPPED_REASON: Final = "events_dropped"

_DDL: Final = f"""
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    payload BLOB NOT NULL,
    -- 0: an event; else the note that this many events were dropped (at most one such row)
    dropped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
PRAGMA user_version = {SCHEMA_VERSION};
"""


class EventJournalError(OutboxError):
    """The journal cannot be opened or written: unreadable file, unknown schema, a full card;
    the message names the file. An :class:`OutboxError`: it lives beside the outbox, and
    ``painav device run`` stops with the same one line when either cannot be opened."""


def new_event_id() -> str:
    """A new event id: 128 random bits in hex, unique per unit even across a re-flash (a
    counter would start again and the receiver would take new events for old ones)."""
    return secrets.token_hex(16)


class EventJournal:
    """Events not yet acknowledged by the hospital, oldest first, at most *limit* of them (and
    the drop note). *now* dates the drop note."""

    def __init__(
        self, path: Path, *, now: Callable[[], datetime], limit: int = DEFAULT_LIMIT
    ) -> None:
        if limit < 1:
            raise ValueError(f"event journal limit {limit}: must be at least 1")
        self.path, self.limit, self._now = Path(path), limit, now
        self._db = self._open(self.path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        try:
            # Created 0600 before SQLite sees it: SQLite gives the -wal and -shm files its mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise EventJournalError(f"{path}: cannot open the event journal: {exc}") from None
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            db.execute("PRAGMA synchronous=FULL")  # committed means on the card
            if mode != "wal":
                raise EventJournalError(f"{path}: SQLite refused WAL mode (got {mode!r})")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.executescript(_DDL)
            elif version != SCHEMA_VERSION:
                raise EventJournalError(
                    f"{path}: event journal schema v{version}, this software knows "
                    f"v{SCHEMA_VERSION}"
                )
        except sqlite3.Error as exc:
            db.close()
            raise EventJournalError(f"{path}: not a usable event journal: {exc}") from None
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        """How many events (the drop note included) wait for an acknowledgement."""
        count: int = self._db.execute("SELECT count(*) FROM events").fetchone()[0]
        return count

    def add(self, event: Event) -> None:
        """Keep *event* (version 2, with its id) until :meth:`forget`; drop the oldest beyond
        the limit, and note the drop. Adding an id again changes nothing."""
        if event.event_id is None:
            raise ValueError("the journal keeps events with an event_id (painav.events/2)")
        with self._transaction() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO events (event_id, payload) VALUES (?, ?)",
                (event.event_id, event.to_payload()),
            ).rowcount
            if not inserted:
                return
            excess = self._count(db) - self.limit
            if excess > 0:
                db.execute(
                    "DELETE FROM events WHERE seq IN "
                    "(SELECT seq FROM events WHERE dropped = 0 ORDER BY seq LIMIT ?)",
                    (excess,),
                )
                self._note_drop(db, excess)

    def unacked(self) -> list[Event]:
        """Every event kept, oldest first (the drop note where it was made). A row that no
        longer reads as an event (a corrupted card) is logged and deleted."""
        rows = self._db.execute("SELECT seq, payload FROM events ORDER BY seq").fetchall()
        events, bad = [], []
        for seq, payload in rows:
            try:
                events.append(Event.parse(payload))
            except MessageError as exc:
                log.error("event journal %s: row %d unreadable, deleted: %s", self.path, seq, exc)
                bad.append((seq,))
        if bad:
            with self._transaction() as db:
                db.executemany("DELETE FROM events WHERE seq = ?", bad)
        return events

    def forget(self, event_ids: Iterable[str]) -> int:
        """Delete the events the hospital acknowledged; how many were here."""
        ids = [(event_id,) for event_id in event_ids]
        with self._transaction() as db:
            before = db.total_changes
            db.executemany("DELETE FROM events WHERE event_id = ?", ids)
            return db.total_changes - before

    # --- inside a transaction -------------------------------------------------------------

    @staticmethod
    def _count(db: sqlite3.Connection) -> int:
        count: int = db.execute("SELECT count(*) FROM events WHERE dropped = 0").fetchone()[0]
        return count

    def _note_drop(self, db: sqlite3.Connection, dropped: int) -> None:
        # One note at a time: an earlier one not yet acknowledged is replaced by the new total.
        row = db.execute("SELECT seq, dropped FROM events WHERE dropped > 0").fetchone()
        total = dropped + (row[1] if row is not None else 0)
        if row is not None:
            db.execute("DELETE FROM events WHERE seq = ?", (row[0],))
        note = Event(
            event_id=new_event_id(),
            kind="error",
            at=self._now(),
            reason=DROPPED_REASON,
            detail=f"{total} events dropped unreported: the unit keeps at most {self.limit}",
        )
        db.execute(
            "INSERT INTO events (event_id, payload, dropped) VALUES (?, ?, ?)",
            (note.event_id, note.to_payload(), total),
        )
        db.execute(
            "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (dropped,),
        )
        log.warning("event journal full: %d events dropped so far", total)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.path)

    @property
    def dropped_total(self) -> int:
        """Every event this journal ever dropped for want of room."""
        row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return int(row[0]) if row is not None else 0


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on any exception; SQLite's errors
    (a full card, an I/O error) come out as :class:`EventJournalError` naming the file."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db, self._path = db, path

    def __enter__(self) -> sqlite3.Connection:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise EventJournalError(f"{self._path}: {exc}") from exc
        return self._db

    def __exit__(self, kind: type[BaseException] | None, error: object, _tb: object) -> None:
        try:
            self._db.execute("COMMIT" if kind is None else "ROLLBACK")
        except sqlite3.Error as exc:
            if kind is None:
                raise EventJournalError(f"{self._path}: {exc}") from exc
        if isinstance(error, sqlite3.Error):
            raise EventJournalError(f"{self._path}: {error}") from error
