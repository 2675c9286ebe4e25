"""Central extraction: the failed state, extraction attempts, feature results, quality checks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Clips gain ``extract_attempts``, ``extraction_error`` and ``extracted_at``; the extraction queue
reuses ``next_attempt_at`` and the lease columns of the fetch queue (a clip is in one queue at a
time: fetched while ``announced``/``fetching``, extracted while ``receipted``/``extracting``).
The state stays a string with a CHECK (as in 0001), so the new state ``failed`` is a changed
CHECK on both backends. SQLite cannot alter a CHECK: batch mode copies the table (SQLAlchemy
reflects SQLite's named CHECKs, so the ones that change are dropped and made again by name).

Written by hand, like 0001: the names and types are spelled out, not imported from the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATES = (
    "announced",
    "fetching",
    "stored",
    "receipted",
    "extracting",
    "extracted",
    "quarantined",
)
STATES = (*OLD_STATES, "failed")

OLD_CHECKS = {
    "ck_clips_state": "state IN ({states})",
    "ck_clips_lease": (
        "state <> 'fetching' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)"
    ),
    "ck_clips_stored": (
        "state NOT IN ('stored', 'receipted', 'extracting', 'extracted') "
        "OR (store_key IS NOT NULL AND stored_at IS NOT NULL)"
    ),
}
NEW_CHECKS = {
    "ck_clips_state": "state IN ({states})",
    "ck_clips_lease": (
        "state NOT IN ('fetching', 'extracting') "
        "OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)"
    ),
    "ck_clips_stored": (
        "state NOT IN ('stored', 'receipted', 'extracting', 'extracted', 'failed') "
        "OR (store_key IS NOT NULL AND stored_at IS NOT NULL)"
    ),
    "ck_clips_extract_attempts": "extract_attempts >= 0",
    "ck_clips_failed": "state <> 'failed' OR extraction_error IS NOT NULL",
    "ck_clips_extracted": "state <> 'extracted' OR extracted_at IS NOT NULL",
}


def _states(states: Sequence[str]) -> str:
    return ", ".join(f"'{state}'" for state in states)


def _serial() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _swap_checks(
    old: dict[str, str], new: dict[str, str], states: Sequence[str], new_columns: bool
) -> None:
    with op.batch_alter_table("clips") as batch:
        for name in old:
            batch.drop_constraint(name, type_="check")
        if new_columns:
            batch.add_column(
                sa.Column("extract_attempts", sa.Integer(), nullable=False, server_default="0")
            )
            batch.add_column(
                sa.Column(
                    "extraction_error",
                    sa.String(500),
                    nullable=True,
                    comment="Why the last extraction attempt failed; for failed, why for good.",
                )
            )
            batch.add_column(sa.Column("extracted_at", sa.DateTime(timezone=True), nullable=True))
        else:
            batch.drop_column("extracted_at")
            batch.drop_column("extraction_error")
            batch.drop_column("extract_attempts")
        for name, condition in new.items():
            batch.create_check_constraint(name, sa.text(condition.format(states=_states(states))))


def upgrade() -> None:
    _swap_checks(OLD_CHECKS, NEW_CHECKS, STATES, new_columns=True)

    op.create_table(
        "clip_features",
        sa.Column("id", _serial(), autoincrement=True, nullable=False),
        sa.Column("clip_id", sa.String(64), nullable=False),
        sa.Column("feature_set", sa.String(64), nullable=False),
        sa.Column("feature_set_version", sa.String(32), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("tool", sa.String(64), nullable=False),
        sa.Column("tool_version", sa.String(64), nullable=False),
        sa.Column("model_file", sa.String(256), nullable=True),
        sa.Column("model_sha256", sa.String(64), nullable=True),
        sa.Column(
            "sample_rate_hz",
            sa.Integer(),
            nullable=True,
            comment="The analysis sample rate (audio features); None for video.",
        ),
        sa.Column("painav_version", sa.String(64), nullable=False),
        sa.Column("worker", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("clip_values", sa.JSON(), nullable=True),
        sa.Column("frames_path", sa.String(512), nullable=True),
        sa.Column("frames_sha256", sa.String(64), nullable=True),
        sa.Column("frame_count", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_clip_features"),
        sa.ForeignKeyConstraint(
            ["clip_id"], ["clips.clip_id"], name="fk_clip_features_clip_id_clips"
        ),
        sa.UniqueConstraint(
            "clip_id",
            "feature_set",
            "feature_set_version",
            "config_hash",
            name="uq_clip_features_result",
        ),
        sa.CheckConstraint(
            "clip_values IS NOT NULL OR frames_path IS NOT NULL",
            name="ck_clip_features_has_values",
        ),
        sa.CheckConstraint(
            "(frames_path IS NULL) = (frames_sha256 IS NULL)", name="ck_clip_features_frames_sha256"
        ),
        sa.CheckConstraint(
            "(model_file IS NULL) = (model_sha256 IS NULL)", name="ck_clip_features_model_sha256"
        ),
        sa.CheckConstraint(
            "sample_rate_hz IS NULL OR sample_rate_hz > 0", name="ck_clip_features_sample_rate_hz"
        ),
    )
    op.create_index("ix_clip_features_clip_id", "clip_features", ["clip_id"])

    op.create_table(
        "clip_qc",
        sa.Column("id", _serial(), autoincrement=True, nullable=False),
        sa.Column("clip_id", sa.String(64), nullable=False),
        sa.Column("qc_pass", sa.String(8), nullable=False),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("painav_version", sa.String(64), nullable=False),
        sa.Column("worker", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verdict_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_clip_qc"),
        sa.ForeignKeyConstraint(["clip_id"], ["clips.clip_id"], name="fk_clip_qc_clip_id_clips"),
        sa.UniqueConstraint("clip_id", "qc_pass", name="uq_clip_qc_clip_id_qc_pass"),
        sa.CheckConstraint("qc_pass IN ('quick', 'full')", name="ck_clip_qc_qc_pass"),
        sa.CheckConstraint("verdict IN ('usable', 'check', 'repeat')", name="ck_clip_qc_verdict"),
    )
    op.create_index("ix_clip_qc_outbox", "clip_qc", ["verdict_sent_at", "created_at"])


def downgrade() -> None:
    # Clips that cannot be described by 0001 go back to where 0001 would have them.
    op.execute("UPDATE clips SET state = 'receipted' WHERE state = 'failed'")
    op.drop_index("ix_clip_qc_outbox", table_name="clip_qc")
    op.drop_table("clip_qc")
    op.drop_index("ix_clip_features_clip_id", table_name="clip_features")
    op.drop_table("clip_features")
    _swap_checks(NEW_CHECKS, OLD_CHECKS, OLD_STATES, new_columns=False)
