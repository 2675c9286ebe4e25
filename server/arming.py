"""Arm commands to the bedside: the catalog's arm requests (``painav research arm``), signed
with this receiver's own key and sent retained over its MQTT link, marked sent once the broker
has them. A request's times are when the researcher asked, so an arm command held back by an
outage still expires when it would have."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from link import Published
from protocol.hospital_signature import HospitalSigner
from protocol.messages import ArmCommand

from .catalog import Catalog, CatalogDatabaseError

__all__ = ["send_arms"]

log = logging.getLogger("painav.receiver.arming")

_ACK_S = 10.0


def send_arms(
    catalog: Catalog,
    publish: Callable[[ArmCommand], Published],
    signer: HospitalSigner,
    *,
    site_id: str,
    ack_s: float = _ACK_S,
) -> int:
    """Send each unit's newest arm request not sent yet; how many the broker acknowledged.
    Never raises for the database or the network: what is not acknowledged stays pending."""
    try:
        pending = catalog.pending_arms()
    except CatalogDatabaseError as exc:
        log.warning("arm commands not sent: %s", exc)
        return 0
    sent = 0
    for request in pending:
        command = ArmCommand.signed(
            participant=request.pseudonym,
            visit=request.visit,
            issued_at=request.requested_at,
            expires_at=request.expires_at,
            site_id=site_id,
            device_id=request.device_id,
            signer=signer.certificate,
            sign=signer.sign,
        )
        handle = publish(command)
        if not handle.wait(ack_s):
            log.warning("arm command for %s not acknowledged: %s", request.device_id, handle.reason)
            continue
        try:
            catalog.mark_arm_sent(request.id, at=datetime.now(UTC))
        except CatalogDatabaseError as exc:  # sent again next time: the unit takes the same one
            log.warning("arm command for %s sent, not marked: %s", request.device_id, exc)
            continue
        sent += 1
        what = f"for {request.pseudonym} {request.visit}" if request.pseudonym else "to disarm"
        log.info("arm command %s sent to %s", what, request.device_id)
    return sent
