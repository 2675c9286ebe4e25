"""Clinical and questionnaire data from the study's EDC in the catalog: an import is all or
nothing, importing the same export again changes nothing, and a changed value is updated and
audited (which fields changed, not their values)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import AuditLog
from .errors import StudyError
from .study_models import ClinicalRecord, Participant

__all__ = ["ClinicalMixin", "ClinicalRow", "Domain", "ImportRefusedError", "ImportReport"]

Domain = Literal["nrs", "analgesic", "tumour", "questionnaire"]


@dataclass(frozen=True)
class ClinicalRow:
    pseudonym: str
    domain: Domain
    instance: str  # the export's own key for the row ("" for study data)
    data: dict[str, Any]
    file: str  # where in the export, for a problem found later (e.g. not enrolled)
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}: row {self.line}"


class ImportRefusedError(StudyError):
    """An import with problems: each is a line naming file, row, field and reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        shown = "; ".join(problems[:5]) + (
            f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        )
        super().__init__(f"nothing imported: {shown}")
        self.problems = list(problems)


@dataclass(frozen=True)
class ImportReport:
    new: int
    updated: int
    unchanged: int


class ClinicalMixin:
    """The :class:`~server.catalog.Catalog`'s methods for clinical data."""

    audit: AuditLog
    _actor: str
    _clock: Callable[[], datetime]
    _session: Callable[..., AbstractContextManager[Session]]  # the Catalog's transaction

    def import_clinical(self, rows: Sequence[ClinicalRow], *, source: str) -> ImportReport:
        """Import *rows* (from :func:`server.research.mapping.clinical_rows`) in one
        transaction; :class:`ImportRefusedError` lists every row that cannot be, and then
        nothing is written. *source* names the file in the audit log (its name and hash)."""
        now = self._clock()
        new = updated = unchanged = 0
        with self._session(write=True) as s:
            problems = _problems(s, rows)
            if problems:
                raise ImportRefusedError([text for *_, text in problems])
            for row in rows:
                key = (row.pseudonym, row.domain, row.instance)
                found = s.scalars(
                    select(ClinicalRecord).where(
                        ClinicalRecord.pseudonym == key[0],
                        ClinicalRecord.domain == key[1],
                        ClinicalRecord.instance == key[2],
                    )
                ).one_or_none()
                if found is None:
                    s.add(ClinicalRecord(pseudonym=row.pseudonym, domain=row.domain,
                                         instance=row.instance, data=row.data, imported_at=now,
                                         updated_at=now))  # fmt: skip
                    s.flush()  # a later row of the same key in this import finds it
                    new += 1
                elif found.data != row.data:
                    changed = sorted(k for k in {*found.data, *row.data}
                                     if found.data.get(k) != row.data.get(k))  # fmt: skip
                    found.data, found.updated_at = row.data, now
                    detail = {"pseudonym": row.pseudonym, "domain": row.domain,
                              "instance": row.instance, "fields": changed}  # fmt: skip
                    self.audit.append(s, "clinical_updated", actor=self._actor, detail=detail)
                    updated += 1
                else:
                    unchanged += 1
            report = {"source": source, "new": new, "updated": updated, "unchanged": unchanged}
            self.audit.append(s, "clinical_import", actor=self._actor, detail=report)
        return ImportReport(new, updated, unchanged)

    def clinical_problems(self, rows: Sequence[ClinicalRow]) -> list[tuple[str, int, str]]:
        """What :meth:`import_clinical` would refuse in *rows*, without importing: rows of
        participants not enrolled or withdrawn, rows contradicting another; as ``(file, line,
        problem)``."""
        with self._session(write=False) as s:
            return _problems(s, rows)

    def clinical(self, pseudonym: str) -> list[tuple[str, str, dict[str, Any]]]:
        """The participant's clinical rows as ``(domain, instance, data)``, sorted."""
        query = (
            select(ClinicalRecord)
            .where(ClinicalRecord.pseudonym == pseudonym)
            .order_by(ClinicalRecord.domain, ClinicalRecord.instance)
        )
        with self._session(write=False) as s:
            return [(r.domain, r.instance, dict(r.data)) for r in s.scalars(query)]


def _problems(s: Session, rows: Sequence[ClinicalRow]) -> list[tuple[str, int, str]]:
    """Rows of participants who are not enrolled or have withdrawn, and rows that contradict
    another row of the same import."""
    problems: list[tuple[str, int, str]] = []

    def problem(row: ClinicalRow, text: str) -> None:
        problems.append((row.file, row.line, f"{row.where}: {text}"))

    status: dict[str, Participant | None] = {}
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        if row.pseudonym not in status:
            status[row.pseudonym] = s.get(Participant, row.pseudonym)
        participant = status[row.pseudonym]
        if participant is None:
            problem(row, f"participant {row.pseudonym} is not enrolled in painav")
        elif participant.withdrawn_at is not None:
            problem(row, f"participant {row.pseudonym} has withdrawn")
        key = (row.pseudonym, row.domain, row.instance)
        if key in seen and seen[key] != row.data:
            instance = row.instance or "(study data)"
            problem(row, f"{row.domain} {instance} of {row.pseudonym} differs from an earlier row")
        seen.setdefault(key, row.data)
    return problems
