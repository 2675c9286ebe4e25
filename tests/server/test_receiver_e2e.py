"""The receiver with a real unit: announced → fetched → verified → stored → receipted →
deleted from the unit, and what it refuses."""

from __future__ import annotations

import time
from pathlib import Path

from server.audit import verify
from server.catalog import ClipState
from tests.support.mosquitto import Broker
from tests.support.unit import make_unit, start_receiver


def wait_for(predicate, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_press_to_stored_receipted_and_deleted(broker_site, broker: Broker, tmp_path: Path) -> None:
    site = broker_site
    receiver = start_receiver(site, broker, tmp_path / "receiver")
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=1.5).start()
    try:
        for _ in range(2):
            unit.press()
            unit.wait_state("recording")
            unit.wait_state("idle")
        catalog = receiver.service.catalog
        clips = wait_for(
            lambda: (
                [c for c in catalog.clips() if c.state is ClipState.RECEIPTED] or None
                if len([c for c in catalog.clips() if c.state is ClipState.RECEIPTED]) == 2
                else None
            ),
            "two receipted clips",
        )
        for clip in clips:
            assert receiver.service.store.exists(clip.sha256)
            assert clip.manifest.device_id == "cart-01"
        wait_for(lambda: unit.status()["queue"] == [], "the unit's outbox to empty")
        assert not list((unit.work / "outbox").rglob("*.age"))
        report = verify(f"sqlite:///{tmp_path / 'receiver' / 'catalog.db'}")
        assert report.ok and report.rows >= 6, report
    finally:
        assert unit.stop() == 0, unit.log()
        receiver.stop()


def test_a_revoked_unit_is_quarantined_and_never_receipted(
    broker_site, broker: Broker, tmp_path: Path
) -> None:
    from provisioning.devices import revoke_device

    site = broker_site
    receiver = start_receiver(site, broker, tmp_path / "receiver")
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=1.0).start()
    try:
        # Revoked in the registry after it connected (the broker would refuse a new login).
        revoke_device(site, "cart-01")
        unit.press()
        catalog = receiver.service.catalog
        clip = wait_for(
            lambda: next((c for c in catalog.clips() if c.state is ClipState.QUARANTINED), None),
            "a quarantined clip",
        )
        assert clip.quarantine_reason == "revoked_unit"
        time.sleep(1.0)
        assert len(unit.status()["queue"]) == 1  # not receipted: it stays on the unit
        assert not receiver.service.store.exists(clip.sha256)
    finally:
        assert unit.stop() == 0, unit.log()
        receiver.stop()
