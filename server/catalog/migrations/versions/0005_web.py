"""The dashboard: accounts, sessions and failed logins.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

Written by hand, like 0001: the names and types are spelled out, not imported from the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "web_users",
        sa.Column("username", sa.String(32), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('viewer', 'researcher', 'admin')", name="ck_web_users_role"),
    )
    op.create_table(
        "web_sessions",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column(
            "username",
            sa.String(32),
            sa.ForeignKey("web_users.username", name="fk_web_sessions_username_web_users"),
            nullable=False,
        ),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_web_sessions_username", "web_sessions", ["username"])
    op.create_table(
        "web_login_failures",
        sa.Column("key", sa.String(80), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("web_login_failures")
    op.drop_index("ix_web_sessions_username", "web_sessions")
    op.drop_table("web_sessions")
    op.drop_table("web_users")
