"""A clip belongs to the unit that recorded it and to the participant it was recorded for: a
stolen unit cannot take another unit's clip by announcing its id first, and whoever controls the
broker cannot relabel a clip with another pseudonym. Real broker, real units, real receiver."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.outbox import Outbox
from protocol.hospital_signature import HospitalSigner
from protocol.messages import ArmCommand, ClipAnnouncement
from protocol.minisign import Signature, SigningKey
from protocol.signing import sign_clip
from protocol.topics import Kind, topic
from provisioning.site import Site
from server.catalog import ClipState
from server.catalog.records import ClipRecord
from tests.server.test_receiver_faults import kick, stored_files, unit_clip_server, wait_for
from tests.support.mosquitto import HOST, Broker, Client, receiver_identity, unit_identity
from tests.support.unit import (
    Hospital,
    Receiver,
    announcement_of,
    clip_server_port,
    make_unit,
    seal_synthetic_clip,
    start_receiver,
)

MakeClient = Callable[..., Client]
HONEST, THIEF = "cart-01", "cart-02"


def settled(receiver: Receiver, clip_id: str) -> ClipRecord:
    """The clip once receipted or quarantined."""

    def done() -> ClipRecord | None:
        clips = [c for c in receiver.service.catalog.clips() if c.clip_id == clip_id]
        final = (ClipState.RECEIPTED, ClipState.QUARANTINED)
        return clips[0] if clips and clips[0].state in final else None

    return wait_for(done, f"{clip_id} receipted or quarantined")


# --- 4. a unit cannot take another unit's clip id ----------------------------------------------


def test_a_unit_announcing_another_units_clip_id_first_takes_nothing(
    broker_site: Site,
    broker: Broker,
    make_client: MakeClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    site = broker_site
    honest = make_unit(site, broker, tmp_path / "honest", device_id=HONEST)
    # A clip the honest unit holds and has not announced yet (it announces at start-up).
    clip_id = f"{HONEST}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-ab12"
    with Outbox(honest.work / "outbox", quota_bytes=1 << 30, min_free_bytes=0) as outbox:
        entry = seal_synthetic_clip(outbox, site, HONEST, clip_id, 300_000)
        clip_file = outbox.clip_path(clip_id)
        genuine = announcement_of(entry, HOST, clip_server_port(honest))
        # The thief, with its own stolen files: its own key signs the honest unit's bytes
        # under the honest clip id, and the manifest names the thief, whose topic it is.
        key = SigningKey.from_file(site.paths.devices_dir / THIEF / "keys" / "signing.key")
        signature, _ = sign_clip(key, clip_file, clip_id, THIEF)
    forged = json.loads(genuine.to_payload())
    forged["manifest"]["device_id"] = THIEF
    forged["signature"] = signature.to_text()
    forged["url"] = f"https://{HOST}:1/v1/clips/{clip_id}.age"
    receiver = start_receiver(site, broker, tmp_path / "receiver")
    catalog = receiver.service.catalog
    try:
        thief = make_client(unit_identity(site, THIEF)).connect()
        rc = thief.publish(topic(site.name, THIEF, Kind.CLIPS), json.dumps(forged).encode())
        assert not rc.is_failure, rc  # the broker's ACL lets a unit publish on its own topic
        wait_for(
            lambda: receiver.service.link.bad_messages or catalog.clips(),
            "the forged announcement handled",
        )
        taken = catalog.clips()
        # The honest unit comes up and announces its clip: stored, receipted, deleted there.
        honest.start()
        clip = settled(receiver, clip_id)
        assert (clip.state, clip.device_id, clip.quarantine_reason) == (
            ClipState.RECEIPTED,
            HONEST,
            None,
        )
        assert taken == []  # the thief's was refused, never catalogued under it ...
        assert "announces only clips it named itself" in caplog.text  # ... with one clear line
        assert stored_files(tmp_path / "receiver" / "store") == {entry.sha256: entry.sha256}
        wait_for(lambda: honest.status()["queue"] == [], "the honest unit's outbox to empty")
        # The thief tries again now that the clip is known: refused again, the clip untouched.
        before = receiver.service.link.bad_messages
        thief.publish(topic(site.name, THIEF, Kind.CLIPS), json.dumps(forged).encode())
        wait_for(lambda: receiver.service.link.bad_messages > before, "the second refusal")
        assert catalog.clip(clip_id).state is ClipState.RECEIPTED
        assert catalog.audit.verify().ok
    finally:
        assert honest.stop() == 0, honest.log()
        receiver.stop()


# --- 7a. the participant link is signed --------------------------------------------------------


def arm(client: Client, site: Site, device_id: str, participant: str, visit: str) -> None:
    """Arm *device_id* for *participant* at *visit*, as the hospital does (retained, signed
    with the first receiver's own key)."""
    signer = HospitalSigner.from_files(
        site.paths.receiver_dir / "signing.key", site.paths.receiver_dir / "signing.crt"
    )
    now = datetime.now(UTC)
    command = ArmCommand.signed(
        participant=participant,
        visit=visit,
        issued_at=now,
        expires_at=now + timedelta(hours=1),
        site_id=site.name,
        device_id=device_id,
        signer=signer.certificate,
        sign=signer.sign,
    )
    client.publish(topic(site.name, device_id, Kind.ARM), command.to_payload(), retain=True)


def test_a_clip_relabelled_on_the_broker_is_quarantined_not_stored_under_another_pseudonym(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    site = broker_site
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=0.5).start()
    receiver: Receiver | None = None
    try:
        # Armed for PAIN-0042, the unit records; its announcement, as it left the unit.
        hospital = Hospital(site, make_client(receiver_identity(site)))
        hospital.subscribe_all()
        arm(hospital.client, site, "cart-01", "PAIN-0042", "v1")
        hospital.wait_event("armed")
        unit.press()
        genuine = hospital.wait_clip()
        assert genuine.manifest.participant == "PAIN-0042"
        hospital.client.close()  # the receiver logs in with the same certificate
        # Relabelled in transit: another pseudonym in the manifest, the signature unchanged.
        manifest = genuine.manifest.model_copy(update={"participant": "PAIN-0043"})
        relabelled = genuine.model_copy(update={"manifest": manifest})
        receiver = start_receiver(site, broker, tmp_path / "receiver")
        kick(make_client, site, "cart-01", ClipAnnouncement.parse(relabelled.to_payload()))
        clip = settled(receiver, genuine.manifest.clip_id)
        assert clip.state is ClipState.QUARANTINED, "stored under the wrong pseudonym"
        assert clip.quarantine_reason == "relabelled"
        assert stored_files(tmp_path / "receiver" / "store") == {}
        assert genuine.manifest.clip_id in unit.status()["queue"]  # kept on the unit
        # The unit's next clip, not relabelled, is accepted, and under its own pseudonym.
        unit.press()
        clip_id: str = unit.wait_state("recording")["clip_id"]
        honest = settled(receiver, clip_id)
        assert (honest.state, honest.participant) == (ClipState.RECEIPTED, "PAIN-0042")
        # What the unit signed: clip, unit, hash, and the participant and visit it was armed with.
        comment = Signature.from_text(genuine.signature).trusted_comment
        assert comment.startswith(f"painav-clip/2 clip:{genuine.manifest.clip_id} device:cart-01")
        assert comment.endswith(" participant:PAIN-0042 visit:v1")
    finally:
        assert unit.stop() == 0, unit.log()
        if receiver is not None:
            receiver.stop()


def test_a_unit_of_the_previous_version_is_still_accepted_with_a_warning(
    broker_site: Site,
    broker: Broker,
    make_client: MakeClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A clip signed in the ``painav-clip/1`` form (a unit not yet upgraded, or a clip sealed
    before its upgrade) proves no participant: it is accepted, as before, and the journal says
    so, until every unit is upgraded."""
    site = broker_site
    receiver = start_receiver(site, broker, tmp_path / "receiver")
    with Outbox(tmp_path / "outbox", quota_bytes=1 << 30, min_free_bytes=0) as outbox:
        clip_id = f"cart-01-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-0001"
        entry = seal_synthetic_clip(outbox, site, "cart-01", clip_id, 100_000)
        key = SigningKey.from_file(site.paths.devices_dir / "cart-01" / "keys" / "signing.key")
        form_1 = f"painav-clip/1 clip:{clip_id} device:cart-01 sha256:{entry.sha256} timestamp:1"
        signature = key.sign(outbox.clip_path(clip_id).read_bytes(), form_1)
        outbox.signature_path(clip_id).write_text(signature.to_text())
        server = unit_clip_server(site, "cart-01", outbox)
        try:
            announcement = announcement_of(entry, HOST, server.port).model_copy(
                update={"signature": signature.to_text()}
            )
            kick(make_client, site, "cart-01", announcement)
            clip = settled(receiver, clip_id)
        finally:
            server.stop()
            receiver.stop()
    assert clip.state is ClipState.RECEIPTED
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("painav-clip/1 form" in w and clip_id in w for w in warnings), warnings
