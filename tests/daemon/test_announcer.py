"""The announcer against a real Mosquitto run from the site's own TLS and ACL configuration.

The receiver is the project's paho test client (``tests.support.mosquitto``). The broker is
stopped, frozen and restarted as a process; the unit's connection is cut under paho by
shutting its TCP socket, which is what a pulled cable or a crash looks like to the broker.
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from daemon.announcer import Announcer, AnnouncerError
from protocol.errors import MessageError
from protocol.messages import (
    ArmCommand,
    ClipAnnouncement,
    CrlMessage,
    EventAck,
    LegacyReceipt,
    QcVerdict,
    Receipt,
    Status,
    Telemetry,
)
from protocol.topics import Kind, topic
from provisioning.crl import root_crl
from provisioning.devices import add_device
from provisioning.receivers import subscription_group
from provisioning.site import Site, init_site
from server.mqtt import ReceiverLink
from tests.protocol.message_examples import MINISIGN, SIGNATURE, SIGNER, examples, manifest
from tests.support.mosquitto import (
    HOST,
    SITE,
    WAIT_S,
    Broker,
    Client,
    free_port,
    receiver_identity,
    unit_identity,
)

UNIT = "cart-01"
CLIP_ID = "cart-01-20250301T093000Z-a1b2"
NOW = datetime.now(UTC).replace(microsecond=0)
ONLINE = Status(state="online", since=NOW, software_version="0.1.0", armed=False)
# The announcer passes arm commands on; the loop checks their signatures (test_loop.py).
_UNIT = {"site_id": SITE, "device_id": UNIT, "signer": SIGNER, "signature": SIGNATURE}
ARM = ArmCommand(
    participant="PAIN-0042",
    visit="baseline",
    issued_at=NOW,
    expires_at=NOW + timedelta(hours=4),
    **_UNIT,  # type: ignore[arg-type]
)
DISARM = ArmCommand(participant=None, issued_at=NOW, **_UNIT)  # type: ignore[arg-type]
RECEIPT = examples()[Kind.RECEIPTS].model_copy(update={"device_id": UNIT, "clip_id": CLIP_ID})
assert isinstance(RECEIPT, Receipt)
VERDICT = QcVerdict(
    clip_id=CLIP_ID, verdict="repeat", reasons=("no_face",), pass_="quick", issued_at=NOW
)

MakeClient = Callable[..., Client]


def t(kind: Kind) -> str:
    return topic(SITE, UNIT, kind)


@dataclass
class Seen:
    """What the announcer's callbacks were given, for the test thread to wait on."""

    connects: int = 0
    arms: list[ArmCommand | None] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    verdicts: list[QcVerdict] = field(default_factory=list)
    event_acks: list[EventAck] = field(default_factory=list)
    crls: list[bytes] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def record(self, what: str, value: Any = None) -> None:
        with self._changed:
            if what == "connect":
                self.connects += 1
            else:
                getattr(self, what).append(value)
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(condition, timeout=WAIT_S):
                raise AssertionError(f"the announcer did not report {what}: {self}")


StartUnit = Callable[..., tuple[Announcer, Seen]]


def make_announcer(site: Site, port: int, seen: Seen, **changes: Any) -> Announcer:
    bundle = site.paths.devices_dir / UNIT
    options: dict[str, Any] = {
        "site_id": SITE,
        "device_id": UNIT,
        "host": HOST,
        "port": port,
        "cert_file": bundle / "certs" / "tls.crt",
        "key_file": bundle / "keys" / "tls.key",
        "ca_file": bundle / "certs" / "ca-chain.pem",
        "keepalive_s": 5,
        "session_expiry_s": 60,
        "reconnect_max_s": 1.0,
        "on_connect": lambda: seen.record("connect"),
        "on_arm": lambda command: seen.record("arms", command),
        "on_receipt": lambda receipt: seen.record("receipts", receipt),
        "on_verdict": lambda verdict: seen.record("verdicts", verdict),
        "on_event_ack": lambda ack: seen.record("event_acks", ack),
        "on_bad_message": lambda where, error: seen.record("bad", (where, error)),
        "on_crl": lambda crl: seen.record("crls", crl),
    }
    options.update(changes)
    return Announcer(**options)


