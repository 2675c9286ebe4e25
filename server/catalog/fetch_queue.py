"""The fetch queue: which clip a receiver should fetch next, fairly across units.

A clip is waiting when it is ``announced`` and due (``next_attempt_at`` has passed), or
``fetching`` under a lease that has expired (its receiver crashed or hung). Each waiting clip
gets a *turn*: the number of its unit's fetches in flight plus its place in its unit's queue
(1 for the unit's oldest). Clips are taken by turn, then by how long their unit has waited
(its oldest waiting clip), then by age. So one busy unit's backlog cannot starve the others:
every unit gets a fetch before any unit gets a second, and a unit with fetches in flight
waits behind units with fewer; a unit with ``per_unit`` fetches in flight waits for one to end.

Several receivers may claim at once. The order is read first, without locks; then the
candidates are tried in order, each locked only if it is still waiting (PostgreSQL: ``FOR
UPDATE SKIP LOCKED``, so a clip another receiver is claiming is passed over, not waited for,
and the next candidate is the next unit's clip rather than the same unit's next). Locking
inside the ordering query instead would make PostgreSQL join the table to its own window, a
plan that grows with the square of the backlog. SQLite has one writer at a time, so claims
are serial there and the first candidate is taken.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Select, and_, func, or_, select

from .lifecycle import ClipState
from .models import Clip
from .study_models import Participant, Tombstone

__all__ = ["candidates", "lock_if_waiting", "waiting"]


def waiting(now: datetime) -> ColumnElement[bool]:
    """The condition that a clip is waiting to be fetched at *now*. A clip of a participant
    whose withdrawal has begun is not fetched: the withdrawal erases it, and the unit's copy
    is receipted and discarded when it is announced again."""
    withdrawing = select(Participant.pseudonym).where(Participant.withdrawn_at.is_not(None))
    withdrawn = select(Tombstone.pseudonym)
    return and_(
        or_(
            and_(Clip.state == ClipState.ANNOUNCED, Clip.next_attempt_at <= now),
            and_(Clip.state == ClipState.FETCHING, Clip.lease_expires_at <= now),
        ),
        or_(
            Clip.participant.is_(None),
            and_(Clip.participant.not_in(withdrawing), Clip.participant.not_in(withdrawn)),
        ),
    )


def candidates(now: datetime, *, limit: int, per_unit: int | None = None) -> Select[str]:
    """The ids of the first *limit* clips to fetch at *now*, in order (reads, locks nothing).

    With *per_unit*, a unit that has that many fetches in flight already (live leases) gets
    none more, so that one slow unit can never hold every worker."""
    in_flight = (
        select(Clip.device_id, func.count().label("fetches"))
        .where(Clip.state == ClipState.FETCHING, Clip.lease_expires_at > now)
        .group_by(Clip.device_id)
        .subquery("in_flight")
    )
    queue = (
        select(
            Clip.clip_id,
            Clip.announced_at,
            (
                func.coalesce(in_flight.c.fetches, 0)
                + func.row_number().over(
                    partition_by=Clip.device_id, order_by=(Clip.announced_at, Clip.clip_id)
                )
            ).label("turn"),
            func.min(Clip.announced_at).over(partition_by=Clip.device_id).label("unit_since"),
        )
        .outerjoin(in_flight, in_flight.c.device_id == Clip.device_id)
        .where(waiting(now))
    )
    if per_unit is not None:
        queue = queue.where(func.coalesce(in_flight.c.fetches, 0) < per_unit)
    ranked = queue.subquery("queue")
    order = (ranked.c.turn, ranked.c.unit_since, ranked.c.announced_at, ranked.c.clip_id)
    return select(ranked.c.clip_id).order_by(*order).limit(limit)


def lock_if_waiting(clip_id: str, now: datetime) -> Select[Clip]:
    """Lock and return clip *clip_id* if it is still waiting at *now* and nobody holds it."""
    return (
        select(Clip).where(Clip.clip_id == clip_id, waiting(now)).with_for_update(skip_locked=True)
    )
