"""The catalog's errors: one root, a class for each outcome a caller branches on."""

from __future__ import annotations

__all__ = [
    "CatalogDatabaseError",
    "CatalogError",
    "CatalogUnavailableError",
    "ClipNotFoundError",
    "ClipStateError",
    "IllegalTransitionError",
    "LeaseLostError",
    "ResultConflictError",
    "StudyError",
]


class CatalogError(Exception):
    """Root of every error the catalog raises."""


class ClipNotFoundError(CatalogError, LookupError):
    """No clip with this id is in the catalog."""

    def __init__(self, clip_id: str) -> None:
        super().__init__(f"clip {clip_id!r} is not in the catalog")
        self.clip_id = clip_id


class IllegalTransitionError(CatalogError, ValueError):
    """A clip was asked to move between states that the lifecycle does not connect."""

    def __init__(self, clip_id: str, current: str, target: str) -> None:
        super().__init__(f"clip {clip_id!r} cannot go from {current} to {target}")
        self.clip_id = clip_id
        self.current = current
        self.target = target


class ClipStateError(CatalogError, ValueError):
    """A clip is not in a state that allows what was asked (e.g. a quick quality check of a
    clip whose ciphertext is not stored)."""

    def __init__(self, clip_id: str, state: str, what: str) -> None:
        super().__init__(f"clip {clip_id!r} is {state}: {what}")
        self.clip_id = clip_id
        self.state = state


class ResultConflictError(CatalogError, ValueError):
    """A result was recorded again under the same key with a different provenance: the
    configuration hash does not cover everything that changes the values."""


class LeaseLostError(CatalogError):
    """A worker reported on a fetch or an extraction whose lease it no longer holds (another
    worker has taken it over, or the clip has moved on)."""

    def __init__(self, clip_id: str, worker: str, owner: str | None) -> None:
        holder = f"now held by {owner!r}" if owner else "no longer held"
        super().__init__(f"clip {clip_id!r}: the lease of {worker!r} is {holder}")
        self.clip_id = clip_id
        self.worker = worker
        self.owner = owner


class CatalogDatabaseError(CatalogError, RuntimeError):
    """The database refused or failed an operation (unreachable, locked, constraint broken)."""


class CatalogUnavailableError(CatalogDatabaseError):
    """The database could not be used just now (unreachable, locked, out of space, a dropped
    connection): the same operation may well succeed later. A broken constraint is not this."""


class StudyError(CatalogError, ValueError):
    """A change to the study's participants, consent or visits that its rules refuse."""
