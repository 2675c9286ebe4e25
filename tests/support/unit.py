"""A real bedside daemon (``painav device run``) in its own process, with simulated hardware,
and the hospital's side of the conversation: subscribe, fetch over mutual TLS, send receipts."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon.control import ControlClient, ControlError
from painav.localsite import unit_config
from protocol.messages import ClipAnnouncement, Event
from protocol.minisign import SigningKey
from protocol.signing import sign_receipt
from protocol.topics import Kind, topic
from provisioning.site import Site

from .mosquitto import HOST, Broker

PAINAV = Path(sys.executable).with_name("painav")
START_TIMEOUT_S = 30.0


def device_toml(site: Site, device_id: str, work: Path, broker_port: int, **options: Any) -> str:
    """A config for *device_id* from its provisioning bundle, with simulated hardware."""
    return unit_config(site, device_id, work, broker_port, **options)


@dataclass
class Unit:
    """One daemon process; restartable, killable."""

    device_id: str
    config: Path
    work: Path
    wrapper: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def control(self) -> ControlClient:
        return ControlClient(self.work / "control.sock", timeout_s=5.0)

    @property
    def log_path(self) -> Path:
        return self.work / "daemon.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> Unit:
        self.starts += 1
        env = {**os.environ, "TMPDIR": str(self.work / "tmp"), "PYTHONUNBUFFERED": "1", **self.env}
        (self.work / "tmp").mkdir(exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [*self.wrapper, str(PAINAV), "device", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.device_id} exited at start:\n{self.log()}")
            try:
                if self.status()["connected"]:
                    return self
            except ControlError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.device_id} not ready in time:\n{self.log()}")
            time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        return self.control.request(cmd="status")

    def press(self, long: bool = False) -> None:
        self.control.request(cmd="press", long=long)

    def wait_state(self, state: str, timeout_s: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status()
            if status["state"] == state:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.device_id} stayed {status['state']}, not {state}")
            time.sleep(0.02)

    def kill(self, signum: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(signum)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.terminate()
        try:
            return self.process.wait(timeout=25)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            log = self.log()
            raise AssertionError(f"{self.device_id} did not stop on SIGTERM:\n{log}") from None


def make_unit(
    site: Site, broker: Broker, work: Path, device_id: str = "cart-01", **options: Any
) -> Unit:
    work.mkdir(parents=True, exist_ok=True)
    wrapper = options.pop("wrapper", [])
    config = work / "device.toml"
    config.write_text(device_toml(site, device_id, work, broker.port, **options))
    return Unit(device_id, config, work, wrapper)


class Hospital:
    """What the receiver will do, done by hand: listen, fetch, verify later, send receipts."""

    def __init__(self, site: Site, client: Any) -> None:
        self.site = site
        self.client = client.connect()  # a tests.support.mosquitto.Client, receiver's cert
        self._receipt_key = SigningKey.from_file(site.paths.receiver_dir / "receipt.key")
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(site.paths.root_cert))
        ctx.check_hostname = False  # units are addressed by IP; their CN is checked instead
        ctx.load_cert_chain(
            str(site.paths.receiver_dir / "tls.crt"), str(site.paths.receiver_dir / "tls.key")
        )
        self._tls = ctx

    def subscribe_all(self) -> None:
        for kind in (Kind.CLIPS, Kind.EVENTS):
            self.client.subscribe(f"painav/v1/{self.site.name}/+/{kind.value}")

    def next_messages(self, timeout_s: float = 20.0) -> list[tuple[str, bytes]]:
        """Everything that arrives within *timeout_s* (returns early on the first clip)."""
        out = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                message = self.client.messages.get(timeout=0.1)
            except Exception:
                continue
            out.append((message.topic, message.payload))
            if message.topic.endswith("/clips"):
                break
        return out

    def wait_clip(self, timeout_s: float = 30.0) -> ClipAnnouncement:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for t, payload in self.next_messages(max(deadline - time.monotonic(), 0.1)):
                if t.endswith("/clips"):
                    return ClipAnnouncement.parse(payload)
        raise AssertionError("no clip announced in time")

    def wait_event(self, kind: str, timeout_s: float = 20.0) -> Event:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                message = self.client.messages.get(timeout=0.1)
            except Exception:
                continue
            if message.topic.endswith("/events"):
                event = Event.parse(message.payload)
                if event.kind == kind:
                    return event
        raise AssertionError(f"no {kind} event in time")

    def fetch(self, url: str) -> bytes:
        with urllib.request.urlopen(url, context=self._tls, timeout=10) as response:
            data: bytes = response.read()
            return data

    def send_receipt(self, device_id: str, clip_id: str, sha256: str, *, key: Any = None) -> None:
        receipt = sign_receipt(
            key or self._receipt_key,
            site_id=self.site.name,
            device_id=device_id,
            clip_id=clip_id,
            sha256=sha256,
            receiver_id=self.site.receiver_id,
            stored_at=datetime.now(UTC),
        )
        self.client.publish(topic(self.site.name, device_id, Kind.RECEIPTS), receipt.to_payload())

    def decrypt(self, ciphertext: Path, out: Path) -> None:
        subprocess.run(
            ["age", "-d", "-i", str(self.site.paths.data_key), "-o", str(out), str(ciphertext)],
            check=True,
        )


def probe_seconds(media: Path) -> dict[str, float]:
    """Per stream type, the end time of its last packet, as ffprobe reads the file."""
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "packet=codec_type,pts_time,duration_time",
            "-of",
            "json",
            str(media),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    ends: dict[str, float] = {}
    for p in json.loads(result.stdout)["packets"]:
        end = float(p["pts_time"]) + float(p.get("duration_time") or 0)
        ends[p["codec_type"]] = max(ends.get(p["codec_type"], 0.0), end)
    return ends


@dataclass
class Receiver:
    """The real receiver service, in a thread of the test process."""

    service: Any
    stop_event: Any
    thread: Any

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=60)


def start_receiver(
    site: Site, broker: Broker, work: Path, catalog_url: str | None = None
) -> Receiver:
    import threading

    from provisioning.receiver import receiver_config
    from server.config import load_config
    from server.service import ReceiverService

    work.mkdir(parents=True, exist_ok=True)
    config = work / "receiver.toml"
    config.write_text(
        receiver_config(
            site,
            catalog_url=catalog_url or f"sqlite:///{work / 'catalog.db'}",
            store_dir=work / "store",
            spool_dir=work / "spool",
            broker_host=HOST,
            broker_port=broker.port,
        )
    )
    service = ReceiverService(load_config(config))
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), name="receiver", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not service.link.connected:
        if time.monotonic() > deadline:
            raise AssertionError("receiver did not connect")
        time.sleep(0.02)
    return Receiver(service, stop, thread)
