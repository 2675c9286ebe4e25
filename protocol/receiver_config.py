"""The receiver's config file (``receiver.toml``): one typed model per section, unknown keys
refused, with one line naming the file, section and key when something is wrong. The only place
for its keys, defaults and bounds: the receiver loads it (:mod:`server.config`), provisioning
writes it by serialising the model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from .message_fields import ReceiverId, SiteId

__all__ = [
    "CatalogSection",
    "MqttSection",
    "PullSection",
    "ReceiverConfig",
    "SiteSection",
    "StoreSection",
    "TlsSection",
]

Port = Annotated[int, Field(ge=1, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteSection(_Section):
    site_id: SiteId
    receiver_id: ReceiverId = "receiver"
    # The device registry provisioning writes: which units exist, their keys, who is revoked.
    registry: Path
    # The hospital data key's public part: every clip must list it among its recipients.
    data_key_recipient: str = Field(pattern=r"^age1[0-9a-z]{58}$")


class MqttSection(_Section):
    host: str = Field(min_length=1)
    port: Port = 8883
    group: str = Field(default="receivers", pattern=r"^[a-z0-9-]{1,32}$")
    keepalive_s: int = Field(default=30, ge=5, le=600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60)


class TlsSection(_Section):
    cert: Path
    key: Path
    ca: Path
    # The receiver's own Ed25519 key for receipts and arm commands, and its certificate from the
    # site root (painav's signing usage): units trust every receiver the root certifies.
    signing_key: Path
    signing_cert: Path
    # The site root's CRL, which the receiver publishes (retained) to every unit, re-read when
    # it changes: how a revoked receiver's certificates reach units already deployed.
    crl: Path | None = None
    # Upgrading a site of the previous version only: the receipt key every receiver shared.
    # While it is named, receipts also go out in the old form (receipts/1) for units not yet
    # upgraded. Remove it once every unit runs this version, then destroy the key.
    receipt_key: Path | None = None


class StoreSection(_Section):
    dir: Path  # content-addressed, still-encrypted clips
    spool: Path  # partial downloads, resumed after a restart


class CatalogSection(_Section):
    # SQLite by default; a PostgreSQL URL when several receivers share the work.
    url: str = Field(min_length=1)


class PullSection(_Section):
    concurrency: int = Field(default=4, ge=1, le=64)
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    retry_max_s: float = Field(default=300.0, ge=1, le=86_400)
    lease_s: float = Field(default=300.0, ge=5, le=86_400)
    reconcile_interval_s: float = Field(default=300.0, ge=5, le=86_400)


class ReceiverConfig(_Section):
    """The whole ``receiver.toml``."""

    site: SiteSection
    mqtt: MqttSection
    tls: TlsSection
    store: StoreSection
    catalog: CatalogSection
    pull: PullSection = PullSection()
