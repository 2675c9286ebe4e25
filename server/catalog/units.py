"""Writing what units say about themselves: status, telemetry, events (inside a transaction)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import case
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from protocol.messages import Event, Status, Telemetry

from .models import Base, Unit, UnitEvent

__all__ = ["add_event", "apply_status", "apply_telemetry", "insert_new", "touch"]

_Row = TypeVar("_Row", bound=Base)


def _insert(s: Session) -> Any:
    """The dialect's INSERT, which has ON CONFLICT."""
    return postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert


def insert_new(s: Session, model: type[_Row], values: dict[str, Any]) -> _Row | None:
    """Insert a row unless its key exists: the new row, or None if the key existed.

    ``ON CONFLICT DO NOTHING`` rather than look-then-insert: two receivers given the same
    message at once must not both insert, nor fail on the key.
    """
    statement = _insert(s)(model).values(**values).on_conflict_do_nothing().returning(model)
    return s.scalars(statement).one_or_none()


def touch(
    s: Session, site_id: str, device_id: str, *, seen_at: datetime, heard: bool = True
) -> Unit:
    """The unit's row, locked, created if new; if *heard* from the unit itself at *seen_at*,
    ``last_seen_at`` moves on.

    One upsert, not a read and a write: every message from a unit comes through here.
    Messages can arrive out of order (QoS 1 redelivery, several receivers), so the newest
    time wins rather than the last one written.
    """
    insert = _insert(s)(Unit).values(
        device_id=device_id, site_id=site_id, first_seen_at=seen_at, last_seen_at=seen_at
    )
    changes: dict[str, Any] = {"site_id": insert.excluded.site_id}
    if heard:
        newer = insert.excluded.last_seen_at > Unit.last_seen_at
        changes["last_seen_at"] = case(
            (newer, insert.excluded.last_seen_at), else_=Unit.last_seen_at
        )
    statement = insert.on_conflict_do_update(index_elements=[Unit.device_id], set_=changes)
    unit: Unit = s.scalars(
        statement.returning(Unit), execution_options={"populate_existing": True}
    ).one()
    return unit


def apply_status(
    s: Session, site_id: str, device_id: str, status: Status, *, seen_at: datetime
) -> Unit:
    """Record *status*. The offline will is the broker speaking, not the unit: it does not
    move ``last_seen_at``, and since it carries no time, the unit is offline since *seen_at*."""
    offline = status.state == "offline"
    unit = touch(s, site_id, device_id, seen_at=seen_at, heard=not offline)
    unit.status = status.state
    unit.status_since = status.since if status.since is not None else seen_at
    unit.status_reason = status.reason
    if status.software_version is not None:
        unit.software_version = status.software_version
    if status.armed is not None:
        unit.armed = status.armed
    return unit


def apply_telemetry(
    s: Session, site_id: str, device_id: str, t: Telemetry, *, seen_at: datetime
) -> Unit:
    """Keep *t* as the unit's last telemetry unless a newer sample is kept already."""
    unit = touch(s, site_id, device_id, seen_at=seen_at)
    if unit.telemetry_at is None or t.at >= unit.telemetry_at:
        unit.last_telemetry = t.model_dump(mode="json", by_alias=True)
        unit.telemetry_at = t.at
    return unit


def add_event(
    s: Session, site_id: str, device_id: str, event: Event, *, received_at: datetime
) -> bool:
    """Keep *event* once; False if the same event from the same unit is kept already: by its
    id for painav.events/2 (published until acknowledged, perhaps with another payload after
    a restart), by its payload for events/1 (a QoS 1 redelivery)."""
    touch(s, site_id, device_id, seen_at=received_at)
    if event.event_id is not None:
        identity = b"event_id\n" + event.event_id.encode()
    else:
        identity = event.to_payload()
    key = hashlib.sha256(device_id.encode() + b"\n" + identity).hexdigest()
    row = insert_new(
        s,
        UnitEvent,
        {
            "event_key": key,
            "event_id": event.event_id,
            "device_id": device_id,
            "kind": event.kind,
            "at": event.at,
            "received_at": received_at,
            "clip_id": event.clip_id,
            "reason": event.reason,
            "detail": event.detail,
        },
    )
    return row is not None
