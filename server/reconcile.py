"""Reconciliation: list online units' outboxes; catalogue clips whose announcement was lost."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from urllib.parse import urlsplit

from pydantic import ValidationError

from protocol.clipserver import clip_path
from protocol.message_codec import describe
from protocol.messages import ClipAnnouncement

from .catalog import Catalog, ClipState
from .catalog.records import ClipRecord
from .fetch import FetchClient, FetchError

__all__ = ["ONLINE", "ReconcileReport", "clip_server_url", "reconcile_once"]

log = logging.getLogger("painav.receiver.reconcile")

ONLINE: Final = frozenset({"online", "recording"})
"""Unit states whose clip server is up; an offline or failed unit is left to its next turn."""


@dataclass(frozen=True)
class ReconcileReport:
    """What one pass did: units whose outbox was listed, clips listed, clips new to the
    catalog, failures (a unit unreachable, a listing or clip refused), units skipped."""

    units_checked: int = 0
    listed: int = 0
    recorded_new: int = 0
    errors: int = 0
    skipped: int = 0
    # Stored here yet still on their unit: the receipt was lost, and is to be sent again.
    unreceipted: tuple[ClipRecord, ...] = ()

    def __str__(self) -> str:
        return (
            f"reconcile: {self.units_checked} units checked ({self.skipped} skipped), "
            f"{self.listed} clips listed, {self.recorded_new} new, "
            f"{len(self.unreceipted)} receipts to send again, {self.errors} errors"
        )


def clip_server_url(clip_url: str) -> str:
    """A unit's clip server (scheme, host, port) from the URL of one of its clips."""
    parts = urlsplit(clip_url)
    return f"{parts.scheme}://{parts.netloc}"


def reconcile_once(catalog: Catalog, fetcher: FetchClient, *, now: datetime) -> ReconcileReport:
    """One pass over the catalog's units; clips found are recorded as received at *now*.

    Announcements are QoS 1 and repeated by the unit until it has a receipt, but one can still
    be lost between broker and receiver (a broker restarted without persistence, a session
    expired while the receiver was down). So each online unit's clip server is asked for the
    clips it holds, and each is recorded as if announced: a clip the catalog knows is only
    counted, so a pass may run at any time. The receiver learns a unit's address only from its
    announcements (the newest clip's URL): a unit none of whose announcements arrived is
    skipped until one does (the unit announces its pending clips again at every reconnect).

    A unit that cannot be listed, or a clip that cannot be announced, is logged and counted in
    ``errors``, and the pass goes on; only a catalog failure ends it (raised).
    """
    checked = listed = recorded = errors = skipped = 0
    unreceipted: list[ClipRecord] = []
    for unit in catalog.units():
        latest = catalog.latest_clip(unit.device_id) if unit.status in ONLINE else None
        if latest is None:
            skipped += 1
            continue
        checked += 1
        base = clip_server_url(latest.url)
        try:
            clips = fetcher.list_clips(base, device_id=unit.device_id)
        except FetchError as exc:
            log.warning("reconcile: %s", exc)
            errors += 1
            continue
        listed += len(clips)
        for clip in clips:
            where = f"reconcile: unit {unit.device_id}: clip {clip.clip_id}"
            if clip.manifest.site_id != unit.site_id:
                log.warning("%s: names site %s, not %s", where, clip.manifest.site_id, unit.site_id)
                errors += 1
                continue
            try:
                # The URL the unit would have announced: its clip server, the clip's route.
                announcement = ClipAnnouncement(
                    manifest=clip.manifest,
                    signature=clip.signature,
                    url=base + clip_path(clip.clip_id),
                )
            except ValidationError as exc:
                log.warning("%s: not an announcement: %s", where, describe(exc))
                errors += 1
                continue
            record, new = catalog.record_announcement(announcement, received_at=now)
            if new:
                log.info("%s: catalogued; its announcement never arrived", where)
                recorded += 1
            elif record.state in (ClipState.STORED, ClipState.RECEIPTED):
                unreceipted.append(record)
    return ReconcileReport(checked, listed, recorded, errors, skipped, tuple(unreceipted))
