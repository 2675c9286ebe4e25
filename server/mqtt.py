"""The receiver's MQTT v5 link: unit messages in, signed receipts and arm commands out."""

from __future__ import annotations

import logging
import math
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from protocol.messages import (
    ArmCommand,
    ClipAnnouncement,
    Event,
    Receipt,
    Status,
    Telemetry,
    parse_message,
)
from protocol.topics import ID_PATTERN, ROUTES, Kind, Topic, shared, site_filter, topic

__all__ = ["Incoming", "Published", "ReceiverLink", "ReceiverLinkError", "UnitMessage"]

log = logging.getLogger(__name__)

UnitMessage = Status | ClipAnnouncement | Event | Telemetry
"""A message a unit sends to the hospital."""

SHARED_KINDS: Final = (Kind.CLIPS, Kind.EVENTS, Kind.TELEMETRY)
"""Kinds split between the receivers of a group; ``status`` goes to every receiver."""

# paho's bound on unacknowledged outgoing messages; beyond it a publish is a failed handle.
_MAX_QUEUED: Final = 100
_ID_RE: Final = re.compile(ID_PATTERN)
# Bad messages: per window, this many get a line each, then one line per _BAD_SUMMARY_EVERY.
_BAD_LOGGED: Final = 10
_BAD_SUMMARY_EVERY: Final = 100
_BAD_WINDOW_S: Final = 60.0
_SHOW_CHARS: Final = 240


class ReceiverLinkError(RuntimeError):
    """The link cannot be set up or started: a bad certificate, key or CA file, a bad id or
    address; the message names what and where."""


@dataclass(frozen=True)
class Incoming:
    """A valid unit message as received: its parsed topic, the message, when it arrived, and
    whether the broker sent it as the retained state of the topic (a ``status`` at subscribe
    time, possibly old) rather than as it was published."""

    topic: Topic
    message: UnitMessage
    received_at: datetime
    retained: bool = False


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
        """The broker acknowledged it (a successful PUBACK)."""
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


def _show(text: str) -> str:
    return text if len(text) <= _SHOW_CHARS else text[:_SHOW_CHARS] + "…"


class _BadMessageLog:
    """Logs bad messages without letting a flood of them flood the journal: per minute, the
    first few get a WARNING line each, then one summary line per hundred."""

    def __init__(self) -> None:
        self.total = 0
        self._window_start = -math.inf
        self._in_window = 0
        self._unlogged = 0  # bad messages since the last line about them
        self._latest = ""

    def report(self, where: str, error: str) -> None:
        self.total += 1
        now = time.monotonic()
        if now - self._window_start >= _BAD_WINDOW_S:
            self.flush()
            self._window_start, self._in_window = now, 0
        self._in_window += 1
        # The protocol's errors name the topic already; others get it here.
        line = _show(error if where in error else f"{where}: {error}")
        if self._in_window <= _BAD_LOGGED:
            log.warning("bad message: %s", line)
            return
        self._unlogged += 1
        self._latest = line
        if self._unlogged >= _BAD_SUMMARY_EVERY:
            self.flush()

    def flush(self) -> None:
        """Log the bad messages not logged one by one, if any."""
        if self._unlogged:
            log.warning(
                "%d more bad messages (%d in all since start); the latest: %s",
                self._unlogged,
                self.total,
                self._latest,
            )
            self._unlogged = 0


