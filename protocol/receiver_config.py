"""The receiver's config file (``receiver.toml``): one typed model per section, unknown keys
refused, with one line naming the file, section and key when something is wrong. The only place
for its keys, defaults and bounds: the receiver loads it (:mod:`server.config`), provisioning
writes it by serialising the model."""

from __future__ import annotations

import re
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, IPvAnyNetwork, field_validator

from .message_fields import ReceiverId, SiteId
from .metrics_config import ReceiverMetricsSection
from .store_config import StoreLocation

__all__ = [
    "GROUP_PATTERN",
    "PRIVATE_NETWORKS",
    "UNIT_PORT",
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


class StoreSection(StoreLocation):
    """Where clips rest (:class:`StoreLocation`: a folder or an S3 bucket), and the spool."""

    spool: Path  # partial downloads, resumed after a restart: always a local folder


class CatalogSection(_Section):
    # SQLite by default; a PostgreSQL URL when several receivers share the work.
    url: str = Field(min_length=1)


def _port_range(value: str) -> str:
    low, _, high = value.partition("-")
    if not (low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high) <= 65535):
        raise ValueError(f"{value!r} is not a port range like '1024-65535'")
    return value


PortRange = Annotated[str, AfterValidator(_port_range)]

PRIVATE_NETWORKS: Final = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
"""Where units may be by default: the private address ranges a hospital network uses."""

UNIT_PORT: Final = 8443
"""The port a unit's clip server listens on by default (``[clip_server] port`` of a unit)."""


class PullSection(_Section):
    concurrency: int = Field(default=4, ge=1, le=64)
    # At most this many of the workers fetch from one unit at a time, so that one slow (or
    # hostile) unit can never hold them all.
    per_unit_concurrency: int = Field(default=1, ge=1, le=8)
    timeout_s: float = Field(default=30.0, gt=0, le=600)  # for each socket operation
    # A clip's download (with its signature) must end within handshake_allowance_s plus its
    # announced size at min_rate_bytes_s; a unit that serves slower is cut off (TIMEOUT) and
    # resumed later. The default takes a clip of the default 4 Mbit/s in under a minute.
    min_rate_bytes_s: int = Field(default=256 * 1024, ge=1024)
    handshake_allowance_s: float = Field(default=10.0, gt=0, le=600)
    # The outbox listing of one unit (reconciliation) must end within this.
    listing_deadline_s: float = Field(default=30.0, gt=0, le=600)
    # The partial downloads of one unit may hold at most this much of the spool; a fetch that
    # would go over waits. Below MAX_CLIP_BYTES (512 MiB), a larger clip can never be fetched.
    spool_quota_bytes_per_unit: int = Field(default=1 << 30, ge=1 << 20)
    # Attempts on which the unit answered (refused connections do not count): after this
    # many, the clip is quarantined as fetch_attempts_exhausted and stays on its unit.
    max_attempts: int = Field(default=20, ge=1, le=10_000)
    # What an announced clip URL may name: a unit's clip server is in these networks, on these
    # ports (a number or a range "A-B"). Any other URL is refused before any connection.
    unit_networks: tuple[IPvAnyNetwork, ...] = Field(
        default=tuple(ip_network(n) for n in PRIVATE_NETWORKS), min_length=1
    )
    unit_ports: tuple[Port | PortRange, ...] = Field(default=(UNIT_PORT,), min_length=1)
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
    # Prometheus /metrics and /healthz (protocol.metrics_config).
    metrics: ReceiverMetricsSection = ReceiverMetricsSection()
