"""The extraction worker's Prometheus metrics: stored → extracted latency, how long a clip's
extraction takes, what became of each clip, and failures by reason (a small fixed set).
Clips by state come from the receiver, which reads them from the catalog once for the site."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Histogram

from .catalog import ClipRecord
from .metrics_http import new_registry

__all__ = ["FailureReason", "WorkerMetrics"]

# A clip waits for a free worker: seconds when idle, hours behind a backlog.
LATENCY_BUCKETS_S = (5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600)
# One clip of at most 60 s: decrypt, quality check, openSMILE, MediaPipe (and OpenFace).
DURATION_BUCKETS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class FailureReason(StrEnum):
    """Why an extraction failed, as a label: ``media`` (the media inside will not decode),
    ``envelope`` (the clip will not decrypt or parse), ``error`` (anything else: retried)."""

    MEDIA = "media"
    ENVELOPE = "envelope"
    ERROR = "error"


class WorkerMetrics:
    """One worker's registry and the instruments it updates."""

    def __init__(self) -> None:
        self.registry: CollectorRegistry = new_registry()
        self.stored_to_extracted = Histogram(
            "painav_stored_to_extracted_seconds",
            "From a clip being stored to it being extracted",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.duration = Histogram(
            "painav_extraction_duration_seconds",
            "How long one clip's extraction took, successful or not",
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self.outcomes = Counter(
            "painav_extractions",
            "Clips this worker took, by result (extracted, failed, retry, lost)",
            ["result"],
            registry=self.registry,
        )
        self.failures = Counter(
            "painav_extraction_failures",
            "Failed extractions by reason (media, envelope, error)",
            ["reason"],
            registry=self.registry,
        )
        for reason in FailureReason:
            self.failures.labels(reason.value)  # present at 0, so rate() sees the first one

    def finished(self, result: str, duration_s: float) -> None:
        self.outcomes.labels(result).inc()
        self.duration.observe(duration_s)

    def extracted(self, clip: ClipRecord, at: datetime) -> None:
        """*clip* was extracted at *at*: its latency since it was stored."""
        if clip.stored_at is not None:
            self.stored_to_extracted.observe(max(0.0, (at - clip.stored_at).total_seconds()))

    def failed(self, reason: FailureReason) -> None:
        self.failures.labels(reason.value).inc()
