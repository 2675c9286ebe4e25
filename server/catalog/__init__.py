"""The catalog: clips through their lifecycle, units, and the fetch queue, in SQL (SQLite or
PostgreSQL), with every change written to the audit log (:mod:`server.audit`)."""

from .catalog import Catalog
from .errors import (
    CatalogDatabaseError,
    CatalogError,
    CatalogUnavailableError,
    ClipNotFoundError,
    IllegalTransitionError,
    LeaseLostError,
)
from .lifecycle import TRANSITIONS, ClipState
from .records import ClipRecord, UnitEventRecord, UnitRecord

__all__ = [
    "TRANSITIONS",
    "Catalog",
    "CatalogDatabaseError",
    "CatalogError",
    "CatalogUnavailableError",
    "ClipNotFoundError",
    "ClipRecord",
    "ClipState",
    "IllegalTransitionError",
    "LeaseLostError",
    "UnitEventRecord",
    "UnitRecord",
]
