"""The receiver's MQTT link against a real Mosquitto run from the site's own TLS and ACL config.

The units are the project's paho test clients (``tests.support.mosquitto``), each logging in with
its own certificate, so the broker's ACL applies to everything they send.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from protocol.errors import MessageError
from protocol.hospital_signature import HospitalSigner, HospitalTrust
from protocol.messages import ArmCommand, ClipAnnouncement, Event, Receipt, Status
from protocol.signing import sign_receipt, verify_receipt
from protocol.topics import ROUTES, Kind, Topic, topic
from provisioning import pki
from provisioning.broker import ACL_FILE
from provisioning.receivers import subscription_group
from provisioning.site import Site
from server.mqtt import Incoming, ReceiverLink, ReceiverLinkError
from tests.protocol.message_examples import MINISIGN, examples, manifest
from tests.support.mosquitto import (
    HOST,
    SITE,
    UNITS,
    WAIT_S,
    Broker,
    Client,
    unit_identity,
)

NOW = datetime.now(UTC).replace(microsecond=0)
ONLINE = Status(state="online", since=NOW, software_version="0.1.0", armed=False)
EVENT = examples()[Kind.EVENTS]
TELEMETRY = examples()[Kind.TELEMETRY]
_ARM = examples()[Kind.ARM]
assert isinstance(_ARM, ArmCommand)
# The link sends it as given; units check its signature (tests/daemon/test_loop.py).
ARM = _ARM.model_copy(
    update={"device_id": "cart-02", "issued_at": NOW, "expires_at": NOW + timedelta(hours=4)}
)
FLOOD = 5000
FLOOD_WAIT_S = 45.0

MakeClient = Callable[..., Client]


def t(unit: str, kind: Kind) -> str:
    return topic(SITE, unit, kind)


def announcement(unit: str, n: int = 1, site: str = SITE) -> ClipAnnouncement:
    clip_id = f"{unit}-20250301T0930{n % 60:02d}Z-{n:04x}"
    return ClipAnnouncement(
        manifest=manifest(clip_id=clip_id, site_id=site, device_id=unit),
        signature=MINISIGN,
        url=f"https://{unit}.{site}.example:8443/clips/{clip_id}",
    )


@dataclass
class Seen:
    """What a link's callbacks were given, for the test thread to wait on."""

    connects: int = 0
    incoming: list[Incoming] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def record(self, what: str, value: Any = None) -> None:
        with self._changed:
            if what == "connect":
                self.connects += 1
            else:
                getattr(self, what).append(value)
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        with self._changed:
            if not self._changed.wait_for(condition, timeout=timeout):
                raise AssertionError(
                    f"the link did not report {what}: {self.connects} connects, "
                    f"{len(self.incoming)} messages, {len(self.bad)} bad, last {self.bad[-1:]}"
                )

    def messages(self) -> list[object]:
        with self._changed:
            return [incoming.message for incoming in self.incoming]


def eventually(condition: Callable[[], bool], what: str) -> None:
    """Return once *condition* holds; fail after the usual wait."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def make_link(site: Site, port: int, seen: Seen, **changes: Any) -> ReceiverLink:
    rdir = site.paths.receiver_dir
    options: dict[str, Any] = {
        "site_id": SITE,
        "receiver_id": site.receiver_id,
        "host": HOST,
        "port": port,
        "cert_file": rdir / "tls.crt",
        "key_file": rdir / "tls.key",
        "ca_file": rdir / "ca.pem",
        "group": subscription_group(site),
        "keepalive_s": 5,
        "session_expiry_s": 300,
        "reconnect_max_s": 1.0,
        "on_message": lambda incoming: seen.record("incoming", incoming),
        "on_bad_message": lambda where, error: seen.record("bad", (where, error)),
        "on_connect": lambda: seen.record("connect"),
    }
    options.update(changes)
    return ReceiverLink(**options)


StartLink = Callable[..., tuple[ReceiverLink, Seen]]


@pytest.fixture
def start_link(broker: Broker) -> Iterator[StartLink]:
    """``start_link(**changes)``: a receiver link that has connected and subscribed, and its
    callbacks' record. Stopped after the test."""
    started: list[ReceiverLink] = []

    def start(**changes: Any) -> tuple[ReceiverLink, Seen]:
        seen = Seen()
        link = make_link(broker.site, broker.port, seen, **changes)
        started.append(link)
        link.start()
        seen.wait_for(lambda: seen.connects == 1, "a connection")
        assert link.connected
        return link, seen

    yield start
    for link in started:
        link.stop()


