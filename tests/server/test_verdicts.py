"""Quality verdicts from the catalog's outbox to the unit that recorded the clip, through the
real broker with the project's ACL: sent once, with the time they were issued."""

from __future__ import annotations

from datetime import timedelta

from protocol.messages import QcVerdict
from protocol.topics import Kind, topic
from server.catalog import Catalog
from server.verdicts import send_verdicts
from tests.server.conftest import T0, Announce
from tests.server.test_catalog_extraction import receipted
from tests.server.test_mqtt import MakeClient, Seen, make_link, unit
from tests.support.mosquitto import Broker


def test_a_recorded_verdict_reaches_its_unit_once(
    broker: Broker,
    make_client: MakeClient,
    announce: Announce,
    tmp_path,
) -> None:
    site = broker.site
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    cart = unit(make_client, site, "cart-03")
    cart.subscribe(topic(site.name, "cart-03", Kind.QC))
    other = unit(make_client, site, "cart-01")
    other.subscribe(topic(site.name, "cart-01", Kind.QC))
    seen = Seen()
    link = make_link(site, broker.port, seen)
    try:
        receipted(catalog, announce, "cart-03-20250301T093000Z-0001")
        catalog.record_qc(
            "cart-03-20250301T093000Z-0001",
            worker="x1",
            qc_pass="quick",
            verdict="repeat",
            reasons=["no_face"],
            metrics={"face_share": 0.1},
            config_hash="q" * 64,
            painav_version="0.3.0",
            now=T0 + timedelta(seconds=5),
        )
        link.start()
        seen.wait_for(lambda: seen.connects == 1, "the receiver's connection")
        assert send_verdicts(catalog, link.publish_verdict, site_id=site.name) == 1
        verdict = QcVerdict.parse(cart.expect(topic(site.name, "cart-03", Kind.QC)).payload)
        assert (verdict.clip_id, verdict.verdict, verdict.reasons) == (
            "cart-03-20250301T093000Z-0001",
            "repeat",
            ("no_face",),
        )
        assert verdict.issued_at == T0 + timedelta(seconds=5)  # when issued, not when sent
        assert catalog.pending_verdicts() == []
        assert send_verdicts(catalog, link.publish_verdict, site_id=site.name) == 0
        assert other.received() == []  # a unit hears only its own
    finally:
        link.stop()
        catalog.close()
