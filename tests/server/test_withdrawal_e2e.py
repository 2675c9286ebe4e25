"""Withdrawal against a running site (real Mosquitto, a real unit process, the real receiver):
a clip of the withdrawn participant that arrives later is receipted and discarded, never stored,
and the unit lets it go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from protocol.messages import ArmCommand
from provisioning.site import Site
from server.research.withdrawal import withdraw
from tests.server.test_receiver_e2e import wait_for
from tests.support.mosquitto import Broker
from tests.support.unit import Receiver, Unit, make_unit, start_receiver


def _arm(receiver: Receiver, site: Site, device_id: str, pseudonym: str, visit: str) -> None:
    signer, now = receiver.service.signer, datetime.now(UTC)
    command = ArmCommand.signed(
        participant=pseudonym, visit=visit, issued_at=now, expires_at=now + timedelta(hours=1),
        site_id=site.name, device_id=device_id, signer=signer.certificate, sign=signer.sign,
    )  # fmt: skip
    assert receiver.service.link.publish(command, device_id=device_id).wait(10)


def _recorded_and_gone(unit: Unit) -> None:
    """Press, let the unit stop by itself, and wait until its outbox has let the clip go."""
    unit.press()
    unit.wait_state("recording")
    wait_for(lambda: unit.status()["state"] == "armed" and not unit.status()["queue"],
             "the clip receipted and deleted on the unit", 60)  # fmt: skip


def test_a_withdrawn_participants_clip_arriving_later_is_discarded_not_stored(
    broker_site: Site, broker: Broker, tmp_path: Path
) -> None:
    site = broker_site
    receiver = start_receiver(site, broker, tmp_path / "receiver")
    catalog, store = receiver.service.catalog, receiver.service.store
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=1.0).start()
    try:
        today = datetime.now(UTC).date()
        catalog.enrol("PAIN-0042", group="pain", language="nl", enrolled_on=today,
                      consented_on=today, form_version="v1")  # fmt: skip
        visit = catalog.open_visit("PAIN-0042", on=today)
        _arm(receiver, site, "cart-01", "PAIN-0042", visit.label)
        wait_for(lambda: unit.status()["participant"] == "PAIN-0042", "the unit armed", 20)

        _recorded_and_gone(unit)
        [kept] = catalog.clips()
        assert kept.participant == "PAIN-0042" and store.exists(kept.sha256)

        tombstone = withdraw(catalog, store, tmp_path / "features", "PAIN-0042")
        assert tombstone.erased["clips"] == 1 and not store.exists(kept.sha256)

        _recorded_and_gone(unit)  # the cart is still armed: a clip of theirs after withdrawal
        assert catalog.clips() == []
        assert not list((tmp_path / "receiver" / "store").rglob("*.age"))
        [discarded] = [e for e in catalog.audit.entries() if e.action == "discarded_on_arrival"]
        assert discarded.clip_id != kept.clip_id and discarded.clip_id.startswith("cart-01-")
        assert catalog.audit.verify().ok
    finally:
        assert unit.stop() == 0, unit.log()
        receiver.stop()
