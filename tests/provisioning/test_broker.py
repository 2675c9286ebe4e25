"""The generated Mosquitto configuration, checked against a real Mosquitto run from it.

Where a test shows that something does *not* arrive, it does not sleep: after the forbidden
message comes one that the watcher does get (a permitted message, or a SUBACK) from the same
single-threaded Mosquitto over the same connection, so once that is in, the forbidden one would
have been too.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import queue
import socket
import ssl
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from protocol.message_codec import MAX_PAYLOAD_BYTES
from protocol.topics import ROUTES, Direction, Kind, shared, site_filter, topic
from provisioning import pki
from provisioning.broker import (
    ACL_FILE,
    CONFIG_FILE,
    MAX_PACKET_BYTES,
    BrokerConfigError,
    acl_text,
    sync_revocation,
    write_broker_config,
)
from provisioning.crl import refresh_crl
from provisioning.devices import revoke_device
from provisioning.receivers import add_receiver, receiver_dir
from provisioning.site import Site, init_site
from tests.support.environment import missing
from tests.support.mosquitto import (
    HOST,
    SITE,
    Broker,
    Client,
    Identity,
    broker_user,
    receiver_identity,
    unit_identity,
)

MakeClient = Callable[..., Client]
NOT_AUTHORIZED = 0x87
SITE_FILTER = f"painav/v1/{SITE}/#"


def t(unit: str, kind: Kind) -> str:
    return topic(SITE, unit, kind)


# --- the files, without a broker -------------------------------------------------------------


def test_writes_a_self_contained_folder(broker_site: Site, broker_out: Path) -> None:
    out = broker_out
    written = write_broker_config(broker_site, out, port=18883, bind=HOST)

    assert {p.name for p in written} == {
        "mosquitto.conf",
        "painav.acl",
        "ca.pem",
        "crl.pem",
        "broker.crt",
        "broker.key",
    }
    assert (out / "crl.pem").read_bytes() == broker_site.paths.crl.read_bytes()
    assert (out / "ca.pem").read_bytes() == broker_site.paths.ca_bundle.read_bytes()
    assert stat.S_IMODE((out / "broker.key").stat().st_mode) & 0o007 == 0
    assert stat.S_IMODE((out / "data").stat().st_mode) == 0o700
    conf = (out / CONFIG_FILE).read_text()
    settings = [line for line in conf.splitlines() if line and not line.startswith("#")]
    # One listener, TLS with client certificates, and no plaintext port.
    assert [s for s in settings if s.startswith("listener")] == [f"listener 18883 {HOST}"]
    for required in (
        "allow_anonymous false",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "per_listener_settings false",
        f"crlfile {out / 'crl.pem'}",
        f"acl_file {out / ACL_FILE}",
        f"max_packet_size {MAX_PACKET_BYTES}",
    ):
        assert required in settings
    # Every file named is inside OUT: the broker never reads the site folder.
    for line in settings:
        if line.split()[0] in {"cafile", "certfile", "keyfile", "crlfile", "acl_file"}:
            assert Path(line.split()[1]).parent == out


def test_acl_follows_the_routes(broker_site: Site) -> None:
    lines = acl_text(broker_site).splitlines()
    for kind, route in ROUTES.items():
        unit_rule = f"pattern {{}} painav/v1/{SITE}/%u/{kind.value}"
        if route.direction is Direction.UNIT_TO_HOSPITAL:
            assert unit_rule.format("write") in lines
            assert f"topic write painav/v1/{SITE}/+/{kind.value}" not in lines
        else:
            assert unit_rule.format("read") in lines
            assert f"topic write painav/v1/{SITE}/+/{kind.value}" in lines
    assert [x for x in lines if x.startswith("pattern")] == [
        x for x in lines if x.startswith("pattern") and "/%u/" in x
    ]
    assert "topic deny #" not in lines  # nobody is revoked yet


def test_refuses_an_expired_crl_and_changes_nothing(broker_site: Site, broker_out: Path) -> None:
    out = broker_out
    write_broker_config(broker_site, out, port=18883, bind=HOST)
    before = (out / "crl.pem").read_bytes()
    now = datetime.now(UTC)
    expired = [
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - timedelta(days=31))
        .next_update(now - timedelta(days=1))
        .sign(ca.key, hashes.SHA256())
        for ca in (broker_site.root(), broker_site.device_ca())
    ]
    pki.write_cert(broker_site.paths.crl, *expired)

    with pytest.raises(BrokerConfigError, match="expired"):
        sync_revocation(broker_site, out)
    with pytest.raises(BrokerConfigError, match="expired"):
        write_broker_config(broker_site, out, port=18883, bind=HOST)
    assert (out / "crl.pem").read_bytes() == before


def test_refuses_a_damaged_crl(broker_site: Site, broker_out: Path) -> None:
    broker_site.paths.crl.write_bytes(b"-----BEGIN X509 CRL-----\nnot a crl\n")
    with pytest.raises(BrokerConfigError, match=str(broker_site.paths.crl)):
        write_broker_config(broker_site, broker_out)
    assert not broker_out.exists()


def test_refuses_a_folder_inside_the_site(broker_site: Site) -> None:
    with pytest.raises(BrokerConfigError, match="inside the site folder"):
        write_broker_config(broker_site, broker_site.dir / "broker")


def test_refuses_a_folder_the_broker_account_cannot_reach(
    broker_site: Site, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        # Only root hands files to another account. CI runs as root, so there it must run.
        assert not os.environ.get("CI"), "CI must run the suite as root"
        missing("root, who alone hands the files to another account")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(BrokerConfigError, match=f"cannot pass through {private}"):
        write_broker_config(broker_site, private / "broker", user=broker_user())


def test_sync_refuses_another_sites_broker(
    broker_site: Site, broker_out: Path, tmp_path: Path
) -> None:
    write_broker_config(broker_site, broker_out, port=18883, bind=HOST)
    other = init_site(tmp_path / "other", "ward8")
    with pytest.raises(BrokerConfigError, match="another site"):
        sync_revocation(other, broker_out)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("port", 0, "port"),
        ("bind", "0.0.0.0\nlistener 1883", "bind address"),
        ("user", "mosquitto\nallow_anonymous true", "user"),
        ("data_dir", Path("/var/lib/my broker"), "data folder"),
    ],
)
def test_refuses_options_that_would_break_the_config(
    broker_site: Site, broker_out: Path, option: str, value: object, message: str
) -> None:
    out = broker_out
    with pytest.raises(BrokerConfigError, match=message):
        write_broker_config(broker_site, out, **{option: value})  # type: ignore[arg-type]
    assert not out.exists()


# --- who gets in -----------------------------------------------------------------------------

# MQTT v5 CONNECT, clean start, keepalive 60 s, empty client id: enough to ask for a CONNACK.
_CONNECT = bytes.fromhex("100d00044d5154540502003c000000")


def raw_connect(broker: Broker, identity: Identity, **tls: object) -> bytes | str:
    """TLS handshake as *identity*, then an MQTT CONNECT: the bytes answered, or the error."""
    ctx = ssl.create_default_context(cafile=str(broker.site.paths.root_cert))
    if identity.cert is not None and identity.key is not None:
        ctx.load_cert_chain(str(identity.cert), str(identity.key))
    for name, value in tls.items():
        setattr(ctx, name, value)
    try:
        with (
            socket.create_connection((HOST, broker.port), timeout=3) as raw,
            ctx.wrap_socket(raw, server_hostname=HOST) as conn,
        ):
            conn.sendall(_CONNECT)
            return conn.recv(16)
    except (OSError, ssl.SSLError) as exc:
        return f"{type(exc).__name__}: {exc}"


def test_unit_with_its_certificate_gets_a_connack(broker: Broker) -> None:
    answer = raw_connect(broker, unit_identity(broker.site, "cart-01"))
    assert isinstance(answer, bytes) and answer[:1] == b"\x20", answer  # CONNACK
    assert answer[3] == 0  # success


def test_client_without_certificate_is_refused(broker: Broker, make_client: MakeClient) -> None:
    nobody = Identity("nobody", None, None)
    answer = raw_connect(broker, nobody)
    # TLS 1.3: the client's side of the handshake completes; the server's refusal arrives at
    # the first read, as an alert or, if the server has already closed, as a bare EOF.
    assert isinstance(answer, str) and "SSL" in answer, answer
    assert not make_client(nobody).attempt().connected
    broker.wait_log("peer did not return a certificate")


def test_certificate_from_a_foreign_ca_is_refused(
    broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    # An impostor CA with the very names of the site's CAs, and a unit certificate of a real
    # unit's id: only the keys differ.
    site = broker.site
    root = pki.issue_ca(f"painav {SITE} root CA", SITE, days=30, path_length=1)
    devices = pki.issue_ca(f"painav {SITE} device CA", SITE, days=30, parent=root, path_length=0)
    assert devices.cert.subject == site.device_ca().cert.subject
    leaf = pki.issue_leaf(devices, "cart-01", SITE, days=30, server=True, client=True)
    pki.write_cert(tmp_path / "tls.crt", leaf.cert, devices.cert)
    pki.write_private_key(tmp_path / "tls.key", leaf.key)
    impostor = Identity("cart-01", tmp_path / "tls.crt", tmp_path / "tls.key")

    answer = raw_connect(broker, impostor)
    assert isinstance(answer, str) and "SSL" in answer, answer
    assert not make_client(impostor).attempt().connected
    broker.wait_log("certificate verify failed")


def test_tls_below_1_3_is_refused(broker: Broker) -> None:
    answer = raw_connect(
        broker, unit_identity(broker.site, "cart-01"), maximum_version=ssl.TLSVersion.TLSv1_2
    )
    assert isinstance(answer, str) and "PROTOCOL_VERSION" in answer, answer


def test_revoked_unit_is_refused_after_sync_and_reload(
    broker: Broker, make_client: MakeClient
) -> None:
    site = broker.site
    receiver = make_client(receiver_identity(site)).connect()
    receiver.subscribe(SITE_FILTER)
    online = make_client(unit_identity(site, "cart-03")).connect()
    online.subscribe(t("cart-03", Kind.RECEIPTS))

    revoke_device(site, "cart-03")
    sync_revocation(site, broker.out)
    broker.reload()

    # The session that was open at revocation survives (Mosquitto does not re-check open TLS
    # connections) but the ACL now denies it everything: it cannot announce a clip ...
    assert online.publish(t("cart-03", Kind.CLIPS)).value == NOT_AUTHORIZED
    # ... nor read a receipt. The SUBACK comes after the receipt on the same connection: once
    # it is in, so would the receipt be.
    assert not receiver.publish(t("cart-03", Kind.RECEIPTS)).is_failure
    receiver.expect(t("cart-03", Kind.RECEIPTS))
    online.subscribe(t("cart-03", Kind.ARM))
    assert online.received() == []
    # Other units carry on as before.
    make_client(unit_identity(site, "cart-01")).connect().publish(t("cart-01", Kind.CLIPS))
    receiver.expect(t("cart-01", Kind.CLIPS))

    # A new connection with the revoked certificate fails the handshake; other units get in.
    refused = make_client(unit_identity(site, "cart-03")).attempt()
    assert not refused.connected, refused
    assert make_client(unit_identity(site, "cart-02")).attempt().connected
    broker.wait_log("certificate verify failed")


def test_daily_crl_refresh_keeps_the_fleet_connected(
    broker: Broker, make_client: MakeClient
) -> None:
    # What painav-crl-refresh does every day: new CRLs, installed, broker reloaded.
    site = broker.site
    before = (broker.out / "crl.pem").read_bytes()
    assert refresh_crl(site, force=True).refreshed
    sync_revocation(site, broker.out)
    assert (broker.out / "crl.pem").read_bytes() != before
    broker.reload()

    assert make_client(unit_identity(site, "cart-01")).attempt().connected
    assert make_client(receiver_identity(site)).attempt().connected
    assert "revocation" not in broker.log()  # e.g. "Unable to load certificate revocation file"


def test_one_session_per_certificate(broker: Broker, make_client: MakeClient) -> None:
    first = make_client(unit_identity(broker.site, "cart-01")).connect()
    make_client(unit_identity(broker.site, "cart-01")).connect()
    assert first.wait_closed(), "the first session was not taken over"


# --- what a unit may do ----------------------------------------------------------------------


def test_unit_publishes_in_its_own_subtree_and_the_receiver_gets_it(
    broker: Broker, make_client: MakeClient
) -> None:
    site = broker.site
    receiver = make_client(receiver_identity(site)).connect()
    assert not receiver.subscribe(SITE_FILTER)[0].is_failure
    # The share group is how several receivers split the clips. A shared and a plain
    # subscription each get their own copy.
    assert not receiver.subscribe(shared("receivers", site_filter(SITE, Kind.CLIPS)))[0].is_failure
    unit = make_client(unit_identity(site, "cart-01")).connect()

    for kind in (Kind.STATUS, Kind.CLIPS, Kind.EVENTS):
        rc = unit.publish(t("cart-01", kind), b"{}", retain=ROUTES[kind].retained)
        assert rc is not None and not rc.is_failure, (kind, rc)
        assert receiver.expect(t("cart-01", kind)).payload == b"{}"
        if kind is Kind.CLIPS:
            assert receiver.expect(t("cart-01", kind)).payload == b"{}"
    unit.publish(t("cart-01", Kind.TELEMETRY), qos=0)
    receiver.expect(t("cart-01", Kind.TELEMETRY))
    assert receiver.received() == []


def test_shared_subscription_receives_clips(broker: Broker, make_client: MakeClient) -> None:
    site = broker.site
    receiver = make_client(receiver_identity(site)).connect()
    codes = receiver.subscribe(shared("receivers", site_filter(SITE, Kind.CLIPS)))
    assert not codes[0].is_failure
    unit = make_client(unit_identity(site, "cart-02")).connect()

    assert not unit.publish(t("cart-02", Kind.CLIPS), b'{"clip": 1}').is_failure
    assert receiver.expect(t("cart-02", Kind.CLIPS)).payload == b'{"clip": 1}'


def test_unit_cannot_publish_into_another_units_subtree(
    broker: Broker, make_client: MakeClient
) -> None:
    site = broker.site
    receiver = make_client(receiver_identity(site)).connect()
    receiver.subscribe(SITE_FILTER)
    a = make_client(unit_identity(site, "cart-01")).connect()

    for kind in (Kind.STATUS, Kind.CLIPS, Kind.EVENTS):
        assert a.publish(t("cart-02", kind), b"forged").value == NOT_AUTHORIZED, kind
    a.publish(t("cart-02", Kind.TELEMETRY), b"forged", qos=0)
    # Nor may it arm itself or write itself a receipt.
    assert a.publish(t("cart-01", Kind.ARM), b"forged").value == NOT_AUTHORIZED
    assert a.publish(t("cart-01", Kind.RECEIPTS), b"forged").value == NOT_AUTHORIZED
    assert a.publish("painav/v1/ward8/cart-01/clips", b"forged").value == NOT_AUTHORIZED

    a.publish(t("cart-01", Kind.EVENTS), b"marker")
    receiver.expect(t("cart-01", Kind.EVENTS))
    assert receiver.received() == []
    assert a.paho.is_connected()  # refused messages, not a dropped unit


def test_unit_subscribing_to_everything_gets_only_its_own(
    broker: Broker, make_client: MakeClient
) -> None:
    site = broker.site
    receiver = make_client(receiver_identity(site)).connect()
    receiver.publish(t("cart-02", Kind.ARM), b"arm-b", retain=True)
    make_client(unit_identity(site, "cart-02")).connect().publish(
        t("cart-02", Kind.STATUS), retain=True
    )
    a = make_client(unit_identity(site, "cart-01")).connect()

    # Mosquitto 2.0's acl_file does not check SUBSCRIBE: the SUBACK grants the QoS (were it
    # ever refused, 0x87, so much the better) and every delivery is checked instead.
    codes = a.subscribe("#")
    assert codes[0].is_failure or codes[0].value == 1
    receiver.publish(t("cart-02", Kind.RECEIPTS), b"for-b")
    receiver.publish(t("cart-03", Kind.ARM), b"arm-c")
    receiver.publish(t("cart-01", Kind.RECEIPTS), b"for-a")

    assert a.expect(t("cart-01", Kind.RECEIPTS)).payload == b"for-a"
    assert a.received() == []  # no retained arm or status of cart-02, no receipt of another


def test_unit_cannot_read_another_units_receipts(broker: Broker, make_client: MakeClient) -> None:
    site = broker.site
    receiver = make_client(receiver_identity(site)).connect()
    a = make_client(unit_identity(site, "cart-01")).connect()
    codes = a.subscribe(t("cart-02", Kind.RECEIPTS))
    assert codes[0].is_failure or codes[0].value == 1
    a.subscribe(t("cart-01", Kind.RECEIPTS))

    receiver.publish(t("cart-02", Kind.RECEIPTS), b"for-b")
    receiver.publish(t("cart-01", Kind.RECEIPTS), b"for-a")

    assert a.expect(t("cart-01", Kind.RECEIPTS)).payload == b"for-a"
    assert a.received() == []


def test_unit_reads_only_its_own_qc_verdicts_and_cannot_write_them(
    broker: Broker, make_client: MakeClient
) -> None:
    site = broker.site
    receiver = make_client(receiver_identity(site)).connect()
    a = make_client(unit_identity(site, "cart-01")).connect()
    b = make_client(unit_identity(site, "cart-02")).connect()
    a.subscribe(t("cart-02", Kind.QC))  # granted by SUBACK; every delivery is checked
    a.subscribe(t("cart-01", Kind.QC))
    assert not b.subscribe(t("cart-02", Kind.QC))[0].is_failure

    # A unit cannot forge a verdict, for itself or for another unit.
    assert a.publish(t("cart-01", Kind.QC), b"forged-own").value == NOT_AUTHORIZED
    assert a.publish(t("cart-02", Kind.QC), b"forged-other").value == NOT_AUTHORIZED

    assert not receiver.publish(t("cart-02", Kind.QC), b"verdict-b").is_failure
    assert not receiver.publish(t("cart-01", Kind.QC), b"verdict-a").is_failure
    assert not receiver.publish(t("cart-02", Kind.QC), b"marker-b").is_failure

    assert a.expect(t("cart-01", Kind.QC)).payload == b"verdict-a"
    assert a.received() == []  # cart-02's verdict, sent first, was not delivered to cart-01
    assert b.expect(t("cart-02", Kind.QC)).payload == b"verdict-b"
    assert b.expect(t("cart-02", Kind.QC)).payload == b"marker-b"
    assert b.received() == []  # neither a forgery nor cart-01's verdict


def test_unit_reads_its_retained_arm_and_its_receipts(
    broker: Broker, make_client: MakeClient
) -> None:
    site = broker.site
    receiver = make_client(receiver_identity(site)).connect()
    # Armed while the unit was off: retained, so it arrives when the unit subscribes.
    assert not receiver.publish(t("cart-01", Kind.ARM), b"arm", retain=True).is_failure
    unit = make_client(unit_identity(site, "cart-01")).connect()

    assert not unit.subscribe(t("cart-01", Kind.ARM))[0].is_failure
    message = unit.expect(t("cart-01", Kind.ARM))
    assert message.payload == b"arm" and message.retain
    assert not unit.subscribe(t("cart-01", Kind.RECEIPTS))[0].is_failure
    assert not receiver.publish(t("cart-01", Kind.RECEIPTS), b"receipt").is_failure
    assert unit.expect(t("cart-01", Kind.RECEIPTS)).payload == b"receipt"


def test_last_will_on_own_status_only(broker: Broker, make_client: MakeClient) -> None:
    site = broker.site
    receiver = make_client(receiver_identity(site)).connect()
    receiver.subscribe(site_filter(SITE, Kind.STATUS))
    forger = make_client(
        unit_identity(site, "cart-02"), will=(t("cart-03", Kind.STATUS), b"offline")
    ).connect()
    honest = make_client(
        unit_identity(site, "cart-01"), will=(t("cart-01", Kind.STATUS), b"offline")
    ).connect()

    forger.disconnect_with_will()
    honest.disconnect_with_will()

    will = receiver.expect(t("cart-01", Kind.STATUS))
    assert will.payload == b"offline"
    assert receiver.received() == []  # the forged will on cart-03's status was not sent


def test_oversized_packet_is_refused(broker: Broker, make_client: MakeClient) -> None:
    site = broker.site
    receiver = make_client(receiver_identity(site)).connect()
    receiver.subscribe(SITE_FILTER)
    largest = max(MAX_PAYLOAD_BYTES.values())
    big = make_client(unit_identity(site, "cart-01")).connect()
    assert big.publish(t("cart-01", Kind.CLIPS), b"x" * largest).value == 0
    assert len(receiver.expect(t("cart-01", Kind.CLIPS)).payload) == largest

    huge = make_client(unit_identity(site, "cart-02")).connect()
    huge.publish(t("cart-02", Kind.CLIPS), b"x" * (MAX_PACKET_BYTES + 1), wait=False)
    broker.wait_log("Client cart-02 disconnected due to oversize packet")
    big.publish(t("cart-01", Kind.EVENTS))
    receiver.expect(t("cart-01", Kind.EVENTS))
    assert receiver.received() == []


# --- what the receiver may do ----------------------------------------------------------------


def test_receiver_reads_everything_and_sends_commands_and_receipts(
    broker: Broker, make_client: MakeClient
) -> None:
    site = broker.site
    receiver = make_client(receiver_identity(site)).connect()
    receiver.subscribe(SITE_FILTER)
    for unit_id in ("cart-01", "cart-02"):
        unit = make_client(unit_identity(site, unit_id)).connect()
        for kind in (Kind.STATUS, Kind.CLIPS, Kind.EVENTS):
            unit.publish(t(unit_id, kind))
            receiver.expect(t(unit_id, kind))

    for kind in (Kind.ARM, Kind.RECEIPTS, Kind.QC):
        rc = receiver.publish(t("cart-02", kind), retain=ROUTES[kind].retained)
        assert not rc.is_failure, (kind, rc)
        receiver.expect(t("cart-02", kind))


def test_receiver_cannot_speak_for_a_unit(broker: Broker, make_client: MakeClient) -> None:
    site = broker.site
    receiver = make_client(receiver_identity(site)).connect()
    receiver.subscribe(SITE_FILTER)

    for kind in (Kind.STATUS, Kind.CLIPS, Kind.EVENTS):
        assert receiver.publish(t("cart-01", kind), b"forged").value == NOT_AUTHORIZED
        # Its own name as a unit: the unit patterns would allow it, the deny line does not.
        assert receiver.publish(t(site.receiver_id, kind), b"forged").value == NOT_AUTHORIZED
    assert receiver.publish("painav/v1/ward8/cart-01/cmd/arm", b"x").value == NOT_AUTHORIZED

    receiver.publish(t("cart-01", Kind.RECEIPTS), b"marker")
    receiver.expect(t("cart-01", Kind.RECEIPTS))
    assert receiver.received() == []


def test_an_added_receiver_shares_the_clips_with_its_own_certificate(
    broker: Broker, make_client: MakeClient
) -> None:
    site = broker.site
    second = add_receiver(site, "2")
    folder = receiver_dir(site, second)
    sync_revocation(site, broker.out)  # the ACL gains the receiver's block
    broker.reload()
    receivers = [
        make_client(receiver_identity(site)).connect(),
        make_client(Identity(second, folder / "tls.crt", folder / "tls.key")).connect(),
    ]
    for receiver in receivers:  # both at once: one certificate each, one session each
        assert not receiver.subscribe(shared("receivers", site_filter(SITE, Kind.CLIPS)))[
            0
        ].is_failure
    unit = make_client(unit_identity(site, "cart-01")).connect()
    for n in range(6):
        assert not unit.publish(t("cart-01", Kind.CLIPS), b"%d" % n).is_failure
    # The group splits the clips: each once, between the two (Mosquitto takes turns).
    got: list[list[bytes]] = [[], []]
    deadline = time.monotonic() + 10
    while sum(map(len, got)) < 6 and time.monotonic() < deadline:
        for receiver, payloads in zip(receivers, got, strict=True):
            with contextlib.suppress(queue.Empty):
                payloads.append(bytes(receiver.messages.get(timeout=0.1).payload))
    assert sorted(got[0] + got[1]) == [b"%d" % n for n in range(6)], got
    assert got[0] and got[1], got
    # The added receiver may send receipts, and may not speak for a unit.
    assert not receivers[1].publish(t("cart-01", Kind.RECEIPTS), b"r").is_failure
    assert receivers[1].publish(t("cart-01", Kind.CLIPS), b"forged").value == NOT_AUTHORIZED
    assert receivers[1].publish(t(second, Kind.CLIPS), b"forged").value == NOT_AUTHORIZED


def test_broker_runs_as_the_unprivileged_account(broker: Broker) -> None:
    # Started as root, Mosquitto must drop to its own account; otherwise it stays who it is.
    expected = pwd.getpwnam("mosquitto").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert broker.process is not None
    with open(f"/proc/{broker.process.pid}/status") as status:
        uid = next(int(line.split()[1]) for line in status if line.startswith("Uid:"))
    assert uid == expected
    # The key the broker (re)reads as that account: not readable by anyone else.
    key = broker.out / "broker.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o640
    assert key.stat().st_uid == 0
