"""The unit's event journal: kept on disk until acknowledged, bounded, drops said out loud."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.event_journal import DROPPED_REASON, EventJournal, EventJournalError
from protocol.messages import Event

T0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


def event(n: int) -> Event:
    return Event(event_id=f"e{n}", kind="refused", at=T0 + timedelta(seconds=n), reason="busy")


def test_events_survive_a_reopen_until_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    journal = EventJournal(path, now=lambda: T0)
    for n in range(3):
        journal.add(event(n))
    journal.add(event(1))  # the same id again: nothing new
    journal.close()
    assert os.stat(path).st_mode & 0o777 == 0o600

    journal = EventJournal(path, now=lambda: T0)
    assert [e.event_id for e in journal.unacked()] == ["e0", "e1", "e2"]
    assert journal.forget(["e1", "unknown"]) == 1
    journal.close()
    assert [e.event_id for e in EventJournal(path, now=lambda: T0).unacked()] == ["e0", "e2"]


def test_a_full_journal_drops_the_oldest_and_one_note_counts_them(tmp_path: Path) -> None:
    journal = EventJournal(tmp_path / "events.sqlite", now=lambda: T0, limit=3)
    for n in range(5):
        journal.add(event(n))
    kept = journal.unacked()
    assert [e.event_id for e in kept[:3]] == ["e2", "e3", "e4"]
    (note,) = kept[3:]
    assert (note.kind, note.reason) == ("error", DROPPED_REASON)
    assert note.detail.startswith("2 events dropped")

    journal.add(event(5))  # one more dropped: the note, not yet acknowledged, says 3 now
    kept = journal.unacked()
    assert [e.event_id for e in kept if e.reason != DROPPED_REASON] == ["e3", "e4", "e5"]
    (again,) = [e for e in kept if e.reason == DROPPED_REASON]
    assert again.detail.startswith("3 events dropped") and again.event_id != note.event_id
    assert len(journal) == 4 and journal.dropped_total == 3

    assert note.event_id is not None and again.event_id is not None
    journal.forget([again.event_id])  # the hospital has the count: the next drop starts anew
    journal.add(event(6))
    notes = [e for e in journal.unacked() if e.reason == DROPPED_REASON]
    assert [n.detail.split(" ")[0] for n in notes] == ["1"]


def test_an_unreadable_row_is_dropped_with_a_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.sqlite"
    journal = EventJournal(path, now=lambda: T0)
    journal.add(event(1))
    journal.close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO events (event_id, payload) VALUES ('bad', x'7b')")
    db.commit()
    db.close()
    journal = EventJournal(path, now=lambda: T0)
    assert [e.event_id for e in journal.unacked()] == ["e1"]
    assert "unreadable, deleted" in caplog.text
    assert len(journal) == 1


def test_a_file_that_is_no_journal_is_named(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    path.write_bytes(b"not a database at all, but long enough to look like a header......")
    with pytest.raises(EventJournalError, match=r"events\.sqlite"):
        EventJournal(path, now=lambda: T0)


def test_a_failing_write_is_an_event_journal_error_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    journal = EventJournal(path, now=lambda: T0)
    journal.add(event(1))
    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # as a card that refuses every write would
    try:
        journal._db.execute("PRAGMA busy_timeout = 0")
        with pytest.raises(EventJournalError, match=r"events\.sqlite"):
            journal.add(event(2))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert [e.event_id for e in journal.unacked()] == ["e1"]
