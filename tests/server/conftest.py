"""Catalog databases for the server tests: a SQLite file, and a fresh PostgreSQL database.

PostgreSQL is the real server on the development and CI machines (127.0.0.1:5432, trust
auth; ``PAINAV_TEST_POSTGRES_URL`` points elsewhere). Each test gets a database of its own,
created from that server's ``test`` database and dropped afterwards, so tests can run in
parallel and leave nothing behind. A server that cannot be reached fails the test: the
PostgreSQL half of the catalog is not optional.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from protocol.messages import ClipAnnouncement
from server.catalog import Catalog
from tests.protocol.message_examples import MINISIGN, manifest

POSTGRES_URL = os.environ.get(
    "PAINAV_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)

Announce = Callable[..., ClipAnnouncement]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"painav_test_{secrets.token_hex(6)}"
    unreachable: str | None = None
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        unreachable = str(exc.orig).strip().splitlines()[0]
    if unreachable is not None:  # outside the except: one clear line, not a chained trace
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is needed for the catalog tests and is not reachable at "
            f"{POSTGRES_URL} ({unreachable}); start it, or set PAINAV_TEST_POSTGRES_URL",
            pytrace=False,
        )
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty catalog database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('catalog')}/catalog.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def catalog(db_url: str) -> Iterator[Catalog]:
    """A catalog on an empty database, migrated."""
    with Catalog(db_url, actor="receiver-1") as opened:
        yield opened


@pytest.fixture
def announce() -> Announce:
    """Make an announcement of *clip_id* from *device* (ward7) with the given ciphertext hash."""

    def make(
        clip_id: str, device: str = "cart-03", *, sha256: str | None = None, size: int = 1000
    ) -> ClipAnnouncement:
        digest = sha256 or hashlib.sha256(clip_id.encode()).hexdigest()
        return ClipAnnouncement(
            manifest=manifest(clip_id=clip_id, device_id=device, sha256=digest, size_bytes=size),
            signature=MINISIGN,
            url=f"https://{device}.ward7.example:8443/clips/{clip_id}",
        )

    return make


def enrolled(catalog: Catalog, pseudonym: str = "PAIN-0042") -> None:
    """Enrol *pseudonym* with consent, unless it is enrolled already: the consent gate lets
    only such participants' clips be extracted."""
    if any(p.pseudonym == pseudonym for p in catalog.participants()):
        return
    today = datetime.now(UTC).date()
    catalog.enrol(
        pseudonym,
        group="pain",
        language="nl",
        enrolled_on=today,
        consented_on=today,
        form_version="v1",
    )
