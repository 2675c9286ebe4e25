"""The dashboard as tests run it: provisioned by ``painav provision web``, served by ``painav web
run`` as a process of its own over HTTPS, with an account of each role; and a real Chromium
(Debian's, driven by Playwright) to look at it."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from painav.localsite import HOST, free_port
from provisioning.site import Site
from provisioning.web import provision_web
from server.catalog import Catalog
from server.web.auth import hash_password

PAINAV = Path(sys.executable).with_name("painav")
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; scripts/setup.sh installs it
# Chromium as root in a container, and no calls home (the machine has no Internet).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORDS = {
    "admin": "admin-password-1",
    "researcher": "researcher-pass-1",
    "viewer": "viewer-pass-01",
}
SCREENSHOTS = Path(os.environ.get("PAINAV_SCREENSHOTS", Path(__file__).parents[2] / ".screenshots"))


@dataclass
class Dashboard:
    url: str  # https://127.0.0.1:PORT/
    ca: Path
    folder: Path  # web/ of the site folder: web.toml, key, certificate, token
    catalog_url: str
    process: subprocess.Popen[bytes] | None = None
    wrapper: list[str] = field(default_factory=list)  # e.g. a unit file's sandbox launcher

    def log(self) -> str:
        path = self.folder / "web.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> Dashboard:
        log = (self.folder / "web.log").open("ab")
        self.process = subprocess.Popen(
            [*self.wrapper, str(PAINAV), "web", "run", "--config", str(self.folder / "web.toml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.get("healthz")[0] == 200:
                    return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the dashboard did not start:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)

    def request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTPS request, the certificate checked against the site root; redirects are not
        followed. Returns status, headers, body."""
        context = ssl.create_default_context(cafile=str(self.ca))

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
                return None

        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), NoRedirect()
        )
        request = urllib.request.Request(
            self.url + path.lstrip("/"), data=data, method=method, headers=headers or {}
        )
        try:
            with opener.open(request, timeout=20) as reply:
                return reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, **kwargs)


def provision_dashboard(
    site: Site,
    work: Path,
    catalog_url: str,
    *,
    features_dir: Path | None = None,
    video: dict[str, Any] | None = None,
    **session: Any,
) -> Dashboard:
    """The dashboard's files as provisioning writes them (plus *session* overrides of
    ``[session]`` and a ``[video]`` section as an admin would add it), and an account of each
    role; not started."""
    port = free_port()
    folder = provision_web(
        site,
        hosts=[HOST, "localhost"],
        catalog_url=catalog_url,
        features_dir=features_dir or work / "features",
        registry=site.paths.registry,
        exports_dir=work / "exports",
        credentials=site.dir / "web",
        listen=HOST,
        port=port,
    )
    if session:
        text = (folder / "web.toml").read_text()
        text += "\n[session]\n" + "".join(f"{k} = {v!r}\n" for k, v in session.items())
        (folder / "web.toml").write_text(text)
    if video:  # store: the receiver's store folder, as [video.store]
        store = video.pop("store")
        text = (folder / "web.toml").read_text() + "\n[video]\n"
        text += "".join(f"{k} = {_toml(v)}\n" for k, v in video.items())
        text += f"\n[video.store]\ndir = {_toml(store)}\n"
        (folder / "web.toml").write_text(text)
    with Catalog(catalog_url, actor="test") as catalog:
        for role, password in PASSWORDS.items():
            if catalog.user(role) is None:
                catalog.add_user(role, role, hash_password(password))
    return Dashboard(f"https://{HOST}:{port}/", folder / "ca.pem", folder, catalog_url)


def _toml(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f'"{value}"' if isinstance(value, str | Path) else repr(value)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """A headless Chromium (Debian's /usr/bin/chromium) under Playwright."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (it installs chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_page(browser: Any) -> Any:
    """A fresh browser profile (no cookies). The certificate is the site root's, which this
    browser does not know; the tests' HTTP client checks it against the root instead."""
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1300, "height": 800})
    context.set_default_timeout(20_000)
    return context.new_page()


def sign_in(page: Any, board: Dashboard, role: str) -> None:
    page.goto(board.url)
    page.fill("input[name=username]", role)
    page.fill("input[name=password]", PASSWORDS[role])
    page.click("button[type=submit]")
    page.wait_for_url(board.url)


def screenshot(page: Any, name: str) -> None:
    """Keep a picture of the page for a person to look at (``.screenshots/`` by default)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
