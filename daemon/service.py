"""The bedside daemon's composition root: builds the unit's parts from its config and runs them.

Everything that decides lives in :class:`daemon.loop.UnitLoop`; this module only wires the
hardware, the outbox, the announcer, the clip server and the control socket to it, in the order
they must start and stop.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from cryptography import x509

from protocol.clipserver import clip_url
from protocol.hospital_signature import HospitalTrust
from protocol.minisign import SigningKey
from protocol.x25519 import X25519Recipient

from .announcer import Announcer
from .capture import Capturer
from .clipserver import ClipServer
from .clock import ClockSignal
from .config import DeviceConfig
from .control import ControlServer
from .crlstore import CrlStore
from .events import (
    ArmReceived,
    BadMessage,
    Connected,
    CrlReceived,
    EventAcked,
    LongPressed,
    Pressed,
    PublishSettled,
    ReceiptReceived,
    VerdictReceived,
)
from .hardware.base import Button, Camera, Light, Microphone
from .loop import LoopSettings, UnitLoop
from .outbox import Outbox
from .recorder import Recorder, RecorderSettings
from .sdnotify import Notifier, log_fields

__all__ = ["Hardware", "Service", "software_version"]

log = logging.getLogger("painav.device")


def software_version() -> str:
    try:
        return version("painav")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class Hardware:
    camera: Camera
    microphone: Microphone
    button: Button
    light: Light

    def close(self) -> None:
        for part in (self.camera, self.microphone, self.button, self.light):
            try:
                part.close()
            except Exception:
                log.exception("closing %s failed", type(part).__name__)


def read_recipients(path: Path) -> list[X25519Recipient]:
    lines = path.read_text().splitlines()
    return [X25519Recipient.from_string(x) for x in lines if x.strip() and not x.startswith("#")]


@dataclass
class Service:
    """The running unit. :meth:`run` returns when *stop* is set (SIGTERM)."""

    config: DeviceConfig
    hardware: Hardware
    notifier: Notifier = field(default_factory=Notifier)
    # () -> bool; default: the clock signal [recorder] clock_sync_file names (or chrony)
    clock_synced: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        cfg, hw = self.config, self.hardware
        self.device_id = cfg.unit.device_id
        clock = self.clock_synced or ClockSignal(cfg.recorder.clock_sync_file)
        self.outbox = Outbox(
            cfg.outbox.dir,
            quota_bytes=cfg.outbox.quota_bytes,
            min_free_bytes=cfg.outbox.min_free_bytes,
        )
        # The site root's CRL: receipts, arm commands and clip-server clients are checked by it.
        roots = x509.load_pem_x509_certificates(cfg.keys.ca_chain.read_bytes())
        crl_state = cfg.keys.crl_state or cfg.outbox.dir.parent / "crl.pem"
        self.crls = CrlStore(roots, crl_state, cfg.keys.crl)
        trust = HospitalTrust(
            roots=tuple(roots), receiver_id=cfg.clip_server.receiver_id, crl=self.crls.current
        )
        self.announcer = Announcer(
            site_id=cfg.unit.site_id,
            device_id=self.device_id,
            host=cfg.mqtt.host,
            port=cfg.mqtt.port,
            cert_file=cfg.keys.tls_cert,
            key_file=cfg.keys.tls_key,
            ca_file=cfg.keys.ca_chain,
            keepalive_s=cfg.mqtt.keepalive_s,
            session_expiry_s=cfg.mqtt.session_expiry_s,
            reconnect_max_s=cfg.mqtt.reconnect_max_s,
            on_connect=lambda: self.loop.post(Connected()),
            on_arm=lambda command: self.loop.post(ArmReceived(command)),
            on_receipt=lambda receipt: self.loop.post(ReceiptReceived(receipt)),
            on_verdict=lambda verdict: self.loop.post(VerdictReceived(verdict)),
            on_event_ack=lambda ack: self.loop.post(EventAcked(ack)),
            on_bad_message=lambda topic, error: self.loop.post(BadMessage(topic, error)),
            on_settled=lambda: self.loop.post(PublishSettled()),
            on_crl=lambda crl: self.loop.post(CrlReceived(crl)),
        )
        self.clip_server = ClipServer(
            self.outbox,
            host=cfg.clip_server.host,
            port=cfg.clip_server.port,
            cert_file=cfg.keys.tls_cert,
            key_file=cfg.keys.tls_key,
            ca_file=cfg.keys.ca_chain,
            receiver_id=cfg.clip_server.receiver_id,
            handshake_timeout_s=cfg.clip_server.handshake_timeout_s,
            revoked=trust.revoked,
        )
        software = software_version()
        self.loop = UnitLoop(
            settings=LoopSettings(
                device_id=self.device_id,
                require_clock_sync=cfg.recorder.require_clock_sync,
                reserve_bytes=cfg.recorder.reserve_bytes,
                telemetry_interval_s=cfg.mqtt.telemetry_interval_s,
                software_version=software,
                arm_state=crl_state.with_name("arm-issued-at"),
            ),
            recorder=Recorder(
                RecorderSettings(
                    max_seconds=cfg.recorder.max_seconds,
                    require_clock_sync=cfg.recorder.require_clock_sync,
                    record_again_display_s=cfg.recorder.record_again_s,
                ),
                new_clip_id=lambda wall: new_clip_id(self.device_id, wall),
            ),
            outbox=self.outbox,
            capturer=Capturer(
                outbox=self.outbox,
                camera=hw.camera,
                microphone=hw.microphone,
                recipients=read_recipients(cfg.keys.recipients),
                signing_key=SigningKey.from_file(cfg.keys.signing_key),
                site_id=cfg.unit.site_id,
                device_id=self.device_id,
                sample_rate_hz=cfg.microphone.sample_rate_hz,
                channels=cfg.microphone.channels,
                software_version=software,
                clock_synced=clock,
            ),
            link=self.announcer,
            light=hw.light,
            trust=trust,
            crls=self.crls,
            sealer=ThreadPoolExecutor(1, thread_name_prefix="seal"),
            clock_synced=clock,
            clip_url=self._clip_url,
            notifier=self.notifier,
            temperature=_temperature,
        )
        self.control = ControlServer(cfg.control.socket, self._control, owner=self.device_id)
        hw.button.on_press(lambda: self.loop.post(Pressed()))
        hw.button.on_long_press(lambda: self.loop.post(LongPressed()))

    def run(self, stop: threading.Event) -> None:
        self.loop.start_up()
        self.clip_server.start()
        self.control.start()
        self.announcer.start()
        snapshot = self.loop.snapshot
        self.notifier.ready(f"{snapshot.state}; {len(snapshot.queue)} clip(s) queued")
        log.info(
            "unit %s ready (clip server on port %d)",
            self.device_id,
            self.clip_server.port,
            extra=log_fields(device_id=self.device_id, state=snapshot.state),
        )
        try:
            self.loop.run(stop)
        finally:
            self.announcer.stop()
            self.clip_server.stop()
            self.control.stop()
            self.hardware.close()
            self.outbox.close()
            log.info("unit %s stopped", self.device_id, extra=log_fields(device_id=self.device_id))

    def _clip_url(self, clip_id: str) -> str:
        """The URL to announce: the configured address, else the one the MQTT connection
        leaves from, which is the one the hospital network routes to this unit."""
        host = self.config.clip_server.advertise_host or self.announcer.local_address
        return clip_url(host or "127.0.0.1", self.clip_server.port, clip_id)

    def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        """On the control socket's thread: post a press, or answer from the loop's snapshot."""
        command = request.get("cmd")
        if command == "press":
            self.loop.post(LongPressed() if request.get("long") else Pressed())
            return {"ok": True}
        if command == "status":
            s = self.loop.snapshot
            refusal, verdict = s.last_refusal, s.last_verdict
            return {
                "ok": True,
                "device_id": self.device_id,
                "state": s.state,
                "clip_id": s.clip_id,
                "participant": s.participant,
                "queue": list(s.queue),
                "free_bytes": s.free_bytes,
                "connected": s.connected,
                "last_error": s.last_error,
                "last_refusal": (
                    {"at": refusal.at.isoformat(), "reason": refusal.reason} if refusal else None
                ),
                "clock_synced": s.readiness.clock_synced,
                "require_clock_sync": self.config.recorder.require_clock_sync,
                "camera_present": s.readiness.camera_present,
                "microphone_present": s.readiness.microphone_present,
                "press_to_first_frame_ms": s.press_to_first_frame_ms,
                "stop_to_announced_ms": s.stop_to_announced_ms,
                "last_verdict": (
                    {
                        "clip_id": verdict.clip_id,
                        "verdict": verdict.verdict,
                        "reasons": list(verdict.reasons),
                        "pass": verdict.pass_,
                        "issued_at": verdict.issued_at.isoformat(),
                    }
                    if verdict
                    else None
                ),
                "record_again": s.record_again,
                "pid": os.getpid(),
            }
        raise ValueError(f"unknown command {command!r}")


def new_clip_id(device_id: str, wall: datetime) -> str:
    return f"{device_id}-{wall:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def _temperature() -> float | None:
    try:
        return int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000
    except (OSError, ValueError):
        return None
