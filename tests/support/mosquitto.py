"""A real Mosquitto started from the project's own generated config, and MQTT v5 clients with
the site's certificates: shared by the broker, daemon and receiver tests."""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from painav.localsite import HOST as HOST
from painav.localsite import broker_accepts_logins
from painav.localsite import broker_user as broker_user
from painav.localsite import free_port as free_port
from provisioning.broker import CONFIG_FILE, write_broker_config
from provisioning.devices import add_device
from provisioning.site import Site, init_site

SITE = "ward7"
UNITS = ("cart-01", "cart-02", "cart-03")
START_TIMEOUT_S = 10.0
WAIT_S = 3.0
"""How long a test waits for something that should happen; nothing waits this long on success."""


@dataclass(frozen=True)
class Identity:
    """A TLS client certificate (with its chain) and key; ``None`` parts mean no certificate."""

    name: str
    cert: Path | None
    key: Path | None


@pytest.fixture
def broker_site(tmp_path: Path) -> Site:
    """Site ``ward7`` with the receiver and units cart-01, cart-02, cart-03."""
    site = init_site(tmp_path / "site", SITE, broker_hosts=(HOST, "localhost"))
    for unit in UNITS:
        add_device(site, unit)
    return site


def unit_identity(site: Site, unit: str) -> Identity:
    certs = site.paths.devices_dir / unit
    return Identity(unit, certs / "certs" / "tls.crt", certs / "keys" / "tls.key")


def receiver_identity(site: Site) -> Identity:
    rdir = site.paths.receiver_dir
    return Identity(site.receiver_id, rdir / "tls.crt", rdir / "tls.key")


