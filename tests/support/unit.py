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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon.control import ControlClient, ControlError
from daemon.outbox import Outbox, OutboxEntry
from painav.localsite import unit_config
from protocol.hospital_signature import HospitalSigner
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


def stop_process(
    process: subprocess.Popen[bytes] | None, name: str, timeout_s: float, log: Callable[[], str]
) -> int:
    """SIGTERM *process* and return its exit code; fail with its log if it does not stop."""
    if process is None or process.poll() is not None:
        return process.returncode if process else 0
    process.terminate()
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"{name} did not stop on SIGTERM:\n{log()}") from None


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
        return ControlClient(self.work / "control.sock", timeout_s=5.0, device_id=self.device_id)

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
        return stop_process(self.process, self.device_id, 25, self.log)


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
        rdir = site.paths.receiver_dir
        self.signer = HospitalSigner.from_files(rdir / "signing.key", rdir / "signing.crt")
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

    def send_receipt(
        self, device_id: str, clip_id: str, sha256: str, *, signer: HospitalSigner | None = None
    ) -> None:
        receipt = sign_receipt(
            signer or self.signer,
            site_id=self.site.name,
            device_id=device_id,
            clip_id=clip_id,
            sha256=sha256,
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
    site: Site,
    broker: Broker,
    work: Path,
    catalog_url: str | None = None,
    *,
    receiver_id: str | None = None,
    store_dir: Path | None = None,
    per_unit_concurrency: int | None = None,
    metrics: dict[str, Any] | None = None,
) -> Receiver:
    """The receiver *receiver_id* (default: the site's first) running in a thread, connected;
    its config, spool, catalog and store (unless *store_dir*) in *work*; *per_unit_concurrency*
    overrides the provisioned ``[pull]`` limit; *metrics* is its ``[metrics]`` section (default:
    no endpoint, so that receivers of tests running in parallel never race for a port)."""
    import threading

    from provisioning.receivers import receiver_config
    from server.config import load_config
    from server.service import ReceiverService

    work.mkdir(parents=True, exist_ok=True)
    config = work / "receiver.toml"
    config.write_text(
        receiver_config(
            site,
            catalog_url=catalog_url or f"sqlite:///{work / 'catalog.db'}",
            store_dir=store_dir or work / "store",
            spool_dir=work / "spool",
            broker_host=HOST,
            broker_port=broker.port,
            receiver_id=receiver_id,
            metrics_port=0,
        )
    )
    loaded = load_config(config)
    if metrics is not None:
        section = type(loaded.metrics).model_validate(metrics)
        loaded = loaded.model_copy(update={"metrics": section})
    if per_unit_concurrency is not None:
        pull = loaded.pull.model_copy(update={"per_unit_concurrency": per_unit_concurrency})
        loaded = loaded.model_copy(update={"pull": pull})
    service = ReceiverService(loaded)
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), name="receiver", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not service.link.connected:
        if time.monotonic() > deadline:
            raise AssertionError("receiver did not connect")
        time.sleep(0.02)
    return Receiver(service, stop, thread)


# --- receiver-side fault tests and the ingest benchmark ---------------------------------------


def make_h264(path: Path, *, seconds: float = 2.0, width: int = 640, height: int = 360) -> Path:
    """A noisy 30 fps H.264 (Annex B) stream for :func:`use_replay_camera`.

    Noise defeats the encoder's compression, so the stream runs at ~17 Mbit/s whatever the
    nominal bitrate: a unit replaying it seals megabytes in a fraction of a second, which the
    receiver tests need (downloads long enough to interrupt) without recording for minutes.
    """
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc2=size={width}x{height}:rate=30,noise=alls=20:allf=t",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "12M",
         "-maxrate", "12M", "-bufsize", "24M", "-bf", "0", "-g", "30", "-f", "h264", str(path)],
        check=True,
    )  # fmt: skip
    return path


def edit_config(unit: Unit, old: str, new: str) -> None:
    """Replace *old* by *new* in the unit's ``device.toml`` (before :meth:`Unit.start`)."""
    text = unit.config.read_text()
    if old not in text:
        raise AssertionError(f"{unit.config} has no {old!r}")
    unit.config.write_text(text.replace(old, new, 1))


def use_replay_camera(unit: Unit, video: Path) -> None:
    """The unit's camera replays *video* (see :func:`make_h264`) instead of encoding live."""
    edit_config(
        unit,
        '[camera]\nbackend = "simulated"',
        f'[camera]\nbackend = "replay"\nreplay_file = "{video}"',
    )


def clip_server_port(unit: Unit) -> int:
    """The port the unit's clip server listens on, from its ``device.toml``."""
    import tomllib

    port: int = tomllib.loads(unit.config.read_text())["clip_server"]["port"]
    return port


