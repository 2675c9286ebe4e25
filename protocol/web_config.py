"""The dashboard's config file (``web.toml``): one typed model per section, unknown keys refused;
written by ``painav provision web`` and loaded by ``painav web run``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .message_fields import SiteId
from .store_config import StoreLocation

__all__ = [
    "ExportsSection",
    "HttpSection",
    "MetricsSection",
    "SessionSection",
    "SiteSection",
    "VideoSection",
    "WebConfig",
]

Role = Literal["viewer", "researcher", "admin"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteSection(_Section):
    site_id: SiteId
    registry: Path = Field(description="the unit registry provisioning keeps (revoked units)")


class CatalogSection(_Section):
    url: str = Field(min_length=1, description="sqlite:///… or postgresql+psycopg://…")


class HttpSection(_Section):
    """HTTPS only: the certificate is the site root's (``painav provision web``)."""

    listen: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8443, ge=1, le=65535)
    cert: Path
    key: Path
    ca: Path = Field(description="the site root, to show the units' certificate expiry")


class SessionSection(_Section):
    idle_timeout_s: float = Field(default=1800.0, ge=10, le=86_400)
    # After this many failed logins in a row (by address or by user name), each further attempt
    # waits twice as long as the one before, up to max_delay_s.
    free_failures: int = Field(default=5, ge=1, le=100)
    max_delay_s: float = Field(default=300.0, ge=1, le=86_400)


class FeaturesSection(_Section):
    dir: Path = Field(description="the extraction worker's per-frame tables, read only")


class ExportsSection(_Section):
    dir: Path | None = Field(default=None, description="where exports started here are written")


class MetricsSection(_Section):
    # Prometheus sends it as a bearer token (authorization.credentials_file); /metrics is
    # refused without it, like every other route without a login.
    token_file: Path | None = None


class VideoSection(_Section):
    """Playing a clip: off unless an admin names the roles; decrypts in memory, audited."""

    roles: tuple[Role, ...] = ()
    data_key: Path | None = Field(default=None, description="the hospital data key (age)")
    store: StoreLocation | None = Field(
        default=None, description="the clip store, as the receiver's [store] names it (read only)"
    )


class WebConfig(_Section):
    """The whole ``web.toml``."""

    site: SiteSection
    catalog: CatalogSection
    http: HttpSection
    features: FeaturesSection
    session: SessionSection = SessionSection()
    exports: ExportsSection = ExportsSection()
    metrics: MetricsSection = MetricsSection()
    video: VideoSection = VideoSection()
