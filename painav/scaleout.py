"""The hospital side on several processes, on one machine: a PostgreSQL catalog, a SeaweedFS
S3 store, and receivers and extraction workers as the processes systemd would run. For
``painav demo --receivers N --workers M --store s3`` and the load bench."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from protocol.store_config import StoreLocation

from .seaweedfs import SeaweedFS

__all__ = [
    "BUCKET",
    "POSTGRES_URL",
    "ServiceProcess",
    "postgres_database",
    "s3_store",
]

POSTGRES_URL: Final = os.environ.get(
    "PAINAV_DEMO_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
"""The PostgreSQL server a new catalog database is made on (its database only connects)."""
BUCKET: Final = "painav-clips"
PAINAV: Final = Path(sys.executable).with_name("painav")


@contextmanager
def postgres_database(server_url: str = POSTGRES_URL, *, keep: bool = False) -> Iterator[str]:
    """A new, empty database on *server_url*'s server; its URL. Dropped afterwards unless
    *keep*."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"painav_{secrets.token_hex(5)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        if not keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def s3_store(stack: ExitStack, root: Path, credentials: Path) -> StoreLocation:
    """SeaweedFS under *root* with bucket :data:`BUCKET`, stopped with *stack*; the
    ``[store]`` location of it, its key in *credentials* (0600)."""
    import boto3

    server = SeaweedFS(root)
    server.start()
    stack.callback(server.stop)
    server.write_credentials(credentials)
    boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
    ).create_bucket(Bucket=BUCKET)
    return StoreLocation(
        backend="s3",
        endpoint=server.endpoint,
        bucket=BUCKET,
        prefix="demo",
        credentials_file=credentials,
    )


@dataclass
class ServiceProcess:
    """``painav receiver run`` or ``painav extract run`` as a process of its own, its output in
    *log*; :meth:`kill` is a crash (SIGKILL), :meth:`stop` systemd's SIGTERM."""

    args: list[str]
    log: Path
    ready_line: str | None  # what it logs once it is up (None: start() does not wait)
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def receiver(cls, config: Path, log: Path) -> ServiceProcess:
        return cls(["receiver", "run", "--config", str(config)], log, "connected to the broker")

    @classmethod
    def worker(cls, config: Path, number: int, log: Path) -> ServiceProcess:
        args = ["extract", "run", "--config", str(config), "--worker", str(number)]
        return cls(args, log, None)  # the worker logs nothing until it has work

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self, *, timeout_s: float = 60.0) -> ServiceProcess:
        seen = self.text().count(self.ready_line) if self.ready_line else 0
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [str(PAINAV), *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if self.ready_line is None:
            return self
        deadline = time.monotonic() + timeout_s
        while self.text().count(self.ready_line) == seen:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(self.args[:2])} did not start; see {self.log}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.terminate()
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
