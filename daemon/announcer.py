"""The unit's MQTT v5 link to the hospital broker: announcements out; arm commands, receipts,
QC verdicts and the site root's CRL in.

A thin layer over :class:`link.MqttLink` that speaks painav's types only: messages go out as
:mod:`protocol.messages` models and come back as parsed :class:`ArmCommand`, :class:`Receipt`
and :class:`QcVerdict` objects; each publish is a :class:`Published` handle; the link's errors
come out as :class:`AnnouncerError`.

The session is persistent (``clean_start=False`` and an explicit session expiry), so the broker
keeps the subscriptions and queues receipts and verdicts while the unit is away. What the
*unit* sends is never left in paho's memory: a publish while disconnected fails at once, and
whatever is in flight when the connection drops is failed and dropped from paho's queue. The
service's durable outbox replays it after ``on_connect``; QoS 1 delivers at least once anyway,
so the receiver already takes repeats.

All callbacks run on paho's network thread; they must be quick and must not block on the
announcer (the service's only enqueue). An exception in one is logged, never raised into paho.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from link import LinkError, MqttLink, Published, Received, client_context, guarded
from protocol.errors import MessageError
from protocol.message_codec import MessageModel
from protocol.messages import (
    LEGACY_RECEIPT_SCHEMA,
    ArmCommand,
    CrlMessage,
    EventAck,
    QcVerdict,
    Receipt,
    Status,
    parse_message,
)
from protocol.topics import ROUTES, Kind, topic

__all__ = ["Announcer", "AnnouncerError", "Published"]

log = logging.getLogger(__name__)

_STOP_ACK_S: Final = 2.0
# How painav's receivers write a legacy receipt (canonical JSON: no space after the colon).
_LEGACY_RECEIPT: Final = f'"schema":"{LEGACY_RECEIPT_SCHEMA}"'.encode()


class AnnouncerError(LinkError):
    """The announcer cannot be set up or started: a bad certificate, key or CA file, a bad
    address; the message names what and where."""


class Announcer:
    """The unit's MQTT client: TLS with its certificate, one persistent session, QoS 1.

    Calls *on_connect* after every (re)connect, once the broker has confirmed the subscriptions,
    so the caller replays its outbox; *on_arm* with each arm command on ``cmd/arm`` (None when
    the retained command is cleared); *on_receipt* with each receipt; *on_verdict* with each
    quality-control verdict on ``qc``; *on_event_ack* with each acknowledgement of its events on
    ``event-acks``; *on_crl* with the root CRL (DER) retained on ``crl``;
    *on_bad_message* with the topic and a one-line reason for
    anything else that arrives; *on_settled* whenever the broker has acknowledged (or refused) a
    publish. The last will is the retained offline status.
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
        on_verdict: Callable[[QcVerdict], None],
        on_bad_message: Callable[[str, str], None],
        on_settled: Callable[[], None] | None = None,
        on_event_ack: Callable[[EventAck], None] | None = None,
        on_crl: Callable[[bytes], None] = lambda _: None,
    ) -> None:
        try:
            self._topics = {kind: topic(site_id, device_id, kind) for kind in Kind}
        except MessageError as exc:
            raise AnnouncerError(str(exc)) from None
        self._site, self._device = site_id, device_id
        self._on_arm, self._on_receipt, self._on_bad_message = on_arm, on_receipt, on_bad_message
        self._on_verdict, self._on_event_ack = on_verdict, on_event_ack
        self._on_crl = on_crl
        try:
            self._link = MqttLink(
                client_id=device_id,
                host=host,
                port=port,
                context=client_context(cert_file, key_file, ca_file),
                keepalive_s=keepalive_s,
                session_expiry_s=session_expiry_s,
                reconnect_max_s=reconnect_max_s,
                # On every connect, even when the session was resumed: it makes the broker send
                # the retained arm command again.
                subscriptions=(
                    self._topics[Kind.ARM],
                    self._topics[Kind.RECEIPTS],
                    self._topics[Kind.QC],
                    self._topics[Kind.EVENT_ACKS],
                    self._topics[Kind.CRL],
                ),
                on_connect=on_connect,
                on_message=self._dispatch,
                will=(self._topics[Kind.STATUS], Status.last_will().to_payload()),
                log=log,
                on_settled=on_settled,
            )
        except LinkError as exc:
            raise AnnouncerError(str(exc)) from exc

    # --- the caller's side ----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the current connection (CONNACK success)."""
        return self._link.connected

    @property
    def local_address(self) -> str | None:
        """The local IP address of the connection to the broker; None while disconnected."""
        return self._link.local_address

    def start(self) -> None:
        """Connect in the background and keep reconnecting, with backoff up to
        ``reconnect_max_s``; an unreachable broker is logged, never raised."""
        try:
            self._link.start()
        except LinkError as exc:
            raise AnnouncerError(str(exc)) from exc

    def stop(self) -> None:
        """Publish the retained offline status (waiting up to 2 s for the broker's ack),
        disconnect cleanly (so the broker drops the will, keeps the session) and stop."""
        self._link.stop(farewell=self._say_offline)

    def publish(self, message: MessageModel) -> Published:
        """Send *message* on this unit's topic for its kind, with that kind's QoS and retain flag.

        Never blocks on the network. While disconnected the handle is failed at once: nothing is
        queued for later. MessageError if the message cannot be encoded (a bug, not the network).
        """
        route = ROUTES[message.KIND]
        payload = message.to_payload()
        return self._link.publish(
            self._topics[message.KIND], payload, qos=route.qos, retain=route.retained
        )

    # --- paho's network thread ------------------------------------------------------------

    def _say_offline(self) -> None:
        handle = self.publish(Status(state="offline", since=datetime.now(UTC)))
        if not handle.wait(_STOP_ACK_S):
            log.warning("the broker did not acknowledge the offline status in time")

    def _dispatch(self, message: Received) -> None:
        where, payload = message.topic, message.payload
        if where is None:
            self._bad("(not UTF-8)", "topic is not UTF-8")
            return
        if where == self._topics[Kind.ARM] and not payload:
            # An empty payload clears the retained command: nothing is in force any more.
            guarded(log, "on_arm", self._on_arm, None)
            return
        if where == self._topics[Kind.RECEIPTS] and _LEGACY_RECEIPT in payload:
            # Sent beside every receipts/2 while units of the previous version remain: not an
            # error worth an event each time (and deleting still takes a receipts/2).
            log.debug("ignored a %s receipt on %s", LEGACY_RECEIPT_SCHEMA, where)
            return
        try:
            parsed, parsed_message = parse_message(where, payload)
        except MessageError as exc:
            self._bad(where, str(exc))
            return
        if (parsed.site, parsed.device) != (self._site, self._device):
            self._bad(where, "not this unit's topic")
        elif isinstance(parsed_message, ArmCommand):
            guarded(log, "on_arm", self._on_arm, parsed_message)
        elif isinstance(parsed_message, Receipt):
            guarded(log, "on_receipt", self._on_receipt, parsed_message)
        elif isinstance(parsed_message, QcVerdict):
            guarded(log, "on_verdict", self._on_verdict, parsed_message)
        elif isinstance(parsed_message, EventAck) and self._on_event_ack is not None:
            guarded(log, "on_event_ack", self._on_event_ack, parsed_message)
        elif isinstance(parsed_message, CrlMessage):
            guarded(log, "on_crl", self._on_crl, parsed_message.crl_der())
        else:
            self._bad(where, f"a {parsed.kind.value} message is not for the unit")

    def _bad(self, where: str, error: str) -> None:
        guarded(log, "on_bad_message", self._on_bad_message, where, " ".join(error.split()))
