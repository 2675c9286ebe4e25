"""``painav receiver units`` and ``painav receiver events``: what IT reads about the fleet."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from painav.cli import main
from protocol.messages import Event, Status
from provisioning.devices import add_device, revoke_device
from provisioning.receivers import receiver_config
from provisioning.site import Site, init_site
from server.catalog import Catalog
from tests.support.mosquitto import HOST, SITE
from tests.support.unit import PAINAV

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    site = init_site(tmp_path / "site", SITE, broker_hosts=(HOST,))
    for unit in ("cart-01", "cart-02", "cart-03"):
        add_device(site, unit)
    return site


def write_config(site: Site, tmp_path: Path) -> tuple[Path, Catalog]:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    config = tmp_path / "receiver.toml"
    config.write_text(
        receiver_config(
            site,
            catalog_url=url,
            store_dir=tmp_path / "store",
            spool_dir=tmp_path / "spool",
            broker_host=HOST,
            broker_port=8883,
        )
    )
    return config, Catalog(url)


def test_a_revoked_unit_is_listed_revoked_not_online(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, catalog = write_config(site, tmp_path)
    try:
        for unit in ("cart-01", "cart-02"):
            catalog.upsert_status(
                site.name,
                unit,
                Status(state="online", since=T0, software_version="0.1.0", armed=False),
                seen_at=T0,
            )
    finally:
        catalog.close()
    # Revoked while online: the broker then denies its last will, so "online" stays behind.
    revoke_device(site, "cart-01")
    capsys.readouterr()
    assert main(["receiver", "units", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["cart-01", "revoked"],
        ["cart-02", "online"],
        ["cart-03", "never"],
    ]
    assert "last seen never" in lines[2]
    assert main(["receiver", "units", "--config", str(config), "--json"]) == 0
    listed = {u["device_id"]: u for u in json.loads(capsys.readouterr().out)}
    assert listed["cart-01"]["status"] == "revoked" and listed["cart-01"]["revoked_at"]
    assert listed["cart-02"]["status"] == "online" and listed["cart-02"]["revoked_at"] is None
    assert listed["cart-03"]["status"] == "never seen"


def test_events_lists_a_units_refused_presses_newest_first(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, catalog = write_config(site, tmp_path)
    try:
        for minute, (unit, reason) in enumerate(
            [
                ("cart-01", "clock_unsynchronised"),
                ("cart-02", "low_storage"),
                ("cart-01", "hardware_missing"),
            ]
        ):
            at = T0 + timedelta(minutes=minute)
            event = Event(
                event_id=f"e{minute}", kind="refused", at=at, clip_id=None, reason=reason, detail=""
            )
            catalog.record_event(site.name, unit, event, received_at=at)
    finally:
        catalog.close()
    capsys.readouterr()
    assert main(["receiver", "events", "--config", str(config), "--unit", "cart-01"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "2026-11-27 10:02:00Z cart-01          refused    hardware_missing",
        "2026-11-27 10:00:00Z cart-01          refused    clock_unsynchronised",
    ]
    assert main(["receiver", "events", "--config", str(config), "--limit", "1", "--json"]) == 0
    (newest,) = json.loads(capsys.readouterr().out)
    assert newest["device_id"] == "cart-01" and newest["reason"] == "hardware_missing"


def test_reconcile_prints_no_alembic_lines(site: Site, tmp_path: Path) -> None:
    config, catalog = write_config(site, tmp_path)
    catalog.close()
    # A process of its own: under pytest, logging has handlers already and would hide them.
    run = subprocess.run(
        [str(PAINAV), "receiver", "reconcile", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert run.stdout.startswith("reconcile: 0 units checked")
