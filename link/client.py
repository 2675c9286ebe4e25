"""One MQTT v5 client for painav's services: paho-mqtt 2.x behind painav's own types.

The unit's announcer, the receiver's link and the extraction worker each wrap a
:class:`MqttLink`: TLS with the service's certificate, one persistent session
(``clean_start=False`` and an explicit session expiry, so the broker keeps the subscriptions and
queues for the client while it is away), QoS 1 subscriptions renewed on every connect, reconnect
with back-off, and :class:`Published` handles for what goes out. paho's return codes, callback
versions and exceptions stay inside this module.

What goes out is never left in paho's memory: a publish while disconnected fails at once, and
whatever is in flight when the connection drops is failed and dropped from paho's queue; the
caller keeps what must arrive (the unit's outbox) and sends it again after ``on_connect``.

What comes in is acknowledged only once handled (paho's manual acknowledgement). A handler that
could not record a message raises :class:`Redeliver`: the message is left unacknowledged and the
link drops the connection and connects again, because a broker redelivers an unacknowledged
QoS 1 message only in a new connection of the same session (MQTT v5 4.4). The reconnect waits
1 s after a first such failure and doubles the wait while they continue, up to
``reconnect_max_s``; a message handled normally resets it. Messages that arrive on the
connection being dropped are neither handled nor acknowledged: they come again too.

All callbacks run on paho's network thread; they must be quick and must not block on the link.
An exception in one is logged, never raised into paho.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from .errors import LinkError, Redeliver
from .published import Published

__all__ = ["MqttLink", "Received", "guarded"]

# paho's own bound on unacknowledged outgoing QoS 1 messages: it only caps the memory a long
# replay may take. A publish beyond it is a failed handle.
_MAX_QUEUED: Final = 100


@dataclass(frozen=True, slots=True)
class Received:
    """A message as the broker delivered it: its topic (None if not UTF-8), its payload, and
    whether it is the retained state of the topic sent at subscribe time."""

    topic: str | None
    payload: bytes
    retained: bool


def guarded(log: logging.Logger, name: str, callback: Callable[..., None], *args: object) -> None:
    """Call *callback*; log what it raises as "the *name* callback failed", except
    :class:`Redeliver`, which goes on to the link."""
    try:
        callback(*args)
    except Redeliver:
        raise
    except Exception:
        log.exception("the %s callback failed", name)


class MqttLink:
    """A paho MQTT v5 client with painav's connection, session and acknowledgement rules.

    Subscribes to *subscriptions* (QoS 1) on every connect, even a resumed session's: cheap, and
    it makes the broker send the retained messages again. Calls *on_connect* after every
    (re)connect once the broker has answered the subscriptions; *on_message* with each
    :class:`Received` (see the module's description for :class:`Redeliver`). When a session is
    resumed, *unsubscriptions* are dropped from it first (what an earlier configuration
    subscribed to and this one must not). *will* is the
    topic and payload of a retained QoS 1 last will. Lines go to *log*, paho's chatter to its
    ``paho`` child at debug level.
    """

    def __init__(
        self,
        *,
        client_id: str,
        host: str,
        port: int,
        context: ssl.SSLContext,
        keepalive_s: int,
        session_expiry_s: int,
        reconnect_max_s: float,
        subscriptions: Sequence[str],
        on_connect: Callable[[], None],
        on_message: Callable[[Received], None],
        will: tuple[str, bytes] | None = None,
        log: logging.Logger | None = None,
        on_settled: Callable[[], None] | None = None,
        unsubscriptions: Sequence[str] = (),
    ) -> None:
        if reconnect_max_s < 1:
            raise LinkError(f"reconnect_max_s {reconnect_max_s}: must be at least 1")
        self._log = log or logging.getLogger(__name__)
        self._client_id = client_id
        self._host, self._port = host, port
        self._keepalive_s, self._session_expiry_s = keepalive_s, session_expiry_s
        self._reconnect_max_s = reconnect_max_s
        self._max_delay_s = math.ceil(reconnect_max_s)
        self._subscriptions = tuple(subscriptions)
        # Filters a resumed session may still hold from an earlier configuration: dropped.
        self._unsubscriptions = tuple(unsubscriptions)
        self._on_connect, self._on_message = on_connect, on_message
        # Told when the broker settles a publish, so a caller polling its handles need not.
        self._on_settled = on_settled

        self._lock = threading.Lock()  # never held while calling into paho: paho calls back
        self._connected = False
        self._address: str | None = None
        self._pending: dict[int, Published] = {}  # mid → handle awaiting its PUBACK
        self._early: dict[int, ReasonCode] = {}  # acks that beat their handle's registration
        self._generation = 0  # connections lost so far: a publish spanning one is failed
        self._down_logged = False
        self._subscribe_mid: int | None = None  # the SUBSCRIBE of the current connection
        self._started = self._stopping = False
        # Network thread only: the connection is being dropped for a redelivery, and the wait
        # before the next one (0: no handling failure since the last message handled).
        self._dropping = False
        self._redeliver_delay_s = 0

        # The broker takes the client id from the certificate's CN anyway.
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.tls_set_context(context)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=self._max_delay_s)
        client.max_queued_messages_set(_MAX_QUEUED)
        # paho 2.2 logs "Client is not connected" as an ERROR on every failed retry: its chatter
        # goes to debug, and this module logs what the connection does, once per change.
        paho_log = self._log.getChild("paho")
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

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The topic filters subscribed to on every connect."""
        return self._subscriptions

    def start(self) -> None:
        """Connect in the background and keep reconnecting, with backoff up to
        ``reconnect_max_s``; an unreachable broker is logged, never raised. Once only."""
        if self._started:
            raise LinkError(f"MQTT client {self._client_id}: already started")
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._session_expiry_s
        try:
            # clean_start=False on the first connect too (paho's default starts clean once):
            # after a restart the client resumes its session and gets what was queued for it.
            self._client.connect_async(
                self._host,
                self._port,
                keepalive=self._keepalive_s,
                clean_start=False,
                properties=properties,
            )
        except ValueError as exc:
            raise LinkError(f"broker {self._host}:{self._port}: {exc}") from exc
        self._started = True
        self._client.loop_start()

    def stop(self, farewell: Callable[[], None] | None = None) -> None:
        """Call *farewell* if connected (the last publishes, waited for), then disconnect
        cleanly (so the broker drops the will and keeps the session) and stop."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        if farewell is not None and self.connected:
            farewell()
        self._client.disconnect()
        self._client.loop_stop()
        self._lose_connection("stopped")
        self._log.info("disconnected from the MQTT broker")

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> Published:
        """Send *payload* on *topic*. Never blocks on the network. While disconnected the handle
        is failed at once: nothing is queued for later."""
        handle = Published(topic)
        with self._lock:
            connected, generation = self._connected, self._generation
        if not connected:
            handle._settle(False, "not connected")
            return handle
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
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
            self._log.debug("publish on %s while the connection was going down", topic)
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
        # callback, and the caller sends again what still matters.
        for dropped in client.drop_out_messages():
            self._settle(dropped.mid, None)
        try:
            address = str(client.socket().getsockname()[0])  # type: ignore[union-attr]
        except (OSError, AttributeError):
            address = None
        self._dropping = False
        with self._lock:
            self._connected, self._address, self._down_logged = True, address, False
        session = "resumed" if flags.session_present else "new"
        self._log.info(
            "connected to the MQTT broker %s:%d as %s (%s session)",
            self._host,
            self._port,
            self._client_id,
            session,
        )
        if flags.session_present and self._unsubscriptions:
            client.unsubscribe(list(self._unsubscriptions))
        options = SubscribeOptions(qos=1)
        _, self._subscribe_mid = client.subscribe([(f, options) for f in self._subscriptions])
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
        if self._stopping or (self._dropping and was_connected):
            return  # a redelivery's drop is logged where it is decided
        # Without a DISCONNECT packet paho's reason is only "Unspecified error": say less.
        if flags.is_disconnect_packet_from_server:
            self._went_down(f"the broker ended the connection ({reason})")
        elif was_connected:
            self._went_down("connection lost")
        else:
            # Under TLS 1.3 the broker checks the client's certificate after the client's side
            # of the handshake is done: a refusal shows only here, as a closed connection.
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
        for topic_filter, reason in zip(self._subscriptions, reasons, strict=False):
            if reason.is_failure:  # the link runs on with what it has; IT must fix the broker
                self._log.error(
                    "the broker refused the subscription to %s: %s", topic_filter, reason
                )
        try:
            guarded(self._log, "on_connect", self._on_connect)
        except Redeliver:
            self._log.error("the on_connect callback raised Redeliver: there is no message")

    def _message_cb(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._dropping:  # the connection is going: the broker sends this one again too
            return
        try:
            where: str | None = message.topic
        except UnicodeDecodeError:
            where = None
        try:
            self._on_message(Received(where, bytes(message.payload), bool(message.retain)))
        except Redeliver as exc:
            if message.qos > 0:
                self._redeliver(client, where, str(exc))
                return
            self._log.warning("a QoS 0 message on %s is lost: %s", where, exc)
        except Exception:  # never into paho's thread
            self._log.exception("handling a message failed")
        if self._redeliver_delay_s:  # handled: the next failure waits the least again
            self._redeliver_delay_s = 0
            client.reconnect_delay_set(min_delay=1, max_delay=self._max_delay_s)
        client.ack(message.mid, message.qos)

    # --- helpers --------------------------------------------------------------------------

    def _redeliver(self, client: mqtt.Client, where: str | None, why: str) -> None:
        """Leave the message unacknowledged and drop the connection, so that the broker sends
        it again in the next one (the session persists); paho reconnects after the delay."""
        delay = min(2 * self._redeliver_delay_s or 1, self._max_delay_s)
        self._redeliver_delay_s, self._dropping = delay, True
        self._log.warning(
            "a message on %s was not handled (%s): not acknowledged; reconnecting in %d s for "
            "the broker to deliver it again",
            where,
            " ".join(why.split()),
            delay,
        )
        client.reconnect_delay_set(min_delay=delay, max_delay=max(delay, self._max_delay_s))
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # The TCP connection's shutdown (not the TLS socket's, nor close(), which would pull
            # the descriptor from under paho's loop): paho sees the connection lost and
            # reconnects by itself, keeping the session.
            with contextlib.suppress(OSError):  # already going
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

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
        if self._on_settled is not None:
            self._on_settled()

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
        self._log.log(
            logging.WARNING if first else logging.DEBUG,
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
