"""Arming a unit for a participant's visit, through the catalog: a researcher's request is
checked against the study (consent in force, the visit open) and audited here; the receiver,
which holds the signing key and the broker connection, signs and sends the newest request of
each unit (:mod:`server.arming`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from protocol.hospital_messages import MAX_ARM_DURATION
from protocol.topics import ID_PATTERN

from .errors import StudyError
from .study import StudyMixin
from .study_models import ArmRequest

__all__ = ["ArmRecord", "ArmingMixin"]


@dataclass(frozen=True)
class ArmRecord:
    id: int
    device_id: str
    pseudonym: str | None  # None: disarm
    visit: str | None
    requested_at: datetime
    expires_at: datetime | None
    sent_at: datetime | None = None  # when a receiver signed and published it


class ArmingMixin(StudyMixin):
    """The :class:`~server.catalog.Catalog`'s methods for arm requests (on top of the study's:
    a request names a participant's visit)."""

    def request_arm(
        self, device_id: str, pseudonym: str, visit: int, *, hours: float = 8.0
    ) -> ArmRecord:
        """Ask for *device_id* to be armed for *pseudonym*'s visit *visit* for *hours*; refused
        (:class:`StudyError`) unless their consent is in force and the visit open."""
        _check_device(device_id)
        duration = timedelta(hours=hours)
        if not timedelta(0) < duration <= MAX_ARM_DURATION:
            raise StudyError(f"--hours {hours:g}: more than 0, at most {MAX_ARM_DURATION}")
        label = self.armable_visit(pseudonym, visit).label
        now = self._clock()
        return self._request(device_id, pseudonym, label, now, now + duration)

    def request_disarm(self, device_id: str) -> ArmRecord:
        """Ask for *device_id* to be disarmed."""
        _check_device(device_id)
        return self._request(device_id, None, None, self._clock(), None)

    def armed_for(self, pseudonym: str) -> list[str]:
        """The units whose newest request arms them for *pseudonym* (a withdrawal disarms them)."""
        with self._session(write=False) as s:
            return [r.device_id for r in _newest(s) if r.pseudonym == pseudonym]

    def latest_arms(self) -> dict[str, ArmRecord]:
        """Each unit's newest request, sent or not, by device id."""
        with self._session(write=False) as s:
            return {r.device_id: _record(r) for r in _newest(s)}

    def pending_arms(self) -> list[ArmRecord]:
        """Each unit's newest request, if not sent yet."""
        with self._session(write=False) as s:
            return [_record(r) for r in _newest(s) if r.sent_at is None]

    def mark_arm_sent(self, request_id: int, *, at: datetime) -> None:
        with self._session(write=True) as s:
            row = s.get(ArmRequest, request_id)
            if row is not None and row.sent_at is None:
                row.sent_at = at

    def _request(
        self,
        device_id: str,
        pseudonym: str | None,
        visit: str | None,
        now: datetime,
        expires_at: datetime | None,
    ) -> ArmRecord:
        with self._session(write=True) as s:
            row = ArmRequest(device_id=device_id, pseudonym=pseudonym, visit=visit,
                             requested_at=now, expires_at=expires_at, actor=self._actor,
                             sent_at=None)  # fmt: skip
            s.add(row)
            s.flush()
            action = "arm_requested" if pseudonym else "disarm_requested"
            detail = {"device_id": device_id, "pseudonym": pseudonym, "visit": visit}
            self.audit.append(s, action, actor=self._actor, detail=detail)
            return _record(row)


def _newest(s: Session) -> list[ArmRequest]:
    last = select(func.max(ArmRequest.id)).group_by(ArmRequest.device_id)
    query = select(ArmRequest).where(ArmRequest.id.in_(last)).order_by(ArmRequest.device_id)
    return list(s.scalars(query))


def _check_device(device_id: str) -> None:
    if not re.fullmatch(ID_PATTERN, device_id):
        raise StudyError(f"unit {device_id[:40]!r}: not a unit id")


def _record(row: ArmRequest) -> ArmRecord:
    return ArmRecord(row.id, row.device_id, row.pseudonym, row.visit, row.requested_at,
                     row.expires_at, row.sent_at)  # fmt: skip
