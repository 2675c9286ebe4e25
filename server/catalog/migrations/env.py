"""Alembic environment of the catalog: migrates the connection the catalog hands over.

At run time :func:`server.catalog.engine.run_migrations` passes an open connection (inside its
transaction) as ``config.attributes["connection"]``. For drafting a revision, a config from
:func:`server.catalog.engine.alembic_config` with a URL works too; there is no alembic.ini.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from server.audit import metadata as audit_metadata
from server.catalog.models import Base
from server.database import make_engine

TARGET_METADATA = [Base.metadata, audit_metadata]


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=TARGET_METADATA,
        # SQLite alters most things only by copying the table: batch mode does that.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no database: use server.catalog.engine.alembic_config(url)")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=TARGET_METADATA, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            _migrate(conn)
    finally:
        engine.dispose()


_run()
