"""The catalog's migrations (Alembic, no ``alembic.ini``).

The engines they run on are made by :mod:`server.database`, which the audit log uses too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from server.database import READ_ONLY, database_url, make_engine

# make_engine and READ_ONLY are re-exported for callers that know them from here.
__all__ = [
    "MIGRATIONS_DIR",
    "READ_ONLY",
    "alembic_config",
    "make_engine",
    "run_migrations",
]

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"

# An arbitrary constant: the PostgreSQL advisory lock that lets one receiver at a time migrate.
_MIGRATION_LOCK_KEY: Final = 0x7061696E6176


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the catalog's migrations, with no ``alembic.ini``.

    With *url*, ``alembic.command.revision(alembic_config(url), "message", autogenerate=True)``
    drafts a new migration from the models against a database at head.
    """
    cfg = Config()
    # configparser interpolates '%': escape it in the path.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", str(database_url(url)).replace("%", "%%"))
    return cfg


def run_migrations(engine: Engine) -> None:
    """Bring the database to the newest schema; a no-op when it is there already.

    Runs in one transaction (both backends have transactional DDL), so a failed migration
    leaves the schema as it was. On PostgreSQL an advisory lock makes receivers that start
    together take turns; on SQLite ``BEGIN IMMEDIATE`` does the same.
    """
    cfg = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
