"""Attack 3 of issue 11: a stolen unit's certificate joins the receivers' shared subscription.

Mosquitto does not check SUBSCRIBE against the ACL, so a unit may subscribe to
``$share/<group>/painav/v1/<site>/+/clips`` and become one of the group's members; the broker then
hands it its share of every unit's announcements and events, and its per-delivery ACL check drops
them: the receivers never see them. These tests run the real broker (the project's generated TLS
and ACL), the real receiver service and a real unit process (``painav device run``), with a thief
logged in with another real provisioned unit's certificate, and count what reaches the catalog.
"""

from __future__ import annotations

import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from protocol.topics import Kind, topic
from provisioning.site import Site
from server.catalog import Catalog
from tests.support.mosquitto import HOST, Broker, Client, Identity, unit_identity
from tests.support.unit import Receiver, Unit, make_unit, receiver_process, start_receiver

CLIPS = 6
DISCARDS = 6
SETTLE_S = 20.0
# What a thief would try as the group name: today's default, and the obvious others.
GUESSES = ("receivers", "receiver", "ingest", "hospital", "painav", "ward7", "group", "share")
KINDS = ("clips", "events", "telemetry")


class Thief:
    """A plain paho MQTT v5 client logged in with a stolen unit's certificate; persistent
    session on request (as a unit's own daemon has), so the broker keeps its subscriptions
    and queues its share while it is away."""

    def __init__(self, broker: Broker, identity: Identity, *, persistent: bool) -> None:
        assert identity.cert is not None and identity.key is not None
        self.broker, self.persistent = broker, persistent
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._subacks: dict[int, list[int]] = {}
        self._connected = threading.Event()
        self.paho = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=identity.name,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        ctx = ssl.create_default_context(cafile=str(broker.site.paths.root_cert))
        ctx.load_cert_chain(str(identity.cert), str(identity.key))
        self.paho.tls_set_context(ctx)
        self.paho.on_connect = lambda *_a: self._connected.set()
        self.paho.on_message = self._message
        self.paho.on_subscribe = self._suback

    def _message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message.topic)

    def _suback(self, _c: object, _u: object, mid: int, rcs: list[ReasonCode], _p: object) -> None:
        with self._lock:
            self._subacks[mid] = [rc.value for rc in rcs]

    def connect(self) -> Thief:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self.persistent:
            properties.SessionExpiryInterval = 3600
        self.paho.connect(
            HOST, self.broker.port, keepalive=30, clean_start=not self.persistent,
            properties=properties,
        )  # fmt: skip
        self.paho.loop_start()
        assert self._connected.wait(10), "the thief could not log in"
        return self

    def subscribe(self, filters: list[str]) -> list[int]:
        """Subscribe to *filters*; the SUBACK reason codes (Mosquitto grants every one)."""
        result, mid = self.paho.subscribe([(f, 1) for f in filters])
        assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None
        deadline = time.monotonic() + 10
        while True:
            with self._lock:
                if mid in self._subacks:
                    return self._subacks.pop(mid)
            assert time.monotonic() < deadline, "no SUBACK"
            time.sleep(0.01)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def theft_filters(site: Site, groups: tuple[str, ...]) -> list[str]:
    return [f"$share/{g}/painav/v1/{site.name}/+/{kind}" for g in groups for kind in KINDS]


def receiver_group(receiver: Receiver) -> str:
    group: str = receiver.service.config.mqtt.group
    return group


@pytest.fixture
def running(broker_site: Site, broker: Broker, tmp_path: Path) -> Iterator[tuple[Receiver, Unit]]:
    receiver = start_receiver(broker_site, broker, tmp_path / "receiver")
    unit = make_unit(broker_site, broker, tmp_path / "unit", max_seconds=30.0)
    try:
        yield receiver, unit
    finally:
        if unit.process is not None:
            assert unit.stop() == 0, unit.log()
        receiver.stop()


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.1)


def act(unit: Unit) -> None:
    """The honest unit at work: clips recorded and announced, recordings discarded (an event
    each, which only the hospital's catalog keeps)."""
    for _ in range(CLIPS):
        unit.press()
        unit.wait_state("recording")
        unit.press()
        unit.wait_state("idle")
    for _ in range(DISCARDS):
        unit.press()
        unit.wait_state("recording")
        unit.press(long=True)
        unit.wait_state("idle")


def missing(receiver: Receiver) -> tuple[int, int]:
    """(clips, discard events) of cart-01 not in the receiver's catalog after at most
    SETTLE_S."""
    catalog = receiver.service.catalog

    def counts() -> tuple[int, int]:
        clips = len(catalog.clips(device_id="cart-01"))
        events = [e for e in catalog.events(device_id="cart-01") if e.kind == "discarded"]
        return CLIPS - clips, DISCARDS - len(events)

    wait_until(lambda: counts() == (0, 0), SETTLE_S)
    return counts()


def latency_s(receiver: Receiver) -> float:
    """The slowest of cart-01's clips from the end of its recording to its receipt: what an
    honest unit sees while the thief is at work (the clip stays on the unit until then)."""
    catalog = receiver.service.catalog
    wait_until(lambda: all(c.receipted_at for c in catalog.clips(device_id="cart-01")), SETTLE_S)
    worst = 0.0
    for clip in catalog.clips(device_id="cart-01"):
        assert clip.receipted_at is not None, f"{clip.clip_id} not receipted"
        end = clip.manifest.started_at.timestamp() + clip.manifest.duration_s
        worst = max(worst, clip.receipted_at.timestamp() - end)
    return worst


