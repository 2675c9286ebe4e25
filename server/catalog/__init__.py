"""The catalog: clips through their lifecycle, units, the fetch and extraction queues, and what
extraction found (features with provenance, quality checks, verdicts for the units), in SQL
(SQLite or PostgreSQL), with every change written to the audit log (:mod:`server.audit`)."""

from .catalog import Catalog
from .errors import (
    CatalogDatabaseError,
    CatalogError,
    CatalogUnavailableError,
    ClipNotFoundError,
    ClipStateError,
    IllegalTransitionError,
    LeaseLostError,
    ResultConflictError,
    StudyError,
)
from .lifecycle import TRANSITIONS, ClipState
from .records import ClipRecord, UnitEventRecord, UnitRecord
from .results import (
    FeatureRecord,
    FrameFile,
    Provenance,
    QcPass,
    QcRecord,
    Verdict,
    VerdictRecord,
)
from .study import ConsentRecord, ParticipantRecord, VisitRecord

__all__ = [
    "TRANSITIONS",
    "Catalog",
    "CatalogDatabaseError",
    "CatalogError",
    "CatalogUnavailableError",
    "ClipNotFoundError",
    "ClipRecord",
    "ClipState",
    "ClipStateError",
    "ConsentRecord",
    "FeatureRecord",
    "FrameFile",
    "IllegalTransitionError",
    "LeaseLostError",
    "ParticipantRecord",
    "Provenance",
    "QcPass",
    "QcRecord",
    "ResultConflictError",
    "StudyError",
    "UnitEventRecord",
    "UnitRecord",
    "Verdict",
    "VerdictRecord",
    "VisitRecord",
]
