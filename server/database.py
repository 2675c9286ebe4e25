"""Database engines for the receiver (SQLite in WAL mode, or PostgreSQL), shared by the catalog
and the audit log's check."""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Final

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["BUSY_TIMEOUT_S", "CONNECT_TIMEOUT_S", "READ_ONLY", "database_url", "make_engine"]

READ_ONLY: Final = "painav_read_only"
"""Execution option: on SQLite, begin a plain (deferred) transaction that only reads."""

BUSY_TIMEOUT_S: Final = 30.0
"""How long a SQLite writer waits for another to finish before it fails."""

CONNECT_TIMEOUT_S: Final = 10


def database_url(url: str | URL) -> URL:
    """*url* parsed; ``postgresql://`` means psycopg 3, the driver painav installs."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str | URL) -> Engine:
    """An engine for a ``sqlite:///file`` or ``postgresql+psycopg://`` catalog URL.

    SQLite: WAL (readers never wait for the writer), ``synchronous=FULL`` (a committed
    "stored" or "receipted" survives a power cut: the unit deletes its copy on our receipt),
    foreign keys on, ``secure_delete`` (erased rows are zeroed), a busy timeout, and
    ``BEGIN IMMEDIATE`` so each transaction that writes holds the single write lock from its
    start and never fails halfway on an upgrade.
    """
    parsed = database_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ArgumentError("the SQLite catalog must be a file: sqlite:///path/catalog.db")
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        # pre-ping: a receiver runs for months, across database restarts and failovers.
        return create_engine(
            parsed, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
        )
    raise ArgumentError(f"unsupported catalog database {backend!r}: use sqlite or postgresql")


def _sqlite_connect(dbapi_connection: Any, _record: object) -> None:
    # Turn off the sqlite3 module's own transaction handling: _sqlite_begin says BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        _wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Deleted rows are overwritten with zeros, not left in free pages: a withdrawn
        # participant's data must not linger in the file.
        cursor.execute("PRAGMA secure_delete=ON")
    finally:
        cursor.close()


def _wal(cursor: Any) -> None:
    """Put the database in WAL mode, once. Switching a new database's journal needs it to
    itself, and SQLite answers "locked" at once rather than waiting (its busy timeout does not
    cover this): receivers that open a new catalog together try again, up to the timeout."""
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_begin(conn: Connection) -> None:
    read_only = conn.get_execution_options().get(READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
