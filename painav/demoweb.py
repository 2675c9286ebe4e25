"""The demo's dashboard: provisioned as IT would (``painav provision web``), run as its own
``painav web run`` process, with an admin account whose password is made up here and printed."""

from __future__ import annotations

import secrets
import ssl
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from provisioning.site import Site
from provisioning.web import provision_web
from server.catalog import Catalog
from server.web.auth import hash_password

from .localsite import HOST, free_port

__all__ = ["Dashboard", "start_dashboard"]

PAINAV = Path(sys.executable).with_name("painav")


@dataclass(frozen=True)
class Dashboard:
    url: str
    username: str
    password: str
    ca: Path  # the site root, which a browser must trust to take the certificate


def start_dashboard(
    stack: ExitStack,
    site: Site,
    catalog: Catalog,
    *,
    catalog_url: str,
    features_dir: Path,
    exports_dir: Path,
) -> Dashboard:
    port = free_port()
    folder = provision_web(
        site,
        hosts=[HOST, "localhost"],
        catalog_url=catalog_url,
        features_dir=features_dir,
        registry=site.paths.registry,
        exports_dir=exports_dir,
        credentials=site.dir / "web",
        listen=HOST,
        port=port,
    )
    password = secrets.token_urlsafe(12)
    catalog.add_user("admin", "admin", hash_password(password))
    log = (folder / "web.log").open("ab")
    stack.callback(log.close)
    process = subprocess.Popen(
        [str(PAINAV), "web", "run", "--config", str(folder / "web.toml")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def stop() -> None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()

    stack.callback(stop)
    url = f"https://{HOST}:{port}/"
    _wait_healthy(url, folder / "ca.pem", process)
    return Dashboard(url, "admin", password, folder / "ca.pem")


def _wait_healthy(url: str, ca: Path, process: subprocess.Popen[bytes]) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the dashboard exited ({process.returncode}): see its web.log")
        try:
            with urllib.request.urlopen(f"{url}healthz", context=context, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the dashboard did not answer within 30 s: see its web.log")
