"""A participant's withdrawal in the catalog: close the consent gate at once, then, once no
worker holds one of their clips, erase their rows and leave a tombstone.

The files (ciphertexts in the store, feature tables) are erased between the two steps by
:mod:`server.research.withdrawal`, which drives this; a withdrawal interrupted anywhere is
finished by running it again.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from ..audit import AuditLog
from .errors import StudyError
from .exports import supersede_exports
from .lifecycle import LEASED_STATES, STORED_STATES
from .models import Clip, ClipFeatures, ClipQc
from .study_models import (
    ArmRequest,
    ClinicalRecord,
    Consent,
    ErasedClip,
    Participant,
    Tombstone,
    Visit,
)

__all__ = ["ClipToErase", "TombstoneRecord", "WithdrawalMixin"]

_ERASED_TABLES: Final = (
    "clip_features", "clip_qc", "clips", "visits", "consents", "clinical_records", "participants"
)  # fmt: skip


@dataclass(frozen=True)
class ClipToErase:
    clip_id: str
    sha256: str
    stored: bool  # whether the store may hold its ciphertext
    busy_until: datetime | None  # a worker's live lease on it, if any


@dataclass(frozen=True)
class TombstoneRecord:
    pseudonym: str
    withdrawn_at: datetime
    erased_at: datetime
    erased: dict[str, int]


class WithdrawalMixin:
    """The :class:`~server.catalog.Catalog`'s methods for withdrawal and its tombstones."""

    audit: AuditLog
    _actor: str
    _clock: Callable[[], datetime]
    _session: Callable[..., AbstractContextManager[Session]]  # the Catalog's transaction
    _engine: Engine

    def begin_withdrawal(self, pseudonym: str) -> list[ClipToErase]:
        """Mark *pseudonym* withdrawn (from now on none of their clips is extracted or
        exported) and return their clips. Again for one withdrawn already: the same list."""
        now = self._clock()
        with self._session(write=True) as s:
            participant = s.get(Participant, pseudonym, with_for_update=True)
            if participant is None:
                done = s.get(Tombstone, pseudonym)
                if done is not None:
                    raise StudyError(
                        f"participant {pseudonym} withdrew on {done.withdrawn_at:%Y-%m-%d}"
                    )
                raise StudyError(f"participant {pseudonym[:40]!r} is not enrolled")
            if participant.withdrawn_at is None:
                participant.withdrawn_at = now
                self.audit.append(
                    s, "withdrawal_started", actor=self._actor, detail={"pseudonym": pseudonym}
                )
            clips = s.scalars(select(Clip).where(Clip.participant == pseudonym)).all()
            return [
                ClipToErase(
                    clip.clip_id,
                    clip.sha256,
                    stored=clip.state in STORED_STATES or clip.store_key is not None,
                    busy_until=clip.lease_expires_at if _busy(clip, now) else None,
                )
                for clip in clips
            ]

    def finish_withdrawal(self, pseudonym: str, *, files_erased: int) -> TombstoneRecord:
        """Erase the rows of a withdrawn participant (clips, features, quality checks, visits,
        consents, clinical and questionnaire data, the participant), mark the exports that
        hold them superseded and leave the tombstone, in one transaction. Raises
        :class:`StudyError` if a worker holds one of their clips: the caller waits and tries
        again."""
        now = self._clock()
        with self._session(write=True) as s:
            participant = s.get(Participant, pseudonym, with_for_update=True)
            if participant is None or participant.withdrawn_at is None:
                raise StudyError(f"participant {pseudonym} has not begun to withdraw")
            clips = s.scalars(select(Clip).where(Clip.participant == pseudonym)).all()
            busy = [c.clip_id for c in clips if _busy(c, now)]
            if busy:
                raise StudyError(f"{len(busy)} clip(s) of {pseudonym} held by a worker")
            ids = [c.clip_id for c in clips]
            counts: dict[str, int] = {
                "clips": len(ids),
                "feature_sets": _count(s, ClipFeatures, ids),
                "quality_checks": _count(s, ClipQc, ids),
                "visits": _count_of(s, Visit, pseudonym),
                "clinical_records": _count_of(s, ClinicalRecord, pseudonym),
                "files": files_erased,
            }
            for model in (ClipFeatures, ClipQc):
                if ids:
                    s.execute(delete(model).where(model.clip_id.in_(ids)))
            for clip in clips:
                s.add(ErasedClip(clip_id=clip.clip_id, device_id=clip.device_id,
                                 sha256=clip.sha256, erased_at=now))  # fmt: skip
                s.delete(clip)
            s.execute(delete(Visit).where(Visit.pseudonym == pseudonym))
            s.execute(delete(ClinicalRecord).where(ClinicalRecord.pseudonym == pseudonym))
            s.execute(delete(ArmRequest).where(ArmRequest.pseudonym == pseudonym))
            s.execute(delete(Consent).where(Consent.pseudonym == pseudonym))
            withdrawn_at = participant.withdrawn_at
            superseded = supersede_exports(s, pseudonym, now)
            s.delete(participant)
            s.add(Tombstone(pseudonym=pseudonym, withdrawn_at=withdrawn_at, erased_at=now,
                            erased=counts))  # fmt: skip
            s.flush()
            detail: dict[str, Any] = {"pseudonym": pseudonym, **counts, "exports": superseded}
            self.audit.append(s, "participant_withdrawn", actor=self._actor, detail=detail)
            return TombstoneRecord(pseudonym, withdrawn_at, now, counts)

    def scrub(self) -> None:
        """Push erased rows out of the database files: on SQLite (``secure_delete`` zeroes the
        pages) a checkpoint that empties the write-ahead log, which still holds the old pages;
        on PostgreSQL a VACUUM of the tables a withdrawal deletes from, which frees the dead
        rows for reuse (it does not overwrite them: see the README on erasure)."""
        if self._engine.dialect.name == "sqlite":
            # On the driver's connection: outside a transaction (no BEGIN IMMEDIATE).
            raw = self._engine.raw_connection()
            try:
                raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                raw.close()
            return
        with self._engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in _ERASED_TABLES:
                conn.exec_driver_sql(f"VACUUM {table}")

    def tombstone(self, pseudonym: str) -> TombstoneRecord | None:
        with self._session(write=False) as s:
            row = s.get(Tombstone, pseudonym)
            if row is None:
                return None
            return TombstoneRecord(row.pseudonym, row.withdrawn_at, row.erased_at, row.erased)

    def note_discarded(self, clip_id: str, device_id: str, sha256: str) -> None:
        """Record (and audit) that an announced clip of a withdrawn participant was receipted
        and discarded, never stored. Again for the same clip: nothing new."""
        with self._session(write=True) as s:
            if s.get(ErasedClip, clip_id) is not None:
                return
            s.add(ErasedClip(clip_id=clip_id, device_id=device_id, sha256=sha256,
                             erased_at=self._clock()))  # fmt: skip
            s.flush()
            self.audit.append(s, "discarded_on_arrival", clip_id=clip_id, actor=self._actor,
                              detail={"device_id": device_id, "sha256": sha256})  # fmt: skip

    def discarded_on_arrival(self, clip_id: str, participant: str | None) -> bool:
        """Whether an announced clip is to be receipted and discarded, never stored: it was
        erased, or it names a participant who has withdrawn."""
        with self._session(write=False) as s:
            if s.get(ErasedClip, clip_id) is not None:
                return True
            if participant is None:
                return False
            if s.get(Tombstone, participant) is not None:
                return True
            row = s.get(Participant, participant)
            return row is not None and row.withdrawn_at is not None


def _busy(clip: Clip, now: datetime) -> bool:
    """Whether a worker holds *clip* under a live lease (fetching or extracting it)."""
    expires = clip.lease_expires_at
    return clip.state in LEASED_STATES and expires is not None and expires > now


def _count(s: Session, model: type[ClipFeatures] | type[ClipQc], ids: list[str]) -> int:
    if not ids:
        return 0
    return int(s.scalar(select(func.count()).select_from(model).where(model.clip_id.in_(ids))) or 0)


def _count_of(s: Session, model: type[Visit] | type[ClinicalRecord], pseudonym: str) -> int:
    query = select(func.count()).select_from(model).where(model.pseudonym == pseudonym)
    return int(s.scalar(query) or 0)
