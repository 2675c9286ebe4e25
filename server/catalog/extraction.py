"""The extraction queue: which stored clip an extraction worker takes next, and the moves of a
clip through extraction (``receipted → extracting → extracted``, or ``failed`` for good).

A clip is waiting when it is ``receipted`` and due (``next_attempt_at`` has passed), or
``extracting`` under a lease that has expired (its worker died or hung). Clips are taken first
tries before retries (a clip that failed, or whose worker died on it, may well fail again: it
must not hold up new ones), then newest first: the quick quality check of a clip just recorded
is still useful at the bedside, while a backlog (after a worker was down) has no nurse waiting
for it. Workers keep up with the units by far (a clip is a minute at most, extracted in well
under a minute), so the backlog drains; nothing waits for ever.

A worker that dies holding a clip costs the clip an attempt, when its lease is taken over or
released at the worker's restart; a clip whose attempts reach ``max_attempts`` that way ends
``failed`` instead of being claimed again, so a clip that kills its worker (a native crash, out
of memory) cannot do so for ever.

Claims lock as the fetch queue's do (:mod:`.fetch_queue`): the order is read without locks, then
the candidates are tried in order, each locked only if still waiting (``FOR UPDATE SKIP LOCKED``
on PostgreSQL, so workers on several hosts never take the same clip and never wait for each
other; SQLite has one writer at a time).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import ColumnElement, Select, and_, case, or_, select
from sqlalchemy.orm import Session

from protocol.message_fields import format_timestamp

from ..audit import AuditLog
from .clip_rows import bounded, check_lease, code, held_by, locked, move, one_line, utc
from .errors import ClipNotFoundError, ClipStateError
from .lifecycle import STORED_STATES, ClipState
from .models import Clip, ClipFeatures, ClipQc
from .records import ClipRecord
from .study import consented

__all__ = ["CLAIM_CANDIDATES", "ExtractionMixin", "candidates", "lock_if_waiting", "waiting"]

CLAIM_CANDIDATES: Final = 32
"""How many clips a claim tries before it gives up, when other workers hold the first."""

_S = ClipState


def waiting(now: datetime, *, due_only: bool = True) -> ColumnElement[bool]:
    """The condition that a clip is waiting to be extracted at *now* (or, not *due_only*, is
    receipted at all: a person asked for it). The consent gate is part of it: only a clip of a
    participant whose consent is in force is decrypted; one recorded unarmed waits until it
    is assigned to one."""
    receipted = Clip.state == _S.RECEIPTED
    return and_(
        or_(
            and_(receipted, Clip.next_attempt_at <= now) if due_only else receipted,
            and_(Clip.state == _S.EXTRACTING, Clip.lease_expires_at <= now),
        ),
        Clip.participant.in_(consented()),
    )


def candidates(now: datetime, *, limit: int, clip_id: str | None = None) -> Select[str]:
    """The ids of the first *limit* clips to extract at *now*, in order (reads, locks nothing);
    with *clip_id*, that clip if it is receipted (due or not) or its lease expired."""
    query = select(Clip.clip_id)
    if clip_id is None:
        query = query.where(waiting(now))
    else:
        query = query.where(waiting(now, due_only=False), Clip.clip_id == clip_id)
    # A clip under an expired lease is a retry too: its worker's attempt is lost.
    tries = Clip.extract_attempts + case((Clip.state == _S.EXTRACTING, 1), else_=0)
    order = (tries, Clip.stored_at.desc(), Clip.clip_id)
    return query.order_by(*order).limit(limit)


def lock_if_waiting(clip_id: str, now: datetime, *, due_only: bool = True) -> Select[Clip]:
    """Lock and return clip *clip_id* if it is still waiting at *now* and nobody holds it."""
    still = waiting(now, due_only=due_only)
    return select(Clip).where(Clip.clip_id == clip_id, still).with_for_update(skip_locked=True)


def _positive(value: float, name: str) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive")


class ExtractionMixin:
    """The :class:`~server.catalog.Catalog`'s methods for the extraction worker's lifecycle."""

    audit: AuditLog
    _actor: str
    _clock: Callable[[], datetime]

    _session: Callable[..., AbstractContextManager[Session]]  # the Catalog's transaction

    def claim_for_extraction(
        self,
        *,
        worker: str,
        now: datetime,
        lease_s: float,
        max_attempts: int,
        clip_id: str | None = None,
    ) -> ClipRecord | None:
        """Take the next clip to extract (see :mod:`.extraction`) for *lease_s* seconds, or
        None if no clip is waiting.

        A clip whose lease expired is taken over and the lost attempt counted; a clip whose
        attempts reach *max_attempts* so is marked ``failed`` and passed over. With *clip_id*
        (``painav extract clip``), only that clip: receipted, even if a retry is not yet due,
        or under an expired lease (an ``extracted`` or ``failed`` one is first requeued with
        :meth:`requeue_extraction`). The holder renews the
        lease with :meth:`renew_extraction_lease` and reports with :meth:`mark_extracted` or
        :meth:`extraction_failed`; a report on a lost lease raises :class:`LeaseLostError`.
        """
        now = utc(now, "now")
        bounded(worker, "worker", 64)
        _positive(lease_s, "lease_s")
        _positive(max_attempts, "max_attempts")
        with self._session(write=True) as s:
            ids = s.scalars(candidates(now, limit=CLAIM_CANDIDATES, clip_id=clip_id)).all()
            for candidate in ids:
                lock = lock_if_waiting(candidate, now, due_only=clip_id is None)
                clip = s.scalars(lock).one_or_none()
                if clip is None:
                    continue
                previous = clip.lease_owner if clip.state is _S.EXTRACTING else None
                if previous is not None:
                    clip.extract_attempts += 1
                    clip.extraction_error = f"lease of {previous} expired"
                if clip.extract_attempts >= max_attempts:
                    self._give_up(s, clip, at=now, actor=worker)
                    continue
                move(clip, _S.EXTRACTING, at=now)
                clip.lease_owner = worker
                clip.lease_expires_at = now + timedelta(seconds=lease_s)
                detail = {
                    "lease_s": lease_s,
                    "attempt": clip.extract_attempts + 1,
                    "taken_from": previous,
                }
                self.audit.append(s, "extract", clip_id=clip.clip_id, actor=worker, detail=detail)
                return ClipRecord.of(clip)
            return None

    def renew_extraction_lease(
        self, clip_id: str, *, worker: str, now: datetime, lease_s: float
    ) -> ClipRecord:
        """Extend *worker*'s lease on *clip_id* to *lease_s* seconds from *now* (a long
        extraction's heartbeat); :class:`LeaseLostError` if it no longer holds it."""
        now = utc(now, "now")
        _positive(lease_s, "lease_s")
        with self._session(write=True) as s:
            clip = locked(s, clip_id)
            check_lease(clip, worker, _S.EXTRACTING)
            clip.lease_expires_at = now + timedelta(seconds=lease_s)
            return ClipRecord.of(clip)

    def extraction_failed(
        self,
        clip_id: str,
        *,
        worker: str,
        reason: str,
        now: datetime,
        retry_at: datetime,
        max_attempts: int,
        permanent: bool = False,
    ) -> ClipRecord:
        """Count a failed extraction: back in the queue, due again at *retry_at*, or
        ``failed`` for good with *reason* once it has failed *max_attempts* times (or at once
        if *permanent*: nothing will change on a retry, e.g. a valid envelope whose media is
        broken). *reason* is kept on one line, at most 500 characters."""
        now, retry_at = utc(now, "now"), utc(retry_at, "retry_at")
        _positive(max_attempts, "max_attempts")
        error = one_line(reason)
        if not error:
            raise ValueError("reason must say why the extraction failed")
        with self._session(write=True) as s:
            clip = locked(s, clip_id)
            check_lease(clip, worker, _S.EXTRACTING)
            clip.extract_attempts += 1
            clip.extraction_error = error
            if permanent or clip.extract_attempts >= max_attempts:
                self._give_up(s, clip, at=now, actor=worker)
                return ClipRecord.of(clip)
            move(clip, _S.RECEIPTED, at=now)
            clip.next_attempt_at = retry_at
            detail = {
                "error": error,
                "attempts": clip.extract_attempts,
                "retry_at": format_timestamp(retry_at),
            }
            self.audit.append(s, "extract_failed", clip_id=clip_id, actor=worker, detail=detail)
            return ClipRecord.of(clip)

    def mark_extracted(self, clip_id: str, *, worker: str, now: datetime) -> ClipRecord:
        """Record that *worker* finished extracting *clip_id* (its features and full quality
        check recorded); the audit row names the feature sets the clip has."""
        now = utc(now, "now")
        with self._session(write=True) as s:
            clip = locked(s, clip_id)
            check_lease(clip, worker, _S.EXTRACTING)
            move(clip, _S.EXTRACTED, at=now)
            clip.extracted_at = now
            clip.extraction_error = None
            sets = s.execute(
                select(ClipFeatures.feature_set, ClipFeatures.feature_set_version)
                .where(ClipFeatures.clip_id == clip_id)
                .order_by(ClipFeatures.feature_set, ClipFeatures.feature_set_version)
            ).all()
            passes = s.scalars(
                select(ClipQc.qc_pass).where(ClipQc.clip_id == clip_id).order_by(ClipQc.qc_pass)
            ).all()
            detail = {
                "attempts": clip.extract_attempts + 1,
                "features": [f"{name}@{version}" for name, version in sets],
                "qc": list(passes),
            }
            self.audit.append(s, "extracted", clip_id=clip_id, actor=worker, detail=detail)
            return ClipRecord.of(clip)

    def release_extraction_leases(self, worker_prefix: str, *, now: datetime) -> list[str]:
        """Put back in the queue, due now, the clips held by workers whose name starts with
        *worker_prefix* (a worker's own, at its start: they died with its last run). Each
        counts as a failed attempt, so a clip that kills its worker ends ``failed``.
        Returns the clip ids."""
        now = utc(now, "now")
        with self._session(write=True) as s:
            released = []
            for clip in held_by(s, _S.EXTRACTING, worker_prefix):
                owner = clip.lease_owner
                move(clip, _S.RECEIPTED, at=now)
                clip.extract_attempts += 1
                clip.extraction_error = f"{owner} stopped while extracting"
                clip.next_attempt_at = now
                detail = {"error": clip.extraction_error, "attempts": clip.extract_attempts}
                self.audit.append(
                    s, "extract_failed", clip_id=clip.clip_id, actor=self._actor, detail=detail
                )
                released.append(clip.clip_id)
            return released

    def requeue_extraction(
        self, clip_id: str, *, reason: str, at: datetime | None = None, actor: str | None = None
    ) -> ClipRecord:
        """Put an ``extracted`` or ``failed`` clip back in the extraction queue, due now, with
        its attempts reset: to extract it again (a newer feature set; its old results stay) or
        to retry it (the cause was fixed). *reason* is a code, e.g. ``new_feature_set``."""
        when = self._clock() if at is None else utc(at, "at")
        code(reason, "reason")
        who = bounded(actor, "actor", 64) if actor is not None else self._actor
        with self._session(write=True) as s:
            clip = locked(s, clip_id)
            previous = clip.state
            if previous not in (_S.EXTRACTED, _S.FAILED):
                raise ClipStateError(clip_id, previous.value, "only extracted or failed requeue")
            move(clip, _S.RECEIPTED, at=when)
            detail = {
                "reason": reason,
                "from_state": previous.value,
                "attempts": clip.extract_attempts,
                "error": clip.extraction_error,
            }
            clip.extract_attempts = 0
            clip.extraction_error = None
            clip.extracted_at = None
            clip.next_attempt_at = when
            self.audit.append(s, "extract_requeued", clip_id=clip_id, actor=who, detail=detail)
            return ClipRecord.of(clip)

    def audit_decrypt(self, clip_id: str, *, worker: str, purpose: str) -> None:
        """Write to the audit log that *worker* is decrypting *clip_id* for *purpose* (a code:
        ``extraction``, ``quick_qc``, ``export``, …). Call it before decrypting: a decrypt that
        cannot be audited (the database is down) must not happen."""
        code(purpose, "purpose")
        bounded(worker, "worker", 64)
        with self._session(write=True) as s:
            clip = s.get(Clip, clip_id)
            if clip is None:
                raise ClipNotFoundError(clip_id)
            if clip.state not in STORED_STATES:
                raise ClipStateError(clip_id, clip.state.value, "its ciphertext is not stored")
            detail = {"purpose": purpose, "sha256": clip.sha256, "state": clip.state.value}
            self.audit.append(s, "decrypt", clip_id=clip_id, actor=worker, detail=detail)

    def _give_up(self, s: Session, clip: Clip, *, at: datetime, actor: str) -> None:
        move(clip, _S.FAILED, at=at)
        detail = {"error": clip.extraction_error, "attempts": clip.extract_attempts}
        self.audit.append(s, "failed", clip_id=clip.clip_id, actor=actor, detail=detail)
