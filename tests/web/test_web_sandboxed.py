"""The dashboard as it ships: the ``web.toml`` that ``painav provision web`` writes, served under
painav-web.service's system-call filter, clock protection, address families and W^X memory;
every page renders for an admin in Chromium and an export is written."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from painav.cli import main
from painav.localsite import HOST, free_port
from provisioning.devices import add_device
from provisioning.site import init_site
from server.catalog import Catalog
from server.web.auth import hash_password
from tests.support.dashboard import PASSWORDS, Dashboard, new_page, screenshot, sign_in
from tests.support.sandbox import launcher

UNIT_FILE = Path(__file__).resolve().parents[2] / "systemd" / "painav-web.service"


def test_the_provisioned_dashboard_serves_every_page_under_its_units_sandbox(
    tmp_path: Path, chromium: Any
) -> None:
    site = init_site(tmp_path / "site", "ward7", broker_hosts=(HOST,))
    add_device(site, "cart-01")
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    port = free_port()
    args = ["provision", "web", "--dir", str(site.dir), "--host", HOST, "--port", str(port)]
    args += ["--catalog-url", url, "--features", str(tmp_path / "features")]
    args += ["--registry", str(site.paths.registry), "--exports", str(tmp_path / "exports")]
    args += ["--credentials", str(site.dir / "web")]
    assert main(args) == 0
    folder = site.dir / "web"
    with Catalog(url) as catalog:
        catalog.add_user("admin", "admin", hash_password(PASSWORDS["admin"]))
        today = datetime.now(UTC).date()
        catalog.enrol("PAIN-0001", group="pain", language="nl", enrolled_on=today,
                      consented_on=today, form_version="v1")  # fmt: skip
    board = Dashboard(f"https://{HOST}:{port}/", folder / "ca.pem", folder, url,
                      wrapper=launcher(UNIT_FILE)).start()  # fmt: skip
    try:
        page = new_page(chromium)
        page.set_default_timeout(60_000)  # under the sandbox, on a loaded 2-CPU machine
        sign_in(page, board, "admin")
        for name in ("Fleet", "Arm", "Recordings", "Participants", "Audit"):
            page.click(f"nav >> text={name}")
            assert "Internal Server Error" not in page.content()
            assert page.locator("main table").count() >= 1, name
        page.click("nav >> text=Participants")
        page.click("text=Start an export")
        page.wait_for_selector("text=written to", timeout=90_000)  # loads pyarrow first
        screenshot(page, "sandboxed-dataset")
        assert list((tmp_path / "exports").glob("export-*/participants.tsv"))
    except Exception:
        print(board.log()[-4000:])  # what the dashboard said, beside the browser's view
        raise
    finally:
        board.stop()
    assert "Traceback" not in board.log(), board.log()
