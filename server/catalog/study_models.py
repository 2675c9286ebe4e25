"""The study's tables as SQLAlchemy ORM models: participants, their consent, visits and clinical
data, what a withdrawal leaves (tombstones, the ids of erased clips), and the research exports.

A participant is a pseudonym and what the analysis needs of them (group, language, enrolment
date); nothing here identifies a person. Migration 0004 creates these tables.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Date, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base, _serial

__all__ = ["ClinicalRecord", "Consent", "ErasedClip", "Export", "Participant", "Tombstone", "Visit"]


class Participant(Base):
    """A participant of the study, by pseudonym."""

    __tablename__ = "participants"

    pseudonym: Mapped[str] = mapped_column(String(16), primary_key=True)
    study_group: Mapped[str] = mapped_column(String(8))
    language: Mapped[str] = mapped_column(String(2))
    enrolled_on: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime]
    withdrawn_at: Mapped[datetime | None] = mapped_column(
        comment="When the participant withdrew consent; their data is erased then."
    )

    __table_args__ = (
        CheckConstraint("study_group IN ('pain', 'control')", name="study_group"),
        CheckConstraint("language IN ('nl', 'en')", name="language"),
    )


class Consent(Base):
    """One signed consent form; a participant may sign a newer version later (the newest is
    in force until the participant withdraws)."""

    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(_serial(), primary_key=True, autoincrement=True)
    pseudonym: Mapped[str] = mapped_column(
        String(16), ForeignKey("participants.pseudonym"), index=True
    )
    consented_on: Mapped[date] = mapped_column(Date)
    form_version: Mapped[str] = mapped_column(String(32))
    recorded_at: Mapped[datetime]


class Visit(Base):
    """A day a participant is recorded on: numbered from 1, open until closed."""

    __tablename__ = "visits"

    pseudonym: Mapped[str] = mapped_column(
        String(16), ForeignKey("participants.pseudonym"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    opened_on: Mapped[date] = mapped_column(Date)
    closed_at: Mapped[datetime | None]

    __table_args__ = (CheckConstraint("number >= 1", name="number"),)


class Tombstone(Base):
    """What is left of a participant who withdrew: the pseudonym, when, and how much of their
    data was erased. A clip naming them that arrives later is receipted and discarded."""

    __tablename__ = "tombstones"

    pseudonym: Mapped[str] = mapped_column(String(16), primary_key=True)
    withdrawn_at: Mapped[datetime]
    erased_at: Mapped[datetime]
    erased: Mapped[dict[str, Any]] = mapped_column(comment="Counts of what was erased, by kind.")


class ErasedClip(Base):
    """A clip erased with its participant's withdrawal: its id and hash, nothing of its content,
    so that the unit's copy is receipted and discarded if it is announced again."""

    __tablename__ = "erased_clips"

    clip_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    erased_at: Mapped[datetime]


class Export(Base):
    """One research export: where, by whom, of which participants; ``superseded_at`` once one
    of them withdrew (the export then holds data it may no longer be used with)."""

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(_serial(), primary_key=True, autoincrement=True)
    created_at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(64))
    out: Mapped[str] = mapped_column(String(1024))
    participants: Mapped[list[str]] = mapped_column(JSON)
    media: Mapped[bool]
    digest: Mapped[str] = mapped_column(String(64), comment="SHA-256 over the files written.")
    superseded_at: Mapped[datetime | None]


class ClinicalRecord(Base):
    """One row of clinical or questionnaire data from the study's EDC: a pain score, an
    analgesic, the tumour, a questionnaire's answers; keyed by the export's own instance."""

    __tablename__ = "clinical_records"

    id: Mapped[int] = mapped_column(_serial(), primary_key=True, autoincrement=True)
    pseudonym: Mapped[str] = mapped_column(
        String(16), ForeignKey("participants.pseudonym"), index=True
    )
    domain: Mapped[str] = mapped_column(String(16))
    instance: Mapped[str] = mapped_column(String(160))
    data: Mapped[dict[str, Any]]
    imported_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("pseudonym", "domain", "instance"),
        CheckConstraint("domain IN ('nrs', 'analgesic', 'tumour', 'questionnaire')", name="domain"),
    )


class ArmRequest(Base):
    """A researcher's request to arm a unit for a participant's visit (or, ``pseudonym`` None,
    to disarm it): the receiver signs it as an arm command and sends it, then sets
    ``sent_at``. Only a unit's newest request is sent."""

    __tablename__ = "arm_requests"

    id: Mapped[int] = mapped_column(_serial(), primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(32), index=True)
    pseudonym: Mapped[str | None] = mapped_column(String(16))
    visit: Mapped[str | None] = mapped_column(String(32))
    requested_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    actor: Mapped[str] = mapped_column(String(64))
    sent_at: Mapped[datetime | None]
