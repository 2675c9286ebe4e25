"""A clip's states at the receiver and the moves between them (pure: no database)."""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType
from typing import Final

from .errors import IllegalTransitionError

__all__ = [
    "ACTIVE_STATES",
    "LEASED_STATES",
    "STORED_STATES",
    "TRANSITIONS",
    "ClipState",
    "check_transition",
]


class ClipState(StrEnum):
    """Where a clip is: ``announced → fetching → stored → receipted → extracting →
    extracted``, or ``quarantined`` with a reason, or ``failed`` when its extraction failed
    for good (the reason in ``extraction_error``)."""

    ANNOUNCED = "announced"
    FETCHING = "fetching"
    STORED = "stored"
    RECEIPTED = "receipted"
    EXTRACTING = "extracting"
    EXTRACTED = "extracted"
    QUARANTINED = "quarantined"
    FAILED = "failed"


_S = ClipState

TRANSITIONS: Final = MappingProxyType(
    {
        _S.ANNOUNCED: frozenset({_S.FETCHING, _S.QUARANTINED}),
        # fetching → fetching: another worker takes over a fetch whose lease expired.
        _S.FETCHING: frozenset({_S.FETCHING, _S.ANNOUNCED, _S.STORED, _S.QUARANTINED}),
        _S.STORED: frozenset({_S.RECEIPTED, _S.QUARANTINED}),
        # receipted → failed: a clip released too often (its worker died on it each time).
        _S.RECEIPTED: frozenset({_S.EXTRACTING, _S.FAILED, _S.QUARANTINED}),
        # extracting → receipted: a failed extraction goes back to wait for another try;
        # extracting → extracting: another worker takes over an extraction whose lease expired.
        _S.EXTRACTING: frozenset(
            {_S.EXTRACTING, _S.EXTRACTED, _S.RECEIPTED, _S.FAILED, _S.QUARANTINED}
        ),
        # → receipted: extracted again (a newer feature set) or retried (the worker was fixed),
        # each a deliberate, audited act (Catalog.requeue_extraction).
        _S.EXTRACTED: frozenset({_S.RECEIPTED}),
        _S.FAILED: frozenset({_S.RECEIPTED, _S.QUARANTINED}),
        # Quarantine is final here: releasing a clip is a deliberate, separately audited act.
        _S.QUARANTINED: frozenset(),
    }
)
"""The states each state may move to."""

ACTIVE_STATES: Final = frozenset({_S.ANNOUNCED, _S.FETCHING})
"""States before the clip is stored: a conflicting re-announcement quarantines these."""

LEASED_STATES: Final = frozenset({_S.FETCHING, _S.EXTRACTING})
"""States in which a worker holds the clip under a lease (``lease_owner``, ``lease_expires_at``).
Disjoint, so fetching and extraction share the lease columns."""

STORED_STATES: Final = frozenset({_S.STORED, _S.RECEIPTED, _S.EXTRACTING, _S.EXTRACTED, _S.FAILED})
"""States in which the clip's ciphertext is in the store."""


def check_transition(clip_id: str, current: ClipState, target: ClipState) -> None:
    """Raise :class:`IllegalTransitionError` unless *current* may move to *target*."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransitionError(clip_id, current.value, target.value)