@pytest.fixture
def start_unit(broker: Broker) -> Iterator[StartUnit]:
    """``start_unit(**changes)``: an announcer for cart-01 that has connected and subscribed,
    and its callbacks' record. Stopped after the test."""
    started: list[Announcer] = []

    def start(**changes: Any) -> tuple[Announcer, Seen]:
        seen = Seen()
        announcer = make_announcer(broker.site, broker.port, seen, **changes)
        started.append(announcer)
        announcer.start()
        seen.wait_for(lambda: seen.connects == 1, "a connection")
        return announcer, seen

    yield start
    for announcer in started:
        announcer.stop()


@pytest.fixture
def receiver(broker: Broker, make_client: MakeClient) -> Client:
    return make_client(receiver_identity(broker.site)).connect()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def cut_connection(announcer: Announcer) -> None:
    """Shut the TCP connection under paho without a DISCONNECT, as a crash would.

    The plain socket's shutdown, not the SSL socket's (which would drop the TLS state) nor
    close() (which would pull the descriptor out of paho's select loop).
    """
    sock = announcer._link._client.socket()
    assert isinstance(sock, socket.socket)
    socket.socket.shutdown(sock, socket.SHUT_RDWR)


# --- tests ------------------------------------------------------------------------------------


def test_connects_and_publishes_a_retained_status(
    broker: Broker, start_unit: StartUnit, make_client: MakeClient
) -> None:
    unit, _ = start_unit()
    assert unit.connected and unit.local_address == HOST
    handle = unit.publish(ONLINE)
    assert handle.wait(WAIT_S) and handle.acknowledged and not handle.failed
    late = make_client(receiver_identity(broker.site)).connect()  # after the publish: retained
    late.subscribe(t(Kind.STATUS))
    message = late.expect(t(Kind.STATUS))
    assert message.retain and Status.parse(message.payload) == ONLINE


def test_clip_announcement_and_telemetry_are_acknowledged(
    start_unit: StartUnit, receiver: Client
) -> None:
    announcement = ClipAnnouncement(
        manifest=manifest(site_id=SITE, device_id=UNIT, clip_id=CLIP_ID),
        signature=MINISIGN,
        url=f"https://{HOST}:8443/v1/clips/{CLIP_ID}.age",
    )
    receiver.subscribe(t(Kind.CLIPS))
    unit, _ = start_unit()
    handle = unit.publish(announcement)
    wait_until(lambda: handle.acknowledged, "the PUBACK")
    assert ClipAnnouncement.parse(receiver.expect(t(Kind.CLIPS)).payload) == announcement
    telemetry = examples()[Kind.TELEMETRY]
    assert isinstance(telemetry, Telemetry)
    assert unit.publish(telemetry).wait(WAIT_S)  # QoS 0: acknowledged once written out


def test_a_publish_the_broker_refuses_fails(start_unit: StartUnit) -> None:
    unit, _ = start_unit()
    handle = unit.publish(ARM)  # cmd/arm is the hospital's to write: the ACL answers 0x87
    wait_until(lambda: handle.failed, "the refusal")
    assert not handle.acknowledged and "authori" in (handle.reason or "")
    assert unit.connected and unit.publish(ONLINE).wait(WAIT_S)


def test_a_publish_while_the_broker_is_down_fails_at_once(
    broker: Broker, start_unit: StartUnit
) -> None:
    unit, _ = start_unit()
    broker.stop()
    wait_until(lambda: not unit.connected, "the disconnect")
    handle = unit.publish(ONLINE)
    assert handle.failed and handle.reason == "not connected"
    assert not unit.connected and unit.local_address is None


def test_a_publish_in_flight_when_the_connection_drops_fails(
    broker: Broker, start_unit: StartUnit
) -> None:
    unit, seen = start_unit()
    assert broker.process is not None
    broker.process.send_signal(signal.SIGSTOP)  # no PUBACK can come
    try:
        handle = unit.publish(examples()[Kind.EVENTS])
        time.sleep(0.1)
        assert not handle.acknowledged and not handle.failed
        cut_connection(unit)
        wait_until(lambda: handle.failed, "the in-flight publish to fail")
    finally:
        broker.process.send_signal(signal.SIGCONT)
    seen.wait_for(lambda: seen.connects == 2, "a reconnect")
    assert handle.failed and not handle.acknowledged  # paho did not resend it


def test_reconnects_by_itself_after_the_broker_restarts(
    broker: Broker, start_unit: StartUnit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="daemon.announcer")
    unit, seen = start_unit()
    broker.stop()
    wait_until(lambda: not unit.connected, "the disconnect")
    time.sleep(1.5)  # a retry or two against the stopped broker
    broker.start()
    seen.wait_for(lambda: seen.connects == 2, "a reconnect")
    assert unit.connected and unit.publish(ONLINE).wait(WAIT_S)
    # Once when the connection went, quietly for each retry (paho's own chatter included).
    ours = [r for r in caplog.records if r.name.startswith("daemon.announcer")]
    assert len([r for r in ours if r.levelno >= logging.WARNING]) == 1, ours
    assert any(r.levelno == logging.DEBUG and "cannot reach" in r.getMessage() for r in ours)


