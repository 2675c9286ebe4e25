"""A whole painav site on one machine: simulated units, a local broker. For the demo and the
tests; nothing here is used on a real unit or in a hospital."""

from __future__ import annotations

import os
import pwd
import socket
import ssl
from pathlib import Path

from protocol.device_config import (
    ButtonSection,
    CameraSection,
    ClipServerSection,
    ControlSection,
    DeviceConfig,
    KeysSection,
    LightSection,
    MicrophoneSection,
    MqttSection,
    OutboxSection,
    RecorderSection,
    UnitSection,
)
from provisioning.config_files import toml_text
from provisioning.site import Site

__all__ = ["HOST", "broker_accepts_logins", "broker_user", "free_port", "unit_config"]

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def broker_accepts_logins(site: Site, port: int) -> bool:
    """Whether the broker on *port* completes a TLS login with the receiver's certificate."""
    ctx = ssl.create_default_context(cafile=str(site.paths.root_cert))
    rdir = site.paths.receiver_dir
    ctx.load_cert_chain(str(rdir / "tls.crt"), str(rdir / "tls.key"))
    try:
        with (
            socket.create_connection((HOST, port), timeout=1) as raw,
            ctx.wrap_socket(raw, server_hostname=HOST),
        ):
            return True
    except OSError:
        return False


def broker_user() -> str:
    """The account a root-started Mosquitto drops to: its own if it exists, else root (which
    it would otherwise replace by ``nobody``, who cannot read the key)."""
    if os.geteuid() != 0:
        return "mosquitto"
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        return "root"
    return "mosquitto"


def unit_config(
    site: Site,
    device_id: str,
    work: Path,
    broker_port: int,
    *,
    max_seconds: float = 60.0,
    min_free_bytes: int = 0,
    quota_bytes: int = 1 << 30,
    reserve_bytes: int = 0,
    outbox_dir: Path | None = None,
    width: int = 320,
    height: int = 240,
    frame_rate_hz: float = 15.0,
) -> str:
    """``device.toml`` for *device_id* from its provisioning bundle, with simulated hardware
    and no clock-sync requirement (a development machine may not run NTP)."""
    bundle = site.paths.devices_dir / device_id
    config = DeviceConfig(
        unit=UnitSection(site_id=site.name, device_id=device_id),
        mqtt=MqttSection(
            host=HOST, port=broker_port, keepalive_s=5, telemetry_interval_s=2, reconnect_max_s=2
        ),
        clip_server=ClipServerSection(
            host=HOST, port=free_port(), receiver_id=site.receiver_id, advertise_host=HOST
        ),
        keys=KeysSection(
            signing_key=bundle / "keys" / "signing.key",
            tls_key=bundle / "keys" / "tls.key",
            tls_cert=bundle / "certs" / "tls.crt",
            ca_chain=bundle / "certs" / "ca-chain.pem",
            crl=bundle / "certs" / "crl.pem",
            crl_state=work / "crl.pem",
            recipients=bundle / "recipients.txt",
        ),
        outbox=OutboxSection(
            dir=outbox_dir or work / "outbox",
            quota_bytes=quota_bytes,
            min_free_bytes=min_free_bytes,
        ),
        recorder=RecorderSection(
            max_seconds=max_seconds, require_clock_sync=False, reserve_bytes=reserve_bytes
        ),
        camera=CameraSection(
            backend="simulated",
            width=width,
            height=height,
            frame_rate_hz=frame_rate_hz,
            bitrate_bps=500_000,
        ),
        microphone=MicrophoneSection(backend="simulated", sample_rate_hz=48_000),
        button=ButtonSection(backend="simulated"),
        light=LightSection(backend="simulated"),
        control=ControlSection(socket=work / "control.sock"),
    )
    return toml_text(config)
