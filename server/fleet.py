"""The fleet as IT sees it: every unit the registry or the catalog knows, revoked ones marked.

A revoked unit's last words never arrive (the broker's ACL denies it everything, its last will
included), so its status in the catalog stays whatever it said last, often "online". The
registry, which provisioning keeps, has the final say.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from protocol.registry import Registry

from .catalog import UnitRecord

__all__ = ["FleetUnit", "fleet"]


@dataclass(frozen=True)
class FleetUnit:
    """One unit: ``state`` is ``revoked``, ``never seen``, or its last status."""

    device_id: str
    state: str
    record: UnitRecord | None
    revoked_at: datetime | None = None
    registered: bool = True


def fleet(units: Iterable[UnitRecord], registry: Registry) -> list[FleetUnit]:
    """Every unit of *registry* and of *units* (the catalog), by device id."""
    heard = {u.device_id: u for u in units}
    rows = []
    for device_id in sorted(heard.keys() | registry.devices.keys()):
        record = heard.get(device_id)
        entry = registry.devices.get(device_id)
        if entry is not None and entry.status == "revoked":
            rows.append(FleetUnit(device_id, "revoked", record, entry.revoked_at))
        elif record is None:
            rows.append(FleetUnit(device_id, "never seen", None))
        else:
            rows.append(
                FleetUnit(
                    device_id, record.status or "unknown", record, registered=entry is not None
                )
            )
    return rows