def test_start_never_raises_for_an_unreachable_broker(
    broker_site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="daemon.announcer")
    seen = Seen()
    unit = make_announcer(broker_site, free_port(), seen)
    unit.start()
    try:
        wait_until(
            lambda: any(r.levelno == logging.DEBUG for r in caplog.records), "a second attempt"
        )
        assert not unit.connected and unit.publish(ONLINE).failed
    finally:
        unit.stop()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot reach" in warnings[0].getMessage()
    assert seen.connects == 0


def test_a_refused_certificate_is_logged_once(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="daemon.announcer")
    stranger = init_site(tmp_path / "other", SITE, broker_hosts=(HOST,))
    bundle = add_device(stranger, UNIT).bundle_dir  # same name, another site's CA
    seen = Seen()
    unit = make_announcer(
        broker.site,
        broker.port,
        seen,
        cert_file=bundle / "certs" / "tls.crt",
        key_file=bundle / "keys" / "tls.key",
    )
    unit.start()
    try:
        wait_until(lambda: len(_problems(caplog)) >= 2, "a second attempt")
    finally:
        unit.stop()
    first, *retries = _problems(caplog)
    assert first.levelno == logging.WARNING and "certificate refused" in first.getMessage()
    assert {r.levelno for r in retries} == {logging.DEBUG}
    assert seen.connects == 0
    broker.wait_log("certificate verify failed")


def test_the_broker_sends_the_last_will_when_the_unit_vanishes(
    broker: Broker, start_unit: StartUnit, receiver: Client, make_client: MakeClient
) -> None:
    receiver.subscribe(t(Kind.STATUS))
    unit, seen = start_unit()
    assert unit.publish(ONLINE).wait(WAIT_S)
    assert Status.parse(receiver.expect(t(Kind.STATUS)).payload) == ONLINE
    cut_connection(unit)
    assert Status.parse(receiver.expect(t(Kind.STATUS)).payload) == Status.last_will()
    late = make_client(receiver_identity(broker.site)).connect()
    late.subscribe(t(Kind.STATUS))
    message = late.expect(t(Kind.STATUS))
    assert message.retain and Status.parse(message.payload) == Status.last_will()
    seen.wait_for(lambda: seen.connects == 2, "a reconnect")


def test_stop_leaves_a_retained_offline_status_and_no_will(
    broker: Broker, start_unit: StartUnit, make_client: MakeClient
) -> None:
    unit, _ = start_unit()
    assert unit.publish(ONLINE).wait(WAIT_S)
    unit.stop()
    assert not unit.connected and unit.publish(ONLINE).failed
    late = make_client(receiver_identity(broker.site)).connect()
    late.subscribe(t(Kind.STATUS))
    status = Status.parse(late.expect(t(Kind.STATUS)).payload)
    # The unit's own offline status has a time; the will (which would have replaced it) has none.
    assert status.state == "offline" and status.since is not None
    broker.wait_log(f"Client {UNIT} disconnected.")


def test_retained_arm_is_delivered_at_connect_and_its_clearing_too(
    start_unit: StartUnit, receiver: Client
) -> None:
    # Before the unit ever subscribed: 0x10 "no matching subscribers", kept as retained.
    assert not receiver.publish(t(Kind.ARM), ARM.to_payload(), retain=True).is_failure
    _, seen = start_unit()
    seen.wait_for(lambda: seen.arms == [ARM], "the retained arm command")
    receiver.publish(t(Kind.ARM), DISARM.to_payload(), retain=True)
    seen.wait_for(lambda: seen.arms[-1:] == [DISARM], "the disarm command")
    receiver.publish(t(Kind.ARM), b"", retain=True)
    seen.wait_for(lambda: len(seen.arms) == 3 and seen.arms[-1] is None, "the cleared command")
    assert seen.bad == []


