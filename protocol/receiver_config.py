"""The receiver's config file (``receiver.toml``): one typed model per section, unknown keys
refused, with one line naming the file, section and key when something is wrong. The only place
for its keys, defaults and bounds: the receiver loads it (:mod:`server.config`), provisioning
writes it by serialising the model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .message_fields import ReceiverId, SiteId

__all__ = [
    "GROUP_PATTERN",
    "CatalogSection",
    "MqttSection",
    "PullSection",
    "ReceiverConfig",
    "SiteSection",
    "StoreSection",
    "TlsSection",
]

Port = Annotated[int, Field(ge=1, le=65535)]

GROUP_PATTERN = r"^[a-z2-7]{26,32}$"
"""The receivers' shared-subscription group: the site's secret, at least 26 random base32
characters (128 bits) as provisioning makes it. Mosquitto does not check SUBSCRIBE against its
ACL, so any client that knows the group name can join it and take its share of every unit's
announcements and events (the broker then drops them at delivery): only receivers may know it."""


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
    # Required, and never a guessable name: see GROUP_PATTERN.
    group: str = Field(default="", validate_default=True)
    keepalive_s: int = Field(default=30, ge=5, le=600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60)

    @field_validator("group")
    @classmethod
    def _secret_group(cls, value: str) -> str:
        if not re.fullmatch(GROUP_PATTERN, value):
            raise ValueError(
                "must be the site's secret subscription group (26-32 of a-z and 2-7), which "
                "'painav provision receiver config' writes; a guessable name such as the old "
                "default 'receivers' lets a stolen unit's certificate take announcements and "
                "events"
            )
        return value


class TlsSection(_Section):
    cert: Path
    key: Path
    ca: Path
    receipt_key: Path  # the receiver's Ed25519 receipt-signing key (minisign format)


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
