"""Ingest benchmark: the receiver's pull → verify → store against ``curl`` fetching the same
clips, and a burst of 20 units × 5 clips announced at once.

(a) Throughput. Eight ~20 MiB clips sit in one unit's outbox, served by the unit's real clip
server (``daemon.clipserver.ClipServer`` over ``daemon.outbox.Outbox``, with the unit's own
certificate) in a process of its own. painav's time is the receiver's puller driven directly:
claim from the catalog, fetch over mutual TLS, fetch the signature, verify, store, mark stored:
MQTT is left out. The reference is ``curl`` fetching the same clips and signatures from the same
server with the receiver's certificate, in one invocation (one connection, kept alive). Runs are
interleaved, after one warm-up round, and each painav run starts on an empty catalog, store and
spool. Everything is on tmpfs when there is room: this compares code, not a virtual disk (the
store's fsyncs cost nothing there). The network part alone (``FetchClient`` fetching clip and
signature into the spool, hashing as the puller does) is timed as well, and so is the same
verification done with the standard tools after curl (``minisign -V`` and ``sha256sum`` on
each fetched clip), to show what checking every byte costs whoever does it.

(b) Burst. 20 units, each with its own provisioned certificate and signing key, each holding 5
clips of ~2 MiB, announce them all at once, each from its own certificate, to the real receiver
(``painav receiver run``, SQLite catalog, default settings) through the real broker. Twenty
``painav device run`` daemons would each record in real time and run an encoder, which this
2-core machine cannot do at once, so the units are emulated: their real clip servers over their
real outboxes in one process, and MQTT clients with their certificates (the announcement a
daemon would publish, built from the outbox row). Reported: every clip stored exactly once with
its hash, and announcement → stored latency (catalog ``announced_at`` → ``stored_at``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from daemon.clipserver import ClipServer
from daemon.outbox import Outbox, OutboxEntry
from protocol.messages import ClipAnnouncement
from protocol.registry import Registry
from protocol.topics import Kind, topic
from provisioning.broker import write_broker_config
from provisioning.devices import add_device
from provisioning.site import Site, init_site
from server.catalog import Catalog, ClipState
from server.fetch import FetchClient, UnitAddressPolicy
from server.puller import Puller
from server.store import LocalStore
from tests.support.mosquitto import Broker, Client, broker_user, free_port, unit_identity
from tests.support.unit import announcement_of, receiver_process, seal_synthetic_clip

MIB = 1 << 20
LOOPBACK_UNITS = UnitAddressPolicy(["127.0.0.0/8"], ["1024-65535"])  # units on picked ports
CLIPS = 8
CLIP_MIB = 20
UNITS = 20
CLIPS_PER_UNIT = 5
BURST_CLIP_MIB = 2


@dataclass
class IngestFigures:
    clips: int
    clip_bytes: int
    pull_s: list[float]  # painav: claim → fetch → verify → store → stored, all clips
    fetch_s: list[float]  # painav's fetch of clips and signatures alone
    curl_s: list[float]  # curl, all clips and signatures
    tools_s: list[float]  # curl, then minisign -V and sha256sum on each clip
    units: int
    burst_clips: int
    burst_clip_bytes: int
    stored_once: bool
    latency_s: list[float]  # announcement received → stored, per clip
    drain_s: float  # first announcement received → last clip stored


# --- the units' side: clip servers in a process of their own ------------------------------


def serve(spec_file: Path) -> None:
    """Serve each unit's outbox of *spec_file* with its clip server; print the ports as one JSON
    line; stop when stdin closes."""

    servers, outboxes = [], []
    for unit in json.loads(spec_file.read_text()):
        outbox = Outbox(Path(unit["outbox"]), quota_bytes=1 << 40, min_free_bytes=0)
        server = ClipServer(
            outbox,
            host="127.0.0.1",
            port=0,
            cert_file=Path(unit["cert"]),
            key_file=Path(unit["key"]),
            ca_file=Path(unit["ca"]),
            receiver_id=unit["receiver_id"],
        )
        server.start()
        servers.append(server)
        outboxes.append(outbox)
    print(json.dumps([s.port for s in servers]), flush=True)
    sys.stdin.read()
    for server in servers:
        server.stop()
    for outbox in outboxes:
        outbox.close()


class UnitServers:
    """``python -m tests.bench.ingest serve``: the clip servers of *units*, in a subprocess."""

    def __init__(self, site: Site, work: Path, units: list[str]) -> None:
        spec = [
            {
                "outbox": str(work / unit / "outbox"),
                "cert": str(site.paths.devices_dir / unit / "certs" / "tls.crt"),
                "key": str(site.paths.devices_dir / unit / "keys" / "tls.key"),
                "ca": str(site.paths.devices_dir / unit / "certs" / "ca-chain.pem"),
                "receiver_id": site.receiver_id,
            }
            for unit in units
        ]
        spec_file = work / "units.json"
        spec_file.write_text(json.dumps(spec))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.ingest", "serve", str(spec_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.ports = dict(zip(units, json.loads(self.process.stdout.readline()), strict=True))

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        if self.process.wait(timeout=30):
            raise SystemExit("bench: the units' clip servers failed")


def fill_outbox(
    site: Site, work: Path, unit: str, count: int, plaintext_bytes: int
) -> list[OutboxEntry]:
    """*count* sealed clips of *unit* in ``work/<unit>/outbox``; their outbox entries."""

    with Outbox(work / unit / "outbox", quota_bytes=1 << 40, min_free_bytes=0) as outbox:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return [
            seal_synthetic_clip(outbox, site, unit, f"{unit}-{stamp}-{n:04x}", plaintext_bytes)
            for n in range(count)
        ]


# --- (a) throughput -------------------------------------------------------------------------


def pull_all(site: Site, run_dir: Path, announcements: list[ClipAnnouncement]) -> float:
    """painav's receiver pulls every clip: seconds from the first claim to the last stored."""

    rdir = site.paths.receiver_dir
    run_dir.mkdir(parents=True)
    with Catalog(f"sqlite:///{run_dir / 'catalog.db'}") as catalog:
        puller = Puller(
            catalog=catalog,
            store=LocalStore(run_dir / "store"),
            fetcher=FetchClient(
                cert_file=rdir / "tls.crt",
                key_file=rdir / "tls.key",
                ca_file=rdir / "ca.pem",
                policy=LOOPBACK_UNITS,
            ),
            registry_path=site.paths.registry,
            data_key_recipient=str(site.recipients()[0]),
            spool=run_dir / "spool",
            on_stored=lambda clip: None,
            worker_id="bench",
        )
        for announcement in announcements:
            catalog.record_announcement(announcement, received_at=datetime.now(UTC))
        started = time.perf_counter()
        while (
            clip := catalog.claim_next(worker="bench", now=datetime.now(UTC), lease_s=600)
        ) is not None:
            puller.pull(clip, "bench")
        elapsed = time.perf_counter() - started
        if len(catalog.clips(state=ClipState.STORED)) != len(announcements):
            raise SystemExit(f"bench: not every clip was stored: {catalog.clips()}")
    return elapsed


