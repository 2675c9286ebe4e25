"""The extraction worker: claims stored clips, decrypts each in memory, checks its quality, and
records its features with their provenance.

The only component that holds the hospital data key. Per clip, in this order: the decrypt is
written to the audit log (no audit, no decrypt); the clip is decrypted and demuxed in memory
(:mod:`server.extract.media`: plaintext media never reaches a disk); the quick quality check
runs and its verdict goes into the catalog at once, from where the receiver sends it to the
unit while the participant is still there; then the voice features (openSMILE eGeMAPSv02
functionals into the catalog, descriptors as a Parquet file in the feature folder); then the
face features (MediaPipe, and OpenFace's action units where IT installed it) and the full
quality check, whose face share comes from the landmarker; then the clip is ``extracted``.
Broken media or a clip that will not decrypt fails the clip at once, with the reason; any other
failure is retried later, at most ``max_attempts`` times.

Crash points: killed before ``mark_extracted``, the clip's lease runs out and it is claimed
again (costing an attempt); results already recorded are not written twice (the catalog's
result keys), and a per-frame table is written under its result key, temp file and rename.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from protocol.errors import ProtocolError
from protocol.extract_config import ExtractConfig
from protocol.x25519 import X25519Identity

from ..catalog import Catalog, CatalogUnavailableError, ClipState, LeaseLostError
from ..catalog.records import ClipRecord
from ..catalog.results import FrameFile, Provenance
from ..metrics_health import Heartbeat, health_check
from ..metrics_http import MetricsEndpoint, MetricsEndpointError
from ..metrics_worker import FailureReason, WorkerMetrics
from ..stores import open_store
from .face_mediapipe import FEATURE_SET_FRAMES as MP_FRAMES
from .face_mediapipe import FEATURE_SET_SUMMARY as MP_SUMMARY
from .face_mediapipe import FEATURE_SET_VERSION as MP_VERSION
from .face_mediapipe import FaceFeatures, MediaPipeFaces
from .face_openface import FEATURE_SET_FRAMES as OF_FRAMES
from .face_openface import FEATURE_SET_SUMMARY as OF_SUMMARY
from .face_openface import FEATURE_SET_VERSION as OF_VERSION
from .face_openface import OpenFaceExtractor, OpenFaceNotConfigured
from .faces import FaceFinder
from .media import ClipMedia, MediaError, StreamFacts
from .qc import AudioMetrics, QcResult, VideoMetrics, audio_metrics, judge, video_metrics
from .voice import VoiceExtractor, VoiceProvenance

__all__ = ["ExtractError", "ExtractionWorker", "Outcome", "load_identities"]

log = logging.getLogger("painav.extract")

_QC_FPS = 2.0  # frames a second the quick check looks at for a face
_QC_WIDTH = 640
DATA_KEY_ENV = "PAINAV_DATA_KEY_FILE"


class ExtractError(RuntimeError):
    """The worker cannot start: no data key, an unreadable one; the message is one line."""


def painav_version() -> str:
    try:
        return version("painav")
    except PackageNotFoundError:
        return "0+unknown"


def load_identities(path: Path) -> list[X25519Identity]:
    """The age identities in *path* (``AGE-SECRET-KEY-1…`` lines, ``#`` comments)."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not an age identity file"
        raise ExtractError(f"data key {path}: cannot read: {reason}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not keys:
        raise ExtractError(f"data key {path}: no AGE-SECRET-KEY-1… line")
    try:
        return [X25519Identity.from_string(key) for key in keys]
    except ProtocolError as exc:
        raise ExtractError(f"data key {path}: {exc}") from None


def data_key_path(config: ExtractConfig) -> Path:
    """Where the data key is: ``$PAINAV_DATA_KEY_FILE`` (systemd's credential) or the config's."""
    return Path(os.environ.get(DATA_KEY_ENV) or config.keys.data_key)


@dataclass(frozen=True)
class Outcome:
    """What became of one clip: ``extracted`` (with its quick verdict) or ``failed``/``retry``."""

    clip_id: str
    result: str
    verdict: str | None = None
    reason: str | None = None


class ExtractionWorker:
    """One worker: claims clips one at a time from the catalog and extracts them."""

    def __init__(
        self,
        config: ExtractConfig,
        *,
        worker_id: str,
        identities: list[X25519Identity],
        catalog: Catalog | None = None,
    ) -> None:
        self.config = config
        self.worker_id = worker_id
        self._identities = identities
        self.catalog = catalog or Catalog(config.catalog.url, actor=worker_id)
        self._store = open_store(config.store)
        self._features_dir = config.features.dir
        self._voice = VoiceExtractor(analysis_rate_hz=config.features.voice_rate_hz)
        self._faces = FaceFinder(width_px=_QC_WIDTH)
        self._landmarks = MediaPipeFaces(
            model_path=config.features.face_model, fps=config.features.face_fps
        )
        self._openface = OpenFaceExtractor.from_config(config.features)
        self._version = painav_version()
        # Temp files carry the worker's name: a restarted worker removes what it left when it was
        # killed, and never another worker's file being written.
        self._temp_tag = "".join(c if c.isalnum() or c in "-_" else "_" for c in worker_id)
        self._qc_hash = hashlib.sha256(
            f"{config.qc.model_dump_json()}|{_QC_FPS}|{_QC_WIDTH}".encode()
        ).hexdigest()
        if isinstance(self._openface, OpenFaceNotConfigured):
            log.info("%s: voice, MediaPipe and the quality check only", self._openface.reason)
        self.metrics = WorkerMetrics()
        # The loop goes round between clips; one clip may take up to its lease.
        self._heartbeat = Heartbeat(
            "the extraction loop", config.work.lease_s + config.work.idle_poll_s + 30
        )
        self.metrics_endpoint = MetricsEndpoint(
            config.metrics, self.metrics.registry, health_check(self.catalog, self._heartbeat)
        )

    def close(self) -> None:
        """Close the face landmarker (it holds native resources) and the catalog."""
        self._landmarks.close()
        self.catalog.close()

    # --- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Extract clips until *stop* is set, serving metrics (``[metrics]``) meanwhile."""
        self._heartbeat.beat()
        if self.config.metrics.enabled:
            try:
                self.metrics_endpoint.start()
            except MetricsEndpointError as exc:  # Prometheus sees the target down
                log.error("%s; running without it", exc)
        try:
            self._loop(stop)
        finally:
            self.metrics_endpoint.stop()

    def _loop(self, stop: threading.Event) -> None:
        for leftover in self._features_dir.glob(f"*/.*.{self._temp_tag}.*"):
            leftover.unlink(missing_ok=True)  # cut off by a kill: its result was never recorded
        taken = self.catalog.release_extraction_leases(self.worker_id, now=datetime.now(UTC))
        if taken:
            log.info("took back %d clip(s) this worker was extracting: %s", len(taken), taken)
        unavailable = False
        while not stop.is_set():
            self._heartbeat.beat()
            try:
                outcome = self.extract_one()
            except CatalogUnavailableError as exc:
                if not unavailable:
                    log.warning("waiting for the catalog: %s", exc)
                unavailable = True
                stop.wait(self.config.work.idle_poll_s)
                continue
            unavailable = False
            if outcome is None:
                stop.wait(self.config.work.idle_poll_s)

    def extract_one(self, clip_id: str | None = None) -> Outcome | None:
        """Claim the next clip that is due (or *clip_id*) and extract it; None if none is."""
        work = self.config.work
        clip = self.catalog.claim_for_extraction(
            worker=self.worker_id,
            now=datetime.now(UTC),
            lease_s=work.lease_s,
            max_attempts=work.max_attempts,
            clip_id=clip_id,
        )
        if clip is None:
            return None
        started = time.monotonic()
        outcome = self._extract_claimed(clip)
        # A failure to be retried leaves the clip receipted (waiting again): counted as retry.
        result = "retry" if outcome.result == ClipState.RECEIPTED else outcome.result
        self.metrics.finished(result, time.monotonic() - started)
        return outcome

    def _extract_claimed(self, clip: ClipRecord) -> Outcome:
        try:
            verdict = self._extract(clip)
        except (MediaError, ProtocolError) as exc:  # broken media, or will not decrypt: final
            reason = FailureReason.MEDIA if isinstance(exc, MediaError) else FailureReason.ENVELOPE
            self.metrics.failed(reason)
            return self._failed(clip, f"{type(exc).__name__}: {exc}", permanent=True)
        except LeaseLostError as exc:
            log.warning("clip %s: %s", clip.clip_id, exc)
            return Outcome(clip.clip_id, "lost")
        except CatalogUnavailableError:
            raise  # the lease runs out and the clip comes back
        except Exception as exc:
            log.exception("extracting %s failed", clip.clip_id)
            self.metrics.failed(FailureReason.ERROR)
            return self._failed(clip, f"{type(exc).__name__}: {exc}", permanent=False)
        now = datetime.now(UTC)
        self.catalog.mark_extracted(clip.clip_id, worker=self.worker_id, now=now)
        self.metrics.extracted(clip, now)
        log.info("clip %s extracted (quick check: %s)", clip.clip_id, verdict)
        return Outcome(clip.clip_id, "extracted", verdict=verdict)

    def _failed(self, clip: ClipRecord, reason: str, *, permanent: bool) -> Outcome:
        now = datetime.now(UTC)
        record = self.catalog.extraction_failed(
            clip.clip_id,
            worker=self.worker_id,
            reason=reason[:500],
            now=now,
            retry_at=now + timedelta(seconds=self.config.work.retry_s),
            max_attempts=self.config.work.max_attempts,
            permanent=permanent,
        )
        log.warning("clip %s: extraction failed (%s): %s", clip.clip_id, record.state, reason)
        return Outcome(clip.clip_id, str(record.state), reason=reason)

    # --- one clip ---------------------------------------------------------------------------

    def _extract(self, clip: ClipRecord) -> str:
        """Decrypt, check, extract and record *clip*; its quick verdict."""
        self.catalog.audit_decrypt(clip.clip_id, worker=self.worker_id, purpose="extraction")
        with self._store.open(clip.sha256) as ciphertext:
            media = ClipMedia.decrypt(ciphertext, self._identities, sha256=clip.sha256)
        facts, track = media.facts(), media.audio()
        audio = audio_metrics(track.samples, track.sample_rate_hz)
        video = self._video_metrics(media, facts.frame_times_s)
        quick = self._judge(facts, audio, video)
        self._record_qc(clip, "quick", quick)
        features = self._voice.extract(track.samples, track.sample_rate_hz, start_s=track.start_s)
        functionals = features.functionals
        self._record(
            clip,
            "egemaps_functionals",
            functionals.provenance.feature_set_version,
            self._provenance(functionals.provenance),
            values=_finite(functionals.values),
        )
        lld = features.lld
        version = lld.provenance.feature_set_version
        frames = self._write_table(
            clip.clip_id,
            "egemaps_lld",
            version,
            lld.provenance.config_hash,
            lld.to_parquet,
            lld.frame_count,
        )
        self._record(clip, "egemaps_lld", version, self._provenance(lld.provenance), frames=frames)
        face = self._landmarks.analyse(media.frames(self.config.features.face_fps))
        self._record_face(clip, face)
        self._openface_features(clip, media, facts.duration_s)
        # The full check: the quick one's measures, with the landmarker's face share (10 frames a
        # second, tracked) in place of the cascade's (2 a second).
        share = face.summary.get("face_share")
        full = self._judge(facts, audio, replace(video, face_share=share or 0.0))
        self._record_qc(clip, "full", full)
        return quick.verdict

    def _video_metrics(self, media: ClipMedia, frame_times_s: tuple[float, ...]) -> VideoMetrics:
        # Grey frames straight from the decoder's luma plane, scaled by swscale: no RGB frame
        # and no per-pixel arithmetic, for the cascade and the luma measures alike. Decoding
        # (every frame) runs on its own thread beside the cascade (the sampled ones): both use
        # the cores, and the check's latency is their CPU time shared over them, not their sum.
        faces, luma = [], []
        for sample in media.frames(_QC_FPS, width=_QC_WIDTH, grey=True, ahead=4):
            faces.append(self._faces.present(sample.image))
            luma.append(sample.image)
        return video_metrics(frame_times_s, faces=faces, luma=luma)

    def _record_qc(self, clip: ClipRecord, qc_pass: str, result: QcResult) -> None:
        self.catalog.record_qc(
            clip.clip_id,
            worker=self.worker_id,
            qc_pass=qc_pass,
            verdict=result.verdict,
            reasons=list(result.reasons),
            metrics=_finite(result.metrics),
            config_hash=self._qc_hash,
            painav_version=self._version,
            now=datetime.now(UTC),
        )

    def _judge(self, facts: StreamFacts, audio: AudioMetrics, video: VideoMetrics) -> QcResult:
        return judge(
            audio,
            video,
            duration_s=facts.duration_s,
            av_offset_ms=facts.av_offset_ms,
            frames=facts.frame_count,
            limits=self.config.qc,
        )

    def _record_face(self, clip: ClipRecord, face: FaceFeatures) -> None:
        provenance = face.provenance.catalog(self._version)
        self._record(clip, MP_SUMMARY, MP_VERSION, provenance, values=_finite(face.summary))
        frames = self._write_table(
            clip.clip_id,
            MP_FRAMES,
            MP_VERSION,
            provenance.config_hash,
            face.frames.to_parquet,
            face.frames.frame_count,
        )
        self._record(clip, MP_FRAMES, MP_VERSION, provenance, frames=frames)

    def _openface_features(self, clip: ClipRecord, media: ClipMedia, duration_s: float) -> None:
        if not isinstance(self._openface, OpenFaceExtractor):
            return
        of = self._openface.extract(media.data, duration_s=duration_s)
        provenance = Provenance(
            tool=of.provenance.tool,
            tool_version=of.provenance.tool_version,
            config_hash=of.provenance.config_hash,
            painav_version=self._version,
            model_file=of.provenance.binary_path,
            model_sha256=of.provenance.binary_sha256,
        )
        self._record(clip, OF_SUMMARY, OF_VERSION, provenance, values=_finite(of.summary))
        frames = self._write_table(
            clip.clip_id,
            OF_FRAMES,
            OF_VERSION,
            provenance.config_hash,
            of.frames.to_parquet,
            of.frames.kept,
        )
        self._record(clip, OF_FRAMES, OF_VERSION, provenance, frames=frames)

    def _provenance(self, voice: VoiceProvenance) -> Provenance:
        return Provenance(
            tool=voice.tool,
            tool_version=voice.tool_version,
            config_hash=voice.config_hash,
            painav_version=self._version,
            sample_rate_hz=voice.analysis_rate_hz,
        )

    def _record(
        self,
        clip: ClipRecord,
        feature_set: str,
        feature_version: str,
        provenance: Provenance,
        *,
        values: Mapping[str, float | None] | None = None,
        frames: FrameFile | None = None,
    ) -> None:
        self.catalog.record_features(
            clip.clip_id,
            worker=self.worker_id,
            feature_set=feature_set,
            version=feature_version,
            provenance=provenance,
            values=values,
            frames=frames,
            now=datetime.now(UTC),
        )

    def _write_table(
        self,
        clip_id: str,
        feature_set: str,
        version: str,
        config_hash: str,
        parquet: Callable[[], bytes],
        frame_count: int,
    ) -> FrameFile:
        """A per-frame table as Parquet under its result key (temp file, fsync, rename): a
        re-run finds the file there and keeps it."""
        relative = f"{clip_id}/{feature_set}-{version}-{config_hash[:16]}.parquet"
        path = self._features_dir / relative
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{self._temp_tag}.")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(parquet())
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return FrameFile(relative, digest, frame_count=frame_count)


def _finite(values: Mapping[str, object]) -> dict[str, float | None]:
    """*values* for JSON: NaN and infinities (openSMILE gives NaN on silence) become None."""
    out: dict[str, float | None] = {}
    for key, value in values.items():
        if value is None or isinstance(value, bool):
            out[key] = None if value is None else float(value)
        elif isinstance(value, int | float | np.floating | np.integer):
            number = float(value)
            out[key] = number if math.isfinite(number) else None
        else:
            raise TypeError(f"{key}: {type(value).__name__} is not a number")
    return out
