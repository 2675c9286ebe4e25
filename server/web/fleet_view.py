"""The fleet page's rows: what each unit last said, and what about it needs a person (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from protocol.registry import Registry

from ..catalog.records import UnitRecord
from ..catalog.results import QcRecord
from ..fleet import fleet

__all__ = ["UnitRow", "fleet_rows"]

LOW_FREE_BYTES: Final = 2 << 30  # under 2 GiB: a few minutes of recording left
STUCK_OUTBOX: Final = timedelta(hours=1)  # a clip unreceipted for this long: ingest is stuck
CERT_WARNING: Final = timedelta(days=30)
SILENT: Final = timedelta(minutes=5)  # telemetry comes every minute: five missed is trouble


@dataclass(frozen=True)
class UnitRow:
    device_id: str
    state: str  # online, recording, error, offline, revoked, never seen
    online: bool
    last_seen: datetime | None
    free_bytes: int | None
    outbox: int | None
    clock_synced: bool | None
    version: str | None
    armed: bool | None
    cert_not_after: datetime | None
    last_verdict: QcRecord | None
    trouble: tuple[str, ...]  # what a person should look at, in words; empty when all is well


def fleet_rows(
    units: list[UnitRecord],
    registry: Registry,
    verdicts: Mapping[str, QcRecord],
    *,
    now: datetime,
) -> list[UnitRow]:
    """One row per unit of the registry or the catalog; *verdicts* by device id (its newest
    clip's last quality check)."""
    rows = []
    for unit in fleet(units, registry):
        record, entry = unit.record, registry.devices.get(unit.device_id)
        telemetry = record.last_telemetry if record else None
        not_after = entry.cert_not_after if entry else None
        verdict = verdicts.get(unit.device_id)
        trouble = []
        online = unit.state in ("online", "recording", "error")
        if unit.state == "revoked":
            trouble.append("revoked")
        elif unit.state == "error":
            trouble.append(f"error: {record.status_reason}" if record else "error")
        elif unit.state == "offline":
            trouble.append("offline")
        elif online and record and now - record.last_seen_at > SILENT:
            trouble.append(f"silent for {_ago(now - record.last_seen_at)}")
        if not unit.registered:
            trouble.append("not in the registry")
        if telemetry is not None and unit.state != "revoked":
            if telemetry.free_bytes < LOW_FREE_BYTES:
                trouble.append("disk nearly full")
            if not telemetry.clock_synced:
                trouble.append("clock not synchronised")
            oldest = telemetry.oldest_unreceipted_s
            if oldest is not None and oldest > STUCK_OUTBOX.total_seconds():
                trouble.append(f"clip waiting {_ago(timedelta(seconds=oldest))}")
        if not_after is not None and unit.state != "revoked" and not_after - now < CERT_WARNING:
            trouble.append("certificate expired" if not_after < now else "certificate expires soon")
        if verdict is not None and verdict.verdict == "repeat":
            trouble.append("last clip: repeat")
        rows.append(
            UnitRow(
                device_id=unit.device_id,
                state=unit.state,
                online=online,
                last_seen=record.last_seen_at if record else None,
                free_bytes=telemetry.free_bytes if telemetry else None,
                outbox=telemetry.queue_depth if telemetry else None,
                clock_synced=telemetry.clock_synced if telemetry else None,
                version=record.software_version if record else None,
                armed=record.armed if record else None,
                cert_not_after=not_after,
                last_verdict=verdict,
                trouble=tuple(trouble),
            )
        )
    return rows


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
