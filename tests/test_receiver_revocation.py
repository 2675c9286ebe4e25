"""Issue 11, attacks 6 and 7b, against the real broker and real unit and receiver processes:
a revoked receiver can neither pull from a unit nor make it delete anything, and whoever
controls the broker cannot arm a cart, replay an arm command or un-revoke a receiver."""

from __future__ import annotations

import base64
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from protocol.hospital_signature import HospitalSigner
from protocol.messages import ArmCommand, CrlMessage
from protocol.topics import Kind, topic
from provisioning import pki
from provisioning.broker import sync_revocation
from provisioning.crl import root_crl
from provisioning.devices import add_device
from provisioning.receivers import add_receiver, receiver_dir, revoke_receiver
from provisioning.site import Site, init_site
from tests.support.hospital_pki import MiniSite
from tests.support.mosquitto import HOST, SITE, Broker, Client, Identity, receiver_identity
from tests.support.unit import Hospital, Unit, make_unit, receiver_process

MakeClient = Callable[..., Client]
SECOND = "receiver-2"


@pytest.fixture
def broker_site(tmp_path: Path) -> Site:
    """Site ``ward7`` with three receivers (the first, receiver-2 and receiver-3) and unit
    cart-01; the broker configuration (ACL) is written from it afterwards."""
    site = init_site(tmp_path / "site", SITE, broker_hosts=(HOST, "localhost"))
    add_receiver(site, "2")
    add_receiver(site, "3")
    add_device(site, "cart-01")
    return site


def third_receiver(site: Site) -> Identity:
    """The test's own broker login: the broker takes a certificate's CN as client id, so the
    first receiver's would push a running receiver process off (and receiver-2 is revoked)."""
    folder = receiver_dir(site, "receiver-3")
    return Identity("receiver-3", folder / "tls.crt", folder / "tls.key")


def signer_of(site: Site, receiver_id: str) -> HospitalSigner:
    folder = receiver_dir(site, receiver_id)
    return HospitalSigner.from_files(folder / "signing.key", folder / "signing.crt")


def fetch_as(site: Site, receiver_id: str, url: str) -> int:
    """GET *url* with *receiver_id*'s TLS client certificate; the HTTP status."""
    folder = receiver_dir(site, receiver_id)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(site.paths.root_cert))
    ctx.check_hostname = False  # units are addressed by IP; the clip server checks our CN
    ctx.load_cert_chain(str(folder / "tls.crt"), str(folder / "tls.key"))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} in {timeout_s:g} s")
        time.sleep(0.05)


def record_clip(unit: Unit, hospital: Hospital) -> tuple[str, str, str]:
    """Press (the unit stops itself at its 1 s limit); the clip's id, SHA-256 and URL."""
    unit.press()
    announcement = hospital.wait_clip()
    m = announcement.manifest
    return m.clip_id, m.sha256, announcement.url


