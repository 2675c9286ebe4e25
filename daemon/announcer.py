"""The unit's MQTT v5 link to the hospital broker: announcements out, arm commands and receipts in.

A thin adapter around paho-mqtt 2.x that speaks painav's types only: messages go out as
:mod:`protocol.messages` models and come back as parsed :class:`ArmCommand` and
:class:`Receipt` objects; each publish is a :class:`Published` handle; paho's return codes,
callback versions and exceptions stay inside this module (:class:`AnnouncerError` is raised).

The session is persistent (``clean_start=False`` and an explicit session expiry), so the broker
keeps the subscriptions and queues receipts while the unit is away. What the *unit* sends is
never left in paho's memory: a publish while disconnected fails at once, and whatever is in
flight when the connection drops is failed and dropped from paho's queue. The service's durable
outbox replays it after ``on_connect``; QoS 1 delivers at least once anyway, so the receiver
already takes repeats.

All callbacks run on paho's network thread; they must be quick and must not block on the
announcer (the service's only enqueue). An exception in one is logged, never raised into paho.
"""

from __future__ import annotations

import logging
import math
import ssl
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from protocol.errors import MessageError
from protocol.message_codec import MessageModel
from protocol.messages import ArmCommand, Receipt, Status, parse_message
from protocol.topics import ROUTES, Kind, topic

__all__ = ["Announcer", "AnnouncerError", "Published"]

log = logging.getLogger(__name__)

# paho's own bound on unacknowledged QoS 1 messages. The outbox is the queue; this only caps the
# memory a long replay may take. A publish beyond it is a failed handle, replayed next connect.
_MAX_QUEUED: Final = 100
_STOP_ACK_S: Final = 2.0


class AnnouncerError(RuntimeError):
    """The announcer cannot be set up or started: a bad certificate, key or CA file, a bad
    address; the message names what and where."""


