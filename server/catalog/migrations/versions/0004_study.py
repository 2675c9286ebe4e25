"""The study: participants, their consent, visits and clinical data, the visit of each clip,
what a withdrawal leaves (tombstones, erased clip ids), and the research exports.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

Written by hand, like 0001: the names and types are spelled out, not imported from the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _serial() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("clips") as batch:
        batch.add_column(
            sa.Column(
                "visit",
                sa.String(32),
                nullable=True,
                comment="The visit label: from the manifest, or given when assigned later.",
            )
        )
    # Clips catalogued before: their visit is in the manifest they were announced with.
    clips = sa.table("clips", sa.column("clip_id", sa.String), sa.column("visit", sa.String),
                     sa.column("manifest", sa.JSON))  # fmt: skip
    conn = op.get_bind()
    for clip_id, manifest in conn.execute(sa.select(clips.c.clip_id, clips.c.manifest)).all():
        visit = (manifest or {}).get("visit")
        if visit is not None:
            conn.execute(clips.update().where(clips.c.clip_id == clip_id).values(visit=visit))
    op.create_table(
        "participants",
        sa.Column("pseudonym", sa.String(16), nullable=False),
        sa.Column("study_group", sa.String(8), nullable=False),
        sa.Column("language", sa.String(2), nullable=False),
        sa.Column("enrolled_on", sa.Date(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "withdrawn_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the participant withdrew consent; their data is erased then.",
        ),
        sa.PrimaryKeyConstraint("pseudonym", name="pk_participants"),
        sa.CheckConstraint(
            "study_group IN ('pain', 'control')", name="ck_participants_study_group"
        ),
        sa.CheckConstraint("language IN ('nl', 'en')", name="ck_participants_language"),
    )
    op.create_table(
        "consents",
        sa.Column("id", _serial(), autoincrement=True, nullable=False),
        sa.Column("pseudonym", sa.String(16), nullable=False),
        sa.Column("consented_on", sa.Date(), nullable=False),
        sa.Column("form_version", sa.String(32), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_consents"),
        sa.ForeignKeyConstraint(
            ["pseudonym"], ["participants.pseudonym"], name="fk_consents_pseudonym_participants"
        ),
    )
    op.create_index("ix_consents_pseudonym", "consents", ["pseudonym"])
    op.create_table(
        "visits",
        sa.Column("pseudonym", sa.String(16), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("opened_on", sa.Date(), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pseudonym", "number", name="pk_visits"),
        sa.ForeignKeyConstraint(
            ["pseudonym"], ["participants.pseudonym"], name="fk_visits_pseudonym_participants"
        ),
        sa.CheckConstraint("number >= 1", name="ck_visits_number"),
    )
    op.create_table(
        "tombstones",
        sa.Column("pseudonym", sa.String(16), nullable=False),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "erased", sa.JSON(), nullable=False, comment="Counts of what was erased, by kind."
        ),
        sa.PrimaryKeyConstraint("pseudonym", name="pk_tombstones"),
    )
    op.create_table(
        "erased_clips",
        sa.Column("clip_id", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("clip_id", name="pk_erased_clips"),
    )
    op.create_table(
        "exports",
        sa.Column("id", _serial(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("out", sa.String(1024), nullable=False),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column("media", sa.Boolean(), nullable=False),
        sa.Column(
            "digest", sa.String(64), nullable=False, comment="SHA-256 over the files written."
        ),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_exports"),
    )
    op.create_table(
        "clinical_records",
        sa.Column("id", _serial(), autoincrement=True, nullable=False),
        sa.Column("pseudonym", sa.String(16), nullable=False),
        sa.Column("domain", sa.String(16), nullable=False),
        sa.Column("instance", sa.String(160), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_clinical_records"),
        sa.ForeignKeyConstraint(
            ["pseudonym"],
            ["participants.pseudonym"],
            name="fk_clinical_records_pseudonym_participants",
        ),
        sa.UniqueConstraint(
            "pseudonym", "domain", "instance", name="uq_clinical_records_pseudonym_domain_instance"
        ),
        sa.CheckConstraint(
            "domain IN ('nrs', 'analgesic', 'tumour', 'questionnaire')",
            name="ck_clinical_records_domain",
        ),
    )
    op.create_index("ix_clinical_records_pseudonym", "clinical_records", ["pseudonym"])
    op.create_table(
        "arm_requests",
        sa.Column("id", _serial(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("pseudonym", sa.String(16), nullable=True),
        sa.Column("visit", sa.String(32), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_arm_requests"),
    )
    op.create_index("ix_arm_requests_device_id", "arm_requests", ["device_id"])


def downgrade() -> None:
    op.drop_index("ix_arm_requests_device_id", table_name="arm_requests")
    op.drop_table("arm_requests")
    op.drop_index("ix_clinical_records_pseudonym", table_name="clinical_records")
    op.drop_table("clinical_records")
    op.drop_table("exports")
    op.drop_table("erased_clips")
    op.drop_table("tombstones")
    op.drop_table("visits")
    op.drop_index("ix_consents_pseudonym", table_name="consents")
    op.drop_table("consents")
    op.drop_table("participants")
    with op.batch_alter_table("clips") as batch:
        batch.drop_column("visit")