@dataclass
class Broker:
    """A running Mosquitto started from ``OUT/mosquitto.conf``."""

    site: Site
    out: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None  # set by start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str) -> None:
        """Return once the broker has logged *text*; fail after the usual wait."""
        deadline = time.monotonic() + WAIT_S
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"Mosquitto did not log {text!r}")
            time.sleep(0.01)

    def start(self) -> None:
        """Start Mosquitto from the generated config and return once it accepts TLS logins."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["mosquitto", "-c", str(self.out / CONFIG_FILE)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not broker_accepts_logins(self.site, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mosquitto did not start:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop Mosquitto (as a crash or an upgrade would take it away)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def reload(self) -> None:
        """SIGHUP, as ``systemctl reload mosquitto`` sends; return once Mosquitto has begun.

        Mosquitto is single-threaded and reloads within the loop iteration that logs "Reloading
        config.", so any packet sent after this returns is handled under the new settings.
        """
        before = self.log().count("Reloading config.")
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + WAIT_S
        while self.log().count("Reloading config.") == before:
            if time.monotonic() > deadline:
                raise AssertionError("Mosquitto did not reload on SIGHUP")
            time.sleep(0.01)


@pytest.fixture
def broker_out() -> Iterator[Path]:
    """A new folder for a broker configuration that the ``mosquitto`` account can reach.

    Not under tmp_path: pytest's base folder is private to its user (0700), and Mosquitto
    started as root drops to ``mosquitto`` before reading its files.
    """
    parent = Path(tempfile.mkdtemp(prefix="painav-broker-"))
    os.chmod(parent, 0o755)
    yield parent / "broker"
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def broker(broker_site: Site, broker_out: Path) -> Iterator[Broker]:
    """Mosquitto run from the generated configuration; its log is printed if the test fails."""
    # Not a skip: scripts/setup.sh installs mosquitto, so its absence is a set-up bug.
    assert shutil.which("mosquitto"), "mosquitto is not installed; run 'make setup'"
    out = broker_out
    port = free_port()
    write_broker_config(broker_site, out, port=port, bind=HOST, user=broker_user())
    running = Broker(broker_site, out, port, out / "mosquitto.log")
    try:
        running.start()
        yield running
    finally:
        running.stop()
        # pytest shows a test's captured output only when it fails: the log then, silence else.
        print(f"--- mosquitto log ({out}) ---\n{running.log()}")


@dataclass
class Outcome:
    """How a connection attempt ended: a CONNACK reason code, or the error that stopped it."""

    connack: ReasonCode | None = None
    error: str | None = None

    @property
    def connected(self) -> bool:
        return self.connack is not None and not self.connack.is_failure


@dataclass
class Client:
    """A paho MQTT v5 client over TLS as one identity, recording what the broker answers."""

    broker: Broker
    identity: Identity
    will: tuple[str, bytes] | None = None
    messages: queue.Queue[mqtt.MQTTMessage] = field(default_factory=queue.Queue)
    _acks: dict[int, ReasonCode | list[ReasonCode]] = field(default_factory=dict)
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _outcome: Outcome = field(default_factory=Outcome)
    _done: threading.Event = field(default_factory=threading.Event)
    _closed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        # A client id of its own; the broker replaces it by the certificate CN.
        self.paho = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"{self.identity.name}-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
            # A refused client must stay refused, not quietly reconnect and resend.
            reconnect_on_failure=False,
        )
        ctx = ssl.create_default_context(cafile=str(self.broker.site.paths.root_cert))
        if self.identity.cert is not None and self.identity.key is not None:
            ctx.load_cert_chain(str(self.identity.cert), str(self.identity.key))
        self.paho.tls_set_context(ctx)
        if self.will is not None:
            self.paho.will_set(self.will[0], self.will[1], qos=1, retain=True)
        self.paho.on_connect = self._on_connect
        self.paho.on_connect_fail = self._on_connect_fail
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = lambda _c, _u, message: self.messages.put(message)
        self.paho.on_publish = self._on_ack
        self.paho.on_subscribe = self._on_suback

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self._outcome.connack = rc
        self._done.set()

    def _on_connect_fail(self, _c: object, _u: object) -> None:
        self._outcome.error = self._outcome.error or "connection failed"
        self._done.set()

    def _on_disconnect(
        self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        self._outcome.error = self._outcome.error or f"disconnected: {rc}"
        self._done.set()
        self._closed.set()

    def _on_ack(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self._lock:
            self._acks[mid] = rc
            self._lock.notify_all()

    def _on_suback(
        self, _c: object, _u: object, mid: int, rcs: list[ReasonCode], _p: object
    ) -> None:
        with self._lock:
            self._acks[mid] = rcs
            self._lock.notify_all()

    def _wait_ack(self, mid: int) -> ReasonCode | list[ReasonCode]:
        with self._lock:
            if not self._lock.wait_for(lambda: mid in self._acks, timeout=WAIT_S):
                raise AssertionError(f"{self.identity.name}: no acknowledgement of message {mid}")
            return self._acks.pop(mid)

    def attempt(self) -> Outcome:
        """Connect and wait for a CONNACK or a refusal; leave the network loop running."""
        try:
            self.paho.connect(HOST, self.broker.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}")
        self.paho.loop_start()
        if not self._done.wait(WAIT_S):
            return Outcome(error="no answer")
        return self._outcome

    def connect(self) -> Client:
        outcome = self.attempt()
        assert outcome.connected, f"{self.identity.name} could not connect: {outcome}"
        return self

    def publish(
        self,
        topic: str,
        payload: bytes = b"{}",
        *,
        qos: int = 1,
        retain: bool = False,
        wait: bool = True,
    ) -> ReasonCode:
        """Publish; for QoS 1 return the PUBACK reason code (success, or e.g. 0x87).

        QoS 0, or *wait* false: return at once with "Success", which then says nothing.
        """
        info = self.paho.publish(topic, payload, qos=qos, retain=retain)
        if not wait:  # the broker may cut the connection while paho is still writing
            return ReasonCode(PacketTypes.PUBACK)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish not sent: {info.rc}"
        if qos == 0:
            return ReasonCode(PacketTypes.PUBACK)
        rc = self._wait_ack(info.mid)
        assert isinstance(rc, ReasonCode)
        return rc

    def subscribe(self, topic: str, qos: int = 1) -> list[ReasonCode]:
        """Subscribe and return the SUBACK reason codes."""
        result, mid = self.paho.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None
        rcs = self._wait_ack(mid)
        assert isinstance(rcs, list)
        return rcs

    def expect(self, topic: str) -> mqtt.MQTTMessage:
        """The next message on *topic*; fails if another topic arrives first or none in time."""
        try:
            message = self.messages.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"{self.identity.name}: nothing arrived on {topic}") from None
        assert message.topic == topic, f"{self.identity.name} got {message.topic}, not {topic}"
        return message

    def received(self) -> list[str]:
        """Topics of every message that arrived and was not yet taken, in order."""
        topics = []
        while not self.messages.empty():
            topics.append(self.messages.get_nowait().topic)
        return topics

    def wait_closed(self) -> bool:
        """Whether the broker ended this session (within the usual wait)."""
        return self._closed.wait(WAIT_S)

    def disconnect_with_will(self) -> None:
        """End the session so that the broker sends the will, as if the unit had died."""
        self.paho.disconnect(
            reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
        )

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def clients(broker: Broker) -> Iterator[list[Client]]:
    """Every client made by :func:`make_client` in a test, closed after it."""
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


@pytest.fixture
def make_client(broker: Broker, clients: list[Client]) -> Callable[..., Client]:
    """``make_client(identity, will=None)``: a not yet connected client."""

    def make(identity: Identity, will: tuple[str, bytes] | None = None) -> Client:
        client = Client(broker, identity, will)
        clients.append(client)
        return client

    return make