def test_a_revoked_receiver_can_no_longer_pull_nor_delete_and_the_others_keep_working(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    site = broker_site
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=1.0).start()
    hospital = Hospital(site, make_client(third_receiver(site)))
    hospital.subscribe_all()
    receiver = receiver_process(site, broker, tmp_path / "receiver")
    try:
        # Before: receiver-2 (its host about to be stolen) pulls like any receiver.
        clip_a, _, url_a = record_clip(unit, hospital)
        assert fetch_as(site, SECOND, url_a) == 200

        # The first receiver runs, publishing the root CRL it holds (nothing revoked yet).
        receiver.start()
        wait_for(lambda: "root CRL published to 1 unit(s)" in receiver.log(), "a CRL round")
        # IT revokes receiver-2: CRLs for the broker and the remaining receivers' folders. The
        # running receiver sees its crl.pem change and publishes it: the unit takes it.
        revoked_at = time.monotonic()
        revoke_receiver(site, SECOND)
        sync_revocation(site, broker.out)
        broker.reload()
        wait_for(lambda: "root CRL updated: 2 certificate(s) revoked" in unit.log(), "new CRL")
        print(f"revocation to the unit holding the CRL: {time.monotonic() - revoked_at:.2f} s")
        # The receiver logs its round once the broker acknowledged it: maybe after the unit's.
        wait_for(
            lambda: receiver.log().count("root CRL published to 1 unit(s)") == 2,
            "the receiver's second CRL round",
        )
        # A receiver that was not revoked keeps working: it pulls clip B, the unit deletes it.
        pressed_at = time.monotonic()
        clip_b, _, _ = record_clip(unit, hospital)
        assert hospital.wait_event("deleted", timeout_s=60).clip_id == clip_b
        print(f"clip B, press to deleted on the unit: {time.monotonic() - pressed_at:.2f} s")
        assert receiver.stop() == 0, receiver.log()

        # After: the stolen host's real certificate no longer gets a clip out of the unit...
        clip_c, sha_c, url_c = record_clip(unit, hospital)
        assert fetch_as(site, SECOND, url_c) == 403
        assert fetch_as(site, SECOND, url_a) == 403
        assert "is revoked" in unit.log()
        # ... and its real, once valid signing key deletes nothing.
        hospital.send_receipt("cart-01", clip_c, sha_c, signer=signer_of(site, SECOND))
        refused = hospital.wait_event("refused")
        assert refused.reason == "receipt_rejected" and "revoked" in refused.detail
        # Nor does a key no site root certified (a self-made CA, a receiver's name).
        hospital.send_receipt("cart-01", clip_c, sha_c, signer=MiniSite().signer("receiver"))
        refused = hospital.wait_event("refused")
        assert "not issued by the site root" in refused.detail
        assert sorted(unit.status()["queue"]) == sorted([clip_a, clip_c])
        # The first receiver's certificate and key still pull and delete.
        assert fetch_as(site, site.receiver_id, url_c) == 200
        hospital.send_receipt("cart-01", clip_c, sha_c)
        assert hospital.wait_event("deleted").clip_id == clip_c
        assert unit.status()["queue"] == [clip_a]

        # The unit kept the CRL: after a restart, with no receiver running, still revoked.
        assert unit.stop() == 0, unit.log()
        unit.start()
        assert fetch_as(site, SECOND, url_a) == 403
        assert fetch_as(site, site.receiver_id, url_a) == 200
        assert unit.status()["queue"] == [clip_a]
    finally:
        receiver.stop()
        print(f"--- receiver log ---\n{receiver.log()}\n--- unit log ---\n{unit.log()}")
        assert unit.stop() == 0, unit.log()


def _arm(
    signer: HospitalSigner,
    *,
    device_id: str = "cart-01",
    participant: str = "PAIN-0042",
    issued_at: datetime | None = None,
) -> ArmCommand:
    issued = issued_at or datetime.now(UTC)
    return ArmCommand.signed(
        participant=participant,
        visit="v1",
        issued_at=issued,
        expires_at=issued + timedelta(hours=1),
        site_id=SITE,
        device_id=device_id,
        signer=signer.certificate,
        sign=signer.sign,
    )


