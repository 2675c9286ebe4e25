"""Reconciliation: list online units' outboxes; catalogue clips whose announcement was lost."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final
from urllib.parse import urlsplit

from pydantic import ValidationError

from protocol.clipserver import clip_path
from protocol.listing import ListedClip
from protocol.message_codec import describe
from protocol.messages import ClipAnnouncement

from .catalog import Catalog, ClipState
from .catalog.records import ClipRecord, UnitRecord
from .fetch import FetchClient, FetchError

__all__ = ["LISTING_WORKERS", "ONLINE", "ReconcileReport", "clip_server_url", "reconcile_once"]

log = logging.getLogger("painav.receiver.reconcile")

ONLINE: Final = frozenset({"online", "recording"})
"""Unit states whose clip server is up; an offline or failed unit is left to its next turn."""

LISTING_WORKERS: Final = 4
"""Units listed at once in a pass: a slow unit holds one of them, for its listing deadline."""


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
    # Of a participant who withdrew: to be receipted and discarded, never stored.
    discards: tuple[ClipAnnouncement, ...] = ()

    def __str__(self) -> str:
        return (
            f"reconcile: {self.units_checked} units checked ({self.skipped} skipped), "
            f"{self.listed} clips listed, {self.recorded_new} new, "
            f"{len(self.unreceipted)} receipts to send again, "
            + (f"{len(self.discards)} to discard, " if self.discards else "")
            + f"{self.errors} errors"
        )


def clip_server_url(clip_url: str) -> str:
    """A unit's clip server (scheme, host, port) from the URL of one of its clips."""
    parts = urlsplit(clip_url)
    return f"{parts.scheme}://{parts.netloc}"


def reconcile_once(
    catalog: Catalog, fetcher: FetchClient, *, now: datetime, workers: int = LISTING_WORKERS
) -> ReconcileReport:
    """One pass over the catalog's units; clips found are recorded as received at *now*.

    Announcements are QoS 1 and repeated by the unit until it has a receipt, but one can still
    be lost between broker and receiver (a broker restarted without persistence, a session
    expired while the receiver was down). So each online unit's clip server is asked for the
    clips it holds, and each is recorded as if announced: a clip the catalog knows is only
    counted, so a pass may run at any time. The receiver learns a unit's address only from its
    announcements (the newest clip's URL): a unit none of whose announcements arrived is
    skipped until one does (the unit announces its pending clips again at every reconnect).

    Units are listed *workers* at a time, each within the fetcher's listing deadline, so a unit
    that answers slowly (or one byte at a time) holds one listing for that long and never the
    others'; a URL outside the unit networks is refused without a connection. A unit that
    cannot be listed, or a clip that cannot be announced, is logged and counted in ``errors``,
    and the pass goes on; only a catalog failure ends it (raised).
    """
    totals = _Totals()
    due: list[tuple[UnitRecord, str]] = []
    for unit in catalog.units():
        latest = catalog.latest_clip(unit.device_id) if unit.status in ONLINE else None
        if latest is None:
            totals.skipped += 1
        else:
            due.append((unit, clip_server_url(latest.url)))
    totals.checked = len(due)
    if not due:
        return totals.report()
    with ThreadPoolExecutor(min(workers, len(due)), thread_name_prefix="reconcile") as pool:
        listings = {
            pool.submit(fetcher.list_clips, base, device_id=unit.device_id): (unit, base)
            for unit, base in due
        }
        for done in as_completed(listings):
            unit, base = listings[done]
            try:
                clips = done.result()
            except FetchError as exc:
                log.warning("reconcile: %s", exc)
                totals.errors += 1
                continue
            totals.listed += len(clips)
            _record(catalog, unit, base, clips, now, totals)
    return totals.report()


@dataclass
class _Totals:
    checked: int = 0
    listed: int = 0
    recorded: int = 0
    errors: int = 0
    skipped: int = 0
    unreceipted: list[ClipRecord] = field(default_factory=list)
    discards: list[ClipAnnouncement] = field(default_factory=list)

    def report(self) -> ReconcileReport:
        return ReconcileReport(
            self.checked,
            self.listed,
            self.recorded,
            self.errors,
            self.skipped,
            tuple(self.unreceipted),
            tuple(self.discards),
        )


def _record(
    catalog: Catalog,
    unit: UnitRecord,
    base: str,
    clips: list[ListedClip],
    now: datetime,
    totals: _Totals,
) -> None:
    """Record the clips one unit listed (in the pass's thread: the catalog is written from one
    place per pass)."""
    for clip in clips:
        where = f"reconcile: unit {unit.device_id}: clip {clip.clip_id}"
        if clip.manifest.site_id != unit.site_id:
            log.warning("%s: names site %s, not %s", where, clip.manifest.site_id, unit.site_id)
            totals.errors += 1
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
            totals.errors += 1
            continue
        if catalog.discarded_on_arrival(clip.clip_id, clip.manifest.participant):
            totals.discards.append(announcement)
            continue
        record, new = catalog.record_announcement(announcement, received_at=now)
        if new:
            log.info("%s: catalogued; its announcement never arrived", where)
            totals.recorded += 1
        elif record.state in (ClipState.STORED, ClipState.RECEIPTED):
            totals.unreceipted.append(record)
