"""Arming and withdrawal against a running site (real Mosquitto, a real unit process, the real
receiver): a researcher arms the cart through the catalog, the receiver signs and sends the arm
command; after a withdrawal the cart is disarmed, and a clip of the participant still on the
unit is receipted and discarded when it arrives, never stored."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from provisioning.site import Site
from server.catalog import Catalog
from server.research.withdrawal import withdraw
from server.store import LocalStore
from tests.server.test_receiver_e2e import wait_for
from tests.support.mosquitto import Broker
from tests.support.unit import Unit, make_unit, start_receiver


def _record(unit: Unit) -> None:
    """Press; the unit stops by itself and seals the clip."""
    unit.press()
    unit.wait_state("recording")
    wait_for(lambda: unit.status()["state"] == "armed", "the clip sealed", 30)


def test_a_withdrawn_participants_clip_arriving_later_is_discarded_not_stored(
    broker_site: Site, broker: Broker, tmp_path: Path
) -> None:
    site, work = broker_site, tmp_path / "receiver"
    receiver = start_receiver(site, broker, work)
    catalog = receiver.service.catalog
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=1.0).start()
    try:
        today = datetime.now(UTC).date()
        catalog.enrol("PAIN-0042", group="pain", language="nl", enrolled_on=today,
                      consented_on=today, form_version="v1")  # fmt: skip
        catalog.open_visit("PAIN-0042", on=today)
        catalog.request_arm("cart-01", "PAIN-0042", 1)  # as `painav research arm` does
        wait_for(lambda: unit.status()["participant"] == "PAIN-0042", "the unit armed", 20)

        _record(unit)
        wait_for(lambda: not unit.status()["queue"], "the clip receipted and deleted", 60)
        [kept] = catalog.clips()
        assert kept.participant == "PAIN-0042" and receiver.service.store.exists(kept.sha256)

        receiver.stop()  # the next clip waits on the unit, announced to no one
        _record(unit)
        [waiting] = unit.status()["queue"]
        with Catalog(f"sqlite:///{work / 'catalog.db'}", actor="datamanager") as hospital:
            tombstone = withdraw(hospital, LocalStore(work / "store"), tmp_path / "f", "PAIN-0042")
        assert tombstone.erased["clips"] == 1

        receiver = start_receiver(site, broker, work)
        wait_for(lambda: not unit.status()["queue"], "the waiting clip receipted, deleted", 60)
        wait_for(lambda: unit.status()["participant"] is None, "the unit disarmed", 20)
        catalog = receiver.service.catalog
        assert catalog.clips() == [] and not list((work / "store").rglob("*.age"))
        [discarded] = [e for e in catalog.audit.entries() if e.action == "discarded_on_arrival"]
        assert discarded.clip_id != kept.clip_id and discarded.clip_id in str(waiting)
        assert catalog.audit.verify().ok
    finally:
        assert unit.stop() == 0, unit.log()
        receiver.stop()
