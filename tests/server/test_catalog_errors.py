"""Which catalog failures are worth trying again: the receiver leaves a message unacknowledged
(so the broker delivers it again) only when the database is unavailable, never for a refusal
that would repeat forever."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from protocol.messages import Event
from server import database
from server.catalog import Catalog, CatalogDatabaseError, CatalogUnavailableError
from server.catalog.catalog import unavailable

AT = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def test_a_locked_database_is_unavailable_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "catalog.db"
    catalog = Catalog(f"sqlite:///{path}")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    event = Event(
        event_id="e1", kind="refused", at=AT, clip_id=None, reason="low_storage", detail=""
    )
    try:
        with pytest.raises(CatalogUnavailableError, match="locked"):
            catalog.record_event("ward7", "cart-01", event, received_at=AT)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert catalog.record_event("ward7", "cart-01", event, received_at=AT)  # once it is free
    catalog.close()


def test_a_broken_constraint_is_a_refusal() -> None:
    broken = IntegrityError("INSERT …", {}, Exception("UNIQUE constraint failed"))
    locked = OperationalError("INSERT …", {}, Exception("database is locked"))
    assert not unavailable(broken) and unavailable(locked)
    assert issubclass(CatalogUnavailableError, CatalogDatabaseError)