class Published:
    """The fate of one publish: :attr:`acknowledged` or :attr:`failed` once settled, else
    neither. A failed message is never retried here; the caller keeps what must arrive."""

    __slots__ = ("_ok", "_reason", "_settled", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._settled = threading.Event()
        self._ok = False
        self._reason: str | None = None

    @property
    def acknowledged(self) -> bool:
        """The broker acknowledged it (QoS 1: a successful PUBACK; QoS 0: written out)."""
        return self._settled.is_set() and self._ok

    @property
    def failed(self) -> bool:
        """It will never be acknowledged: not connected, refused by the broker, or dropped."""
        return self._settled.is_set() and not self._ok

    @property
    def reason(self) -> str | None:
        """Why it failed, in a few words; None unless :attr:`failed`."""
        return self._reason if self.failed else None

    def wait(self, timeout_s: float) -> bool:
        """Wait up to *timeout_s* for it to settle; return :attr:`acknowledged`."""
        self._settled.wait(timeout_s)
        return self.acknowledged

    def _settle(self, ok: bool, reason: str | None = None) -> None:
        if self._settled.is_set():  # the first outcome stands
            return
        self._ok, self._reason = ok, reason
        self._settled.set()


def _tls_context(cert_file: Path, key_file: Path, ca_file: Path) -> ssl.SSLContext:
    """A client context (TLS 1.2 or later) that checks the broker against *ca_file* and logs in
    with the unit's certificate; an unusable file raises AnnouncerError naming it."""
    # Each file is read here first, because OpenSSL's errors do not say which file was bad.
    try:
        x509.load_pem_x509_certificates(cert_file.read_bytes())
    except OSError as exc:
        raise AnnouncerError(f"certificate {cert_file}: {exc.strerror}") from exc
    except ValueError as exc:
        raise AnnouncerError(f"certificate {cert_file}: not a PEM certificate") from exc
    try:
        serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except OSError as exc:
        raise AnnouncerError(f"key {key_file}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise AnnouncerError(f"key {key_file}: not an unencrypted PEM private key") from exc
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except OSError as exc:  # ssl.SSLError included
        why = exc.strerror or "no PEM certificates in it"
        raise AnnouncerError(f"CA chain {ca_file}: {why}") from exc
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as exc:
        raise AnnouncerError(
            f"key {key_file} does not belong to certificate {cert_file} ({exc.reason})"
        ) from exc
    return context


class Announcer:
    """The unit's MQTT client: TLS with its certificate, one persistent session, QoS 1.

    Calls *on_connect* after every (re)connect, once the broker has confirmed the subscriptions,
    so the caller replays its outbox; *on_arm* with each arm command on ``cmd/arm`` (None when
    the retained command is cleared); *on_receipt* with each receipt; *on_bad_message* with the
    topic and a one-line reason for anything else that arrives. The last will is the retained
    offline status.
    """

    def __init__(
        self,
        *,
        site_id: str,
        device_id: str,
        host: str,
        port: int,
        cert_file: Path,
        key_file: Path,
        ca_file: Path,
        keepalive_s: int,
        session_expiry_s: int,
        reconnect_max_s: float,
        on_connect: Callable[[], None],
        on_arm: Callable[[ArmCommand | None], None],
        on_receipt: Callable[[Receipt], None],
        on_bad_message: Callable[[str, str], None],
    ) -> None:
        if reconnect_max_s < 1:
            raise AnnouncerError(f"reconnect_max_s {reconnect_max_s}: must be at least 1")
        try:
            self._topics = {kind: topic(site_id, device_id, kind) for kind in Kind}
        except MessageError as exc:
            raise AnnouncerError(str(exc)) from None
        self._site, self._device = site_id, device_id
        self._host, self._port = host, port
        self._keepalive_s, self._session_expiry_s = keepalive_s, session_expiry_s
        self._reconnect_max_s = reconnect_max_s
        self._on_connect, self._on_arm = on_connect, on_arm
        self._on_receipt, self._on_bad_message = on_receipt, on_bad_message

        self._lock = threading.Lock()  # never held while calling into paho: paho calls back
        self._connected = False
        self._address: str | None = None
        self._pending: dict[int, Published] = {}  # mid → handle awaiting its PUBACK
        self._early: dict[int, ReasonCode] = {}  # acks that beat their handle's registration
        self._generation = 0  # connections lost so far: a publish spanning one is failed
        self._down_logged = False
        self._subscribe_mid: int | None = None  # the SUBSCRIBE of the current connection
        self._started = self._stopping = False

        # The broker takes the client id from the certificate's CN anyway.
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=device_id,
            protocol=mqtt.MQTTv5,
        )
        client.tls_set_context(_tls_context(cert_file, key_file, ca_file))
        will = Status.last_will()
        client.will_set(self._topics[Kind.STATUS], will.to_payload(), qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=math.ceil(reconnect_max_s))
        client.max_queued_messages_set(_MAX_QUEUED)
        # paho 2.2 logs "Client is not connected" as an ERROR on every failed retry: its chatter
        # goes to debug, and this module logs what the connection does, once per change.
        paho_log = log.getChild("paho")
        client.on_log = lambda _client, _userdata, _level, text: paho_log.debug("%s", text)
        client.suppress_exceptions = True  # a bug in a callback is logged, not fatal to the loop
        client.on_connect = self._connected_cb
        client.on_connect_fail = self._connect_failed_cb
        client.on_disconnect = self._disconnected_cb
        client.on_publish = self._published_cb
        client.on_subscribe = self._subscribed_cb
        client.on_message = self._message_cb
        self._client = client

    # --- the caller's side ----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the current connection (CONNACK success)."""
        with self._lock:
            return self._connected

    @property
    def local_address(self) -> str | None:
        """The local IP address of the connection to the broker; None while disconnected."""
        with self._lock:
            return self._address if self._connected else None

    def start(self) -> None:
        """Connect in the background and keep reconnecting, with backoff up to
        ``reconnect_max_s``; an unreachable broker is logged, never raised."""
        if self._started:
            raise AnnouncerError("announcer already started")
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._session_expiry_s
        try:
            # clean_start=False on the first connect too (paho's default starts clean once):
            # after a reboot the unit resumes its session and gets the receipts queued for it.
            self._client.connect_async(
                self._host,
                self._port,
                keepalive=self._keepalive_s,
                clean_start=False,
                properties=properties,
            )
        except ValueError as exc:
            raise AnnouncerError(f"broker {self._host}:{self._port}: {exc}") from exc
        self._started = True
        self._client.loop_start()

    def stop(self) -> None:
        """Publish the retained offline status (waiting up to 2 s for the broker's ack),
        disconnect cleanly (so the broker drops the will, keeps the session) and stop."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        if self.connected:
            handle = self.publish(Status(state="offline", since=datetime.now(UTC)))
            if not handle.wait(_STOP_ACK_S):
                log.warning("the broker did not acknowledge the offline status in time")
        self._client.disconnect()
        self._client.loop_stop()
        self._lose_connection("stopped")
        log.info("disconnected from the MQTT broker")

    def publish(self, message: MessageModel) -> Published:
        """Send *message* on this unit's topic for its kind, with that kind's QoS and retain flag.

        Never blocks on the network. While disconnected the handle is failed at once: nothing is
        queued for later. MessageError if the message cannot be encoded (a bug, not the network).
        """
        kind = message.KIND
        route = ROUTES[kind]
        payload = message.to_payload()
        handle = Published(self._topics[kind])
        with self._lock:
            connected, generation = self._connected, self._generation
        if not connected:
            handle._settle(False, "not connected")
            return handle
        info = self._client.publish(handle.topic, payload, qos=route.qos, retain=route.retained)
        with self._lock:
            early = self._early.pop(info.mid, None)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                handle._settle(False, mqtt.error_string(info.rc))
            elif early is not None:
                _settle_with(handle, early)
            elif generation != self._generation:  # lost (and dropped) while being sent
                handle._settle(False, "connection lost")
            else:
                self._pending[info.mid] = handle
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            # paho still keeps the message to send at the next connect; that drops it again.
            log.debug("publish on %s while the connection was going down", handle.topic)
        return handle

    # --- paho's network thread ------------------------------------------------------------

    def _connected_cb(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._went_down(f"the broker refused the connection: {reason}")
            return
        # Anything paho kept from before is dropped: paho would resend it right after this
        # callback, and the caller's replay (below) sends what still matters.
        for dropped in client.drop_out_messages():
            self._settle(dropped.mid, None)
        try:
            address = str(client.socket().getsockname()[0])  # type: ignore[union-attr]
        except (OSError, AttributeError):
            address = None
        with self._lock:
            self._connected, self._address, self._down_logged = True, address, False
        session = "resumed" if flags.session_present else "new"
        log.info(
            "connected to the MQTT broker %s:%d as %s (%s session)",
            self._host,
            self._port,
            self._device,
            session,
        )
        # On every connect, even when the session (and so the subscriptions) was resumed: cheap,
        # and it makes the broker send the retained arm command again.
        options = SubscribeOptions(qos=1)
        _, self._subscribe_mid = client.subscribe(
            [(self._topics[Kind.ARM], options), (self._topics[Kind.RECEIPTS], options)]
        )
        # on_connect follows at the SUBACK: a new session then hears what is sent to it.

    def _connect_failed_cb(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._went_down("cannot reach it (no answer, connection refused or TLS handshake failed)")

    def _disconnected_cb(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        was_connected = self.connected
        client.drop_out_messages()
        self._lose_connection("connection lost")
        if self._stopping:
            return
        # Without a DISCONNECT packet paho's reason is only "Unspecified error": say less.
        if flags.is_disconnect_packet_from_server:
            self._went_down(f"the broker ended the connection ({reason})")
        elif was_connected:
            self._went_down("connection lost")
        else:
            # Under TLS 1.3 the broker checks the unit's certificate after the client's side of
            # the handshake is done: a refusal shows only here, as a closed connection.
            self._went_down("closed before the broker accepted it (certificate refused?)")

    def _published_cb(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._settle(mid, reason)

    def _subscribed_cb(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        if mid != self._subscribe_mid:
            return
        for kind, reason in zip((Kind.ARM, Kind.RECEIPTS), reasons, strict=False):
            if reason.is_failure:  # the unit still announces; IT must fix the broker
                log.error(
                    "the broker refused the subscription to %s: %s", self._topics[kind], reason
                )
        self._call("on_connect", self._on_connect)

    def _message_cb(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._dispatch(message)
        except Exception:  # never into paho's thread
            log.exception("handling a message failed")

    # --- helpers --------------------------------------------------------------------------

    def _dispatch(self, message: mqtt.MQTTMessage) -> None:
        try:
            where = message.topic
        except UnicodeDecodeError:
            self._bad("(not UTF-8)", "topic is not UTF-8")
            return
        payload = bytes(message.payload)
        if where == self._topics[Kind.ARM] and not payload:
            # An empty payload clears the retained command: nothing is in force any more.
            self._call("on_arm", self._on_arm, None)
            return
        try:
            parsed, parsed_message = parse_message(where, payload)
        except MessageError as exc:
            self._bad(where, str(exc))
            return
        if (parsed.site, parsed.device) != (self._site, self._device):
            self._bad(where, "not this unit's topic")
        elif isinstance(parsed_message, ArmCommand):
            self._call("on_arm", self._on_arm, parsed_message)
        elif isinstance(parsed_message, Receipt):
            self._call("on_receipt", self._on_receipt, parsed_message)
        else:
            self._bad(where, f"a {parsed.kind.value} message is not for the unit")

    def _bad(self, where: str, error: str) -> None:
        self._call("on_bad_message", self._on_bad_message, where, " ".join(error.split()))

    def _call(self, name: str, callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("the %s callback failed", name)

    def _settle(self, mid: int, reason: ReasonCode | None) -> None:
        """Settle the handle of *mid*: with the broker's *reason*, or as dropped (None)."""
        with self._lock:
            handle = self._pending.pop(mid, None)
            if handle is None:
                if reason is not None:
                    self._early[mid] = reason  # publish() has not registered it yet
                return
        if reason is None:
            handle._settle(False, "dropped at reconnect")
        else:
            _settle_with(handle, reason)

    def _lose_connection(self, why: str) -> None:
        """Mark the connection gone and fail everything still waiting for an ack."""
        with self._lock:
            self._connected, self._address = False, None
            self._generation += 1
            pending, self._pending = self._pending, {}
        for handle in pending.values():
            handle._settle(False, why)

    def _went_down(self, why: str) -> None:
        """Log a connection problem once until the next successful connect; retries quietly."""
        with self._lock:
            first, self._down_logged = not self._down_logged, True
        level = logging.WARNING if first else logging.DEBUG
        log.log(
            level,
            "MQTT broker %s:%d: %s; reconnecting, backing off up to %g s",
            self._host,
            self._port,
            why,
            self._reconnect_max_s,
        )


def _settle_with(handle: Published, reason: ReasonCode) -> None:
    if reason.is_failure:
        handle._settle(False, f"refused by the broker: {reason}")
    else:
        handle._settle(True)
