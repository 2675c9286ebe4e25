"""The catalog's tables as SQLAlchemy ORM models: units, their clips and their events.

The audit tables are in :mod:`server.audit`; the migrations in ``migrations/`` create both.
No column holds a patient identifier other than the pseudonymous study id (``participant``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from server.audit import NAMING_CONVENTION, UtcDateTime

from .lifecycle import ClipState

__all__ = ["Base", "Clip", "Unit", "UnitEvent"]


class Base(DeclarativeBase):
    """The declarative base of the catalog's tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar = {datetime: UtcDateTime, dict[str, Any]: JSON}


class Unit(Base):
    """A bedside unit as last heard of: status (retained ``status``) and last telemetry."""

    __tablename__ = "units"

    device_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(32))
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime] = mapped_column(
        comment="When the unit itself last published; its offline will does not count."
    )
    status: Mapped[str | None] = mapped_column(String(16))
    status_since: Mapped[datetime | None]
    status_reason: Mapped[str | None] = mapped_column(String(64))
    software_version: Mapped[str | None] = mapped_column(String(64))
    armed: Mapped[bool | None]
    last_telemetry: Mapped[dict[str, Any] | None]
    telemetry_at: Mapped[datetime | None]


class Clip(Base):
    """One announced clip and where it is in its lifecycle, including the fetch queue."""

    __tablename__ = "clips"

    clip_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(32), ForeignKey("units.device_id"))
    state: Mapped[ClipState] = mapped_column(
        # A string with a CHECK, not a PostgreSQL enum type: a new state is then a plain
        # migration on both backends.
        Enum(
            ClipState,
            name="state",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda states: [state.value for state in states],
        )
    )
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any]]
    signature: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(String(2048))
    participant: Mapped[str | None] = mapped_column(String(16), index=True)
    announced_at: Mapped[datetime]
    last_announced_at: Mapped[datetime]
    announce_count: Mapped[int] = mapped_column(Integer)
    state_changed_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    quarantine_reason: Mapped[str | None] = mapped_column(String(64))
    store_key: Mapped[str | None] = mapped_column(String(256))
    stored_at: Mapped[datetime | None]
    receipted_at: Mapped[datetime | None]

    __table_args__ = (
        # The fetch queue: clips waiting (by next attempt) and fetches in flight (by lease).
        Index("ix_clips_queue", "state", "next_attempt_at"),
        Index("ix_clips_lease", "state", "lease_expires_at"),
        Index("ix_clips_device_state", "device_id", "state", "announced_at"),
        CheckConstraint("announce_count >= 1", name="announce_count"),
        CheckConstraint("attempts >= 0", name="attempts"),
        # The database itself refuses rows that break the lifecycle's bookkeeping.
        CheckConstraint(
            "(state = 'quarantined') = (quarantine_reason IS NOT NULL)", name="quarantine_reason"
        ),
        CheckConstraint(
            "state <> 'fetching' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name="lease",
        ),
        CheckConstraint(
            "state NOT IN ('stored', 'receipted', 'extracting', 'extracted') "
            "OR (store_key IS NOT NULL AND stored_at IS NOT NULL)",
            name="stored",
        ),
    )


class UnitEvent(Base):
    """An event a unit published (aborted, discarded, refused, error, …), kept once."""

    __tablename__ = "unit_events"

    # SQLite numbers rows itself only for a column declared exactly INTEGER PRIMARY KEY.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_key: Mapped[str] = mapped_column(
        String(64), unique=True, comment="SHA-256 of device id and payload: QoS 1 redelivery."
    )
    device_id: Mapped[str] = mapped_column(String(32), ForeignKey("units.device_id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime]
    received_at: Mapped[datetime]
    # Not a foreign key: an event may name a clip that was never announced (discarded).
    clip_id: Mapped[str | None] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(String(500))
