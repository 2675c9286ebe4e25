"""The record of research exports: each one written, and which a withdrawal superseded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import AuditLog
from .study_models import Export

__all__ = ["ExportRecord", "ExportsMixin", "supersede_exports"]


@dataclass(frozen=True)
class ExportRecord:
    id: int
    created_at: datetime
    actor: str
    out: str
    participants: tuple[str, ...]
    media: bool
    digest: str
    superseded_at: datetime | None


class ExportsMixin:
    """The :class:`~server.catalog.Catalog`'s methods for the record of exports."""

    audit: AuditLog
    _actor: str
    _clock: Callable[[], datetime]
    _session: Callable[..., AbstractContextManager[Session]]  # the Catalog's transaction

    def record_export(
        self, out: str, *, participants: Sequence[str], media: bool, digest: str
    ) -> ExportRecord:
        """Record (and audit) an export just written to *out*."""
        with self._session(write=True) as s:
            row = Export(
                created_at=self._clock(),
                actor=self._actor,
                out=out[:1024],
                participants=sorted(participants),
                media=media,
                digest=digest,
                superseded_at=None,
            )
            s.add(row)
            s.flush()
            detail = {"export": row.id, "participants": len(participants), "media": media,
                      "digest": digest}  # fmt: skip
            self.audit.append(s, "export", actor=self._actor, detail=detail)
            return _record(row)

    def exports(self) -> list[ExportRecord]:
        with self._session(write=False) as s:
            return [_record(row) for row in s.scalars(select(Export).order_by(Export.id))]


def supersede_exports(s: Session, pseudonym: str, at: datetime) -> list[int]:
    """Mark the exports that hold *pseudonym* superseded (in the caller's transaction)."""
    marked = []
    for row in s.scalars(select(Export).where(Export.superseded_at.is_(None))):
        if pseudonym in row.participants:
            row.superseded_at = at
            marked.append(row.id)
    return marked


def _record(row: Export) -> ExportRecord:
    return ExportRecord(
        row.id,
        row.created_at,
        row.actor,
        row.out,
        tuple(row.participants),
        row.media,
        row.digest,
        row.superseded_at,
    )
