"""Quality verdicts back to the bedside: the catalog's verdict outbox, sent over the receiver's
MQTT link and marked sent once the broker has them.

The extraction worker records a verdict in the catalog (it holds no broker identity: the host
with the data key stays off the broker); the receiver, connected anyway, sends it to the unit
that recorded the clip. Each verdict carries the time it was *issued*, not sent, so a verdict
held back by an outage does not light a unit long after the participant has gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from link import Published
from protocol.messages import QcVerdict

from .catalog import Catalog, CatalogDatabaseError

__all__ = ["send_verdicts"]

log = logging.getLogger("painav.receiver.verdicts")

_ACK_S = 10.0


def send_verdicts(
    catalog: Catalog,
    publish: Callable[[str, QcVerdict], Published],
    *,
    site_id: str,
    limit: int = 100,
    ack_s: float = _ACK_S,
) -> int:
    """Send the pending verdicts of *site_id*; how many the broker acknowledged. Never raises
    for the database or the network: what is not acknowledged stays pending for the next call."""
    try:
        pending = [v for v in catalog.pending_verdicts(limit=limit) if v.site_id == site_id]
    except CatalogDatabaseError as exc:
        log.warning("verdicts not sent: %s", exc)
        return 0
    sent = [(v, publish(v.device_id, v.message(issued_at=v.created_at))) for v in pending]
    acknowledged = 0
    for verdict, handle in sent:
        if not handle.wait(ack_s):
            log.warning("verdict for %s not acknowledged: %s", verdict.clip_id, handle.reason)
            continue
        try:
            catalog.mark_verdict_sent(verdict.clip_id, verdict.qc_pass, at=datetime.now(UTC))
        except CatalogDatabaseError as exc:  # sent again next time: the unit takes repeats
            log.warning("verdict for %s sent, not marked: %s", verdict.clip_id, exc)
            continue
        acknowledged += 1
        log.info(
            "verdict %s (%s) for %s sent to %s",
            verdict.verdict.value,
            ", ".join(verdict.reasons) or "-",
            verdict.clip_id,
            verdict.device_id,
        )
    return acknowledged