def start_late(receiver: Receiver, unit: Unit) -> None:
    # The receiver reconciles (lists the units' outboxes) 5 s after it connects; the clips
    # come after that pass, so only their announcements can bring them in time.
    time.sleep(6.0)
    unit.start()


def test_a_unit_in_the_receivers_group_takes_nothing(
    running: tuple[Receiver, Unit], broker_site: Site, broker: Broker
) -> None:
    receiver, unit = running
    thief = Thief(broker, unit_identity(broker_site, "cart-02"), persistent=False).connect()
    try:
        granted = thief.subscribe(theft_filters(broker_site, GUESSES))
        assert granted and all(code <= 1 for code in granted)  # Mosquitto grants them all
        thief.subscribe(["$SYS/#"])  # nothing there may reveal the group
        start_late(receiver, unit)
        act(unit)
        lost = missing(receiver)
        print(f"missing with a thief online: {lost[0]}/{CLIPS} clips, {lost[1]}/{DISCARDS} events")
        assert lost == (0, 0)
        print(f"honest clip, end of recording to receipt, slowest: {latency_s(receiver):.2f} s")
        assert receiver_group(receiver) not in GUESSES
        assert not [t for t in thief.messages if t.startswith("$SYS")]
    finally:
        thief.close()


def test_an_offline_thief_session_takes_nothing(
    running: tuple[Receiver, Unit], broker_site: Site, broker: Broker
) -> None:
    receiver, unit = running
    thief = Thief(broker, unit_identity(broker_site, "cart-03"), persistent=True).connect()
    thief.subscribe(theft_filters(broker_site, GUESSES))
    thief.close()  # gone; its persistent session keeps the shared subscriptions
    start_late(receiver, unit)
    act(unit)
    lost = missing(receiver)
    print(f"missing with a thief's offline session: {lost[0]}/{CLIPS} clips, {lost[1]}/{DISCARDS}")
    assert lost == (0, 0)
    print(f"honest clip, end of recording to receipt, slowest: {latency_s(receiver):.2f} s")


# --- events, durable end to end ----------------------------------------------------------------

OLD_EVENT = (
    b'{"at":"2026-11-29T09:00:00Z","clip_id":null,"detail":"from an old unit","kind":"refused",'
    b'"reason":"busy","schema":"painav.events/1"}'
)


def journal_ids(unit: Unit) -> list[str]:
    """The event ids the unit still keeps (read beside the running daemon: SQLite WAL)."""
    db = sqlite3.connect(f"file:{unit.work / 'outbox' / 'events.sqlite'}?mode=ro", uri=True)
    try:
        return [row[0] for row in db.execute("SELECT event_id FROM events ORDER BY seq")]
    finally:
        db.close()


def discards(catalog: Catalog) -> list[str | None]:
    return [e.event_id for e in catalog.events(device_id="cart-01") if e.kind == "discarded"]


def test_events_nobody_received_are_kept_and_recorded_once_the_receiver_is_back(
    broker_site: Site, broker: Broker, tmp_path: Path, make_client: Callable[..., Client]
) -> None:
    receiver = receiver_process(broker_site, broker, tmp_path / "receiver").start()
    catalog = Catalog(f"sqlite:///{tmp_path / 'receiver' / 'catalog.db'}")
    unit = make_unit(broker_site, broker, tmp_path / "unit", max_seconds=30.0).start()
    try:
        assert receiver.stop() == 0
        # Mosquitto 2.0 does not restore shared subscriptions when it restarts: until the
        # receiver is back, what the units publish on events reaches no one (the broker still
        # acknowledges it).
        broker.stop()
        broker.start()
        wait_until(lambda: bool(unit.status()["connected"]), 30)
        assert unit.status()["connected"]
        for _ in range(DISCARDS // 2):
            unit.press()
            unit.wait_state("recording")
            unit.press(long=True)
            unit.wait_state("idle")
        wait_until(lambda: len(journal_ids(unit)) == DISCARDS // 2, 10)
        kept = journal_ids(unit)
        assert unit.stop() == 0  # and the unit restarts meanwhile: nothing forgotten
        unit.start()
        assert journal_ids(unit)[: len(kept)] == kept

        old_unit = make_client(unit_identity(broker_site, "cart-02")).connect()
        old_unit.subscribe(topic(broker_site.name, "cart-02", Kind.EVENT_ACKS))
        receiver.start()
        old_unit.publish(topic(broker_site.name, "cart-02", Kind.EVENTS), OLD_EVENT)

        # Published again every minute until acknowledged: recorded once each, then forgotten.
        wait_until(lambda: set(kept) <= set(discards(catalog)), 90)
        assert sorted(i for i in discards(catalog) if i in kept) == sorted(kept)
        wait_until(lambda: not set(kept) & set(journal_ids(unit)), 15)
        assert not set(kept) & set(journal_ids(unit))
        wait_until(lambda: bool(catalog.events(device_id="cart-02")), 10)
        old = catalog.events(device_id="cart-02")
        assert [(e.event_id, e.detail) for e in old] == [(None, "from an old unit")]
        assert not [t for t in old_unit.received() if t.endswith("/event-acks")]  # nothing to ack
    finally:
        if unit.process is not None and unit.process.poll() is None:
            assert unit.stop() == 0, unit.log()
        receiver.stop()
        catalog.close()