def unit(make_client: MakeClient, site: Site, name: str) -> Client:
    return make_client(unit_identity(site, name)).connect()


def send(client: Client, unit_id: str, message: Any, *, retain: bool = False) -> None:
    """Publish *message* as the unit would, with its kind's QoS; fail unless accepted."""
    kind = message.KIND
    rc = client.publish(t(unit_id, kind), message.to_payload(), qos=ROUTES[kind].qos, retain=retain)
    assert not rc.is_failure, f"{unit_id}: the broker refused {kind.value}: {rc}"


# --- unit messages in -------------------------------------------------------------------------


def test_every_kind_arrives_parsed_retained_status_included(
    broker: Broker, make_client: MakeClient, start_link: StartLink
) -> None:
    cart1 = unit(make_client, broker.site, "cart-01")
    send(cart1, "cart-01", ONLINE, retain=True)  # before the receiver exists
    before = datetime.now(UTC)

    link, seen = start_link()
    seen.wait_for(lambda: len(seen.incoming) == 1, "the retained status")
    status = seen.incoming[0]
    assert status.topic == Topic(SITE, "cart-01", Kind.STATUS)
    assert status.message == ONLINE
    assert status.retained
    assert before <= status.received_at <= datetime.now(UTC)

    cart2 = unit(make_client, broker.site, "cart-02")
    sent = [announcement("cart-02"), EVENT, TELEMETRY]
    for message in sent:
        send(cart2, "cart-02", message)
    seen.wait_for(lambda: len(seen.incoming) == 4, "a clip, an event and telemetry")
    for incoming, message in zip(seen.incoming[1:], sent, strict=True):
        assert incoming.topic == Topic(SITE, "cart-02", message.KIND)
        assert incoming.message == message
        assert type(incoming.message) is type(message)
        assert not incoming.retained
    assert seen.bad == [] and link.bad_messages == 0


