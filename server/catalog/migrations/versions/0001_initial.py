"""The first catalog schema: units, clips, unit events, and the hash-chained audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Written by hand (and checked against the models by the tests): a migration is a record of what
the schema was, so it spells out its types and names instead of importing today's models.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS_HASH = "0" * 64
STATES = ("announced", "fetching", "stored", "receipted", "extracting", "extracted", "quarantined")


def _time(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "units",
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("site_id", sa.String(32), nullable=False),
        _time("first_seen_at"),
        sa.Column(
            "last_seen_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="When the unit itself last published; its offline will does not count.",
        ),
        sa.Column("status", sa.String(16), nullable=True),
        _time("status_since", nullable=True),
        sa.Column("status_reason", sa.String(64), nullable=True),
        sa.Column("software_version", sa.String(64), nullable=True),
        sa.Column("armed", sa.Boolean(), nullable=True),
        sa.Column("last_telemetry", sa.JSON(), nullable=True),
        _time("telemetry_at", nullable=True),
        sa.PrimaryKeyConstraint("device_id", name="pk_units"),
    )
    states = ", ".join(f"'{state}'" for state in STATES)
    op.create_table(
        "clips",
        sa.Column("clip_id", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("participant", sa.String(16), nullable=True),
        _time("announced_at"),
        _time("last_announced_at"),
        sa.Column("announce_count", sa.Integer(), nullable=False),
        _time("state_changed_at"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _time("next_attempt_at"),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        _time("lease_expires_at", nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("quarantine_reason", sa.String(64), nullable=True),
        sa.Column("store_key", sa.String(256), nullable=True),
        _time("stored_at", nullable=True),
        _time("receipted_at", nullable=True),
        sa.PrimaryKeyConstraint("clip_id", name="pk_clips"),
        sa.ForeignKeyConstraint(
            ["device_id"], ["units.device_id"], name="fk_clips_device_id_units"
        ),
        sa.CheckConstraint(f"state IN ({states})", name="ck_clips_state"),
        sa.CheckConstraint("announce_count >= 1", name="ck_clips_announce_count"),
        sa.CheckConstraint("attempts >= 0", name="ck_clips_attempts"),
        sa.CheckConstraint(
            "(state = 'quarantined') = (quarantine_reason IS NOT NULL)",
            name="ck_clips_quarantine_reason",
        ),
        sa.CheckConstraint(
            "state <> 'fetching' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name="ck_clips_lease",
        ),
        sa.CheckConstraint(
            "state NOT IN ('stored', 'receipted', 'extracting', 'extracted') "
            "OR (store_key IS NOT NULL AND stored_at IS NOT NULL)",
            name="ck_clips_stored",
        ),
    )
    op.create_index("ix_clips_queue", "clips", ["state", "next_attempt_at"])
    op.create_index("ix_clips_lease", "clips", ["state", "lease_expires_at"])
    op.create_index("ix_clips_device_state", "clips", ["device_id", "state", "announced_at"])
    op.create_index("ix_clips_participant", "clips", ["participant"])

    op.create_table(
        "unit_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "event_key",
            sa.String(64),
            nullable=False,
            comment="SHA-256 of device id and payload: QoS 1 redelivery.",
        ),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        _time("at"),
        _time("received_at"),
        sa.Column("clip_id", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.String(500), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_unit_events"),
        sa.ForeignKeyConstraint(
            ["device_id"], ["units.device_id"], name="fk_unit_events_device_id_units"
        ),
        sa.UniqueConstraint("event_key", name="uq_unit_events_event_key"),
    )
    op.create_index("ix_unit_events_device_id", "unit_events", ["device_id"])
    op.create_index("ix_unit_events_clip_id", "unit_events", ["clip_id"])

    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        _time("at"),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("clip_id", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_clip_id", "audit_log", ["clip_id"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
        sa.CheckConstraint("id = 1", name="ck_audit_head_single_row"),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS_HASH}])


def downgrade() -> None:
    op.drop_table("audit_head")
    op.drop_index("ix_audit_log_clip_id", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_unit_events_clip_id", table_name="unit_events")
    op.drop_index("ix_unit_events_device_id", table_name="unit_events")
    op.drop_table("unit_events")
    op.drop_index("ix_clips_participant", table_name="clips")
    op.drop_index("ix_clips_device_state", table_name="clips")
    op.drop_index("ix_clips_lease", table_name="clips")
    op.drop_index("ix_clips_queue", table_name="clips")
    op.drop_table("clips")
    op.drop_table("units")
