"""The ``[metrics]`` section of the hospital services' config files: where the Prometheus
``/metrics`` and ``/healthz`` endpoint listens, and its TLS. Shared by ``receiver.toml``
(:mod:`protocol.receiver_config`) and ``extract.toml`` (:mod:`protocol.extract_config`)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, model_validator

from .tomlconfig import ConfigError

__all__ = [
    "RECEIVER_METRICS_PORT",
    "WORKER_METRICS_PORT",
    "MetricsSection",
    "ReceiverMetricsSection",
    "WorkerMetricsSection",
]

RECEIVER_METRICS_PORT: Final = 9464
"""The receiver's metrics port by default."""

WORKER_METRICS_PORT: Final = 9465
"""The first extraction worker's metrics port by default; worker N listens on this + N - 1."""


class MetricsSection(BaseModel):
    """``[metrics]``: ``listen`` on ``port`` (0: no endpoint). Beyond loopback the endpoint
    speaks TLS by default, with a server certificate of its own (``cert``, ``key``: the
    services' TLS certificates are for clients only), and asks every client (Prometheus) for a
    certificate ``client_ca`` issued; ``tls = false`` turns that off for a network IT trusts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: IPvAnyAddress = Field(
        default=IPv4Address("127.0.0.1"), description="address the endpoint listens on"
    )
    port: int = Field(default=0, ge=0, le=65535, description="0: no metrics endpoint")
    tls: bool | None = Field(
        default=None, description="HTTPS with client certificates (default: beyond loopback)"
    )
    cert: Path | None = Field(default=None, description="the endpoint's certificate (PEM)")
    key: Path | None = Field(default=None, description="its private key")
    client_ca: Path | None = Field(
        default=None, description="the CA whose certificates clients must present"
    )

    # Files that TLS needs in this section (the receiver has a client CA in [tls]).
    REQUIRED_FOR_TLS: ClassVar[tuple[str, ...]] = ("cert", "key")

    @model_validator(mode="after")
    def _tls_files(self) -> MetricsSection:
        if self.enabled and self.uses_tls:
            missing = [k for k in self.REQUIRED_FOR_TLS if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"{', '.join(missing)} required: the endpoint listens beyond loopback "
                    f"({self.listen}) with TLS (or set tls = false, or listen on 127.0.0.1)"
                )
        return self

    @property
    def enabled(self) -> bool:
        """Whether the endpoint runs at all."""
        return self.port != 0

    @property
    def uses_tls(self) -> bool:
        """Whether the endpoint speaks HTTPS: as set, else exactly when beyond loopback."""
        if self.tls is not None:
            return self.tls
        return not _loopback(self.listen)


def _loopback(address: IPv4Address | IPv6Address) -> bool:
    return address.is_loopback


class ReceiverMetricsSection(MetricsSection):
    """The receiver's ``[metrics]``: ``client_ca`` defaults to its ``[tls]`` ``ca``."""

    port: int = Field(
        default=RECEIVER_METRICS_PORT, ge=0, le=65535, description="0: no metrics endpoint"
    )


class WorkerMetricsSection(MetricsSection):
    """The extraction worker's ``[metrics]``; the worker has no TLS files of its own, so with
    TLS ``cert``, ``key`` and ``client_ca`` must all be named."""

    REQUIRED_FOR_TLS: ClassVar[tuple[str, ...]] = ("cert", "key", "client_ca")

    port: int = Field(
        default=WORKER_METRICS_PORT,
        ge=0,
        le=65535,
        description="worker 1's port (worker N: port + N - 1); 0: no metrics endpoint",
    )

    def for_worker(self, number: str) -> WorkerMetricsSection:
        """The section for worker *number* (``painav extract run --worker N``): on port + N - 1,
        so that the workers of one host (painav-extract@1, @2, …) never share a port. A worker
        whose name is not a number gets the port as written."""
        if not (self.enabled and number.isdigit() and int(number) >= 1):
            return self
        port = self.port + int(number) - 1
        if port > 65535:
            raise ConfigError(f"[metrics] port {self.port} + worker {number} - 1 is past 65535")
        return self.model_copy(update={"port": port})
