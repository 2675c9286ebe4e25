"""The study in the catalog: enrolling participants, their consent, opening and closing visits,
and whether a unit may be armed for one. Every change is audited in the same transaction.

The rules themselves (what a pseudonym may look like, the groups, the consent form version) are
in :mod:`.study_rules`; this module applies them to the rows. A refused change raises
:class:`StudyError` with one line and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from ..audit import AuditLog
from . import study_rules as rules
from .clip_rows import locked
from .errors import StudyError
from .lifecycle import ClipState
from .models import Clip
from .records import ClipRecord
from .study_models import Consent, Participant, Visit

__all__ = ["ConsentRecord", "ParticipantRecord", "StudyMixin", "VisitRecord", "consented"]


def consented() -> Select[str]:
    """The pseudonyms whose consent is in force: the consent gate of extraction and export."""
    return select(Participant.pseudonym).where(Participant.withdrawn_at.is_(None))


@dataclass(frozen=True)
class ConsentRecord:
    consented_on: date
    form_version: str
    recorded_at: datetime


@dataclass(frozen=True)
class VisitRecord:
    number: int
    opened_on: date
    closed_at: datetime | None

    @property
    def label(self) -> str:
        """The label a clip of this visit carries (``V1``, ``V2``, …)."""
        return rules.visit_label(self.number)


@dataclass(frozen=True)
class ParticipantRecord:
    """A participant with their consent (the newest form signed) and visits, oldest first."""

    pseudonym: str
    group: str
    language: str
    enrolled_on: date
    consent: ConsentRecord | None
    visits: tuple[VisitRecord, ...]
    withdrawn_at: datetime | None

    @property
    def consented(self) -> bool:
        """Whether a consent is in force: signed and not withdrawn."""
        return self.consent is not None and self.withdrawn_at is None

    @property
    def open_visit(self) -> VisitRecord | None:
        return next((v for v in self.visits if v.closed_at is None), None)


class StudyMixin:
    """The :class:`~server.catalog.Catalog`'s methods for participants, consent and visits."""

    audit: AuditLog
    _actor: str
    _clock: Callable[[], datetime]
    _session: Callable[..., AbstractContextManager[Session]]  # the Catalog's transaction

    def enrol(
        self,
        pseudonym: str,
        *,
        group: str,
        language: str,
        enrolled_on: date,
        consented_on: date,
        form_version: str,
    ) -> ParticipantRecord:
        """Enrol *pseudonym* with a signed consent (no one is enrolled without one)."""
        today = self._clock().date()
        problem = (
            rules.pseudonym_problem(pseudonym)
            or rules.group_problem(group)
            or rules.language_problem(language)
            or rules.consent_problem(form_version, consented_on, today=today)
            or (f"enrolment date {enrolled_on} is in the future" if enrolled_on > today else None)
        )
        if problem:
            raise StudyError(problem)
        now = self._clock()
        with self._session(write=True) as s:
            if s.get(Participant, pseudonym) is not None:
                raise StudyError(f"participant {pseudonym} is enrolled already; nothing changed")
            s.add(
                Participant(
                    pseudonym=pseudonym,
                    study_group=group,
                    language=language,
                    enrolled_on=enrolled_on,
                    created_at=now,
                    withdrawn_at=None,
                )
            )
            s.flush()  # the participant's row first: no relationship() orders the inserts
            s.add(_consent(pseudonym, consented_on, form_version, now))
            s.flush()
            detail = {"pseudonym": pseudonym, "group": group, "form_version": form_version}
            self.audit.append(s, "participant_enrolled", actor=self._actor, detail=detail)
            return _record(s, pseudonym)

    def record_consent(
        self, pseudonym: str, *, consented_on: date, form_version: str
    ) -> ParticipantRecord:
        """Record a newer consent form the participant signed (it replaces the one in force).
        A withdrawn participant cannot consent again here: withdrawal erases their data."""
        problem = rules.consent_problem(form_version, consented_on, today=self._clock().date())
        if problem:
            raise StudyError(problem)
        now = self._clock()
        with self._session(write=True) as s:
            current = _record(s, pseudonym)
            if current.withdrawn_at is not None:
                raise StudyError(f"participant {pseudonym} has withdrawn; nothing changed")
            s.add(_consent(pseudonym, consented_on, form_version, now))
            s.flush()
            detail = {"pseudonym": pseudonym, "form_version": form_version}
            self.audit.append(s, "consent_recorded", actor=self._actor, detail=detail)
            return _record(s, pseudonym)

    def open_visit(self, pseudonym: str, *, on: date) -> VisitRecord:
        """Open the participant's next visit. Controls have one visit; the pain group several,
        one open at a time. Refused without consent in force."""
        with self._session(write=True) as s:
            current = _record(s, pseudonym, lock=True)
            if not current.consented:
                raise StudyError(f"participant {pseudonym} has no consent in force")
            if current.open_visit is not None:
                raise StudyError(
                    f"participant {pseudonym}: visit {current.open_visit.label} is still open"
                )
            if current.group == "control" and current.visits:
                raise StudyError(f"participant {pseudonym} is a control: one visit only")
            number = len(current.visits) + 1
            s.add(Visit(pseudonym=pseudonym, number=number, opened_on=on, closed_at=None))
            s.flush()
            detail = {"pseudonym": pseudonym, "visit": number}
            self.audit.append(s, "visit_opened", actor=self._actor, detail=detail)
            return VisitRecord(number, on, None)

    def close_visit(self, pseudonym: str, number: int) -> VisitRecord:
        """Close a visit: no unit is armed for it any more."""
        with self._session(write=True) as s:
            visit = s.get(Visit, (pseudonym, number), with_for_update=True)
            if visit is None:
                raise StudyError(f"participant {pseudonym} has no visit {number}")
            if visit.closed_at is None:
                visit.closed_at = self._clock()
                detail = {"pseudonym": pseudonym, "visit": number}
                self.audit.append(s, "visit_closed", actor=self._actor, detail=detail)
            return VisitRecord(visit.number, visit.opened_on, visit.closed_at)

    def assign_clip(self, clip_id: str, pseudonym: str, visit: int) -> ClipRecord:
        """Assign a clip recorded while its unit was not armed to a participant's visit. The
        participant's consent must be in force and the visit opened (it may be closed since);
        a clip that names a participant already keeps it."""
        with self._session(write=True) as s:
            current = _record(s, pseudonym)
            if not current.consented:
                raise StudyError(f"participant {pseudonym} has no consent in force")
            if not any(v.number == visit for v in current.visits):
                raise StudyError(f"participant {pseudonym} has no visit {visit}")
            clip = locked(s, clip_id)
            if clip.participant is not None:
                raise StudyError(f"clip {clip_id} is {clip.participant}'s already; nothing changed")
            if clip.state is ClipState.QUARANTINED:
                raise StudyError(f"clip {clip_id} is quarantined: not assigned")
            clip.participant, clip.visit = pseudonym, rules.visit_label(visit)
            detail = {"pseudonym": pseudonym, "visit": visit}
            self.audit.append(s, "clip_assigned", clip_id=clip_id, actor=self._actor, detail=detail)
            return ClipRecord.of(clip)

    def participant(self, pseudonym: str) -> ParticipantRecord:
        with self._session(write=False) as s:
            return _record(s, pseudonym)

    def extracted_clips(self, pseudonym: str) -> list[ClipRecord]:
        """The participant's extracted clips, oldest first: what an export holds of them."""
        query = (
            select(Clip)
            .where(Clip.participant == pseudonym, Clip.state == ClipState.EXTRACTED)
            .order_by(Clip.announced_at, Clip.clip_id)
        )
        with self._session(write=False) as s:
            return [ClipRecord.of(row) for row in s.scalars(query)]

    def participants(self) -> list[ParticipantRecord]:
        with self._session(write=False) as s:
            names = s.scalars(select(Participant.pseudonym).order_by(Participant.pseudonym))
            return [_record(s, name) for name in names.all()]

    def armable_visit(self, pseudonym: str, number: int) -> VisitRecord:
        """The visit a unit may be armed for, or :class:`StudyError` saying why not: the
        participant is enrolled, their consent is in force, and the visit is open."""
        current = self.participant(pseudonym)
        if not current.consented:
            raise StudyError(f"participant {pseudonym} has no consent in force: not armed")
        visit = next((v for v in current.visits if v.number == number), None)
        if visit is None or visit.closed_at is not None:
            state = "closed" if visit is not None else "not opened"
            raise StudyError(f"participant {pseudonym}: visit {number} is {state}: not armed")
        return visit


def _consent(pseudonym: str, on: date, form_version: str, now: datetime) -> Consent:
    return Consent(
        pseudonym=pseudonym,
        consented_on=on,
        form_version=form_version,
        recorded_at=now,
    )


def _record(s: Session, pseudonym: str, *, lock: bool = False) -> ParticipantRecord:
    row = s.get(Participant, pseudonym, with_for_update=lock)
    if row is None:
        raise StudyError(f"participant {pseudonym[:40]!r} is not enrolled")
    consent = s.scalars(
        select(Consent).where(Consent.pseudonym == pseudonym).order_by(Consent.id.desc()).limit(1)
    ).one_or_none()
    visits = s.scalars(select(Visit).where(Visit.pseudonym == pseudonym).order_by(Visit.number))
    return ParticipantRecord(
        pseudonym=row.pseudonym,
        group=row.study_group,
        language=row.language,
        enrolled_on=row.enrolled_on,
        consent=None
        if consent is None
        else ConsentRecord(consent.consented_on, consent.form_version, consent.recorded_at),
        visits=tuple(VisitRecord(v.number, v.opened_on, v.closed_at) for v in visits),
        withdrawn_at=row.withdrawn_at,
    )
