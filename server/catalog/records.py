"""What the catalog hands out: frozen snapshots of rows, never live ORM objects."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from protocol.messages import ClipManifest, Telemetry

from .lifecycle import ClipState
from .models import Clip, Unit, UnitEvent

__all__ = ["ClipRecord", "UnitEventRecord", "UnitRecord"]


@dataclass(frozen=True)
class ClipRecord:
    """A clip as the catalog holds it; times are timezone-aware UTC."""

    clip_id: str
    device_id: str
    state: ClipState
    sha256: str
    size_bytes: int
    manifest: ClipManifest
    signature: str
    url: str
    participant: str | None
    visit: str | None
    announced_at: datetime
    last_announced_at: datetime
    announce_count: int
    state_changed_at: datetime
    attempts: int
    next_attempt_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    last_error: str | None
    quarantine_reason: str | None
    store_key: str | None
    stored_at: datetime | None
    receipted_at: datetime | None
    extract_attempts: int
    extraction_error: str | None
    extracted_at: datetime | None

    @property
    def site_id(self) -> str:
        """The site the clip was recorded at."""
        return self.manifest.site_id

    @classmethod
    def of(cls, row: Clip) -> ClipRecord:
        """A snapshot of *row*."""
        return cls(
            clip_id=row.clip_id,
            device_id=row.device_id,
            state=ClipState(row.state),
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            # Through JSON, the form it was stored in: the model is strict about Python types.
            manifest=ClipManifest.model_validate_json(json.dumps(row.manifest)),
            signature=row.signature,
            url=row.url,
            participant=row.participant,
            visit=row.visit,
            announced_at=row.announced_at,
            last_announced_at=row.last_announced_at,
            announce_count=row.announce_count,
            state_changed_at=row.state_changed_at,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            lease_owner=row.lease_owner,
            lease_expires_at=row.lease_expires_at,
            last_error=row.last_error,
            quarantine_reason=row.quarantine_reason,
            store_key=row.store_key,
            stored_at=row.stored_at,
            receipted_at=row.receipted_at,
            extract_attempts=row.extract_attempts,
            extraction_error=row.extraction_error,
            extracted_at=row.extracted_at,
        )


@dataclass(frozen=True)
class UnitRecord:
    """A unit as last heard of; ``status`` is None until its first status message."""

    device_id: str
    site_id: str
    first_seen_at: datetime
    last_seen_at: datetime
    status: str | None
    status_since: datetime | None
    status_reason: str | None
    software_version: str | None
    armed: bool | None
    last_telemetry: Telemetry | None
    telemetry_at: datetime | None

    @classmethod
    def of(cls, row: Unit) -> UnitRecord:
        """A snapshot of *row*."""
        telemetry = None
        if row.last_telemetry is not None:
            telemetry = Telemetry.model_validate_json(json.dumps(row.last_telemetry))
        return cls(
            device_id=row.device_id,
            site_id=row.site_id,
            first_seen_at=row.first_seen_at,
            last_seen_at=row.last_seen_at,
            status=row.status,
            status_since=row.status_since,
            status_reason=row.status_reason,
            software_version=row.software_version,
            armed=row.armed,
            last_telemetry=telemetry,
            telemetry_at=row.telemetry_at,
        )


@dataclass(frozen=True)
class UnitEventRecord:
    """An event a unit published, with when the unit said it happened and when it arrived."""

    device_id: str
    kind: str
    at: datetime
    received_at: datetime
    clip_id: str | None
    reason: str
    detail: str
    event_id: str | None = None  # the unit's id for it; None from a unit of the previous version

    @classmethod
    def of(cls, row: UnitEvent) -> UnitEventRecord:
        """A snapshot of *row*."""
        return cls(
            event_id=row.event_id,
            device_id=row.device_id,
            kind=row.kind,
            at=row.at,
            received_at=row.received_at,
            clip_id=row.clip_id,
            reason=row.reason,
            detail=row.detail,
        )