@dataclass
class ReceiverProcess:
    """``painav receiver run --config FILE`` as systemd runs it: a process of its own, which a
    test can SIGKILL and start again. Its log (INFO and up) is kept in ``receiver.log``."""

    config: Path
    work: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    wrapper: list[str] = field(default_factory=list)  # e.g. a unit file's sandbox launcher

    @property
    def log_path(self) -> Path:
        return self.work / "receiver.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> ReceiverProcess:
        """Start it; return once it has connected to the broker."""
        self.starts += 1
        connected = self.log().count("connected to the broker")
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [*self.wrapper, str(PAINAV), "receiver", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.log().count("connected to the broker") == connected:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"receiver did not start:\n{self.log()[-4000:]}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as a power cut or the OOM killer leaves it."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; returns the exit code."""
        return stop_process(self.process, "receiver", 60, self.log)


def receiver_process(
    site: Site, broker: Broker, work: Path, *, catalog_url: str | None = None, **pull: float
) -> ReceiverProcess:
    """A not yet started :class:`ReceiverProcess` with its ``receiver.toml`` in *work*; *pull*
    overrides ``[pull]`` settings (e.g. ``lease_s=5``, ``concurrency=2``)."""
    from provisioning.receivers import receiver_config

    work.mkdir(parents=True, exist_ok=True)
    text = receiver_config(
        site,
        catalog_url=catalog_url or f"sqlite:///{work / 'catalog.db'}",
        store_dir=work / "store",
        spool_dir=work / "spool",
        broker_host=HOST,
        broker_port=broker.port,
        metrics_port=0,  # receivers of tests running in parallel never race for a port
    )
    head, section = text.split("[pull]\n", 1)
    section, metrics, rest = section.partition("[metrics]\n")  # the section after [pull]
    lines = [line for line in section.splitlines() if line.split(" = ", 1)[0] not in pull]
    lines += [f"{key} = {value!r}" for key, value in pull.items()]
    text = head + "[pull]\n" + "\n".join(lines) + "\n\n" + metrics + rest
    config = work / "receiver.toml"
    config.write_text(text)
    return ReceiverProcess(config, work)


def seal_synthetic_clip(
    outbox: Outbox,
    site: Site,
    device_id: str,
    clip_id: str,
    plaintext_bytes: int,
    *,
    plaintext: bytes | None = None,
    participant: str | None = None,
    visit: str | None = None,
) -> OutboxEntry:
    """Seal a clip into *outbox* as *device_id* would, without recording: random bytes
    encrypted to the site's recipients, signed with the unit's key, a manifest naming hash, size
    and recipients. The receiver never decrypts, so to it this is a clip like any other; the
    ingest benchmark makes 160 MiB of clips this way in seconds. With *plaintext* (a media file
    the clip writer made; *plaintext_bytes* is then ignored) and a consented *participant*, the
    extraction worker can extract it too."""
    from protocol.envelope import EnvelopeWriter
    from protocol.messages import AudioTrack, ClipManifest, VideoTrack
    from protocol.signing import sign_clip

    started = datetime.now(UTC)
    part = outbox.begin(clip_id, participant=participant, visit=visit, started_at=started)
    recipients = site.recipients()
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file, EnvelopeWriter(file, recipients) as writer:
        if plaintext is not None:
            writer.write(plaintext)
        else:
            block = os.urandom(1 << 20)
            for offset in range(0, plaintext_bytes, len(block)):
                writer.write(block[: plaintext_bytes - offset])
    key = SigningKey.from_file(site.paths.devices_dir / device_id / "keys" / "signing.key")
    signature, binding = sign_clip(
        key, part, clip_id, device_id, participant=participant, visit=visit
    )
    size = part.stat().st_size
    manifest = ClipManifest(
        clip_id=clip_id,
        site_id=site.name,
        device_id=device_id,
        participant=participant,
        visit=visit,
        started_at=started,
        duration_s=10.0,
        container="matroska",
        video=VideoTrack(
            codec="h264", width=1280, height=720, frame_rate_hz=30.0, frames=300, dropped_frames=0
        ),
        audio=AudioTrack(
            codec="opus", sample_rate_hz=48000, channels=1, frames=480_000, overruns=0
        ),
        av_offset_ms=0.0,
        clock_synced=True,
        stop_reason="button",
        software_version="0.1.0",
        size_bytes=size,
        sha256=binding.sha256,
        recipients=tuple(str(r) for r in recipients),
    )
    return outbox.seal(
        clip_id,
        manifest_json=manifest.model_dump_json(by_alias=True),
        signature=signature.to_text(),
        sha256=binding.sha256,
        size_bytes=size,
    )


def announcement_of(entry: OutboxEntry, host: str, port: int) -> ClipAnnouncement:
    """The announcement a unit publishes for an outbox *entry* served at *host*:*port*."""
    from protocol.messages import ClipManifest

    assert entry.manifest_json is not None and entry.signature is not None
    return ClipAnnouncement(
        manifest=ClipManifest.model_validate_json(entry.manifest_json),
        signature=entry.signature,
        url=f"https://{host}:{port}/v1/clips/{entry.clip_id}.age",
    )
