"""Writing and reading what extraction found: feature sets with provenance, quality checks,
and the outbox of quick verdicts on their way back to the units.

Both kinds of result are written once: a result is keyed (a feature set by clip, name, version
and configuration hash; a quality check by clip and pass) and inserted with ``ON CONFLICT DO
NOTHING``, so a worker killed after the write and before it marked the clip extracted writes
nothing new when it runs the clip again, and two writers at once cannot both insert.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from protocol.message_codec import dump_json
from protocol.messages import MAX_QC_REASONS

from .clip_rows import bounded, check_lease, code, locked, utc
from .errors import ClipNotFoundError, ClipStateError, ResultConflictError
from .lifecycle import ClipState
from .models import Clip, ClipFeatures, ClipQc, Unit
from .results import (
    SHA256_RE,
    FeatureRecord,
    FrameFile,
    Provenance,
    QcPass,
    QcRecord,
    Verdict,
    VerdictRecord,
)
from .units import insert_new

__all__ = ["QUICK_QC_STATES", "FindingsMixin"]

QUICK_QC_STATES: Final = frozenset({ClipState.STORED, ClipState.RECEIPTED, ClipState.EXTRACTING})
"""States in which a quick quality check may be recorded: stored, before extraction is done."""

_IN_CHUNK: Final = 500  # ids per IN (...) list: well inside every backend's parameter limit


class FindingsMixin:
    """The :class:`~server.catalog.Catalog`'s methods for features and quality checks."""

    _clock: Callable[[], datetime]

    _session: Callable[..., AbstractContextManager[Session]]  # the Catalog's transaction

    # --- features ---------------------------------------------------------------------------

    def record_features(
        self,
        clip_id: str,
        *,
        worker: str,
        feature_set: str,
        version: str,
        provenance: Provenance,
        values: Mapping[str, Any] | None = None,
        frames: FrameFile | None = None,
        now: datetime,
    ) -> tuple[FeatureRecord, bool]:
        """Record feature set *feature_set* (a code, e.g. ``egemaps_v02_functionals``) at
        *version* for the clip *worker* is extracting: per-clip *values* (JSON), per-frame
        data in a file (*frames*), or both. True with the record if it was written, False
        with the one already there if this key was recorded before (a re-run): then keep
        that record's frame file, not a new one.

        :class:`LeaseLostError` unless *worker* holds the clip; :class:`ResultConflictError`
        if the key exists with another tool, tool version, model or sample rate.
        """
        now = utc(now, "now")
        row = _feature_row(clip_id, worker, feature_set, version, provenance, values, frames)
        row["created_at"] = now
        with self._session(write=True) as s:
            check_lease(locked(s, clip_id), worker, ClipState.EXTRACTING)
            new = insert_new(s, ClipFeatures, row)
            if new is not None:
                return FeatureRecord.of(new), True
            old = s.scalars(
                select(ClipFeatures).where(
                    ClipFeatures.clip_id == clip_id,
                    ClipFeatures.feature_set == feature_set,
                    ClipFeatures.feature_set_version == version,
                    ClipFeatures.config_hash == provenance.config_hash,
                )
            ).one()
            kept = FeatureRecord.of(old)
            if _identity(kept.provenance) != _identity(provenance):
                made, asked = _identity(kept.provenance), _identity(provenance)
                raise ResultConflictError(
                    f"clip {clip_id!r}: {feature_set} {version} with config"
                    f" {provenance.config_hash} was made by {made}, not {asked}: the"
                    " configuration hash must cover the tool, its version and its model"
                )
            return kept, False

    def features(self, clip_id: str, *, feature_set: str | None = None) -> list[FeatureRecord]:
        """The clip's feature sets (optionally one), by name, then oldest first."""
        query = select(ClipFeatures).where(ClipFeatures.clip_id == clip_id)
        if feature_set is not None:
            query = query.where(ClipFeatures.feature_set == feature_set)
        query = query.order_by(ClipFeatures.feature_set, ClipFeatures.created_at, ClipFeatures.id)
        with self._session(write=False) as s:
            return [FeatureRecord.of(row) for row in s.scalars(query)]

    # --- quality checks ---------------------------------------------------------------------

    def record_qc(
        self,
        clip_id: str,
        *,
        worker: str,
        qc_pass: QcPass | str,
        verdict: Verdict | str,
        reasons: Sequence[str],
        metrics: Mapping[str, Any],
        config_hash: str,
        painav_version: str,
        now: datetime,
    ) -> tuple[QcRecord, bool]:
        """Record a quality check of *clip_id*: its *verdict*, *reasons* (codes, e.g.
        ``audio_clipping``) and *metrics* (JSON); True with it if written, False with the one
        already there if this pass was recorded before (a re-run writes nothing).

        *reasons* are as the unit will get them (``painav.qc/1``): most important first, at
        most 8, no repeats, at least one unless the verdict is ``usable``. A ``quick`` check
        may be recorded while the clip is stored, receipted or extracting; a ``full`` one only
        by the worker extracting the clip (:class:`LeaseLostError` otherwise). Either enters
        the verdict outbox (:meth:`pending_verdicts`).
        """
        now = utc(now, "now")
        qc_pass, verdict = QcPass(qc_pass), Verdict(verdict)
        bounded(worker, "worker", 64)
        reasons = _reasons(reasons, verdict)
        row = {
            "clip_id": clip_id,
            "qc_pass": qc_pass.value,
            "verdict": verdict.value,
            "reasons": reasons,
            "metrics": _json_object(metrics, "metrics"),
            "config_hash": bounded(config_hash, "config_hash", 64),
            "painav_version": bounded(painav_version, "painav_version", 64),
            "worker": worker,
            "created_at": now,
        }
        with self._session(write=True) as s:
            clip = locked(s, clip_id)
            if qc_pass is QcPass.FULL:
                check_lease(clip, worker, ClipState.EXTRACTING)
            elif clip.state not in QUICK_QC_STATES:
                what = "a quick check is recorded while stored, receipted or extracting"
                raise ClipStateError(clip_id, clip.state.value, what)
            new = insert_new(s, ClipQc, row)
            if new is None:
                new = s.scalars(
                    select(ClipQc).where(ClipQc.clip_id == clip_id, ClipQc.qc_pass == qc_pass)
                ).one()
                return QcRecord.of(new), False
            return QcRecord.of(new), True

    def qc(self, clip_id: str) -> list[QcRecord]:
        """The clip's quality checks, quick before full."""
        query = select(ClipQc).where(ClipQc.clip_id == clip_id).order_by(ClipQc.qc_pass.desc())
        with self._session(write=False) as s:
            return [QcRecord.of(row) for row in s.scalars(query)]

    def last_verdicts(self, clip_ids: Iterable[str]) -> dict[str, QcRecord]:
        """Each clip's last quality check (full if there is one, else quick), by clip id;
        clips without one are left out. For listings: one query per 500 clips."""
        ids = list(dict.fromkeys(clip_ids))
        last: dict[str, QcRecord] = {}
        with self._session(write=False) as s:
            for start in range(0, len(ids), _IN_CHUNK):
                query = select(ClipQc).where(ClipQc.clip_id.in_(ids[start : start + _IN_CHUNK]))
                # 'full' sorts before 'quick': the first row of each clip is its last check.
                for row in s.scalars(query.order_by(ClipQc.clip_id, ClipQc.qc_pass)):
                    last.setdefault(row.clip_id, QcRecord.of(row))
        return last

    # --- the verdict outbox -----------------------------------------------------------------

    def pending_verdicts(self, limit: int = 100) -> list[VerdictRecord]:
        """Verdicts not yet sent to their units, oldest first (a clip's quick verdict before
        its full one). :meth:`VerdictRecord.message` makes the message to send.

        Several receivers may read the same verdict before one marks it sent: the unit takes a
        verdict for a clip it already has one for as a repeat (QoS 1 gives repeats anyway).
        """
        query = (
            select(ClipQc, Clip.device_id, Unit.site_id)
            .join(Clip, Clip.clip_id == ClipQc.clip_id)
            .join(Unit, Unit.device_id == Clip.device_id)
            .where(ClipQc.verdict_sent_at.is_(None))
            .order_by(ClipQc.created_at, ClipQc.id)
            .limit(limit)
        )
        with self._session(write=False) as s:
            return [
                VerdictRecord(
                    site_id=site_id,
                    device_id=device_id,
                    clip_id=row.clip_id,
                    qc_pass=QcPass(row.qc_pass),
                    verdict=Verdict(row.verdict),
                    reasons=tuple(row.reasons),
                    created_at=row.created_at,
                )
                for row, device_id, site_id in s.execute(query)
            ]

    def mark_verdict_sent(self, clip_id: str, qc_pass: QcPass | str, *, at: datetime) -> bool:
        """Record that the clip's verdict of *qc_pass* was sent (published, acknowledged by
        the broker) at *at*; False if it was marked before (the first time stays).
        :class:`ClipNotFoundError` if the clip has no such verdict."""
        at = utc(at, "at")
        where = (ClipQc.clip_id == clip_id, ClipQc.qc_pass == QcPass(qc_pass).value)
        with self._session(write=True) as s:
            result = cast(
                "CursorResult[Any]",
                s.execute(
                    update(ClipQc)
                    .where(*where, ClipQc.verdict_sent_at.is_(None))
                    .values(verdict_sent_at=at)
                ),
            )
            if result.rowcount == 1:
                return True
            if s.scalars(select(ClipQc.id).where(*where)).first() is None:
                raise ClipNotFoundError(clip_id)
            return False


