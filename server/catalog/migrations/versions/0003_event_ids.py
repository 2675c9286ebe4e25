"""Durable events: the unit's event id, recorded once per unit.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Units of this version publish painav.events/2, each event with an ``event_id``, again and again
until the receiver acknowledges it; the receiver records it once per (device, event id).
``unit_events`` gains ``event_id`` (NULL for the painav.events/1 of units not yet upgraded, and
for every event recorded before) and a unique constraint on (``device_id``, ``event_id``): NULLs
never conflict, on SQLite and PostgreSQL alike. ``event_key`` stays the row's idempotency key; for
events/2 it is now the hash of device and event id rather than of the payload, which only the
comment says. SQLite cannot add a constraint to a table: batch mode copies it.

Written by hand, like 0001 and 0002: the names and types are spelled out.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KEY_COMMENT = "SHA-256 of device id and payload: QoS 1 redelivery."
NEW_KEY_COMMENT = (
    "SHA-256 of device id and event id (events/2), or of device id and payload (events/1)."
)


def upgrade() -> None:
    with op.batch_alter_table("unit_events") as batch:
        batch.add_column(
            sa.Column(
                "event_id",
                sa.String(64),
                nullable=True,
                comment="The unit's id of the event (painav.events/2); NULL for events/1.",
            )
        )
        batch.alter_column(
            "event_key",
            existing_type=sa.String(64),
            existing_nullable=False,
            comment=NEW_KEY_COMMENT,
            existing_comment=OLD_KEY_COMMENT,
        )
        batch.create_unique_constraint(
            "uq_unit_events_device_id_event_id", ["device_id", "event_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("unit_events") as batch:
        batch.drop_constraint("uq_unit_events_device_id_event_id", type_="unique")
        batch.alter_column(
            "event_key",
            existing_type=sa.String(64),
            existing_nullable=False,
            comment=OLD_KEY_COMMENT,
            existing_comment=NEW_KEY_COMMENT,
        )
        batch.drop_column("event_id")
