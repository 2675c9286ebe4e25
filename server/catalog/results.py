"""What extraction found in a clip, as the catalog takes and hands it out: feature sets with
their provenance, and quality checks with their verdicts (frozen records, no database here)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from protocol.messages import QcVerdict

from .models import ClipFeatures, ClipQc

__all__ = [
    "SHA256_RE",
    "FeatureRecord",
    "FrameFile",
    "Provenance",
    "QcPass",
    "QcRecord",
    "Verdict",
    "VerdictRecord",
]

SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
"""A SHA-256 as the catalog keeps it: 64 lower-case hex digits."""


class QcPass(StrEnum):
    """Which quality check: ``quick`` right after the clip is stored (its verdict goes back to
    the unit), or ``full`` with extraction."""

    QUICK = "quick"
    FULL = "full"


class Verdict(StrEnum):
    """A quality check's verdict: ``usable``, ``check`` (a person should look), or ``repeat``
    (record again while the participant is still there)."""

    USABLE = "usable"
    CHECK = "check"
    REPEAT = "repeat"


@dataclass(frozen=True)
class Provenance:
    """What made a feature set: the tool and its version, the model file and its SHA-256 (if
    the tool uses one), the analysis sample rate (audio), a hash of the worker's configuration
    of the tool, and painav's version.

    ``config_hash`` is part of a result's key: it should cover everything that changes the
    values (parameters, model, sample rate, tool version), so that a changed configuration adds
    a result instead of being taken for a re-run of the old one.
    """

    tool: str
    tool_version: str
    config_hash: str
    painav_version: str
    model_file: str | None = None
    model_sha256: str | None = None
    sample_rate_hz: int | None = None


@dataclass(frozen=True)
class FrameFile:
    """Per-frame values in a file the worker wrote (e.g. Parquet): its path relative to the
    feature folder, its SHA-256, and how many frames (rows) it holds."""

    path: str
    sha256: str
    frame_count: int | None = None


@dataclass(frozen=True)
class FeatureRecord:
    """One feature set of one clip, with its provenance; times are timezone-aware UTC."""

    clip_id: str
    feature_set: str
    feature_set_version: str
    provenance: Provenance
    worker: str
    created_at: datetime
    values: Mapping[str, Any] | None
    frames: FrameFile | None

    @classmethod
    def of(cls, row: ClipFeatures) -> FeatureRecord:
        """A snapshot of *row*."""
        frames = None
        if row.frames_path is not None and row.frames_sha256 is not None:
            frames = FrameFile(row.frames_path, row.frames_sha256, row.frame_count)
        return cls(
            clip_id=row.clip_id,
            feature_set=row.feature_set,
            feature_set_version=row.feature_set_version,
            provenance=Provenance(
                tool=row.tool,
                tool_version=row.tool_version,
                config_hash=row.config_hash,
                painav_version=row.painav_version,
                model_file=row.model_file,
                model_sha256=row.model_sha256,
                sample_rate_hz=row.sample_rate_hz,
            ),
            worker=row.worker,
            created_at=row.created_at,
            values=row.clip_values,
            frames=frames,
        )


@dataclass(frozen=True)
class QcRecord:
    """One quality check of one clip: its verdict, the reasons (codes) and the measurements."""

    clip_id: str
    qc_pass: QcPass
    verdict: Verdict
    reasons: Sequence[str]
    metrics: Mapping[str, Any]
    config_hash: str
    painav_version: str
    worker: str
    created_at: datetime
    verdict_sent_at: datetime | None

    @classmethod
    def of(cls, row: ClipQc) -> QcRecord:
        """A snapshot of *row*."""
        return cls(
            clip_id=row.clip_id,
            qc_pass=QcPass(row.qc_pass),
            verdict=Verdict(row.verdict),
            reasons=tuple(row.reasons),
            metrics=row.metrics,
            config_hash=row.config_hash,
            painav_version=row.painav_version,
            worker=row.worker,
            created_at=row.created_at,
            verdict_sent_at=row.verdict_sent_at,
        )


@dataclass(frozen=True)
class VerdictRecord:
    """A verdict waiting to be sent to the unit that recorded the clip (the outbox)."""

    site_id: str
    device_id: str
    clip_id: str
    qc_pass: QcPass
    verdict: Verdict
    reasons: Sequence[str]
    created_at: datetime

    def message(self, *, issued_at: datetime) -> QcVerdict:
        """The ``painav.qc/1`` message for the unit (topic ``…/<site_id>/<device_id>/qc``)."""
        return QcVerdict(
            clip_id=self.clip_id,
            verdict=self.verdict.value,
            reasons=tuple(self.reasons),
            pass_=self.qc_pass.value,
            issued_at=issued_at,
        )