def _identity(p: Provenance) -> tuple[str, str, str | None, int | None]:
    """What must match for a re-run's result to be the same result."""
    return (p.tool, p.tool_version, p.model_sha256, p.sample_rate_hz)


def _reasons(reasons: Sequence[str], verdict: Verdict) -> list[str]:
    """*reasons* checked as ``painav.qc/1`` will check them at the unit."""
    if isinstance(reasons, str):
        raise ValueError("reasons is a list of codes, not one string")
    checked = [code(reason, "each reason") for reason in reasons]
    if len(set(checked)) != len(checked) or len(checked) > MAX_QC_REASONS:
        raise ValueError(f"reasons: at most {MAX_QC_REASONS}, none repeated")
    if not checked and verdict is not Verdict.USABLE:
        raise ValueError(f"a {verdict.value} verdict needs at least one reason")
    return checked


def _sha256(value: str, name: str) -> str:
    if not SHA256_RE.fullmatch(value):
        raise ValueError(f"{name} must be a SHA-256 in 64 lower-case hex digits")
    return value


def _json_object(value: Mapping[str, Any], name: str) -> dict[str, Any]:
    """*value* as JSON will read it back; ValueError if it is not a JSON object."""
    try:
        loaded = json.loads(dump_json(dict(value)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a JSON object: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ValueError(f"{name} must be a JSON object")
    return loaded


def _feature_row(
    clip_id: str,
    worker: str,
    feature_set: str,
    version: str,
    p: Provenance,
    values: Mapping[str, Any] | None,
    frames: FrameFile | None,
) -> dict[str, Any]:
    """The row to insert, every field checked (SQLite would keep what PostgreSQL refuses)."""
    if values is None and frames is None:
        raise ValueError("a feature set needs values, a frame file, or both")
    if (p.model_file is None) != (p.model_sha256 is None):
        raise ValueError("a model file needs its SHA-256, and a SHA-256 its model file")
    if p.sample_rate_hz is not None and not p.sample_rate_hz > 0:
        raise ValueError("sample_rate_hz must be positive")
    row: dict[str, Any] = {
        "clip_id": clip_id,
        "worker": bounded(worker, "worker", 64),
        "feature_set": code(feature_set, "feature_set"),
        "feature_set_version": bounded(version, "version", 32),
        "config_hash": bounded(p.config_hash, "config_hash", 64),
        "tool": bounded(p.tool, "tool", 64),
        "tool_version": bounded(p.tool_version, "tool_version", 64),
        "painav_version": bounded(p.painav_version, "painav_version", 64),
        "model_file": None if p.model_file is None else bounded(p.model_file, "model_file", 256),
        "model_sha256": None if p.model_sha256 is None else _sha256(p.model_sha256, "model"),
        "sample_rate_hz": p.sample_rate_hz,
        "clip_values": None if values is None else _json_object(values, "values"),
        "frames_path": None,
        "frames_sha256": None,
        "frame_count": None,
    }
    if frames is not None:
        path = bounded(frames.path, "frames path", 512)
        if posixpath.isabs(path) or ".." in path.split("/") or "\\" in path:
            raise ValueError("the frames path is relative to the feature folder, without '..'")
        if frames.frame_count is not None and frames.frame_count < 0:
            raise ValueError("frame_count must not be negative")
        row |= {
            "frames_path": path,
            "frames_sha256": _sha256(frames.sha256, "frames"),
            "frame_count": frames.frame_count,
        }
    return row
