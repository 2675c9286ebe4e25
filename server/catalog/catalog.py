"""The catalog: every clip's lifecycle and every unit's last word, each change audited.

>>> catalog = Catalog("sqlite:////var/lib/painav/catalog.db")   # doctest: +SKIP
>>> clip, new = catalog.record_announcement(announcement, received_at=now)   # doctest: +SKIP
>>> job = catalog.claim_next(worker="receiver-1", now=now, lease_s=120)   # doctest: +SKIP

Each method is one database transaction; a state change and its audit row commit together or
not at all. Times are timezone-aware (naive ones are refused) and kept in UTC.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Self

from alembic.util import CommandError
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy import select
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from protocol.message_fields import format_timestamp
from protocol.messages import ClipAnnouncement, Event, Status, Telemetry

from ..audit import AuditLog
from ..database import READ_ONLY, make_engine
from . import fetch_queue, units
from .accounts import AccountsMixin
from .arming import ArmingMixin
from .clinical import ClinicalMixin
from .clip_rows import (
    REASON_RE,
    bounded,
    check_lease,
    code,
    held_by,
    locked,
    move,
    one_line,
    utc,
)
from .counts import CountsMixin
from .engine import run_migrations
from .errors import (
    CatalogDatabaseError,
    CatalogError,
    CatalogUnavailableError,
    ClipNotFoundError,
)
from .exports import ExportsMixin
from .extraction import ExtractionMixin
from .findings import FindingsMixin
from .lifecycle import ACTIVE_STATES, ClipState
from .models import Clip, Unit, UnitEvent
from .records import ClipRecord, UnitEventRecord, UnitRecord
from .withdrawal import WithdrawalMixin

__all__ = ["REASON_RE", "Catalog", "utc"]

log = logging.getLogger(__name__)

CLAIM_CANDIDATES: Final = 32
"""How many clips a claim tries before it gives up, when other receivers hold the first."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Catalog(
    ExtractionMixin,
    FindingsMixin,
    ArmingMixin,
    ClinicalMixin,
    WithdrawalMixin,
    ExportsMixin,
    AccountsMixin,
    CountsMixin,
):
    """The catalog database: ``sqlite:///path/catalog.db`` or ``postgresql+psycopg://…``.

    Opening it migrates the schema to the newest revision. The extraction worker's methods
    are in :mod:`.extraction` (claims, failures, leases, decrypt audit) and :mod:`.findings`
    (features, quality checks, the verdict outbox); the study's in :mod:`.study` (participants,
    consent, visits), :mod:`.arming`, :mod:`.clinical`, :mod:`.withdrawal` and :mod:`.exports`.
    *actor* names this receiver (or the person at the command line) in the audit log; *clock*
    gives the time of changes whose caller gives none (and of audit rows).
    """

    def __init__(
        self,
        url: str,
        *,
        actor: str = "receiver",
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._clock = clock
        self._actor = bounded(actor, "actor", 64)
        try:
            self._engine = make_engine(url)
        except ArgumentError as exc:
            raise CatalogError(f"catalog URL: {exc}") from exc
        self._where = self._engine.url.render_as_string(hide_password=True)
        self._writes = sessionmaker(self._engine, expire_on_commit=False)
        self._reads = sessionmaker(
            self._engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False
        )
        self.audit = AuditLog(self._engine, clock=clock)
        try:
            run_migrations(self._engine)
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise CatalogDatabaseError(f"catalog {self._where}: {_one_line(exc)}") from exc
        except CommandError as exc:  # e.g. a schema newer than this build: an older receiver
            self._engine.dispose()
            raise CatalogError(f"catalog {self._where}: schema: {exc}") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def acting_as(self, actor: str) -> Self:
        """This catalog, on the same connections, with *actor* in the audit log: the dashboard's
        view of it for one signed-in person."""
        other = copy.copy(self)
        other._actor = bounded(actor, "actor", 64)
        return other

    def close(self) -> None:
        """Close the database connections."""
        self._engine.dispose()

    @contextmanager
    def _session(self, *, write: bool) -> Iterator[Session]:
        """One transaction; database failures come out as :class:`CatalogDatabaseError`."""
        try:
            with (self._writes if write else self._reads).begin() as session:
                yield session
        except SQLAlchemyError as exc:
            kind = CatalogUnavailableError if unavailable(exc) else CatalogDatabaseError
            raise kind(f"catalog {self._where}: {_one_line(exc)}") from exc

    # --- clips ------------------------------------------------------------------------------

    def record_announcement(
        self, ann: ClipAnnouncement, *, received_at: datetime
    ) -> tuple[ClipRecord, bool]:
        """Record an announcement; True with the clip if it is new, False if it was known.

        The same clip announced again (the unit repeats until it has a receipt) only counts
        the announcement: the caller re-sends the receipt if the clip is receipted. The same
        clip id with a different SHA-256 or size from its unit is a conflict: a clip not yet
        stored is quarantined (``reannounced_with_different_hash``); a stored one stays as it
        is, and the conflict is audited.

        A clip id the catalog holds for another unit is refused: the clip is left as it is
        (never quarantined: one unit must not block another's clip), the refusal is audited
        (``conflict``, reason ``announced_by_other_unit``) and logged, and the clip is returned
        with False, so the caller acknowledges the message and moves on. A manifest names only
        its own unit's clip ids (:class:`~protocol.clip_manifest.ClipManifest`), so the clip id
        alone determines the unit: this arises only from a row written before that rule.
        """
        at = utc(received_at, "received_at")
        m = ann.manifest
        with self._session(write=True) as s:
            units.touch(s, m.site_id, m.device_id, seen_at=at)
            clip = units.insert_new(s, Clip, _new_clip(ann, at))
            if clip is not None:
                detail = {"device_id": m.device_id, "sha256": m.sha256, "size_bytes": m.size_bytes}
                self.audit.append(
                    s, "ingest", clip_id=clip.clip_id, actor=self._actor, detail=detail
                )
                return ClipRecord.of(clip), True
            clip = locked(s, m.clip_id)
            if clip.device_id != m.device_id:
                self._refuse_other_unit(s, clip, ann)
                return ClipRecord.of(clip), False
            clip.announce_count += 1
            clip.last_announced_at = max(clip.last_announced_at, at)
            reason = _conflict(clip, ann)
            if reason is None:
                if clip.state is ClipState.ANNOUNCED:
                    clip.url = ann.url  # the unit may have moved since: fetch where it is now
                return ClipRecord.of(clip), False
            detail = {
                "reason": reason,
                "state": clip.state.value,
                "announced_sha256": m.sha256,
                "announced_size_bytes": m.size_bytes,
                "announced_device_id": m.device_id,
            }
            if clip.state in ACTIVE_STATES:
                self._quarantine(s, clip, reason, at=at, detail=detail)
            else:
                self.audit.append(
                    s, "conflict", clip_id=clip.clip_id, actor=self._actor, detail=detail
                )
            return ClipRecord.of(clip), False

    def _refuse_other_unit(self, s: Session, clip: Clip, ann: ClipAnnouncement) -> None:
        """Audit and log an announcement of *clip*'s id by a unit that is not its own."""
        other = ann.manifest.device_id
        detail = {
            "reason": "announced_by_other_unit",
            "state": clip.state.value,
            "announced_device_id": other,
            "announced_sha256": ann.manifest.sha256,
        }
        self.audit.append(s, "conflict", clip_id=clip.clip_id, actor=self._actor, detail=detail)
        log.warning(
            "refused an announcement of clip %s by unit %s: the catalog holds it for unit %s",
            clip.clip_id,
            other,
            clip.device_id,
        )

    def claim_next(
        self, *, worker: str, now: datetime, lease_s: float, per_unit: int | None = None
    ) -> ClipRecord | None:
        """Take the next clip to fetch (see :mod:`.fetch_queue`) for *lease_s* seconds, or None;
        with *per_unit*, none of a unit that has that many fetches in flight.

        A clip whose lease expired is taken over, and the lost attempt counted. Two receivers
        never hold the same clip; the holder reports with :meth:`fetch_failed` or
        :meth:`mark_stored` (passing ``worker`` so a report on a lost lease is refused).
        """
        now = utc(now, "now")
        bounded(worker, "worker", 64)
        if not lease_s > 0:
            raise ValueError("lease_s must be positive")
        with self._session(write=True) as s:
            for clip_id in s.scalars(
                fetch_queue.candidates(now, limit=CLAIM_CANDIDATES, per_unit=per_unit)
            ):
                clip = s.scalars(fetch_queue.lock_if_waiting(clip_id, now)).one_or_none()
                if clip is not None:
                    break
            else:
                return None
            previous = clip.lease_owner if clip.state is ClipState.FETCHING else None
            move(clip, ClipState.FETCHING, at=now)
            if previous is not None:
                clip.attempts += 1
                clip.last_error = f"lease of {previous} expired"
            clip.lease_owner = worker
            clip.lease_expires_at = now + timedelta(seconds=lease_s)
            detail = {"lease_s": lease_s, "attempt": clip.attempts + 1, "taken_from": previous}
            self.audit.append(s, "fetch", clip_id=clip.clip_id, actor=worker, detail=detail)
            return ClipRecord.of(clip)

    def fetch_failed(
        self,
        clip_id: str,
        *,
        error: str,
        retry_at: datetime,
        worker: str | None = None,
        counted: bool = True,
    ) -> ClipRecord:
        """Put a clip that could not be fetched back in the queue, due again at *retry_at*;
        the attempt is counted unless not *counted* (the unit did not answer at all)."""
        retry_at = utc(retry_at, "retry_at")
        error = one_line(error)
        with self._session(write=True) as s:
            clip = locked(s, clip_id)
            check_lease(clip, worker, ClipState.FETCHING)
            move(clip, ClipState.ANNOUNCED, at=self._clock())
            clip.attempts += 1 if counted else 0
            clip.last_error = error
            clip.next_attempt_at = retry_at
            detail = {
                "error": error,
                "attempts": clip.attempts,
                "retry_at": format_timestamp(retry_at),
            }
            self.audit.append(
                s, "fetch_failed", clip_id=clip_id, actor=worker or self._actor, detail=detail
            )
            return ClipRecord.of(clip)

    def mark_stored(
        self, clip_id: str, *, store_key: str, stored_at: datetime, worker: str | None = None
    ) -> ClipRecord:
        """Record that the verified ciphertext is in the store under *store_key*."""
        stored_at = utc(stored_at, "stored_at")
        bounded(store_key, "store_key", 256)
        with self._session(write=True) as s:
            clip = locked(s, clip_id)
            check_lease(clip, worker, ClipState.FETCHING)
            move(clip, ClipState.STORED, at=stored_at)
            clip.store_key = store_key
            clip.stored_at = stored_at
            detail = {"store_key": store_key, "sha256": clip.sha256, "size_bytes": clip.size_bytes}
            self.audit.append(
                s, "stored", clip_id=clip_id, actor=worker or self._actor, detail=detail
            )
            return ClipRecord.of(clip)

    def release_leases(self, worker_prefix: str, *, now: datetime) -> list[str]:
        """Put back in the queue, due now, the clips held by workers whose name starts with
        *worker_prefix* (a receiver's own, at its start: they died with its last run, and
        need not wait for their leases to expire). Returns the clip ids."""
        now = utc(now, "now")
        with self._session(write=True) as s:
            released = []
            for clip in held_by(s, ClipState.FETCHING, worker_prefix):
                owner = clip.lease_owner
                move(clip, ClipState.ANNOUNCED, at=now)
                clip.attempts += 1
                clip.last_error = f"{owner} stopped while fetching"
                clip.next_attempt_at = now
                detail = {"error": clip.last_error, "attempts": clip.attempts}
                self.audit.append(
                    s, "fetch_failed", clip_id=clip.clip_id, actor=self._actor, detail=detail
                )
                released.append(clip.clip_id)
            return released

    def stored_with_hash(self, sha256: str) -> bool:
        """Whether some clip whose bytes are in the store (stored or later) has *sha256*."""
        query = select(Clip.clip_id).where(
            Clip.sha256 == sha256,
            Clip.store_key.is_not(None),
            Clip.state.not_in((ClipState.QUARANTINED,)),
        )
        with self._session(write=False) as s:
            return s.scalars(query.limit(1)).first() is not None

    def quarantine(self, clip_id: str, reason: str, *, at: datetime | None = None) -> ClipRecord:
        """Set a clip aside for a person to look at; *reason* is a code like ``bad_signature``."""
        when = self._clock() if at is None else utc(at, "at")
        with self._session(write=True) as s:
            clip = locked(s, clip_id)
            self._quarantine(s, clip, reason, at=when, detail={"reason": reason})
            return ClipRecord.of(clip)

    def mark_receipted(self, clip_id: str, *, at: datetime) -> ClipRecord:
        """Record that the signed receipt for a stored clip was sent to its unit."""
        when = utc(at, "at")
        with self._session(write=True) as s:
            clip = locked(s, clip_id)
            move(clip, ClipState.RECEIPTED, at=when)
            clip.receipted_at = when
            clip.next_attempt_at = when  # due for extraction from now
            detail = {"sha256": clip.sha256, "device_id": clip.device_id}
            self.audit.append(s, "receipt", clip_id=clip_id, actor=self._actor, detail=detail)
            return ClipRecord.of(clip)

    def clip(self, clip_id: str) -> ClipRecord:
        """The clip *clip_id*; :class:`ClipNotFoundError` if there is none."""
        with self._session(write=False) as s:
            row = s.get(Clip, clip_id)
            if row is None:
                raise ClipNotFoundError(clip_id)
            return ClipRecord.of(row)

    def clips(
        self,
        *,
        state: ClipState | None = None,
        device_id: str | None = None,
        limit: int = 1000,
        newest_first: bool = False,
    ) -> list[ClipRecord]:
        """Clips, oldest announcement first (or newest, for a listing), optionally only those in
        *state* or of a unit."""
        query = select(Clip)
        if state is not None:
            query = query.where(Clip.state == state)
        if device_id is not None:
            query = query.where(Clip.device_id == device_id)
        if newest_first:
            query = query.order_by(Clip.announced_at.desc(), Clip.clip_id.desc())
        else:
            query = query.order_by(Clip.announced_at, Clip.clip_id)
        query = query.limit(limit)
        with self._session(write=False) as s:
            return [ClipRecord.of(row) for row in s.scalars(query)]

    def latest_clip(self, device_id: str) -> ClipRecord | None:
        """The unit's most recently announced clip, or None if it never announced one."""
        query = select(Clip).where(Clip.device_id == device_id)
        query = query.order_by(Clip.announced_at.desc(), Clip.clip_id.desc()).limit(1)
        with self._session(write=False) as s:
            row = s.scalars(query).one_or_none()
            return None if row is None else ClipRecord.of(row)

    def _quarantine(
        self, s: Session, clip: Clip, reason: str, *, at: datetime, detail: dict[str, Any]
    ) -> None:
        code(reason, "reason")
        previous = clip.state.value
        move(clip, ClipState.QUARANTINED, at=at)
        clip.quarantine_reason = reason
        detail = {**detail, "from_state": previous}
        self.audit.append(s, "quarantine", clip_id=clip.clip_id, actor=self._actor, detail=detail)

    # --- units ------------------------------------------------------------------------------

    def upsert_status(
        self, site_id: str, device_id: str, status: Status, *, seen_at: datetime
    ) -> UnitRecord:
        """Record a unit's status message, received at *seen_at*."""
        at = utc(seen_at, "seen_at")
        with self._session(write=True) as s:
            return UnitRecord.of(units.apply_status(s, site_id, device_id, status, seen_at=at))

    def record_telemetry(
        self, site_id: str, device_id: str, t: Telemetry, *, seen_at: datetime
    ) -> UnitRecord:
        """Record a unit's telemetry sample; an older sample than the one kept is ignored."""
        at = utc(seen_at, "seen_at")
        with self._session(write=True) as s:
            return UnitRecord.of(units.apply_telemetry(s, site_id, device_id, t, seen_at=at))

    def record_event(
        self, site_id: str, device_id: str, event: Event, *, received_at: datetime
    ) -> bool:
        """Keep a unit's event; False if it was kept already (a QoS 1 redelivery)."""
        at = utc(received_at, "received_at")
        with self._session(write=True) as s:
            return units.add_event(s, site_id, device_id, event, received_at=at)

    def units(self) -> list[UnitRecord]:
        """Every unit ever heard of, by device id."""
        with self._session(write=False) as s:
            return [UnitRecord.of(row) for row in s.scalars(select(Unit).order_by(Unit.device_id))]

    def events(self, *, device_id: str | None = None, limit: int = 1000) -> list[UnitEventRecord]:
        """Units' events, newest first, optionally of one unit."""
        query = select(UnitEvent)
        if device_id is not None:
            query = query.where(UnitEvent.device_id == device_id)
        query = query.order_by(UnitEvent.at.desc(), UnitEvent.id.desc()).limit(limit)
        with self._session(write=False) as s:
            return [UnitEventRecord.of(row) for row in s.scalars(query)]


def _new_clip(ann: ClipAnnouncement, at: datetime) -> dict[str, Any]:
    m = ann.manifest
    return {
        "clip_id": m.clip_id,
        "device_id": m.device_id,
        "state": ClipState.ANNOUNCED,
        "sha256": m.sha256,
        "size_bytes": m.size_bytes,
        "manifest": m.model_dump(mode="json"),
        "signature": ann.signature,
        "url": ann.url,
        "participant": m.participant,
        "visit": m.visit,
        "announced_at": at,
        "last_announced_at": at,
        "announce_count": 1,
        "state_changed_at": at,
        "attempts": 0,
        "next_attempt_at": at,
    }


def _conflict(clip: Clip, ann: ClipAnnouncement) -> str | None:
    """Why *ann*, from the clip's own unit, cannot be the clip already catalogued, or None if
    it is the same clip."""
    if ann.manifest.sha256 != clip.sha256 or ann.manifest.size_bytes != clip.size_bytes:
        return "reannounced_with_different_hash"
    return None


def unavailable(exc: SQLAlchemyError) -> bool:
    """Whether *exc* says the database cannot be used now (and may be later), rather than that
    the operation itself is refused: SQLAlchemy's operational and interface errors (server
    gone, locked, disk full), a connection it invalidated, a pool that had none to give."""
    if isinstance(exc, OperationalError | InterfaceError | sqlalchemy_exc.TimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _one_line(exc: SQLAlchemyError) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__
