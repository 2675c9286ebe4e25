"""The catalog's errors: one root, a class for each outcome a caller branches on."""

from __future__ import annotations

__all__ = [
    "CatalogDatabaseError",
    "CatalogError",
    "CatalogUnavailableError",
    "ClipNotFoundError",
    "IllegalTransitionError",
    "LeaseLostError",
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


class LeaseLostError(CatalogError):
    """A worker reported on a fetch whose lease another worker has since taken over."""

    def __init__(self, clip_id: str, worker: str, owner: str | None) -> None:
        holder = f"now held by {owner!r}" if owner else "no longer held"
        super().__init__(f"clip {clip_id!r}: the fetch lease of {worker!r} is {holder}")
        self.clip_id = clip_id
        self.worker = worker
        self.owner = owner


class CatalogDatabaseError(CatalogError, RuntimeError):
    """The database refused or failed an operation (unreachable, locked, constraint broken)."""


class CatalogUnavailableError(CatalogDatabaseError):
    """The database could not be used just now (unreachable, locked, out of space, a dropped
    connection): the same operation may well succeed later. A broken constraint is not this."""