def receiver_link(broker: Broker) -> tuple[ReceiverLink, threading.Event]:
    """The site's first receiver's MQTT link (not started), and an event set once connected."""
    site = broker.site
    connected = threading.Event()
    link = ReceiverLink(
        site_id=SITE,
        receiver_id=site.receiver_id,
        host=HOST,
        port=broker.port,
        cert_file=site.paths.receiver_dir / "tls.crt",
        key_file=site.paths.receiver_dir / "tls.key",
        ca_file=site.paths.receiver_dir / "ca.pem",
        group=subscription_group(site),
        keepalive_s=5,
        session_expiry_s=60,
        reconnect_max_s=1.0,
        on_message=lambda incoming: None,
        on_connect=connected.set,
    )
    return link, connected


def test_the_retained_root_crl_is_delivered_at_connect(
    broker: Broker, start_unit: StartUnit
) -> None:
    """The receiver's sending side (ReceiverLink.publish_crl), retained before the unit comes."""
    link, connected = receiver_link(broker)
    der = root_crl(broker.site).public_bytes(Encoding.DER)
    message = CrlMessage(crl=base64.b64encode(der).decode())
    link.start()
    try:
        assert connected.wait(WAIT_S)
        assert link.publish_crl(UNIT, message).wait(WAIT_S)
    finally:
        link.stop()
    _, seen = start_unit()
    seen.wait_for(lambda: seen.crls == [der], "the retained CRL")
    assert seen.bad == []


def test_a_receipt_reaches_on_receipt(start_unit: StartUnit, receiver: Client) -> None:
    _, seen = start_unit()
    # The previous version's form, sent beside each receipt during an upgrade: ignored quietly.
    assert isinstance(RECEIPT, Receipt)
    legacy = LegacyReceipt.of(RECEIPT, lambda data: bytes(64))
    receiver.publish(t(Kind.RECEIPTS), legacy.payload)
    receiver.publish(t(Kind.RECEIPTS), RECEIPT.to_payload())
    seen.wait_for(lambda: seen.receipts == [RECEIPT], "the receipt")
    assert seen.bad == []


def test_malformed_messages_are_reported_and_the_unit_keeps_working(
    start_unit: StartUnit, receiver: Client
) -> None:
    arm = ARM.model_dump(mode="json", by_alias=True)
    bad = {
        "not JSON": b"arm PAIN-0042",
        "not UTF-8": b"\xff\xfe{}",
        "schema": _json({**arm, "schema": "painav.receipts/1"}),
        "participant": _json({**arm, "participant": "Jan de Vries"}),
        "ward": _json({**arm, "ward": "7B"}),
        "4096 limit": _json({**arm, "issued_by": "rn-0007"}) + b" " * 5000,
    }
    _, seen = start_unit()
    for payload in bad.values():
        receiver.publish(t(Kind.ARM), payload)
    receiver.publish(t(Kind.RECEIPTS), b"")
    seen.wait_for(lambda: len(seen.bad) == len(bad) + 1, "every bad message")
    for (where, error), expected in zip(seen.bad, [*bad, "not JSON"], strict=True):
        assert where == t(Kind.ARM) or (expected == "not JSON" and where == t(Kind.RECEIPTS))
        assert expected in error and "\n" not in error, error
    assert seen.arms == []
    receiver.publish(t(Kind.ARM), ARM.to_payload())
    seen.wait_for(lambda: seen.arms == [ARM], "a good arm command after the bad ones")


def test_receipts_sent_while_the_unit_is_away_arrive_when_it_returns(
    start_unit: StartUnit, receiver: Client
) -> None:
    first, _ = start_unit()
    first.stop()
    # Success, not 0x10 "no matching subscribers": the broker kept the unit's subscription.
    assert receiver.publish(t(Kind.RECEIPTS), RECEIPT.to_payload()).value == 0
    _, seen = start_unit()
    seen.wait_for(lambda: seen.receipts == [RECEIPT], "the queued receipt")


def test_a_qc_verdict_reaches_on_verdict_and_a_bad_one_the_bad_message_path(
    start_unit: StartUnit, receiver: Client
) -> None:
    _, seen = start_unit()
    bad = VERDICT.model_dump(mode="json", by_alias=True)
    receiver.publish(t(Kind.QC), _json({**bad, "reasons": []}))  # repeat without a reason
    receiver.publish(t(Kind.QC), RECEIPT.to_payload())  # another kind's payload on qc
    receiver.publish(t(Kind.QC), VERDICT.to_payload())
    seen.wait_for(lambda: seen.verdicts == [VERDICT], "the verdict")
    assert [where for where, _ in seen.bad] == [t(Kind.QC), t(Kind.QC)]
    assert "field 'reasons': at least one for check and repeat" in seen.bad[0][1]
    assert "is not a qc message" in seen.bad[1][1]


