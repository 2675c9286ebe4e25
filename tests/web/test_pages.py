"""The dashboard on a running site, in a real Chromium: a researcher signs in, sees a simulated
cart come online, arms it for a participant, the nurse presses its button, and the clip arrives
on the recordings page with its quality verdict; its page has the plots. Real Mosquitto with
the project's TLS and ACL config, the real receiver and extraction worker, the unit daemon and
the dashboard as processes of their own. Every page is kept as a screenshot."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from protocol.extract_config import ExtractConfig
from protocol.tomlconfig import load_toml
from provisioning.extraction import extract_config
from provisioning.site import Site
from server.extract.worker import ExtractionWorker, data_key_path, load_identities
from tests.support.dashboard import new_page, provision_dashboard, screenshot, sign_in
from tests.support.mosquitto import Broker
from tests.support.unit import make_unit, start_receiver

SLOW = 90_000  # ms: a clip is recorded, pulled, verified, stored and extracted meanwhile


@contextmanager
def _worker(site: Site, work: Path, catalog_url: str) -> Iterator[None]:
    """The real extraction worker, in a thread (as the demo runs it)."""
    path = work / "extract.toml"
    path.write_text(
        extract_config(
            site,
            catalog_url=catalog_url,
            store_dir=work / "receiver" / "store",
            features_dir=work / "features",
            data_key=site.paths.data_key,
        )
    )
    config = load_toml(path, ExtractConfig)
    worker = ExtractionWorker(
        config, worker_id="extract-test", identities=load_identities(data_key_path(config))
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)
        worker.close()


def test_a_researcher_arms_a_cart_and_watches_its_clip_arrive_with_its_verdict(
    broker_site: Site, broker: Broker, tmp_path: Path, chromium: Any
) -> None:
    site = broker_site
    catalog_url = f"sqlite:///{tmp_path / 'receiver' / 'catalog.db'}"
    receiver = start_receiver(site, broker, tmp_path / "receiver", catalog_url)
    catalog = receiver.service.catalog
    today = datetime.now(UTC).date()
    catalog.enrol("PAIN-0001", group="pain", language="nl", enrolled_on=today,
                  consented_on=today, form_version="v1")  # fmt: skip
    catalog.open_visit("PAIN-0001", on=today)
    # Playing video enabled for admins, as an admin would ([video] in web.toml).
    video = {"roles": ["admin"], "data_key": site.paths.data_key,
             "store": tmp_path / "receiver" / "store"}  # fmt: skip
    board = provision_dashboard(
        site, tmp_path, catalog_url, features_dir=tmp_path / "features", video=video
    )
    board.start()
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=3.0)
    try:
        with _worker(site, tmp_path, catalog_url):
            page = new_page(chromium)
            sign_in(page, board, "researcher")
            row = page.locator("#fleet tr[data-unit='cart-01']")
            assert "never seen" in row.inner_text()
            unit.start()
            # No reload: the table updates itself.
            row.locator(".state-online").wait_for(timeout=SLOW)
            screenshot(page, "fleet")

            page.click("nav >> text=Arm")
            page.select_option("select[name=device]", "cart-01")
            page.select_option("select[name=target]", "PAIN-0001:1")
            page.click("form[action='/arm'] button:has-text('Arm')")
            page.wait_for_url(board.url + "arm?asked=arm&unit=cart-01")
            assert "waiting for the unit" in page.inner_text("main")
            page.locator("#arm-status tr[data-unit='cart-01'] .verdict-usable").wait_for(
                timeout=SLOW
            )
            assert "armed" in page.inner_text("#arm-status tr[data-unit='cart-01']")
            assert unit.status()["participant"] == "PAIN-0001"
            screenshot(page, "arm")

            page.click("nav >> text=Recordings")
            unit.press()  # the nurse; the unit stops by itself after 3 s
            clip_row = page.locator("#recordings tr[data-clip]").first
            clip_row.locator(".state-extracted").wait_for(timeout=SLOW)
            clip_row.locator(".verdict").wait_for(timeout=SLOW)
            text = clip_row.inner_text()
            assert "PAIN-0001 V1" in text and "full" in text
            screenshot(page, "recordings")

            # Disarmed from the page, the next press records a clip for no one: assigned here.
            page.click("nav >> text=Arm")
            page.select_option("select[name=device]", "cart-01")
            page.click("form[action='/arm'] button:has-text('Disarm')")
            page.locator("#arm-status tr[data-unit='cart-01'] .verdict-usable").wait_for(
                timeout=SLOW
            )
            assert unit.status()["participant"] is None
            page.click("nav >> text=Recordings")
            unit.press()
            unassigned = page.locator("#recordings tr[data-clip]:has(form)")
            unassigned.wait_for(timeout=SLOW)
            assert "stored" in unassigned.inner_text() or "receipted" in unassigned.inner_text()
            unassigned.locator("select").select_option("PAIN-0001:1")
            unassigned.locator("button:has-text('Assign')").click()
            page.wait_for_url(board.url + "recordings")
            assert page.locator("#recordings tr[data-clip]:has(form)").count() == 0
            # Assigned, its consent is known: the worker extracts it now.
            newest = page.locator("#recordings tr[data-clip]").first
            newest.locator(".state-extracted").wait_for(timeout=SLOW)
            assert "PAIN-0001 V1" in newest.inner_text()

            clip_row = page.locator("#recordings tr[data-clip]").last
            clip_row.locator("a").click()
            page.wait_for_selector("figure.plot")
            titles = page.locator("figure.plot figcaption").all_inner_texts()
            assert len(titles) >= 4, titles
            assert page.locator("figure.plot svg").count() == len(titles)
            screenshot(page, "clip")
            clip_url = page.url
            assert page.locator("video").count() == 0  # a researcher may not play it
            assert page.request.get(clip_url + "/video").status == 403

            page.click("nav >> text=Participants")
            assert "PAIN-0001" in page.inner_text("main")
            screenshot(page, "dataset")
            page.click("text=Start an export")
            page.wait_for_selector("text=written to")
            assert "current" in page.inner_text("main")

            admin = new_page(chromium)
            sign_in(admin, board, "admin")
            admin.click("nav >> text=Audit")
            assert "audit log intact" in admin.inner_text("#chain")
            actions = admin.inner_text("main")
            assert "arm_requested" in actions and "web_login" in actions and "export" in actions
            screenshot(admin, "audit")

            admin.goto(clip_url)
            source = admin.locator("video").get_attribute("src")
            reply = admin.request.get(board.url + source.lstrip("/"))
            assert reply.status == 200 and reply.headers["content-type"] == "video/mp4"
            assert reply.headers["cache-control"] == "no-store"
            assert reply.body()[4:8] == b"ftyp"  # an MP4, decrypted in memory on the server
        entries = [e for e in catalog.audit.entries() if e.action.endswith(("arm_requested",
                   "clip_assigned"))]  # fmt: skip
        assert [(e.action, e.actor) for e in entries] == [
            ("arm_requested", "web:researcher"),
            ("disarm_requested", "web:researcher"),
            ("clip_assigned", "web:researcher"),
        ]
        played = [e for e in catalog.audit.entries() if e.detail.get("purpose") == "play"]
        assert [(e.action, e.actor) for e in played] == [("decrypt", "web:admin")]
    finally:
        unit.stop()
        board.stop()
        receiver.stop()
