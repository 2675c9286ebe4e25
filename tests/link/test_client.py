"""The shared MQTT link against a real Mosquitto run from the site's own TLS and ACL config:
a message whose handler could not record it is not acknowledged, and comes again.

The link logs in as the site's receiver; the sender is the project's paho test client logging
in as a unit, so the broker's ACL applies.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from link import LinkError, MqttLink, Received, Redeliver, client_context
from protocol.topics import Kind, topic
from tests.support.mosquitto import HOST, SITE, WAIT_S, Broker, Client, unit_identity

UNIT = "cart-01"
EVENTS = topic(SITE, UNIT, Kind.EVENTS)
TELEMETRY = topic(SITE, UNIT, Kind.TELEMETRY)


class Handler:
    """Records what the link hands over; raises :class:`Redeliver` for the first *fail*
    deliveries of each payload in *failing*."""

    def __init__(self, failing: dict[bytes, int] | None = None) -> None:
        self.failing = dict(failing or {})
        self.attempts: list[bytes] = []
        self.handled: list[bytes] = []
        self.connects = 0
        self.settled = 0
        self._changed = threading.Condition()

    def on_message(self, message: Received) -> None:
        with self._changed:
            self.attempts.append(message.payload)
            self._changed.notify_all()
            if self.failing.get(message.payload, 0) > 0:
                self.failing[message.payload] -= 1
                raise Redeliver("catalog sqlite:///catalog.db: database is locked")
            self.handled.append(message.payload)

    def on_connect(self) -> None:
        with self._changed:
            self.connects += 1
            self._changed.notify_all()

    def on_settled(self) -> None:
        with self._changed:
            self.settled += 1
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout_s: float) -> None:
        with self._changed:
            if not self._changed.wait_for(condition, timeout=timeout_s):
                raise AssertionError(f"never happened: {what}; attempts {self.attempts}")


@pytest.fixture
def start_link(broker: Broker) -> Iterator[Callable[[Handler, str], MqttLink]]:
    started: list[MqttLink] = []

    def start(handler: Handler, subscription: str) -> MqttLink:
        rdir = broker.site.paths.receiver_dir
        link = MqttLink(
            client_id=broker.site.receiver_id,
            host=HOST,
            port=broker.port,
            context=client_context(rdir / "tls.crt", rdir / "tls.key", rdir / "ca.pem"),
            keepalive_s=5,
            session_expiry_s=300,
            reconnect_max_s=8.0,
            subscriptions=(subscription,),
            on_connect=handler.on_connect,
            on_message=handler.on_message,
            log=logging.getLogger("tests.link"),
            on_settled=handler.on_settled,
        )
        started.append(link)
        link.start()
        handler.wait_for(lambda: handler.connects == 1, "a connection", WAIT_S)
        return link

    yield start
    for link in started:
        link.stop()


@pytest.fixture
def sender(broker: Broker, make_client: Callable[..., Client]) -> Client:
    client: Client = make_client(unit_identity(broker.site, UNIT)).connect()
    return client


def test_a_message_not_recorded_comes_again_after_a_reconnect_with_back_off(
    start_link: Callable[[Handler, str], MqttLink],
    sender: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tests.link")
    handler = Handler(failing={b"first": 2})
    link = start_link(handler, EVENTS)
    started = time.monotonic()
    for payload in (b"first", b"second"):
        assert not sender.publish(EVENTS, payload, qos=1).is_failure
    handler.wait_for(lambda: handler.handled == [b"first", b"second"], "both handled", 15)
    elapsed = time.monotonic() - started
    assert handler.attempts.count(b"first") == 3
    # on_connect comes at the SUBACK; a connection dropped before it had none.
    handler.wait_for(lambda: handler.connects >= 2, "on_connect after the redelivery", WAIT_S)
    assert link.connected
    # Waits of 1 s, then 2 s: the redelivery comes in seconds, not at the next reconciliation.
    assert 3 <= elapsed < 3 + 4, elapsed
    drops = [r.getMessage() for r in caplog.records if "not acknowledged" in r.getMessage()]
    assert len(drops) == 2, drops
    assert "database is locked" in drops[0] and "reconnecting in 1 s" in drops[0]
    assert "reconnecting in 2 s" in drops[1]
    assert not [r for r in caplog.records if "connection lost" in r.getMessage()]

    # Both are acknowledged now: a new connection of the session brings neither again.
    sock = link._client.socket()
    assert isinstance(sock, socket.socket)
    socket.socket.shutdown(sock, socket.SHUT_RDWR)
    connects = handler.connects
    handler.wait_for(lambda: handler.connects == connects + 1, "a reconnect", 10)
    assert not sender.publish(EVENTS, b"third", qos=1).is_failure
    handler.wait_for(lambda: handler.handled[-1:] == [b"third"], "the next message", WAIT_S)
    assert handler.attempts.count(b"first") == 3 and handler.attempts.count(b"second") <= 2


def test_a_qos0_message_not_recorded_is_lost_and_the_link_stays(
    start_link: Callable[[Handler, str], MqttLink],
    sender: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tests.link")
    handler = Handler(failing={b"gauge": 1})
    link = start_link(handler, TELEMETRY)
    for payload in (b"gauge", b"after"):
        sender.publish(TELEMETRY, payload, qos=0)
    handler.wait_for(lambda: handler.handled == [b"after"], "the next message", WAIT_S)
    assert handler.attempts == [b"gauge", b"after"]
    assert handler.connects == 1 and link.connected
    assert "QoS 0 message on" in caplog.text and "is lost" in caplog.text


def test_a_handler_bug_is_logged_and_the_message_acknowledged(
    start_link: Callable[[Handler, str], MqttLink],
    sender: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Buggy(Handler):
        def on_message(self, message: Received) -> None:
            super().on_message(message)
            raise RuntimeError("a bug")

    handler = Buggy()
    link = start_link(handler, EVENTS)
    assert not sender.publish(EVENTS, b"poison", qos=1).is_failure
    handler.wait_for(lambda: handler.handled == [b"poison"], "the message", WAIT_S)
    time.sleep(1.5)  # longer than a redelivery's reconnect would take
    assert handler.attempts == [b"poison"] and handler.connects == 1 and link.connected
    assert "handling a message failed" in caplog.text


def test_a_bad_setting_is_refused_naming_it(broker: Broker) -> None:
    rdir = broker.site.paths.receiver_dir
    context = client_context(rdir / "tls.crt", rdir / "tls.key", rdir / "ca.pem")
    handler = Handler()
    with pytest.raises(LinkError, match=r"reconnect_max_s 0\.5: must be at least 1"):
        MqttLink(
            client_id="receiver",
            host=HOST,
            port=broker.port,
            context=context,
            keepalive_s=5,
            session_expiry_s=60,
            reconnect_max_s=0.5,
            subscriptions=(EVENTS,),
            on_connect=handler.on_connect,
            on_message=handler.on_message,
        )


def test_the_broker_settling_a_publish_is_told_without_polling(
    start_link: Callable[[Handler, str], MqttLink],
) -> None:
    handler = Handler()
    link = start_link(handler, EVENTS)
    arm = topic(SITE, UNIT, Kind.ARM)  # the receiver may write arm commands
    handle = link.publish(arm, b"{}", qos=1, retain=False)
    handler.wait_for(lambda: handler.settled == 1, "the settle callback", WAIT_S)
    assert handle.acknowledged
