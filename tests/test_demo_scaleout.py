"""``painav demo --receivers 2 --workers 2 --store s3``: the hospital side on several processes,
a new PostgreSQL catalog and a local SeaweedFS, end to end through the console script."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from painav.scaleout import POSTGRES_URL


def test_the_demo_runs_on_two_receivers_two_workers_and_s3() -> None:
    painav = Path(sys.executable).with_name("painav")
    parent = Path(tempfile.mkdtemp(prefix="painav-demo-test-"))  # not private: see test_cli
    parent.chmod(0o755)
    work = parent / "work"
    kept: str | None = None
    try:
        result = subprocess.run(
            [str(painav), "demo", "--workdir", str(work), "--clips", "3", "--units", "2",
             "--receivers", "2", "--workers", "2", "--store", "s3"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        found = re.search(r"the catalog, kept after the demo: (\S+)", result.stdout)
        kept = found.group(1) if found else None
        assert result.returncode == 0, result.stdout + result.stderr
        assert "receiver, receiver-2; postgresql+psycopg catalog, S3 store" in result.stdout
        assert "2 worker processes share the catalog and the store" in result.stdout
        assert "3 clip(s) stored and receipted, 0 quarantined" in result.stdout
        assert "video h264" in result.stdout  # read back from S3 and decrypted in memory
        hospital = work / "hospital"
        assert not (hospital / "store").exists()  # the clips are in the bucket, not a folder
        assert (hospital / "receiver-2" / "receiver.log").read_text().count("connected") >= 1
        extracted = sum(
            (hospital / f"extract-{n}.log").read_text().count("extracted (quick check")
            for n in (1, 2)
        )
        assert extracted == 3  # each clip once, across the two workers
        data = work / "s3" / "data"
        assert data.is_dir() and any(data.iterdir())
        # No plaintext media anywhere, SeaweedFS's volumes included.
        for path in work.rglob("*"):
            if path.is_file() and not path.is_socket():
                assert b"\x1a\x45\xdf\xa3" not in path.read_bytes(), path
    finally:
        if kept is not None:  # --workdir keeps the demo's database: drop it
            admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                name = make_url(kept).database
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        shutil.rmtree(parent, ignore_errors=True)