def test_an_announcement_sent_while_the_receiver_is_away_arrives_when_it_returns(
    broker: Broker,
    make_client: MakeClient,
    start_link: StartLink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, _ = start_link()
    first.stop()
    assert not first.connected
    clip = announcement("cart-03", 7)
    send(unit(make_client, broker.site, "cart-03"), "cart-03", clip)

    with caplog.at_level(logging.INFO, logger="server.mqtt"):
        _, seen = start_link()
        seen.wait_for(lambda: len(seen.incoming) == 1, "the queued announcement")
    assert seen.incoming[0].message == clip
    assert seen.incoming[0].topic == Topic(SITE, "cart-03", Kind.CLIPS)
    assert "(resumed session)" in caplog.text


def test_status_is_subscribed_plainly_and_the_rest_shared(
    broker: Broker, start_link: StartLink
) -> None:
    link, _ = start_link(group="ingest")
    receiver = broker.site.receiver_id
    assert link.subscriptions == (
        "painav/v1/ward7/+/status",
        "$share/ingest/painav/v1/ward7/+/clips",
        "$share/ingest/painav/v1/ward7/+/events",
        "$share/ingest/painav/v1/ward7/+/telemetry",
    )
    for topic_filter in link.subscriptions:  # Mosquitto logs "<client> <qos> <filter>"
        broker.wait_log(f"{receiver} 1 {topic_filter}\n")
    assert "$share/ingest/painav/v1/ward7/+/status" not in broker.log()


def test_two_receivers_split_the_work_and_both_know_every_status(
    broker: Broker, make_client: MakeClient, start_link: StartLink, tmp_path: Path
) -> None:
    # Provisioning makes one receiver; a second one needs its own certificate (the same one
    # would take over the first one's session) and ACL lines, made here by hand.
    site = broker.site
    second = pki.issue_leaf(site.root(), "receiver-b", site.name, days=1, server=False, client=True)
    pki.write_private_key(tmp_path / "b.key", second.key)
    pki.write_cert(tmp_path / "b.crt", second.cert)
    acl = broker.out / ACL_FILE
    acl.write_text(acl.read_text() + "user receiver-b\ntopic read painav/v1/ward7/#\n")
    broker.reload()

    cart1 = unit(make_client, site, "cart-01")
    send(cart1, "cart-01", ONLINE, retain=True)
    _, seen_a = start_link()
    _, seen_b = start_link(
        receiver_id="receiver-b", cert_file=tmp_path / "b.crt", key_file=tmp_path / "b.key"
    )
    eventually(lambda: seen_a.messages() == seen_b.messages() == [ONLINE], "the status at both")

    clips = [announcement("cart-01", n) for n in range(10)]
    for clip in clips:
        send(cart1, "cart-01", clip)

    def taken() -> list[object]:
        return seen_a.messages()[1:] + seen_b.messages()[1:]

    eventually(lambda: len(taken()) == len(clips), "every clip at one of the receivers")
    assert sorted(taken(), key=str) == sorted(clips, key=str)  # each once
    assert len(seen_a.messages()) > 1 and len(seen_b.messages()) > 1  # both got work

    recording = ONLINE.model_copy(update={"state": "recording"})
    send(cart1, "cart-01", recording, retain=True)
    eventually(
        lambda: seen_a.messages()[-1] == seen_b.messages()[-1] == recording, "the new status"
    )


def test_a_callback_that_raises_does_not_stop_the_link(
    broker: Broker,
    make_client: MakeClient,
    start_link: StartLink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[Incoming] = []

    def broken(incoming: Incoming) -> None:
        calls.append(incoming)
        raise RuntimeError("the catalog is down")

    link, _ = start_link(on_message=broken)
    cart1 = unit(make_client, broker.site, "cart-01")
    send(cart1, "cart-01", EVENT)
    send(cart1, "cart-01", announcement("cart-01"))
    eventually(lambda: len(calls) == 2, "both messages")
    # The failure is logged after the callback raised, so the second line may trail the call.
    failures = "the on_message callback failed"
    eventually(lambda: caplog.text.count(failures) == 2, "both failures logged")
    assert link.connected


# --- receipts and arm commands out -----------------------------------------------------------


def test_a_signed_receipt_and_a_retained_arm_command_reach_their_units(
    broker: Broker, make_client: MakeClient, start_link: StartLink
) -> None:
    site = broker.site
    rdir = site.paths.receiver_dir
    cart1 = unit(make_client, site, "cart-01")
    cart1.subscribe(t("cart-01", Kind.RECEIPTS))
    link, _ = start_link()

    clip = announcement("cart-01")
    signer = HospitalSigner.from_files(rdir / "signing.key", rdir / "signing.crt")
    receipt = sign_receipt(
        signer,
        site_id=SITE,
        device_id="cart-01",
        clip_id=clip.manifest.clip_id,
        sha256=clip.manifest.sha256,
        stored_at=NOW,
    )
    handle = link.publish(receipt)
    assert handle.wait(WAIT_S), handle.reason
    assert handle.topic == t("cart-01", Kind.RECEIPTS)
    got = cart1.expect(t("cart-01", Kind.RECEIPTS))
    parsed = Receipt.parse(got.payload, topic=got.topic)
    assert parsed == receipt
    trust = HospitalTrust(roots=(site.root().cert,), receiver_id=site.receiver_id, crl=lambda: None)
    verify_receipt(trust, parsed, sha256=clip.manifest.sha256, now=datetime.now(UTC))

    arm = link.publish(ARM, device_id="cart-02")
    assert arm.wait(WAIT_S), arm.reason
    cart2 = unit(make_client, site, "cart-02")  # connects after the command was sent
    cart2.subscribe(t("cart-02", Kind.ARM))
    retained = cart2.expect(t("cart-02", Kind.ARM))
    assert retained.retain
    assert ArmCommand.parse(retained.payload, topic=retained.topic) == ARM
    assert cart1.received() == []  # cart-01 got nothing of cart-02's


def test_publish_refuses_what_it_cannot_send(broker_site: Site) -> None:
    link = make_link(broker_site, 1, Seen())  # never started
    receipt = examples()[Kind.RECEIPTS]
    assert isinstance(receipt, Receipt)

    handle = link.publish(receipt)
    assert handle.failed and handle.reason == "not connected"
    assert not handle.wait(0)
    assert link.publish(ARM).topic == t("cart-02", Kind.ARM)  # the unit it is signed for
    with pytest.raises(TypeError, match="Status"):
        link.publish(ONLINE, device_id="cart-01")  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="site 'ward8'"):
        link.publish(receipt.model_copy(update={"site_id": "ward8"}))
    with pytest.raises(MessageError, match="'cart-01'"):
        link.publish(receipt, device_id="cart-01")  # it names cart-03
    with pytest.raises(MessageError, match="arm command for unit 'cart-02', not 'cart-01'"):
        link.publish(ARM, device_id="cart-01")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: {"cert_file": d / "missing.crt"}, "missing.crt: No such file"),
        (lambda d: {"cert_file": d / "tls.key"}, "tls.key: not a PEM certificate"),
        (lambda d: {"key_file": d / "tls.crt"}, "tls.crt: not an unencrypted PEM private key"),
        (lambda d: {"ca_file": d / "signing.key"}, "signing.key: no PEM certificates"),
        (lambda d: {"ca_file": d / "gone.pem"}, "gone.pem: No such file"),
        (lambda d: {"key_file": d / "signing.crt"}, "signing.crt: not an unencrypted PEM"),
        (lambda d: {"receiver_id": "Receiver 1"}, "receiver id 'Receiver 1'"),
        (lambda d: {"group": "a/b"}, "subscription group 'a/b'"),
        (lambda d: {"site_id": "ward#"}, "site id 'ward#'"),
        (lambda d: {"reconnect_max_s": 0.5}, "reconnect_max_s 0.5"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(
    broker_site: Site, change: Callable[[Path], dict[str, Any]], expected: str
) -> None:
    changes = change(broker_site.paths.receiver_dir)
    with pytest.raises(ReceiverLinkError, match=expected.replace(".", r"\.")):
        make_link(broker_site, 1, Seen(), **changes)


def test_a_key_of_another_certificate_is_refused(broker_site: Site) -> None:
    other_key = broker_site.paths.devices_dir / "cart-01" / "keys" / "tls.key"
    with pytest.raises(ReceiverLinkError, match="does not belong to certificate"):
        make_link(broker_site, 1, Seen(), key_file=other_key)


# --- hostile units ----------------------------------------------------------------------------


def test_a_unit_cannot_publish_into_another_units_topics(
    broker: Broker, make_client: MakeClient, start_link: StartLink
) -> None:
    _, seen = start_link()
    cart2 = unit(make_client, broker.site, "cart-02")
    for kind, message in ((Kind.STATUS, ONLINE), (Kind.CLIPS, announcement("cart-01"))):
        rc = cart2.publish(t("cart-01", kind), message.to_payload())
        assert rc.value == 0x87, rc  # Not authorized
    # Mosquitto delivers one client's messages in order: the sentinels come after anything else.
    send(cart2, "cart-02", ONLINE)
    send(cart2, "cart-02", announcement("cart-02"))
    seen.wait_for(lambda: len(seen.incoming) == 2, "the sentinels")
    assert [i.topic.device for i in seen.incoming] == ["cart-02", "cart-02"]
    assert seen.bad == []


UNIT_KINDS = (Kind.STATUS, Kind.CLIPS, Kind.EVENTS, Kind.TELEMETRY)
BACKLOG = 300
"""Hostile messages in flight at most: well under the broker's queue for the receiver (1,000),
beyond which Mosquitto drops messages instead of the test finding them reported."""


def _valid(kind: Kind, unit_id: str) -> dict[str, Any]:
    message = {
        Kind.STATUS: ONLINE,
        Kind.CLIPS: announcement(unit_id),
        Kind.EVENTS: EVENT,
        Kind.TELEMETRY: TELEMETRY,
    }[kind]
    data: dict[str, Any] = json.loads(message.to_payload())
    return data


def _json(data: object) -> bytes:
    return json.dumps(data).encode()


# A hostile payload maker gets the sending unit, another unit and a seeded Random, and returns
# the kind of topic (of the sending unit) and the payload.
Make = Callable[[str, str, random.Random], tuple[Kind, bytes]]


def random_bytes(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    return rng.choice(UNIT_KINDS), rng.randbytes(rng.randint(0, 400))


def truncated(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    kind = rng.choice(UNIT_KINDS)
    payload = _json(_valid(kind, unit_id))
    return kind, payload[: rng.randrange(len(payload))]


def another_kind(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    return Kind.STATUS, _json(_valid(rng.choice(UNIT_KINDS[1:]), unit_id))


def unknown_version(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    return Kind.EVENTS, _json({**_valid(Kind.EVENTS, unit_id), "schema": "painav.events/3"})


def clip_of_another_unit(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    return Kind.CLIPS, announcement(other).to_payload()


def clip_of_another_site(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    return Kind.CLIPS, announcement(unit_id, site="ward8").to_payload()


def status_of_another_unit(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    return Kind.STATUS, _json({**_valid(Kind.STATUS, unit_id), "device_id": other})


def oversized(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    # Past each kind's limit (4-64 KiB) and under the broker's packet limit (64 KiB + 4 KiB).
    kind = rng.choice(UNIT_KINDS)
    return kind, _json(
        {"schema": f"painav.{kind.slug}/1", "pad": "x" * rng.randint(65_600, 67_000)}
    )


def deeply_nested(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    # Deeper than Python's recursion limit (1,000) and within each kind's size limit.
    if rng.random() < 0.5:
        return rng.choice(UNIT_KINDS), b"[" * 4_000
    return Kind.CLIPS, b'{"a":' * 12_000


def nan_or_infinity(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    value = rng.choice([float("nan"), float("inf"), float("-inf")])
    return Kind.TELEMETRY, _json({**_valid(Kind.TELEMETRY, unit_id), "uptime_s": value})


def not_utf8(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    text = json.dumps({**_valid(Kind.EVENTS, unit_id), "detail": "douleur à 7"}, ensure_ascii=False)
    return Kind.EVENTS, text.encode("latin-1")


def huge_integer(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    value = rng.choice([2**63, 2**64, 10**300])
    return Kind.TELEMETRY, _json({**_valid(Kind.TELEMETRY, unit_id), "free_bytes": value})


def overflowing_float(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    payload = _json({**_valid(Kind.TELEMETRY, unit_id), "uptime_s": 1.5})
    return Kind.TELEMETRY, payload.replace(b"1.5", b"1e400")


def too_many_digits(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    # Beyond Python's 4,300-digit limit for int(); only a clip's 64 KiB leave room for it.
    return Kind.CLIPS, b'{"schema": "painav.clips/1", "n": ' + b"9" * 5_000 + b"}"


def duplicate_keys(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    return Kind.STATUS, b'{"state": "error", ' + _json(_valid(Kind.STATUS, unit_id))[1:]


def not_an_object(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    return rng.choice(UNIT_KINDS), rng.choice([b"[]", b'"online"', b"null", b"42", b"true"])


def empty(unit_id: str, other: str, rng: random.Random) -> tuple[Kind, bytes]:
    return rng.choice(UNIT_KINDS), b""


HOSTILE: list[tuple[Make, str]] = [
    # Each maker, and what the error of every payload it makes says.
    (random_bytes, "payload is not"),  # UTF-8 or JSON
    (truncated, "payload is not JSON"),
    (another_kind, "is not a status message"),
    (unknown_version, "unknown schema version"),
    (clip_of_another_unit, "field 'manifest.device_id': does not match the topic's device"),
    (clip_of_another_site, "field 'manifest.site_id': does not match the topic's site"),
    (status_of_another_unit, "field 'device_id': Extra inputs are not permitted"),
    (oversized, "over the"),
    (deeply_nested, "nested too deeply"),
    (nan_or_infinity, "Infinity is not allowed"),  # or NaN: checked below
    (not_utf8, "payload is not UTF-8: byte 0xe0"),
    (huge_integer, "field 'free_bytes': Input should be less than or equal to"),
    (overflowing_float, "field 'uptime_s': Input should be a finite number"),
    (too_many_digits, "Exceeds the limit"),
    (duplicate_keys, "duplicate key 'state'"),
    (not_an_object, "payload must be a JSON object"),
    (empty, "payload is not JSON"),
]


def test_thousands_of_hostile_messages_are_reported_and_none_gets_through(
    broker: Broker,
    make_client: MakeClient,
    start_link: StartLink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="server.mqtt")
    link, seen = start_link()
    rng = random.Random(20250301)
    plan: dict[str, list[tuple[str, bytes, str]]] = {unit_id: [] for unit_id in UNITS}
    for n in range(FLOOD):
        make, expected = HOSTILE[n % len(HOSTILE)]
        unit_id, other = UNITS[n % len(UNITS)], UNITS[(n + 1) % len(UNITS)]
        kind, payload = make(unit_id, other, rng)
        plan[unit_id].append((t(unit_id, kind), payload, expected))
    clients = {unit_id: unit(make_client, broker.site, unit_id) for unit_id in UNITS}
    sent = dict.fromkeys(UNITS, 0)

    def flood(unit_id: str) -> None:
        for where, payload, _ in plan[unit_id]:
            seen.wait_for(lambda: sum(sent.values()) - len(seen.bad) < BACKLOG, "a backlog")
            rc = clients[unit_id].publish(where, payload)
            assert not rc.is_failure, f"{unit_id}: the broker refused a message: {rc}"
            sent[unit_id] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(len(UNITS)) as pool:
        for done in [pool.submit(flood, unit_id) for unit_id in UNITS]:
            done.result()
    seen.wait_for(lambda: len(seen.bad) == FLOOD, "every bad message", FLOOD_WAIT_S)
    elapsed = time.monotonic() - started

    assert seen.incoming == []
    assert link.connected and seen.connects == 1 and link.bad_messages == FLOOD
    assert "dropped" not in broker.log()
    # Mosquitto keeps each publisher's order, so each report matches its payload.
    for unit_id in UNITS:
        reported = [bad for bad in seen.bad if bad[0].split("/")[3] == unit_id]
        for (where, payload, expected), (got_where, error) in zip(
            plan[unit_id], reported, strict=True
        ):
            assert got_where == where
            assert expected in error or "NaN is not allowed" in error, (payload[:80], error)
            assert "\n" not in error and len(error) < 300

    # The journal gets the first ten, then a line per hundred, not five thousand lines.
    lines = [r.getMessage() for r in caplog.records if r.name == "server.mqtt"]
    assert all(line.startswith("bad message: ") and "/ward7/" in line for line in lines[:10])
    assert lines[10].startswith("100 more bad messages (110 in all since start); the latest: ")
    if elapsed < 60:  # one rate-limiting window
        assert len(lines) == 10 + (FLOOD - 10) // 100, lines[-3:]
    assert len(lines) <= 2 * (10 + FLOOD // 100)

    clip = announcement("cart-03", 99)
    send(clients["cart-03"], "cart-03", clip)
    seen.wait_for(lambda: len(seen.incoming) == 1, "the valid message after the flood")
    assert seen.incoming[0].message == clip


# --- acknowledging only what was recorded -----------------------------------------------------


def test_an_announcement_the_catalog_cannot_record_comes_again_once_it_can(
    broker: Broker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real receiver and a real unit; the SQLite catalog's write lock is held by another
    connection (as a backup or a stuck writer would), so every write fails with "database is
    locked". Neither reconciliation pass can bring the clip: the periodic one is an hour away
    and the one after each connection is turned off here. Once the lock goes, the broker's
    redelivery of the unacknowledged announcement brings it within seconds."""
    import sqlite3

    import server.database
    import server.service
    from provisioning.receivers import receiver_config
    from server.catalog import ClipState
    from server.config import load_config
    from server.service import ReceiverService
    from tests.support.unit import make_unit

    monkeypatch.setattr(server.database, "BUSY_TIMEOUT_S", 0.5)  # fail fast, not after 30 s
    monkeypatch.setattr(server.service, "_RECONCILE_AFTER_CONNECT_S", 3600.0)
    caplog.set_level(logging.INFO, logger="server.mqtt")
    work = tmp_path / "receiver"
    work.mkdir()
    catalog_db = work / "catalog.db"
    text = receiver_config(
        broker.site,
        catalog_url=f"sqlite:///{catalog_db}",
        store_dir=work / "store",
        spool_dir=work / "spool",
        broker_host=HOST,
        broker_port=broker.port,
    )
    config = work / "receiver.toml"
    config.write_text(
        re.sub(r"(?m)^reconcile_interval_s = .*$", "", text).replace(
            "[pull]\n", "[pull]\nreconcile_interval_s = 3600\n"
        )
    )
    service = ReceiverService(load_config(config))
    assert service.config.pull.reconcile_interval_s == 3600
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    unit = make_unit(broker.site, broker, tmp_path / "unit", max_seconds=1.0)
    lock = sqlite3.connect(catalog_db, isolation_level=None)
    try:
        eventually(lambda: service.link.connected, "the receiver's connection")
        unit.start()
        lock.execute("BEGIN EXCLUSIVE")  # nothing can be written from here on
        unit.press()
        unit.wait_state("recording")
        unit.wait_state("idle")

        def refusals() -> list[str]:
            return [r.getMessage() for r in caplog.records if "not acknowledged" in r.getMessage()]

        # The unit's status went first and is refused first: it heads the session's queue,
        # the announcement waits behind it. Both come again once the lock goes.
        deadline = time.monotonic() + 30
        while "announced " not in unit.log() or len(refusals()) < 2:
            assert time.monotonic() < deadline, "the unit's messages were never refused"
            time.sleep(0.05)
        assert all("database is locked" in line for line in refusals()), refusals()
        assert service.catalog.clips() == []

        lock.execute("ROLLBACK")  # the database is back
        back = time.monotonic()
        deadline = back + 30
        while not [c for c in service.catalog.clips() if c.state is ClipState.RECEIPTED]:
            assert time.monotonic() < deadline, "the clip was not stored"
            time.sleep(0.05)
        stored_s = time.monotonic() - back
        # The next redelivery waits at most the back-off reached (1, 2, 4 ... s), then the pull.
        assert stored_s < 15, stored_s
        eventually_s = time.monotonic() + 20
        while unit.status()["queue"]:
            assert time.monotonic() < eventually_s, "the unit never had its receipt"
            time.sleep(0.05)
        print(f"stored {stored_s:.1f} s after the database came back; {len(refusals())} refusals")
    finally:
        lock.close()
        assert unit.stop() == 0, unit.log()
        stop.set()
        thread.join(timeout=60)


# --- the receivers' secret group ------------------------------------------------------------


def test_receivers_share_the_sites_secret_group_and_a_guessable_one_is_refused(
    broker_site: Site, tmp_path: Path
) -> None:
    from protocol.tomlconfig import ConfigError
    from provisioning.receivers import GROUP_FILE, add_receiver, receiver_config
    from server.config import load_config

    def config(receiver_id: str | None = None) -> str:
        return receiver_config(
            broker_site,
            catalog_url="sqlite:///x.db",
            store_dir=tmp_path / "store",
            spool_dir=tmp_path / "spool",
            receiver_id=receiver_id,
        )

    first = config()
    second = config(add_receiver(broker_site, "2"))
    path = tmp_path / "receiver.toml"
    path.write_text(first)
    group = load_config(path).mqtt.group
    assert re.fullmatch(r"[a-z2-7]{26}", group)  # 128 random bits, base32
    assert f'group = "{group}"' in second  # one group for the site: they share the work
    secret = broker_site.dir / GROUP_FILE
    assert secret.read_text().strip() == group and secret.stat().st_mode & 0o777 == 0o600

    for bad, why in (
        ('group = "receivers"', "old default 'receivers'"),
        ("", "site's secret subscription group"),  # a receiver.toml written before
        ('group = "ingest"', "site's secret subscription group"),
    ):
        path.write_text(first.replace(f'group = "{group}"', bad))
        with pytest.raises(ConfigError) as error:
            load_config(path)
        assert "[mqtt] group" in str(error.value) or "mqtt.group" in str(error.value)
        assert why in str(error.value) and "\n" not in str(error.value)


def test_an_upgraded_receiver_leaves_the_guessable_group_its_session_held(
    broker: Broker, make_client: MakeClient, start_link: StartLink
) -> None:
    old, _ = start_link(group="receivers")  # the previous version's fixed group
    old.stop()  # its persistent session keeps the subscriptions
    thief = unit(make_client, broker.site, "cart-02")
    thief.subscribe("$share/receivers/painav/v1/ward7/+/events")
    link, seen = start_link()  # upgraded: the site's secret group, the same session resumed
    cart1 = unit(make_client, broker.site, "cart-01")
    sent = [f"e{n}" for n in range(20)]
    for event_id in sent:
        send(cart1, "cart-01", EVENT.model_copy(update={"event_id": event_id}))
    seen.wait_for(lambda: len(seen.incoming) >= len(sent), "every event")
    time.sleep(1.0)  # any second copy (through the old group) would be here by now
    got = [m.event_id for m in seen.messages() if isinstance(m, Event)]
    assert got == sent  # once each
    assert "$share/receivers/" not in " ".join(link.subscriptions)