def fetch_all(site: Site, run_dir: Path, announcements: list[ClipAnnouncement]) -> float:
    """The network part alone: ``FetchClient`` fetches every clip into a spool file, and its
    signature, as the puller does before verifying."""

    rdir = site.paths.receiver_dir
    client = FetchClient(
        cert_file=rdir / "tls.crt",
        key_file=rdir / "tls.key",
        ca_file=rdir / "ca.pem",
        policy=LOOPBACK_UNITS,
    )
    (run_dir / "spool").mkdir(parents=True)
    started = time.perf_counter()
    for a in announcements:
        m = a.manifest
        client.fetch(
            a.url,
            run_dir / "spool" / f"{m.clip_id}.part",
            device_id=m.device_id,
            expected_size=m.size_bytes,
            expected_sha256=m.sha256,
        )
        client.fetch_signature(a.url + ".minisig", device_id=m.device_id)
    return time.perf_counter() - started


def curl_all(site: Site, run_dir: Path, port: int, announcements: list[ClipAnnouncement]) -> float:
    """``curl`` fetches every clip and its signature with the receiver's certificate."""
    rdir = site.paths.receiver_dir
    unit = announcements[0].manifest.device_id
    # The unit's certificate names it (CN and DNS SAN): curl checks the name, then the chain.
    command = ["curl", "--silent", "--show-error", "--fail",
               "--resolve", f"{unit}:{port}:127.0.0.1", "--cacert", str(rdir / "ca.pem"),
               "--cert", str(rdir / "tls.crt"), "--key", str(rdir / "tls.key")]  # fmt: skip
    run_dir.mkdir(parents=True)
    for a in announcements:
        clip_id = a.manifest.clip_id
        for suffix in (".age", ".age.minisig"):
            url = f"https://{unit}:{port}/v1/clips/{clip_id}{suffix}"
            command += ["--output", str(run_dir / f"{clip_id}{suffix}"), url]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def tools_verify(site: Site, run_dir: Path, announcements: list[ClipAnnouncement]) -> float:
    """What curl leaves unchecked, checked with the standard tools: ``minisign -V`` with the
    unit's key and ``sha256sum`` of every clip curl fetched into *run_dir*; their seconds."""
    unit = announcements[0].manifest.device_id
    public_key = Registry.load(site.paths.registry).devices[unit].signing_key
    clips = [run_dir / f"{a.manifest.clip_id}.age" for a in announcements]
    started = time.perf_counter()
    for clip in clips:
        subprocess.run(
            ["minisign", "-V", "-q", "-P", public_key, "-m", str(clip)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    sums = subprocess.run(
        ["sha256sum", *map(str, clips)], check=True, capture_output=True, text=True
    ).stdout.split()[::2]
    elapsed = time.perf_counter() - started
    if sums != [a.manifest.sha256 for a in announcements]:
        raise SystemExit("bench: sha256sum disagrees with the announcements")
    return elapsed


def measure_throughput(
    site: Site, work: Path, runs: int
) -> tuple[int, list[float], list[float], list[float], list[float]]:

    entries = fill_outbox(site, work, "cart-01", CLIPS, CLIP_MIB * MIB)
    servers = UnitServers(site, work, ["cart-01"])
    port = servers.ports["cart-01"]
    announcements = [announcement_of(e, "127.0.0.1", port) for e in entries]
    pull_s: list[float] = []
    fetch_s: list[float] = []
    curl_s: list[float] = []
    tools_s: list[float] = []
    try:
        for round_ in range(runs + 1):  # the first round warms caches up and is dropped
            run = work / f"run-{round_}"
            times = (
                pull_all(site, run / "painav", announcements),
                fetch_all(site, run / "fetch", announcements),
                curl_all(site, run / "curl", port, announcements),
            )
            checked = tools_verify(site, run / "curl", announcements)
            shutil.rmtree(run)
            if round_:
                pull_s.append(times[0])
                fetch_s.append(times[1])
                curl_s.append(times[2])
                tools_s.append(times[2] + checked)
    finally:
        servers.close()
    size = sum(a.manifest.size_bytes for a in announcements)
    return size, pull_s, fetch_s, curl_s, tools_s


# --- (b) a burst of announcements from 20 units ----------------------------------------------


def measure_burst(site: Site, work: Path) -> tuple[int, bool, list[float], float]:

    units = [f"bed-{n:02d}" for n in range(1, UNITS + 1)]
    for unit in units:
        add_device(site, unit)
    entries = {u: fill_outbox(site, work, u, CLIPS_PER_UNIT, BURST_CLIP_MIB * MIB) for u in units}
    port = free_port()
    write_broker_config(site, work / "broker", port=port, bind="127.0.0.1", user=broker_user())
    broker = Broker(site, work / "broker", port, work / "broker" / "mosquitto.log")
    broker.start()
    servers = UnitServers(site, work, units)
    receiver = receiver_process(site, broker, work / "receiver")
    clients: list[Client] = []
    total = len(units) * CLIPS_PER_UNIT
    announcements = {
        u: [announcement_of(e, "127.0.0.1", servers.ports[u]) for e in entries[u]] for u in units
    }
    try:
        receiver.start()
        for unit in units:
            clients.append(Client(broker, unit_identity(site, unit)).connect())
        # All at once: every unit is connected before the first announcement goes out.
        for client, unit in zip(clients, units, strict=True):
            for announcement in announcements[unit]:
                client.publish(topic(site.name, unit, Kind.CLIPS), announcement.to_payload())
        url = f"sqlite:///{work / 'receiver' / 'catalog.db'}"
        deadline = time.monotonic() + 600
        while True:
            with Catalog(url) as catalog:
                clips = catalog.clips(limit=10 * total)
            done = [c for c in clips if c.state in (ClipState.STORED, ClipState.RECEIPTED)]
            if len(done) == total:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {len(done)} of {total} clips stored in time")
            time.sleep(0.2)
    finally:
        for client in clients:
            client.close()
        receiver.stop()
        servers.close()
        broker.stop()
    # Exactly once: one catalog row per clip, one store file per hash, its bytes that hash.
    announced = {a.manifest.clip_id: a.manifest.sha256 for u in units for a in announcements[u]}
    stored = {
        path.name.removesuffix(".age"): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (work / "receiver" / "store").rglob("*.age")
    }
    once = (
        {c.clip_id: c.sha256 for c in clips} == announced
        and sorted(stored) == sorted(announced.values())
        and all(name == digest for name, digest in stored.items())
    )
    stored_at = {c.clip_id: c.stored_at for c in clips if c.stored_at is not None}
    latency = [(stored_at[c.clip_id] - c.announced_at).total_seconds() for c in clips]
    drain = max(stored_at.values()) - min(c.announced_at for c in clips)
    size = announcements[units[0]][0].manifest.size_bytes
    return size, once, latency, drain.total_seconds()


def measure(runs: int = 3) -> IngestFigures:
    # tmpfs when there is room (see run.py): ~1 GiB at the peak of (a).
    shm = Path("/dev/shm")
    room = shutil.disk_usage(shm).free if shm.is_dir() else 0
    where = shm if room > 4 * (CLIPS * CLIP_MIB * MIB) else None
    with tempfile.TemporaryDirectory(prefix="painav-bench-ingest-", dir=where) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # the broker drops to its own account and must reach its config
        site = init_site(work / "site", "bench", broker_hosts=("127.0.0.1", "localhost"))
        add_device(site, "cart-01")
        size, pull_s, fetch_s, curl_s, tools_s = measure_throughput(site, work / "a", runs)
        burst_size, once, latency, drain = measure_burst(site, work / "b")
    return IngestFigures(
        CLIPS, size // CLIPS, pull_s, fetch_s, curl_s, tools_s,
        UNITS, UNITS * CLIPS_PER_UNIT, burst_size, once, latency, drain,
    )  # fmt: skip


def _percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def table(fig: IngestFigures) -> str:
    total_mib = fig.clips * fig.clip_bytes / MIB
    pull, fetch, curl, tools = (
        statistics.median(v) for v in (fig.pull_s, fig.fetch_s, fig.curl_s, fig.tools_s)
    )
    return "\n".join(
        [
            f"Ingest, median of {len(fig.pull_s)} interleaved runs after one warm-up: "
            f"{fig.clips} clips of {fig.clip_bytes / MIB:.0f} MiB from one unit's clip server "
            f"(mutual TLS, loopback, tmpfs; {os.cpu_count()} cores), against `curl` fetching "
            "the same clips and signatures with the receiver's certificate in the same run. "
            f"Burst: {fig.units} emulated units × {fig.burst_clips // fig.units} clips of "
            f"{fig.burst_clip_bytes / MIB:.0f} MiB announced at once to `painav receiver run`.",
            "",
            "| measure | painav | reference | ratio (≥ 1 is faster) | target |",
            "| --- | --- | --- | --- | --- |",
            f"| pull → verify → store, {total_mib:.0f} MiB | {total_mib / pull:.0f} MiB/s "
            f"| {total_mib / curl:.0f} MiB/s | **{curl / pull:.2f}×** | ≥ 0.9× |",
            f"| pull → verify → store, against curl then `minisign -V` and `sha256sum` "
            f"| {total_mib / pull:.0f} MiB/s | {total_mib / tools:.0f} MiB/s "
            f"| **{tools / pull:.2f}×** | |",
            f"| fetch alone (clips and signatures into the spool, hashed) "
            f"| {total_mib / fetch:.0f} MiB/s | {total_mib / curl:.0f} MiB/s "
            f"| **{curl / fetch:.2f}×** | |",
            f"| burst: {fig.burst_clips} clips stored exactly once with their hash "
            f"| {'yes' if fig.stored_once else '**no**'} | | | yes |",
            f"| burst: announcement → stored, p50 / p95 "
            f"| {_percentile(fig.latency_s, 50):.2f} s / {_percentile(fig.latency_s, 95):.2f} s "
            "| | | |",
            f"| burst: first announcement → last clip stored | {fig.drain_s:.1f} s "
            f"({fig.burst_clips * fig.burst_clip_bytes / MIB / fig.drain_s:.0f} MiB/s) | | | |",
        ]
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(Path(sys.argv[2]))
        sys.exit(0)
    figures = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
    print(figures)
    print(table(figures))
