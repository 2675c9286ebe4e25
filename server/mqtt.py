"""The receiver's MQTT v5 link: unit messages in; receipts, arm commands, QC verdicts and event
acknowledgements out.

A thin layer over :class:`link.MqttLink` that speaks painav's types only; the link's errors come
out as :class:`ReceiverLinkError`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from link import LinkError, MqttLink, Published, Received, Redeliver, client_context, guarded
from protocol.errors import MessageError
from protocol.messages import (
    ArmCommand,
    ClipAnnouncement,
    CrlMessage,
    Event,
    EventAck,
    LegacyReceipt,
    QcVerdict,
    Receipt,
    Status,
    Telemetry,
    parse_message,
)
from protocol.topics import ID_PATTERN, ROUTES, Kind, Topic, shared, site_filter, topic

__all__ = [
    "Incoming",
    "Published",
    "ReceiverLink",
    "ReceiverLinkError",
    "Redeliver",
    "UnitMessage",
]

log = logging.getLogger(__name__)

UnitMessage = Status | ClipAnnouncement | Event | Telemetry
"""A message a unit sends to the hospital."""

SHARED_KINDS: Final = (Kind.CLIPS, Kind.EVENTS, Kind.TELEMETRY)
"""Kinds split between the receivers of a group; ``status`` goes to every receiver."""

LEGACY_GROUP: Final = "receivers"
"""The fixed group name receivers of the previous version shared, which any unit could join."""

_ID_RE: Final = re.compile(ID_PATTERN)
# Bad messages: per window, this many get a line each, then one line per _BAD_SUMMARY_EVERY.
_BAD_LOGGED: Final = 10
_BAD_SUMMARY_EVERY: Final = 100
_BAD_WINDOW_S: Final = 60.0
_SHOW_CHARS: Final = 240


class ReceiverLinkError(LinkError):
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


class ReceiverLink:
    """The receiver's MQTT client: TLS with its certificate, one persistent session, QoS 1.

    Subscribes, on every connect, to ``status`` of every unit of the site with a plain
    subscription, so that every receiver knows every unit's state (the retained status is sent
    at each subscribe; status is idempotent), and to ``clips``, ``events`` and ``telemetry``
    through ``$share/<group>/...``, so that the receivers of a group split that work. *group* is
    the site's secret (:data:`protocol.receiver_config.GROUP_PATTERN`): Mosquitto does not check
    SUBSCRIBE against its ACL, so a client that knows it joins the group and takes its share of
    every unit's messages, which the broker then drops at delivery. Status is
    never shared: each receiver would see only some of the changes, and the retained statuses at
    subscribe time either never (MQTT v5) or all of them at every member (Mosquitto 2.0.11).

    The session is persistent (``clean_start=False``, ``session_expiry_s``): while the receiver
    is away the broker queues what its subscriptions match (up to its ``max_queued_messages``),
    and delivers it on return, possibly before *on_connect*. With several receivers, Mosquitto
    keeps queueing an absent member's share for it until its session expires.

    Callbacks run on paho's network thread and must be quick. *on_message* gets each valid
    :class:`Incoming`; the broker's QoS 1 acknowledgement is sent when it returns, so a message
    is redelivered if the process dies before that. If it raises :class:`Redeliver` (it could
    not record the message: database down, disk full), the message is not acknowledged and the
    link reconnects, with back-off, so that the broker delivers it again. Anything else (invalid
    payload, another site's or kind's topic) is counted (:attr:`bad_messages`), logged at a
    bounded rate, and given to *on_bad_message*, if any, with the topic and a one-line reason.
    *on_connect* is called after every (re)connect once the broker has answered the
    subscriptions. Any other exception in a callback is logged, never raised into paho, and the
    message is acknowledged.
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
        group: str,
        keepalive_s: int = 30,
        session_expiry_s: int = 7 * 24 * 3600,
        reconnect_max_s: float = 30.0,
        on_message: Callable[[Incoming], None],
        on_connect: Callable[[], None],
        on_bad_message: Callable[[str, str], None] | None = None,
    ) -> None:
        if not isinstance(receiver_id, str) or not _ID_RE.fullmatch(receiver_id):
            raise ReceiverLinkError(f"receiver id {receiver_id!r}: not a painav id")
        try:
            filters = (
                site_filter(site_id, Kind.STATUS),
                *(shared(group, site_filter(site_id, kind)) for kind in SHARED_KINDS),
            )
            legacy = tuple(
                shared(LEGACY_GROUP, site_filter(site_id, kind))
                for kind in SHARED_KINDS
                if group != LEGACY_GROUP
            )
        except MessageError as exc:
            raise ReceiverLinkError(str(exc)) from None
        self._site = site_id
        self._on_message, self._on_bad_message = on_message, on_bad_message
        self._bad = _BadMessageLog()  # used on paho's thread only
        try:
            self._link = MqttLink(
                client_id=receiver_id,
                host=host,
                port=port,
                context=client_context(cert_file, key_file, ca_file),
                keepalive_s=keepalive_s,
                session_expiry_s=session_expiry_s,
                reconnect_max_s=reconnect_max_s,
                # On every connect, even when the session was resumed: the plain status
                # subscription then brings every unit's retained status again.
                subscriptions=filters,
                # A session resumed after an upgrade still holds the guessable group of the
                # previous version: leave it, or stay in a group any unit can join.
                unsubscriptions=legacy,
                on_connect=on_connect,
                on_message=self._dispatch,
                log=log,
            )
        except LinkError as exc:
            raise ReceiverLinkError(str(exc)) from exc

    # --- the caller's side ----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the current connection (CONNACK success)."""
        return self._link.connected

    @property
    def bad_messages(self) -> int:
        """How many bad messages arrived since the link was made."""
        return self._bad.total

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The topic filters subscribed to on every connect: status plain, the rest shared."""
        return self._link.subscriptions

    def start(self) -> None:
        """Connect in the background and keep reconnecting, with backoff up to
        ``reconnect_max_s``; an unreachable broker is logged, never raised. Once only."""
        try:
            self._link.start()
        except LinkError as exc:
            raise ReceiverLinkError(str(exc)) from exc

    def stop(self) -> None:
        """Disconnect cleanly (the broker keeps the session and queues for it) and stop."""
        self._link.stop()
        self._bad.flush()

    def publish(
        self, message: ArmCommand | Receipt | LegacyReceipt, *, device_id: str | None = None
    ) -> Published:
        """Send *message* to the unit it names (and is signed for): a receipt, or an arm command
        (retained); QoS 1.

        Never blocks on the network. While disconnected the handle is failed at once: nothing is
        queued for later. TypeError for another type; MessageError for a message of another
        site, or of another unit than *device_id* (if given), or one that cannot be encoded.
        """
        if not isinstance(message, Receipt | ArmCommand | LegacyReceipt):
            raise TypeError(f"publish(): cannot send a {type(message).__name__} to a unit")
        what = "arm command" if isinstance(message, ArmCommand) else "receipt"
        if message.site_id != self._site:
            raise MessageError(f"{what} for site {message.site_id!r}, not {self._site!r}")
        if device_id is not None and device_id != message.device_id:
            raise MessageError(f"{what} for unit {message.device_id!r}, not {device_id!r}")
        device_id = message.device_id
        if isinstance(message, LegacyReceipt):  # for units of the previous version
            route, kind, payload = ROUTES[Kind.RECEIPTS], Kind.RECEIPTS, message.payload
        else:
            route, kind, payload = ROUTES[message.KIND], message.KIND, message.to_payload()
        where = topic(self._site, device_id, kind)
        return self._link.publish(where, payload, qos=route.qos, retain=route.retained)

    def publish_verdict(self, device_id: str, verdict: QcVerdict) -> Published:
        """Send a quality-control *verdict* on one of *device_id*'s clips to that unit, on its
        ``qc`` topic (QoS 1, not retained).

        Never blocks on the network; the caller marks the verdict sent once the handle is
        acknowledged, and keeps it pending otherwise (while disconnected the handle is failed at
        once: nothing is queued for later). If the unit is offline, the broker queues the
        verdict in the unit's persistent session. MessageError for a bad device id; TypeError
        for anything but a :class:`QcVerdict`.
        """
        if not isinstance(verdict, QcVerdict):
            raise TypeError(f"publish_verdict(): not a QcVerdict but a {type(verdict).__name__}")
        route = ROUTES[Kind.QC]
        where = topic(self._site, device_id, Kind.QC)
        return self._link.publish(where, verdict.to_payload(), qos=route.qos, retain=route.retained)

    def publish_event_ack(self, device_id: str, ack: EventAck) -> Published:
        """Tell *device_id* that the events *ack* names are recorded, on its ``event-acks``
        topic (QoS 1, not retained), so that it forgets them.

        Never blocks on the network (safe on paho's thread, right after recording); nothing is
        queued while disconnected. No need to wait for the handle: a unit that misses an
        acknowledgement publishes the event again, and it is acknowledged again. MessageError
        for a bad device id; TypeError for anything but an :class:`EventAck`.
        """
        if not isinstance(ack, EventAck):
            raise TypeError(f"publish_event_ack(): not an EventAck but a {type(ack).__name__}")
        route = ROUTES[Kind.EVENT_ACKS]
        where = topic(self._site, device_id, Kind.EVENT_ACKS)
        return self._link.publish(where, ack.to_payload(), qos=route.qos, retain=route.retained)

    def publish_crl(self, device_id: str, message: CrlMessage) -> Published:
        """Send the site root's CRL to *device_id*, retained on its ``crl`` topic (QoS 1), so
        the unit gets it whenever it next connects. Never blocks on the network. MessageError
        for a bad device id; TypeError for anything but a :class:`CrlMessage`."""
        if not isinstance(message, CrlMessage):
            raise TypeError(f"publish_crl(): not a CrlMessage but a {type(message).__name__}")
        route = ROUTES[Kind.CRL]
        where = topic(self._site, device_id, Kind.CRL)
        return self._link.publish(where, message.to_payload(), qos=route.qos, retain=route.retained)

    # --- paho's network thread ------------------------------------------------------------

    def _dispatch(self, message: Received) -> None:
        where = message.topic
        if where is None:
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
            incoming = Incoming(parsed, parsed_message, datetime.now(UTC), message.retained)
            guarded(log, "on_message", self._on_message, incoming)

    def _bad_message(self, where: str, error: str) -> None:
        error = " ".join(error.split())
        self._bad.report(where, error)
        if self._on_bad_message is not None:
            guarded(log, "on_bad_message", self._on_bad_message, where, error)
