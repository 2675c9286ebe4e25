"""The catalog's tables as SQLAlchemy ORM models: units, their clips and their events, and what
extraction found in each clip (features, quality checks).

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
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from server.audit import NAMING_CONVENTION, UtcDateTime

from .lifecycle import ClipState

__all__ = ["Base", "Clip", "ClipFeatures", "ClipQc", "Unit", "UnitEvent"]


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
    """One announced clip and where it is in its lifecycle, including the fetch queue and the
    extraction queue.

    The queues share columns, since a clip is in one at a time: ``next_attempt_at`` is when an
    ``announced`` clip is due to be fetched, or a ``receipted`` one to be extracted; the lease
    (``lease_owner``, ``lease_expires_at``) is held while ``fetching`` or ``extracting``.
    Attempts and errors are kept apart (``attempts``/``last_error`` for fetching,
    ``extract_attempts``/``extraction_error`` for extraction), so neither hides the other.
    """

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
    visit: Mapped[str | None] = mapped_column(
        String(32), comment="The visit label: from the manifest, or given when assigned later."
    )
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
    extract_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    extraction_error: Mapped[str | None] = mapped_column(
        String(500), comment="Why the last extraction attempt failed; for failed, why for good."
    )
    extracted_at: Mapped[datetime | None]

    __table_args__ = (
        # The fetch queue: clips waiting (by next attempt) and fetches in flight (by lease).
        Index("ix_clips_queue", "state", "next_attempt_at"),
        Index("ix_clips_lease", "state", "lease_expires_at"),
        Index("ix_clips_device_state", "device_id", "state", "announced_at"),
        CheckConstraint("announce_count >= 1", name="announce_count"),
        CheckConstraint("attempts >= 0", name="attempts"),
        CheckConstraint("extract_attempts >= 0", name="extract_attempts"),
        # The database itself refuses rows that break the lifecycle's bookkeeping.
        CheckConstraint(
            "(state = 'quarantined') = (quarantine_reason IS NOT NULL)", name="quarantine_reason"
        ),
        CheckConstraint(
            "state NOT IN ('fetching', 'extracting') "
            "OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name="lease",
        ),
        CheckConstraint(
            "state NOT IN ('stored', 'receipted', 'extracting', 'extracted', 'failed') "
            "OR (store_key IS NOT NULL AND stored_at IS NOT NULL)",
            name="stored",
        ),
        CheckConstraint("state <> 'failed' OR extraction_error IS NOT NULL", name="failed"),
        CheckConstraint("state <> 'extracted' OR extracted_at IS NOT NULL", name="extracted"),
    )


EVENT_KEY_COMMENT = (
    "SHA-256 of device id and event id (events/2), or of device id and payload (events/1)."
)


class UnitEvent(Base):
    """An event a unit published (aborted, discarded, refused, error, …), kept once."""

    __tablename__ = "unit_events"
    # An events/2 event is recorded once per unit and id, however often the unit publishes it
    # (it does until acknowledged). NULL ids (events/1) never conflict.
    __table_args__ = (UniqueConstraint("device_id", "event_id"),)

    # SQLite numbers rows itself only for a column declared exactly INTEGER PRIMARY KEY.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_key: Mapped[str] = mapped_column(String(64), unique=True, comment=EVENT_KEY_COMMENT)
    event_id: Mapped[str | None] = mapped_column(
        String(64), comment="The unit's id of the event (painav.events/2); NULL for events/1."
    )
    device_id: Mapped[str] = mapped_column(String(32), ForeignKey("units.device_id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime]
    received_at: Mapped[datetime]
    # Not a foreign key: an event may name a clip that was never announced (discarded).
    clip_id: Mapped[str | None] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(String(500))


def _serial() -> Any:
    # SQLite numbers rows itself only for a column declared exactly INTEGER PRIMARY KEY.
    return BigInteger().with_variant(Integer, "sqlite")


class ClipFeatures(Base):
    """One feature set extracted from one clip, with what made it (its provenance).

    A clip has one row per feature set, version and configuration: a re-run writes nothing
    new, a newer version or another configuration adds a row beside the old ones. Per-clip
    values (e.g. the 88 eGeMAPS functionals) are in ``clip_values``; per-frame data is a file
    the worker wrote (e.g. Parquet), referenced by a path relative to the feature folder and
    its SHA-256.
    """

    __tablename__ = "clip_features"

    id: Mapped[int] = mapped_column(_serial(), primary_key=True, autoincrement=True)
    clip_id: Mapped[str] = mapped_column(String(64), ForeignKey("clips.clip_id"), index=True)
    feature_set: Mapped[str] = mapped_column(String(64))
    feature_set_version: Mapped[str] = mapped_column(String(32))
    config_hash: Mapped[str] = mapped_column(String(64))
    tool: Mapped[str] = mapped_column(String(64))
    tool_version: Mapped[str] = mapped_column(String(64))
    model_file: Mapped[str | None] = mapped_column(String(256))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    sample_rate_hz: Mapped[int | None] = mapped_column(
        Integer, comment="The analysis sample rate (audio features); None for video."
    )
    painav_version: Mapped[str] = mapped_column(String(64))
    worker: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    clip_values: Mapped[dict[str, Any] | None]
    frames_path: Mapped[str | None] = mapped_column(String(512))
    frames_sha256: Mapped[str | None] = mapped_column(String(64))
    frame_count: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        # Named by hand: the convention's name would pass PostgreSQL's 63 characters.
        UniqueConstraint(
            "clip_id",
            "feature_set",
            "feature_set_version",
            "config_hash",
            name="uq_clip_features_result",
        ),
        CheckConstraint("clip_values IS NOT NULL OR frames_path IS NOT NULL", name="has_values"),
        CheckConstraint("(frames_path IS NULL) = (frames_sha256 IS NULL)", name="frames_sha256"),
        CheckConstraint("(model_file IS NULL) = (model_sha256 IS NULL)", name="model_sha256"),
        CheckConstraint("sample_rate_hz IS NULL OR sample_rate_hz > 0", name="sample_rate_hz"),
    )


class ClipQc(Base):
    """A quality check of one clip: the ``quick`` pass right after it is stored, or the
    ``full`` pass with extraction; a verdict (``usable``, ``check``, ``repeat``), the reasons
    (codes) and the measurements behind it.

    Each verdict goes back to the unit (``painav.qc/1``; a later one replaces an earlier one):
    ``verdict_sent_at`` stays None until the receiver has sent it (the outbox).
    """

    __tablename__ = "clip_qc"

    id: Mapped[int] = mapped_column(_serial(), primary_key=True, autoincrement=True)
    clip_id: Mapped[str] = mapped_column(String(64), ForeignKey("clips.clip_id"))
    qc_pass: Mapped[str] = mapped_column(String(8))
    verdict: Mapped[str] = mapped_column(String(8))
    reasons: Mapped[list[str]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]]
    config_hash: Mapped[str] = mapped_column(String(64))
    painav_version: Mapped[str] = mapped_column(String(64))
    worker: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    verdict_sent_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("clip_id", "qc_pass"),
        Index("ix_clip_qc_outbox", "verdict_sent_at", "created_at"),
        CheckConstraint("qc_pass IN ('quick', 'full')", name="qc_pass"),
        CheckConstraint("verdict IN ('usable', 'check', 'repeat')", name="verdict"),
    )
