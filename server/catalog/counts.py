"""Counting clips for monitoring: how many are in each state, and quarantined for each reason
(one grouped query each, whatever the catalog's size)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .lifecycle import ClipState
from .models import Clip

__all__ = ["CountsMixin"]


class CountsMixin:
    """The :class:`~server.catalog.Catalog`'s counts, read at every metrics scrape."""

    _session: Callable[..., AbstractContextManager[Session]]  # the Catalog's transaction

    def clip_counts(self) -> dict[ClipState, int]:
        """Every state with how many clips are in it (0 for an empty state)."""
        query = select(Clip.state, func.count()).group_by(Clip.state)
        counts = dict.fromkeys(ClipState, 0)
        with self._session(write=False) as s:
            for state, count in s.execute(query):
                counts[ClipState(state)] = int(count)
        return counts

    def quarantine_counts(self) -> dict[str, int]:
        """How many clips are quarantined for each reason (reasons with none left out)."""
        query = (
            select(Clip.quarantine_reason, func.count())
            .where(Clip.state == ClipState.QUARANTINED)
            .group_by(Clip.quarantine_reason)
        )
        with self._session(write=False) as s:
            return {str(reason): int(count) for reason, count in s.execute(query)}

    def ping(self) -> None:
        """Read the clips table once: :class:`~server.catalog.CatalogError` if the catalog
        does not answer (down, dropped, its file gone or unreadable)."""
        with self._session(write=False) as s:
            s.execute(select(Clip.clip_id).limit(1)).all()
