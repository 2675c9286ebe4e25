"""The extraction worker's config file (``extract.toml``): one typed model per section, unknown
keys refused; the only place for its keys, defaults and bounds (thresholds of the quality
check included), loaded by :mod:`server.extract` and written by provisioning."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .message_fields import SiteId
from .metrics_config import WorkerMetricsSection
from .store_config import StoreLocation

__all__ = [
    "CatalogSection",
    "ExtractConfig",
    "FeaturesSection",
    "KeysSection",
    "QcSection",
    "SiteSection",
    "StoreSection",
    "WorkSection",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteSection(_Section):
    site_id: SiteId


class CatalogSection(_Section):
    url: str = Field(min_length=1, description="sqlite:///… or postgresql+psycopg://…")


class StoreSection(StoreLocation):
    """The receivers' clip store (:class:`StoreLocation`), which the worker only reads."""


class KeysSection(_Section):
    # Under systemd the data key is a credential ($CREDENTIALS_DIRECTORY/data-key); the
    # environment variable PAINAV_DATA_KEY_FILE, when set, wins over this.
    data_key: Path = Field(description="the hospital data key (age identity file)")


class FeaturesSection(_Section):
    dir: Path = Field(description="where per-frame feature tables (Parquet) are written")
    voice_rate_hz: int = Field(
        default=16_000, ge=8_000, le=48_000, description="openSMILE's analysis sample rate"
    )
    face_fps: float = Field(default=10.0, gt=0, le=60, description="video frames analysed a second")
    face_model: Path | None = Field(
        default=None,
        description="MediaPipe's face_landmarker.task (default: the one the set-up installed)",
    )
    openface_bin: Path | None = Field(
        default=None, description="OpenFace 2.x FeatureExtraction, where IT installed it"
    )
    openface_min_confidence: float = Field(default=0.8, ge=0, le=1)


class WorkSection(_Section):
    lease_s: float = Field(default=600.0, ge=10, le=86_400)
    max_attempts: int = Field(default=3, ge=1, le=20)
    retry_s: float = Field(default=60.0, ge=1, le=86_400)
    idle_poll_s: float = Field(default=2.0, gt=0, le=600)


class QcSection(_Section):
    """Thresholds of the quality check (:mod:`server.extract.qc`)."""

    min_duration_s: float = Field(default=3.0, ge=0)
    silent_below_dbfs: float = Field(default=-50.0, le=0)
    min_speech_ratio: float = Field(default=0.1, ge=0, le=1)
    max_clipping_ratio: float = Field(default=0.01, ge=0, le=1)
    min_snr_db: float = Field(default=10.0)
    repeat_face_share: float = Field(default=0.3, ge=0, le=1)
    min_face_share: float = Field(default=0.7, ge=0, le=1)
    min_brightness: float = Field(default=35.0, ge=0, le=255)
    max_brightness: float = Field(default=230.0, ge=0, le=255)
    min_sharpness: float = Field(default=15.0, ge=0)
    max_dropped_ratio: float = Field(default=0.02, ge=0, le=1)
    max_av_offset_ms: float = Field(default=100.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> QcSection:
        if self.repeat_face_share > self.min_face_share:
            raise ValueError("repeat_face_share must not exceed min_face_share")
        if self.min_brightness >= self.max_brightness:
            raise ValueError("min_brightness must be below max_brightness")
        return self


class ExtractConfig(_Section):
    """The whole ``extract.toml``."""

    site: SiteSection
    catalog: CatalogSection
    store: StoreSection
    keys: KeysSection
    features: FeaturesSection
    work: WorkSection = WorkSection()
    qc: QcSection = QcSection()
    # Prometheus /metrics and /healthz (protocol.metrics_config).
    metrics: WorkerMetricsSection = WorkerMetricsSection()
