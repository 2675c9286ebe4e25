"""The study's tables as SQLAlchemy ORM models: participants, their consent and their visits.

A participant is a pseudonym and what the analysis needs of them (group, language, enrolment
date); nothing here identifies a person. Migration 0004 creates these tables.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import CheckConstraint, Date, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base, _serial

__all__ = ["Consent", "Participant", "Visit"]


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
