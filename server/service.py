"""The hospital receiver: wires the MQTT link, catalog, puller, store and receipts, and runs.

Announcements are recorded in the catalog from the MQTT thread before the broker is
acknowledged, so one the receiver dies on is delivered again (and recorded once). One the
database fails to record (down, locked, disk full) is not acknowledged either: the link
reconnects, backing off while the failures last, and the broker delivers it again. The puller's
workers do the network and disk work; a stored clip's receipt is signed with the receipt key
and published QoS 1; the clip is marked receipted once the broker has it. A clip announced
again after that gets its receipt again: the unit may have missed it. Every
``pull.reconcile_interval_s``, and a few seconds after every connection to the broker, a thread
of its own lists the online units' outboxes (:mod:`server.reconcile`), so a clip whose announcement
was lost is pulled all the same. After a connection is the likely time: Mosquitto (2.0) does not
restore shared subscriptions when it restarts, so what units announce between its restart and
the receiver's return reaches no one. Quality verdicts the extraction worker recorded go back
to their units from here, every tick, on a thread of their own (:mod:`server.verdicts`), after
the arm commands researchers asked for, signed with this receiver's key (:mod:`server.arming`).
An event with an id (``painav.events/2``) is acknowledged to its unit on ``event-acks`` once it
is recorded (again if it comes again: the unit missed the acknowledgement), so that the unit
can forget it; until then the unit keeps publishing it. ``painav.events/1`` from a unit of the
previous version is recorded and not acknowledged. For IT's monitoring it serves Prometheus's
``/metrics`` and ``/healthz`` (``[metrics]``; :mod:`server.metrics_receiver`).
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime

from protocol.hospital_signature import HospitalSigner
from protocol.messages import ClipAnnouncement, Event, EventAck, LegacyReceipt, Status, Telemetry
from protocol.minisign import SigningKey
from protocol.signing import sign_receipt

from .arming import send_arms
from .catalog import Catalog, CatalogDatabaseError, CatalogUnavailableError, ClipState
from .catalog.records import ClipRecord
from .config import ReceiverConfig
from .crlpublish import CrlPublisher
from .fetch import FetchClient
from .metrics_health import Heartbeat, health_check
from .metrics_http import MetricsEndpoint, MetricsEndpointError
from .metrics_receiver import ReceiverMetrics
from .mqtt import Incoming, Published, ReceiverLink, Redeliver
from .puller import Puller, PullSettings
from .reconcile import reconcile_once
from .stores import open_store
from .verdicts import send_verdicts

__all__ = ["ReceiverService"]

log = logging.getLogger("painav.receiver")

_RECEIPT_ACK_S = 10.0
_AUDIT_HEAD_S = 60.0
# After a connection, time for the retained statuses (which units are online) to come in.
_RECONCILE_AFTER_CONNECT_S = 5.0
_TICK_S = 1.0
# /healthz fails when the main loop has not gone round for this long (it ticks every second;
# a tick that hangs, on a database that does not answer, shows here).
_LOOP_STALE_S = 30.0


class ReceiverService:
    """The running receiver; :meth:`run` returns when *stop* is set."""

    def __init__(self, config: ReceiverConfig) -> None:
        self.config = config
        site, tls = config.site, config.tls
        self.catalog = Catalog(config.catalog.url)
        self.store = open_store(config.store)
        # Its own certified key: units trust the receivers the site root certifies.
        self.signer = HospitalSigner.from_files(tls.signing_key, tls.signing_cert)
        # While units of the previous version remain: their receipt form, with the shared key.
        self.legacy_receipt_key = SigningKey.from_file(tls.receipt_key) if tls.receipt_key else None
        self.link = ReceiverLink(
            site_id=site.site_id,
            receiver_id=site.receiver_id,
            host=config.mqtt.host,
            port=config.mqtt.port,
            cert_file=tls.cert,
            key_file=tls.key,
            ca_file=tls.ca,
            group=config.mqtt.group,
            keepalive_s=config.mqtt.keepalive_s,
            session_expiry_s=config.mqtt.session_expiry_s,
            on_message=self._on_message,
            on_connect=self._connected,
        )
        self._connects = 0  # connections to the broker so far; each is followed by a pass
        self.crl_publisher = (
            CrlPublisher(tls.crl, site.registry, self.link.publish_crl) if tls.crl else None
        )
        self._receipts = ThreadPoolExecutor(1, thread_name_prefix="receipts")
        self._verdicts = ThreadPoolExecutor(1, thread_name_prefix="verdicts")
        self._sending: Future[int] | None = None
        self.metrics = ReceiverMetrics(
            self.catalog,
            site.registry,
            {"tls": tls.cert, "signing": tls.signing_cert, "ca": tls.ca},
        )
        self._heartbeat = Heartbeat("the receiver's main loop", _LOOP_STALE_S)
        self.metrics_endpoint = MetricsEndpoint(
            config.metrics,
            self.metrics.registry,
            health_check(self.catalog, self._heartbeat),
            client_ca=tls.ca,
        )
        self.fetcher = FetchClient.for_receiver(tls, config.pull)
        self.puller = Puller(
            catalog=self.catalog,
            store=self.store,
            fetcher=self.fetcher,
            registry_path=site.registry,
            data_key_recipient=site.data_key_recipient,
            spool=config.store.spool,
            on_stored=self._stored,
            on_quarantined=self.metrics.quarantined,
            on_fetch_failed=self.metrics.fetch_failed,
            worker_id=f"{site.receiver_id}@{socket.gethostname()}",
            settings=PullSettings(
                concurrency=config.pull.concurrency,
                lease_s=config.pull.lease_s,
                retry_max_s=config.pull.retry_max_s,
                per_unit_concurrency=config.pull.per_unit_concurrency,
                max_attempts=config.pull.max_attempts,
                spool_quota_bytes_per_unit=config.pull.spool_quota_bytes_per_unit,
            ),
        )
        # Reconciliation lists units over the network: on a thread of its own, so that a slow
        # unit never holds this loop (verdicts, the audit head) for its listing deadline.
        self._reconciler = ThreadPoolExecutor(1, thread_name_prefix="reconcile")
        self._reconciling: Future[None] | None = None

    def run(self, stop: threading.Event) -> None:
        self._heartbeat.beat()
        self._start_metrics()  # first: listening by the time the receiver is connected
        self.link.start()
        self.puller.start()
        log.info("receiver for site %s running", self.config.site.site_id)
        interval_s = self.config.pull.reconcile_interval_s
        now = time.monotonic()
        next_audit, next_reconcile = now + _AUDIT_HEAD_S, now + interval_s
        connects = 0
        try:
            while not stop.wait(_TICK_S):
                now = time.monotonic()
                self._heartbeat.beat()
                self.metrics.broker_connected.set(1 if self.link.connected else 0)
                if self._connects != connects:
                    connects = self._connects
                    next_reconcile = min(next_reconcile, now + _RECONCILE_AFTER_CONNECT_S)
                if now >= next_audit:
                    next_audit = now + _AUDIT_HEAD_S
                    # The audit chain's head in the journal: a rewrite of the whole table shows.
                    log.info("audit head: %s", self.catalog.audit.head())
                self._send_to_units()
                if self.crl_publisher is not None and self.link.connected:
                    self.crl_publisher.poll(self._connects)
                if self._reconciling is not None and self._reconciling.done():
                    self._reconciling = None
                    # Counted from the end of a pass, so a slow pass never runs back to back
                    # (unless a connection during the pass asked for one after it).
                    if next_reconcile == math.inf:
                        next_reconcile = time.monotonic() + interval_s
                if now >= next_reconcile and self._reconciling is None:
                    self._reconciling = self._reconciler.submit(self.reconcile)
                    next_reconcile = math.inf  # set when the pass ends
        finally:
            self.metrics_endpoint.stop()
            self._reconciler.shutdown(wait=True, cancel_futures=True)
            self.puller.stop()
            self._receipts.shutdown(wait=True)
            self._verdicts.shutdown(wait=True)
            self.link.stop()
            self.catalog.close()

    def _start_metrics(self) -> None:
        if not self.config.metrics.enabled:
            return
        try:
            self.metrics_endpoint.start()
        except MetricsEndpointError as exc:
            # Monitoring is no reason to stop taking clips: Prometheus sees the target down.
            log.error("%s; running without it", exc)

    def _send_to_units(self) -> None:
        """Start a round of sending arm commands and verdicts from the catalog's outboxes,
        unless one is still waiting for acknowledgements."""
        if not self.link.connected or (self._sending is not None and not self._sending.done()):
            return
        self._sending = self._verdicts.submit(self._send_round)

    def _send_round(self) -> int:
        site_id = self.config.site.site_id
        armed = send_arms(self.catalog, self.link.publish, self.signer, site_id=site_id)
        return armed + send_verdicts(self.catalog, self.link.publish_verdict, site_id=site_id)

    def reconcile(self) -> None:
        """One reconciliation pass (in the caller's thread; :meth:`run` calls it on a thread
        of its own); never raises."""
        try:
            report = reconcile_once(self.catalog, self.fetcher, now=datetime.now(UTC))
        except Exception:  # a database hiccup: the next pass tries again
            log.exception("reconciliation failed")
            return
        if report.recorded_new:
            self.puller.wake()
        for clip in report.unreceipted:
            self._queue_receipt(clip)
        for ann in report.discards:
            self._discarded(ann)
        log.info("%s", report)

    # --- MQTT (paho's thread: quick; raises only Redeliver) ------------------------------------

    def _connected(self) -> None:
        log.info("connected to the broker")
        self._connects += 1  # read by run(): a reconciliation pass follows

    def _on_message(self, incoming: Incoming) -> None:
        try:
            self._record(incoming)
        except CatalogUnavailableError as exc:  # not recorded now: not acknowledged, comes again
            raise Redeliver(str(exc)) from exc
        except CatalogDatabaseError:
            # Refused for good (a broken constraint): delivering it again would refuse it again,
            # forever. Logged, acknowledged; reconciliation still finds a clip it concerned.
            log.exception("could not record a message on %s", incoming.topic)

    def _record(self, incoming: Incoming) -> None:
        message, topic, at = incoming.message, incoming.topic, incoming.received_at
        if isinstance(message, ClipAnnouncement):
            if self._discarded(message):
                return
            clip, new = self.catalog.record_announcement(message, received_at=at)
            if new:
                self.puller.wake()
            elif clip.state in (ClipState.STORED, ClipState.RECEIPTED):
                self._queue_receipt(clip)  # announced again: the unit missed the receipt
        elif isinstance(message, Status):
            self.catalog.upsert_status(topic.site, topic.device, message, seen_at=at)
        elif isinstance(message, Telemetry):
            self.catalog.record_telemetry(topic.site, topic.device, message, seen_at=at)
        elif isinstance(message, Event):
            self.catalog.record_event(topic.site, topic.device, message, received_at=at)
            if message.event_id is not None:
                # Recorded (committed) first: only then may the unit forget it. Again for an
                # event recorded before: the unit did not get the earlier acknowledgement.
                ack = EventAck(event_ids=(message.event_id,), recorded_at=datetime.now(UTC))
                self.link.publish_event_ack(topic.device, ack)

    def _discarded(self, ann: ClipAnnouncement) -> bool:
        """Receipt and discard, never store, a clip whose participant has withdrawn (or one
        erased with them, announced again): the unit may delete its copy."""
        m = ann.manifest
        if not self.catalog.discarded_on_arrival(m.clip_id, m.participant):
            return False
        self.catalog.note_discarded(m.clip_id, m.device_id, m.sha256)
        log.info("discarded %s from %s on arrival: its participant withdrew", m.clip_id,
                 m.device_id)  # fmt: skip
        self._receipts.submit(self._send_discard_receipt, ann)
        return True

    # --- receipts --------------------------------------------------------------------------

    def _stored(self, clip: ClipRecord) -> None:
        self.metrics.stored(clip)
        self._queue_receipt(clip)

    def _queue_receipt(self, clip: ClipRecord) -> None:
        # Sent from a thread of its own: waiting for the broker's acknowledgement on paho's
        # network thread (a re-announcement) would wait for the very thread that reads it.
        self._receipts.submit(self._send_receipt, clip)

    def _publish_receipt(
        self, site_id: str, device_id: str, clip_id: str, sha256: str, stored_at: datetime
    ) -> Published:
        receipt = sign_receipt(
            self.signer,
            site_id=site_id,
            device_id=device_id,
            clip_id=clip_id,
            sha256=sha256,
            stored_at=stored_at,
        )
        handle = self.link.publish(receipt)
        if self.legacy_receipt_key is not None:
            # Best effort, like the unit's re-announcement: an old unit asks again if it is lost.
            self.link.publish(LegacyReceipt.of(receipt, self.legacy_receipt_key.sign_raw))
        return handle

    def _send_discard_receipt(self, ann: ClipAnnouncement) -> None:
        m = ann.manifest
        handle = self._publish_receipt(
            m.site_id, m.device_id, m.clip_id, m.sha256, datetime.now(UTC)
        )
        if not handle.wait(_RECEIPT_ACK_S):  # the unit announces it again, and is answered again
            log.warning("receipt for discarded %s not acknowledged: %s", m.clip_id, handle.reason)

    def _send_receipt(self, clip: ClipRecord) -> None:
        stored_at = clip.stored_at or datetime.now(UTC)
        handle = self._publish_receipt(
            clip.site_id, clip.device_id, clip.clip_id, clip.sha256, stored_at
        )
        if not handle.wait(_RECEIPT_ACK_S):
            # Not lost: the unit announces the clip again until it has a receipt, and the
            # receipt is re-sent then.
            log.warning("receipt for %s not acknowledged: %s", clip.clip_id, handle.reason)
            return
        if clip.state is ClipState.STORED:
            self.catalog.mark_receipted(clip.clip_id, at=datetime.now(UTC))
        log.info("receipt sent for %s", clip.clip_id)