def test_verdicts_sent_while_the_unit_is_away_arrive_when_it_returns(
    start_unit: StartUnit, receiver: Client
) -> None:
    first, _ = start_unit()
    first.stop()
    usable = VERDICT.model_copy(update={"verdict": "usable", "reasons": (), "pass_": "full"})
    for verdict in (VERDICT, usable):
        # Success, not 0x10 "no matching subscribers": the broker kept the unit's subscription.
        assert receiver.publish(t(Kind.QC), verdict.to_payload()).value == 0
    _, seen = start_unit()
    seen.wait_for(lambda: seen.verdicts == [VERDICT, usable], "both queued verdicts, in order")


def test_the_receiver_links_verdict_reaches_the_unit(broker: Broker, start_unit: StartUnit) -> None:
    """The hospital's sending side (server.mqtt.ReceiverLink.publish_verdict) end to end."""
    _, seen = start_unit()
    link, connected = receiver_link(broker)
    with pytest.raises(MessageError):
        link.publish_verdict("Cart 1", VERDICT)  # not a device id
    assert link.publish_verdict(UNIT, VERDICT).failed  # not connected yet: nothing queued
    link.start()
    try:
        assert connected.wait(WAIT_S)
        handle = link.publish_verdict(UNIT, VERDICT)
        assert handle.wait(WAIT_S) and handle.acknowledged
        seen.wait_for(lambda: seen.verdicts == [VERDICT], "the receiver's verdict")
        # A verdict for a unit that does not exist is still accepted by the broker (and
        # delivered to nobody): acknowledgement means "the broker has it", not "the unit saw it".
        assert link.publish_verdict("cart-99", VERDICT).wait(WAIT_S)
        with pytest.raises(TypeError):
            link.publish_verdict(UNIT, RECEIPT)  # type: ignore[arg-type]
    finally:
        link.stop()
    assert seen.bad == []


def test_event_acks_from_the_receiver_reach_the_unit_and_only_its_own(
    broker: Broker, start_unit: StartUnit, receiver: Client
) -> None:
    """The hospital's side (server.mqtt.ReceiverLink.publish_event_ack) to the unit's callback;
    queued while the unit is away; a unit can neither send one nor read another unit's."""
    first, _ = start_unit()
    first.stop()
    ack = EventAck(event_ids=("e1", "e2"), recorded_at=NOW)
    assert receiver.publish(t(Kind.EVENT_ACKS), ack.to_payload()).value == 0  # kept for it
    _, seen = start_unit()
    seen.wait_for(lambda: seen.event_acks == [ack], "the acknowledgement queued while away")

    link, connected = receiver_link(broker)
    link.start()
    try:
        assert connected.wait(WAIT_S)
        second = EventAck(event_ids=("e3",), recorded_at=NOW)
        assert link.publish_event_ack(UNIT, second).wait(WAIT_S)
        seen.wait_for(lambda: seen.event_acks == [ack, second], "the receiver link's ack")
        with pytest.raises(TypeError):
            link.publish_event_ack(UNIT, VERDICT)  # type: ignore[arg-type]
    finally:
        link.stop()
    # Another unit may not forge one: the ACL refuses the publish (0x87), nothing arrives.
    other = unit_identity(broker.site, "cart-02")
    forger = Client(broker, other).connect()
    try:
        assert forger.publish(t(Kind.EVENT_ACKS), ack.to_payload()).value == 0x87
    finally:
        forger.close()
    time.sleep(0.5)
    assert seen.event_acks == [ack, second] and seen.bad == []


def test_unusable_tls_files_are_named(broker_site: Site, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM\n")
    other_key = broker_site.paths.devices_dir / "cart-02" / "keys" / "tls.key"
    cases = [
        ({"key_file": tmp_path / "missing.key"}, f"key {tmp_path / 'missing.key'}: No such file"),
        ({"key_file": junk}, f"key {junk}: not"),
        ({"cert_file": junk}, f"certificate {junk}: not"),
        ({"ca_file": junk}, f"CA chain {junk}"),
        ({"key_file": other_key}, f"key {other_key} does not belong to certificate"),
    ]
    for changes, expected in cases:
        with pytest.raises(AnnouncerError) as caught:
            make_announcer(broker_site, 8883, Seen(), **changes)
        assert expected in str(caught.value)
    make_announcer(broker_site, 8883, Seen())  # while the unit's own files are fine


def _problems(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The announcer's own reports of a connection problem."""
    return [r for r in caplog.records if r.name == "daemon.announcer" and "reconnecting" in r.msg]


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()