def test_only_an_arm_command_a_receiver_signed_for_this_unit_arms_it(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    site = broker_site
    unit = make_unit(site, broker, tmp_path / "unit").start()
    # Published with a receiver's broker identity: what the broker, or anyone allowed to write
    # cmd/arm, can put there. The old (version 1) arm command was exactly this and unsigned.
    hospital = Hospital(site, make_client(receiver_identity(site)))
    hospital.subscribe_all()
    arm_topic = topic(SITE, "cart-01", Kind.ARM)
    signer = signer_of(site, site.receiver_id)
    now = datetime.now(UTC)
    good = _arm(signer, issued_at=now)
    unsigned = (
        b'{"schema":"painav.cmd-arm/1","participant":"PAIN-6666","visit":"v1",'
        b'"issued_at":"' + f"{now:%Y-%m-%dT%H:%M:%SZ}".encode() + b'","expires_at":"'
        + f"{now + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}".encode() + b'"}'
    )  # fmt: skip
    relabelled = good.model_copy(update={"participant": "PAIN-6666"})
    attacks: list[tuple[bytes, str]] = [
        (unsigned, "bad_message"),
        (relabelled.to_payload(), "arm_rejected"),  # the signature no longer matches
        (_arm(MiniSite().signer("receiver")).to_payload(), "arm_rejected"),  # self-made CA
        (_arm(signer, device_id="cart-02").to_payload(), "bad_message"),  # for another cart
    ]
    try:
        for payload, reason in attacks:
            hospital.client.publish(arm_topic, payload, retain=True)
            assert hospital.wait_event("refused").reason == reason
            assert unit.status()["participant"] is None
        hospital.client.publish(arm_topic, good.to_payload(), retain=True)
        hospital.wait_event("armed")
        assert unit.status()["participant"] == "PAIN-0042"
        # Replaying an older signed command (for another participant) changes nothing.
        older = _arm(signer, participant="PAIN-0001", issued_at=now - timedelta(minutes=10))
        hospital.client.publish(arm_topic, older.to_payload(), retain=True)
        refused = hospital.wait_event("refused")
        assert refused.reason == "arm_rejected" and "before the command in force" in refused.detail
        assert unit.status()["participant"] == "PAIN-0042"
        # Nor after a restart, with the older command now the retained one on the broker.
        assert unit.stop() == 0, unit.log()
        unit.start()
        # The unit publishes its unacknowledged events again (no receiver runs here): the new
        # refusal is the one with another id.
        again = hospital.wait_event("refused")
        while again.event_id == refused.event_id or "in force" not in again.detail:
            again = hospital.wait_event("refused")
        assert again.reason == "arm_rejected" and "before the command in force" in again.detail
        assert unit.status()["participant"] is None  # disarmed by the restart, not relabelled
        hospital.client.publish(arm_topic, good.to_payload(), retain=True)
        hospital.wait_event("armed")
        assert unit.status()["participant"] == "PAIN-0042"
        # A revoked receiver's signature no longer counts either (once the unit has the CRL).
        revoke_receiver(site, SECOND)
        crl = root_crl(site).public_bytes(Encoding.DER)
        hospital.client.publish(
            topic(SITE, "cart-01", Kind.CRL),
            CrlMessage(crl=base64.b64encode(crl).decode()).to_payload(),
            retain=True,
        )
        wait_for(lambda: "root CRL updated" in unit.log(), "the CRL")
        hospital.client.publish(arm_topic, _arm(signer_of(site, SECOND)).to_payload(), retain=True)
        assert "revoked" in hospital.wait_event("refused").detail
        assert unit.status()["participant"] == "PAIN-0042"
    finally:
        hospital.client.publish(arm_topic, b"", retain=True)
        assert unit.stop() == 0, unit.log()


def test_an_older_crl_never_replaces_a_newer_one_and_a_forged_one_is_refused(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    site = broker_site
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=1.0).start()
    hospital = Hospital(site, make_client(receiver_identity(site)))
    hospital.subscribe_all()
    crl_topic = topic(SITE, "cart-01", Kind.CRL)

    def send(crl: x509.CertificateRevocationList) -> None:
        der = crl.public_bytes(Encoding.DER)
        message = CrlMessage(crl=base64.b64encode(der).decode())
        hospital.client.publish(crl_topic, message.to_payload(), retain=True)

    state = unit.work / "crl.pem"
    try:
        before = root_crl(site)  # nothing revoked: what a stale receiver still holds
        revoke_receiver(site, SECOND)
        after = root_crl(site)
        send(after)
        wait_for(lambda: "root CRL updated: 2 certificate(s) revoked" in unit.log(), "the CRL")
        assert x509.load_pem_x509_crl(state.read_bytes()) == after
        # The broker (or a stale receiver) puts the older list back: it un-revokes nothing.
        send(before)
        # A CRL with the site root's name but another key: refused, one line, as an event.
        impostor = pki.Authority(site.root().cert, pki.new_key())
        send(pki.make_crl(impostor, {}, days=30))
        refused = hospital.wait_event("refused")
        assert refused.reason == "crl_rejected" and "not signed by a site root" in refused.detail
        assert x509.load_pem_x509_crl(state.read_bytes()) == after
        _, _, url = record_clip(unit, hospital)
        assert fetch_as(site, SECOND, url) == 403
        assert fetch_as(site, site.receiver_id, url) == 200
        assert unit.log().count("root CRL updated") == 1
    finally:
        hospital.client.publish(crl_topic, b"", retain=True)
        assert unit.stop() == 0, unit.log()


def test_the_bundle_crl_already_refuses_a_receiver_revoked_before_the_unit_was_provisioned(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    site = broker_site
    revoke_receiver(site, SECOND)
    add_device(site, "cart-02")  # its bundle carries the root CRL as it is now
    unit = make_unit(site, broker, tmp_path / "unit", "cart-02", max_seconds=1.0).start()
    hospital = Hospital(site, make_client(receiver_identity(site)))
    hospital.subscribe_all()
    try:
        _, _, url = record_clip(unit, hospital)
        assert fetch_as(site, SECOND, url) == 403
        assert fetch_as(site, site.receiver_id, url) == 200
    finally:
        assert unit.stop() == 0, unit.log()
