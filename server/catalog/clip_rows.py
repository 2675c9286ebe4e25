"""A clip's row inside a transaction: lock it, move it to another state, check a lease; and the
checks of what callers pass in (times, bounded strings, codes)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import ClipNotFoundError, LeaseLostError
from .lifecycle import LEASED_STATES, ClipState, check_transition
from .models import Clip

__all__ = [
    "MAX_ERROR_CHARS",
    "REASON_RE",
    "bounded",
    "check_lease",
    "code",
    "locked",
    "move",
    "one_line",
    "utc",
]

REASON_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
"""Reasons are codes, like the protocol's reason codes: never free text."""

MAX_ERROR_CHARS: Final = 500


def utc(value: datetime, name: str) -> datetime:
    """*value* in UTC; ValueError naming *name* if it is naive."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def bounded(value: str, name: str, limit: int) -> str:
    """*value* if it is 1 to *limit* characters; ValueError naming *name* if not."""
    # Checked here because SQLite would store an over-long value that PostgreSQL refuses.
    if not 0 < len(value) <= limit:
        raise ValueError(f"{name} must be 1 to {limit} characters")
    return value


def code(value: str, name: str) -> str:
    """*value* if it is a code (:data:`REASON_RE`); ValueError naming *name* if not."""
    if not REASON_RE.fullmatch(value):
        raise ValueError(f"{name} must be a code: a-z first, then up to 63 of a-z, 0-9, '_'")
    return value


def one_line(error: str) -> str:
    """*error* on one line, at most :data:`MAX_ERROR_CHARS` characters."""
    return " ".join(error.split())[:MAX_ERROR_CHARS]


def locked(s: Session, clip_id: str) -> Clip:
    """Clip *clip_id*, locked until the transaction ends; :class:`ClipNotFoundError` if none."""
    clip = s.execute(
        select(Clip).where(Clip.clip_id == clip_id).with_for_update()
    ).scalar_one_or_none()
    if clip is None:
        raise ClipNotFoundError(clip_id)
    return clip


def held_by(s: Session, state: ClipState, worker_prefix: str) -> list[Clip]:
    """The clips in *state* leased to workers whose name starts with *worker_prefix*, locked:
    what a restarted receiver or worker takes back at once."""
    bounded(worker_prefix, "worker_prefix", 64)
    query = (
        select(Clip)
        .where(Clip.state == state, Clip.lease_owner.startswith(worker_prefix, autoescape=True))
        .with_for_update()
    )
    return list(s.scalars(query))


def move(clip: Clip, target: ClipState, *, at: datetime) -> None:
    """Move *clip* to *target* (:class:`IllegalTransitionError` if the lifecycle forbids it);
    a state that holds no lease drops the lease."""
    check_transition(clip.clip_id, clip.state, target)
    clip.state = target
    clip.state_changed_at = at
    if target not in LEASED_STATES:
        clip.lease_owner = None
        clip.lease_expires_at = None


def check_lease(clip: Clip, worker: str | None, state: ClipState) -> None:
    """:class:`LeaseLostError` unless *worker* holds *clip* in *state*.

    Without a worker the caller vouches for itself (a tool, or a single receiver).
    """
    if worker is not None and (clip.state is not state or clip.lease_owner != worker):
        raise LeaseLostError(clip.clip_id, worker, clip.lease_owner)