def _tls_context(cert_file: Path, key_file: Path, ca_file: Path) -> ssl.SSLContext:
    """A client context (TLS 1.2 or later) that checks the broker against *ca_file* and logs in
    with the receiver's certificate; an unusable file raises ReceiverLinkError naming it."""
    # Each file is read here first, because OpenSSL's errors do not say which file was bad.
    try:
        x509.load_pem_x509_certificates(cert_file.read_bytes())
    except OSError as exc:
        raise ReceiverLinkError(f"certificate {cert_file}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ReceiverLinkError(f"certificate {cert_file}: not a PEM certificate") from exc
    try:
        serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except OSError as exc:
        raise ReceiverLinkError(f"key {key_file}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise ReceiverLinkError(f"key {key_file}: not an unencrypted PEM private key") from exc
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise ReceiverLinkError(f"CA certificate {ca_file}: no PEM certificates in it") from exc
    except OSError as exc:
        raise ReceiverLinkError(f"CA certificate {ca_file}: {exc.strerror}") from exc
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as exc:
        raise ReceiverLinkError(
            f"key {key_file} does not belong to certificate {cert_file} ({exc.reason})"
        ) from exc
    return context


class ReceiverLink:
    """The receiver's MQTT client: TLS with its certificate, one persistent session, QoS 1.

    Subscribes, on every connect, to ``status`` of every unit of the site with a plain
    subscription, so that every receiver knows every unit's state (the retained status is sent
    at each subscribe; status is idempotent), and to ``clips``, ``events`` and ``telemetry``
    through ``$share/<group>/...``, so that the receivers of a group split that work. Status is
    never shared: each receiver would see only some of the changes, and the retained statuses at
    subscribe time either never (MQTT v5) or all of them at every member (Mosquitto 2.0.11).

    The session is persistent (``clean_start=False``, ``session_expiry_s``): while the receiver
    is away the broker queues what its subscriptions match (up to its ``max_queued_messages``),
    and delivers it on return, possibly before *on_connect*. With several receivers, Mosquitto
    keeps queueing an absent member's share for it until its session expires.

    Callbacks run on paho's network thread and must be quick. *on_message* gets each valid
    :class:`Incoming`; the broker's QoS 1 acknowledgement is sent when it returns, so a message
    is redelivered if the process dies before that. *on_bad_message* gets the topic and a
    one-line reason for anything else (invalid payload, another site's or kind's topic); bad
    messages are counted (:attr:`bad_messages`) and logged at a bounded rate. *on_connect* is
    called after every (re)connect once the broker has answered the subscriptions. An exception
    in a callback is logged, never raised into paho.
    """

    def __init__(
        self,
        *,
        site_id: str,
        receiver_id: str,
        host: str,
        port: int,
        cert_file: Path,
        key_file: Path,
        ca_file: Path,
        group: str = "receivers",
        keepalive_s: int = 30,
        session_expiry_s: int = 7 * 24 * 3600,
        reconnect_max_s: float = 30.0,
        on_message: Callable[[Incoming], None],
        on_bad_message: Callable[[str, str], None],
        on_connect: Callable[[], None],
    ) -> None:
        if reconnect_max_s < 1:
            raise ReceiverLinkError(f"reconnect_max_s {reconnect_max_s}: must be at least 1")
        if not isinstance(receiver_id, str) or not _ID_RE.fullmatch(receiver_id):
            raise ReceiverLinkError(f"receiver id {receiver_id!r}: not a painav id")
        try:
            self._filters = (
                site_filter(site_id, Kind.STATUS),
                *(shared(group, site_filter(site_id, kind)) for kind in SHARED_KINDS),
            )
        except MessageError as exc:
            raise ReceiverLinkError(str(exc)) from None
        self._site, self._receiver = site_id, receiver_id
        self._host, self._port = host, port
        self._keepalive_s, self._session_expiry_s = keepalive_s, session_expiry_s
        self._reconnect_max_s = reconnect_max_s
        self._on_message, self._on_bad_message = on_message, on_bad_message
        self._on_connect = on_connect

        self._lock = threading.Lock()  # never held while calling into paho: paho calls back
        self._connected = False
        self._pending: dict[int, Published] = {}  # mid → handle awaiting its PUBACK
        self._early: dict[int, ReasonCode] = {}  # acks that beat their handle's registration
        self._generation = 0  # connections lost so far: a publish spanning one is failed
        self._down_logged = False
        self._subscribe_mid: int | None = None
        self._bad = _BadMessageLog()  # used on paho's thread only
        self._started = self._stopping = False

        # The broker takes the client id from the certificate's CN anyway.
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=receiver_id,
            protocol=mqtt.MQTTv5,
        )
        client.tls_set_context(_tls_context(cert_file, key_file, ca_file))
        client.reconnect_delay_set(min_delay=1, max_delay=math.ceil(reconnect_max_s))
        client.max_queued_messages_set(_MAX_QUEUED)
        # paho's chatter (an ERROR on every failed retry) goes to debug; this module logs what
        # the connection does, once per change.
        paho_log = log.getChild("paho")
        client.on_log = lambda _client, _userdata, _level, text: paho_log.debug("%s", text)
        client.suppress_exceptions = True
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
    def bad_messages(self) -> int:
        """How many bad messages arrived since the link was made."""
        return self._bad.total

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The topic filters subscribed to on every connect: status plain, the rest shared."""
        return self._filters

    def start(self) -> None:
        """Connect in the background and keep reconnecting, with backoff up to
        ``reconnect_max_s``; an unreachable broker is logged, never raised. Once only."""
        if self._started:
            raise ReceiverLinkError("receiver link already started")
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._session_expiry_s
        try:
            # clean_start=False on the first connect too (paho's default starts clean once):
            # a restarted receiver resumes its session and gets what was queued for it.
            self._client.connect_async(
                self._host,
                self._port,
                keepalive=self._keepalive_s,
                clean_start=False,
                properties=properties,
            )
        except ValueError as exc:
            raise ReceiverLinkError(f"broker {self._host}:{self._port}: {exc}") from exc
        self._started = True
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly (the broker keeps the session and queues for it) and stop."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self._lose_connection("stopped")
        self._bad.flush()
        log.info("disconnected from the MQTT broker")

    def publish(self, message: ArmCommand | Receipt, *, device_id: str | None = None) -> Published:
        """Send *message* to one unit of the site: a receipt to the unit it names, an arm
        command (retained) to *device_id*; QoS 1.

        Never blocks on the network. While disconnected the handle is failed at once: nothing is
        queued for later. TypeError without a device for an arm command or for another type;
        MessageError for a receipt of another site or unit, a bad device id, or a message that
        cannot be encoded.
        """
        if isinstance(message, Receipt):
            if message.site_id != self._site:
                raise MessageError(f"receipt for site {message.site_id!r}, not {self._site!r}")
            if device_id is not None and device_id != message.device_id:
                raise MessageError(f"receipt for unit {message.device_id!r}, not {device_id!r}")
            device_id = message.device_id
        elif isinstance(message, ArmCommand):
            if device_id is None:
                raise TypeError("publish(): an arm command needs device_id")
        else:
            raise TypeError(f"publish(): cannot send a {type(message).__name__} to a unit")
        route = ROUTES[message.KIND]
        handle = Published(topic(self._site, device_id, message.KIND))
        payload = message.to_payload()
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
        # paho would resend what it kept from before right after this callback; the caller
        # publishes again whatever still matters.
        for dropped in client.drop_out_messages():
            self._settle(dropped.mid, None)
        with self._lock:
            self._connected, self._down_logged = True, False
        session = "resumed" if flags.session_present else "new"
        log.info(
            "connected to the MQTT broker %s:%d as %s (%s session)",
            self._host,
            self._port,
            self._receiver,
            session,
        )
        # On every connect, even when the session was resumed: the plain status subscription
        # then brings every unit's retained status again.
        options = SubscribeOptions(qos=1)
        _, self._subscribe_mid = client.subscribe([(f, options) for f in self._filters])

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
        if flags.is_disconnect_packet_from_server:
            self._went_down(f"the broker ended the connection ({reason})")
        elif was_connected:
            self._went_down("connection lost")
        else:
            # Under TLS 1.3 a refused client certificate shows only as a closed connection.
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
        for topic_filter, reason in zip(self._filters, reasons, strict=False):
            if reason.is_failure:  # the link runs on with what it has; IT must fix the broker
                log.error("the broker refused the subscription to %s: %s", topic_filter, reason)
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
            self._bad_message("(not UTF-8)", "topic is not UTF-8")
            return
        try:
            parsed, parsed_message = parse_message(where, message.payload)
        except MessageError as exc:
            self._bad_message(where, str(exc))
            return
        except Exception as exc:  # a parser bug must not let a message through, nor stop paho
            self._bad_message(where, f"unreadable ({type(exc).__name__}: {exc})")
            return
        if parsed.site != self._site:
            self._bad_message(where, f"not a topic of site {self._site}")
        elif not isinstance(parsed_message, Status | ClipAnnouncement | Event | Telemetry):
            self._bad_message(where, f"a {parsed.kind.value} message is not for the receiver")
        else:
            incoming = Incoming(parsed, parsed_message, datetime.now(UTC), bool(message.retain))
            self._call("on_message", self._on_message, incoming)

    def _bad_message(self, where: str, error: str) -> None:
        error = " ".join(error.split())
        self._bad.report(where, error)
        self._call("on_bad_message", self._on_bad_message, where, error)

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
            self._connected = False
            self._generation += 1
            pending, self._pending = self._pending, {}
        for handle in pending.values():
            handle._settle(False, why)

    def _went_down(self, why: str) -> None:
        """Log a connection problem once until the next successful connect; retries quietly."""
        with self._lock:
            first, self._down_logged = not self._down_logged, True
        log.log(
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
