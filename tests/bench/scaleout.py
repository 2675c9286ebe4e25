"""Scale-out load benchmark: 50 emulated units × 4 clips of 8 MiB announced within a minute to
two receivers and two extraction workers (each a ``painav`` process) sharing one PostgreSQL
catalog and a SeaweedFS S3 store; and the store's upload throughput against boto3's own.

(a) Load. 50 units, each provisioned with its own certificate and signing key, hold 4 sealed
clips of 8 MiB ciphertext each (200 clips, 1.6 GiB); their real clip servers serve their real
outboxes from one process, and MQTT clients with their certificates publish the announcements a
daemon would (as in the ingest bench's burst: fifty recording daemons would need fifty cameras
and encoders this 2-core machine cannot run), one every 0.3 s, round-robin over the units, so
all 200 are announced within a minute. Two ``painav receiver run`` (default ``[pull]``
settings) and two ``painav extract run`` processes, a new PostgreSQL database, SeaweedFS
(``weed server -s3``) on the same machine. Extracting 200 clips of real media is beyond 2 cores
in a bench run (one 60 s clip takes the worker tens of seconds: see the extraction table), so
one clip in ten (one of each of 20 units) is real media, 4 s of 640×360 H.264 noise at
~16 Mbit/s and 48 kHz speech, 8 MiB, armed for a consented participant, which the workers
extract; the other 180 are 8 MiB of random plaintext recorded unarmed, which the consent gate
keeps from the workers (as it keeps any clip not yet assigned). Reported: every clip stored
exactly once (one ``stored`` audit row each; the bucket holds each hash once, whose bytes hash
to it) and every media clip extracted exactly once (one ``extracted`` row); announcement →
stored (catalog ``announced_at`` → ``stored_at``) and stored → extracted (``stored_at`` →
``extracted_at``) p50/p95; the CPU time the receivers and SeaweedFS used, per GiB stored; the
largest number of connections to the catalog's database seen (``pg_stat_activity``, sampled
every 0.5 s); the catalog's size per 1,000 clips (PostgreSQL's table sizes, indexes included,
less those of the empty catalog; features and QC rows per extracted clip apart).

(b) Store throughput. 24 clips of 8 MiB put by ``S3Store.put`` (a ``HEAD`` for the key, the
signature, the clip hashed and sent as a conditional create with its SHA-256 checksum, which
SeaweedFS verifies) against boto3's ``upload_file`` (its managed transfer: threads, multipart
above 8 MiB, no checksum) and a plain ``put_object`` of each file's bytes, to the same
SeaweedFS; fresh keys each run (painav's files get new last bytes, so new hashes, made before
the clock starts), interleaved, median of the runs after a warm-up round.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon.outbox import Outbox, OutboxEntry
from painav.scaleout import ServiceProcess, postgres_database, s3_store
from protocol.envelope import EnvelopeReader
from protocol.extract_config import (
    CatalogSection,
    ExtractConfig,
    FeaturesSection,
    KeysSection,
    SiteSection,
    StoreSection,
    WorkSection,
)
from protocol.store_config import StoreLocation
from protocol.topics import Kind, topic
from provisioning.broker import write_broker_config
from provisioning.config_files import toml_text
from provisioning.devices import add_device
from provisioning.receivers import add_receiver, receiver_config
from provisioning.site import Site, init_site
from server.catalog import Catalog, ClipState
from server.s3store import S3Store
from server.stores import open_store
from tests.bench.ingest import UnitServers
from tests.support.mosquitto import Broker, Client, broker_user, free_port, unit_identity
from tests.support.unit import announcement_of, make_h264, seal_synthetic_clip

MIB = 1 << 20
UNITS = 50
CLIPS_PER_UNIT = 4
CLIP_MIB = 8
MEDIA_UNITS = 20  # units whose last clip is real media, for the workers
ANNOUNCE_EVERY_S = 0.3  # 200 announcements in 60 s
PARTICIPANT = "PAIN-0001"
THROUGHPUT_CLIPS = 24


@dataclass
class LoadFigures:
    clips: int
    media_clips: int
    clip_bytes: int
    announce_s: float  # first → last announcement
    stored_once: bool
    extracted_once: bool
    to_stored_s: list[float]
    to_extracted_s: list[float]
    drain_s: float  # first announcement → last clip stored
    max_connections: int
    catalog_bytes: int
    ingest_bytes_per_clip: float  # units, clips, audit, events: what every clip costs
    features_bytes_per_clip: float  # features and QC: what an extracted clip adds
    features_disk_bytes_per_clip: float  # the features folder (Parquet) per extracted clip
    receiver_cpu_s_per_gib: float  # both receivers' CPU over the load, per GiB stored
    weed_cpu_s_per_gib: float  # SeaweedFS's CPU over the load, per GiB stored
    put_s: list[float]  # S3Store.put, all throughput clips
    upload_file_s: list[float]
    put_object_s: list[float]


# --- the input ------------------------------------------------------------------------------


def media_plaintext(work: Path) -> bytes:
    """8 MiB of real media: 4 s of 640×360 H.264 noise and speech, muxed by the clip writer."""
    from daemon.annexb import split_access_units
    from daemon.clipwriter import ClipWriter
    from daemon.hardware.base import AudioBlock, VideoPacket
    from protocol.signing import SigningKey
    from protocol.x25519 import X25519Identity
    from tests.server.extract.clips import speak, wav_samples

    identity = X25519Identity.generate()
    pcm = wav_samples(speak(work, 48_000)).tobytes()
    video = make_h264(work / "noise.h264", seconds=4.0)
    path = work / "media.age"
    writer = ClipWriter(
        path, recipients=[identity.recipient], signing_key=SigningKey.generate(),
        width=640, height=360, frame_rate_hz=30, sample_rate_hz=48_000, channels=1,
    )  # fmt: skip
    t0, block, sent = 1_000_000_000, 48_000 // 50, 0
    for i, unit in enumerate(split_access_units(video.read_bytes())):
        pts = t0 + i * 1_000_000_000 // 30
        while t0 + sent * 1_000_000_000 // 48_000 <= pts:
            start = (sent * 2) % len(pcm)
            chunk = (pcm[start:] + pcm)[: block * 2]
            writer.audio(AudioBlock(chunk, block, t0 + sent * 1_000_000_000 // 48_000))
            sent += block
        writer.video(VideoPacket(unit.data, pts, unit.keyframe))
    writer.finish("cart-01-20261129T120000Z-0001", "cart-01", participant=None, visit=None)
    with path.open("rb") as src, EnvelopeReader(src, [identity]) as reader:
        return reader.read()


def stock_units(
    site: Site, work: Path, units: list[str], media: bytes
) -> dict[str, list[OutboxEntry]]:
    """Each unit's outbox with its clips; the media units' last clip armed, real media."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    entries = {}
    for n, unit in enumerate(units):
        with Outbox(work / unit / "outbox", quota_bytes=1 << 40, min_free_bytes=0) as outbox:
            made = []
            for k in range(CLIPS_PER_UNIT):
                clip_id = f"{unit}-{stamp}-{k:04x}"
                if n < MEDIA_UNITS and k == CLIPS_PER_UNIT - 1:
                    entry = seal_synthetic_clip(
                        outbox, site, unit, clip_id, 0,
                        plaintext=media, participant=PARTICIPANT, visit="V1",
                    )  # fmt: skip
                else:
                    entry = seal_synthetic_clip(outbox, site, unit, clip_id, CLIP_MIB * MIB - 600)
                made.append(entry)
            entries[unit] = made
    return entries


# --- (a) the load ---------------------------------------------------------------------------


class ConnectionSampler:
    """The most connections to one database seen in ``pg_stat_activity``, every 0.5 s."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self.database = make_url(url).database
        self.engine = create_engine(make_url(url).set(database="postgres"))
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from sqlalchemy import text

        while not self._stop.wait(0.5):
            with self.engine.connect() as conn:
                count = conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"),
                    {"d": self.database},
                ).scalar_one()
            self.most = max(self.most, int(count))

    def close(self) -> int:
        self._stop.set()
        self._thread.join(5)
        self.engine.dispose()
        return self.most


def table_sizes(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r'"
            )
        ).all()
    engine.dispose()
    return {name: int(size) for name, size in rows}


def measure_load(
    stack: ExitStack, site: Site, work: Path, url: str, store: StoreLocation
) -> dict[str, Any]:
    units = [f"bed-{n:02d}" for n in range(1, UNITS + 1)]
    for unit in units:
        add_device(site, unit)
    second = add_receiver(site, "2")
    media = media_plaintext(work)
    entries = stock_units(site, work, units, media)
    with Catalog(url) as catalog:
        today = datetime.now(UTC).date()
        catalog.enrol(
            PARTICIPANT, group="pain", language="nl", enrolled_on=today, consented_on=today,
            form_version="bench",
        )  # fmt: skip
    empty = sum(table_sizes(url).values())
    port = free_port()
    write_broker_config(site, work / "broker", port=port, bind="127.0.0.1", user=broker_user())
    broker = Broker(site, work / "broker", port, work / "broker" / "mosquitto.log")
    broker.start()
    stack.callback(broker.stop)
    servers = UnitServers(site, work, units)
    stack.callback(servers.close)
    processes = []
    for rid in (site.receiver_id, second):
        own = work / rid
        own.mkdir()
        config = own / "receiver.toml"
        config.write_text(
            receiver_config(
                site, catalog_url=url, store_dir=store, spool_dir=own / "spool",
                broker_host="127.0.0.1", broker_port=port, receiver_id=rid,
            )
        )  # fmt: skip
        processes.append(ServiceProcess.receiver(config, own / "receiver.log"))
    extract_toml = work / "extract.toml"
    extract_toml.write_text(
        toml_text(
            ExtractConfig(
                site=SiteSection(site_id=site.name),
                catalog=CatalogSection(url=url),
                store=StoreSection(**store.model_dump(exclude_unset=True)),
                keys=KeysSection(data_key=site.paths.data_key),
                features=FeaturesSection(dir=work / "features"),
                work=WorkSection(idle_poll_s=1.0),
            )
        )
    )
    processes += [ServiceProcess.worker(extract_toml, n, work / f"extract-{n}.log") for n in (1, 2)]
    for process in processes:
        stack.callback(process.stop)
        process.start()
    sampler = ConnectionSampler(url)
    clients = [Client(broker, unit_identity(site, u)).connect() for u in units]
    for client in clients:
        stack.callback(client.close)
    order = [
        (clients[i], unit, announcement_of(entries[unit][k], "127.0.0.1", servers.ports[unit]))
        for k in range(CLIPS_PER_UNIT)
        for i, unit in enumerate(units)
    ]
    started = time.monotonic()
    for n, (client, unit, announcement) in enumerate(order):
        time.sleep(max(0.0, started + n * ANNOUNCE_EVERY_S - time.monotonic()))
        client.publish(topic(site.name, unit, Kind.CLIPS), announcement.to_payload())
    announce_s = time.monotonic() - started
    total, media_total = len(order), MEDIA_UNITS
    catalog = Catalog(url)
    stack.callback(catalog.close)
    deadline = time.monotonic() + 1800
    while True:
        clips = catalog.clips(limit=10 * total)
        stored = [c for c in clips if c.stored_at is not None]
        extracted = [c for c in clips if c.state is ClipState.EXTRACTED]
        print(f"\rbench: {len(stored)}/{total} stored, {len(extracted)}/{media_total} "
              "extracted   ", end="", file=sys.stderr, flush=True)  # fmt: skip
        if len(stored) == total and len(extracted) == media_total:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {len(stored)} stored, {len(extracted)} extracted in time")
        time.sleep(1.0)
    print(file=sys.stderr)
    connections = sampler.close()
    # CPU the services used for all of it (receivers: fetch, verify, store; SeaweedFS: store).
    receivers_cpu = sum(cpu_seconds(p.process.pid) for p in processes[:2] if p.process)
    weed_cpu = sum(cpu_seconds(pid) for pid in weed_pids(work.parent / "s3" / "data"))
    # Exactly once: one stored row a clip, one extracted row a media clip, each hash once in
    # the bucket with bytes that hash to it.
    announced = {a.manifest.clip_id: a.manifest.sha256 for _, _, a in order}
    audit = {c.clip_id: [e.action for e in catalog.audit.entries(clip_id=c.clip_id)] for c in clips}
    s3 = open_store(store)
    assert isinstance(s3, S3Store)
    keys = []
    for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket):
        keys += [item["Key"] for item in page.get("Contents", [])]
    in_bucket = sorted(k.rsplit("/", 1)[1].removesuffix(".age") for k in keys if k.endswith(".age"))
    intact = True
    for sha256 in announced.values():
        with s3.open(sha256) as stored_clip:
            intact &= hashlib.sha256(stored_clip.read()).hexdigest() == sha256
    stored_once = (
        {c.clip_id: c.sha256 for c in clips} == announced
        and all(actions.count("stored") == 1 for actions in audit.values())
        and in_bucket == sorted(announced.values())
        and intact
    )
    extracted_once = all(audit[c.clip_id].count("extracted") == 1 for c in extracted)
    to_stored = [(c.stored_at - c.announced_at).total_seconds() for c in stored if c.stored_at]
    to_extracted = [
        (c.extracted_at - c.stored_at).total_seconds()
        for c in extracted
        if c.extracted_at and c.stored_at
    ]
    drain = max(c.stored_at for c in stored if c.stored_at) - min(c.announced_at for c in clips)
    sizes = table_sizes(url)
    feature_tables = {"clip_features", "clip_qc"}
    features = sum(v for k, v in sizes.items() if k in feature_tables)
    ingest = sum(v for k, v in sizes.items() if k not in feature_tables)
    return {
        "clips": total,
        "media_clips": media_total,
        "clip_bytes": entries[units[-1]][0].size_bytes,
        "announce_s": announce_s,
        "stored_once": stored_once,
        "extracted_once": extracted_once,
        "to_stored_s": to_stored,
        "to_extracted_s": to_extracted,
        "drain_s": drain.total_seconds(),
        "max_connections": connections,
        "catalog_bytes": sum(sizes.values()) - empty,
        "ingest_bytes_per_clip": (ingest - empty) / total,
        "features_bytes_per_clip": features / media_total,
        "features_disk_bytes_per_clip": sum(
            f.stat().st_size for f in (work / "features").rglob("*") if f.is_file()
        )
        / media_total,
        "receiver_cpu_s_per_gib": receivers_cpu / (total * CLIP_MIB / 1024),
        "weed_cpu_s_per_gib": weed_cpu / (total * CLIP_MIB / 1024),
    }


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process *pid* so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def weed_pids(root: Path) -> list[int]:
    """The ``weed`` processes serving from *root* (this bench's SeaweedFS)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args[0].endswith(b"weed") and f"-dir={root}".encode() in b" ".join(args):
            found.append(int(cmdline.parent.name))
    return found


# --- (b) store throughput -------------------------------------------------------------------


def measure_throughput(
    store: StoreLocation, work: Path, runs: int
) -> tuple[list[float], list[float], list[float]]:
    folder = work / "throughput"
    folder.mkdir()
    files = []
    for n in range(THROUGHPUT_CLIPS):
        path = folder / f"clip-{n}.age"
        path.write_bytes(os.urandom(CLIP_MIB * MIB))
        files.append(path)
    s3 = open_store(store)
    assert isinstance(s3, S3Store)
    client, bucket = s3.client, s3.bucket
    times: dict[str, list[float]] = {"put": [], "upload_file": [], "put_object": []}

    def fresh(tag: str) -> list[tuple[str, Path]]:
        """Each file with new last bytes (a new hash, so each put is a real create), made
        before the clock starts: the references upload the files as they are."""
        made = []
        for n, path in enumerate(files):
            data = path.read_bytes()[:-16] + os.urandom(16)
            copy = folder / f"{tag}-{n}.age"
            copy.write_bytes(data)
            made.append((hashlib.sha256(data).hexdigest(), copy))
        return made

    prepared: dict[str, list[tuple[str, Path]]] = {}

    def ours(tag: str) -> None:
        for sha256, copy in prepared.pop(tag):
            s3.put(sha256, copy, "untrusted comment: bench\n", move=True)

    def upload_file(tag: str) -> None:
        for n, path in enumerate(files):
            client.upload_file(str(path), bucket, f"ref/{tag}/{n}.age")

    def put_object(tag: str) -> None:
        for n, path in enumerate(files):
            client.put_object(Bucket=bucket, Key=f"plain/{tag}/{n}.age", Body=path.read_bytes())

    for round_ in range(runs + 1):
        prepared[f"r{round_}"] = fresh(f"r{round_}")
        for name, action in (
            ("put", ours),
            ("upload_file", upload_file),
            ("put_object", put_object),
        ):
            begin = time.perf_counter()
            action(f"r{round_}")
            if round_:
                times[name].append(time.perf_counter() - begin)
    shutil.rmtree(folder)
    return times["put"], times["upload_file"], times["put_object"]


def measure(runs: int = 3) -> LoadFigures:
    shm = Path("/dev/shm")
    room = shutil.disk_usage(shm).free if shm.is_dir() else 0
    where = shm if room > 6 * UNITS * CLIPS_PER_UNIT * CLIP_MIB * MIB else None
    with tempfile.TemporaryDirectory(prefix="painav-bench-scaleout-", dir=where) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # the broker drops to its own account and must reach its config
        site = init_site(work / "site", "bench", broker_hosts=("127.0.0.1", "localhost"))
        with ExitStack() as stack:
            url = stack.enter_context(postgres_database())
            store = s3_store(stack, work / "s3", work / "s3-credentials")
            (work / "load").mkdir()
            load = measure_load(stack, site, work / "load", url, store)
            put_s, upload_s, plain_s = measure_throughput(store, work, runs)
    return LoadFigures(**load, put_s=put_s, upload_file_s=upload_s, put_object_s=plain_s)


def _percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def table(fig: LoadFigures) -> str:
    total_mib = THROUGHPUT_CLIPS * CLIP_MIB
    put, upload, plain = (
        statistics.median(v) for v in (fig.put_s, fig.upload_file_s, fig.put_object_s)
    )
    return "\n".join(
        [
            f"Scale-out load: {UNITS} emulated units × {CLIPS_PER_UNIT} clips of "
            f"{fig.clip_bytes / MIB:.0f} MiB ({fig.clips} clips) announced over "
            f"{fig.announce_s:.0f} s to two `painav receiver run` and two `painav extract run` "
            "processes on one PostgreSQL catalog and a SeaweedFS S3 store, all on this machine "
            f"({os.cpu_count()} cores). Extracted: the {fig.media_clips} clips that carry real "
            "media (4 s, 640×360, 8 MiB, armed); the other "
            f"{fig.clips - fig.media_clips} carry random bytes, unarmed, which the workers leave "
            "(the consent gate). Store throughput: median of "
            f"{len(fig.put_s)} interleaved runs of {THROUGHPUT_CLIPS} clips of {CLIP_MIB} MiB "
            "to the same SeaweedFS.",
            "",
            "| measure | painav | reference | ratio (≥ 1 is faster) |",
            "| --- | --- | --- | --- |",
            f"| {fig.clips} clips stored exactly once, each hash once in the bucket, intact "
            f"| {'yes' if fig.stored_once else '**no**'} | | |",
            f"| {fig.media_clips} media clips extracted exactly once "
            f"| {'yes' if fig.extracted_once else '**no**'} | | |",
            f"| announcement → stored, p50 / p95 | {_percentile(fig.to_stored_s, 50):.2f} s / "
            f"{_percentile(fig.to_stored_s, 95):.2f} s | | |",
            f"| stored → extracted, p50 / p95 ({fig.media_clips} media clips) "
            f"| {_percentile(fig.to_extracted_s, 50):.1f} s / "
            f"{_percentile(fig.to_extracted_s, 95):.1f} s | | |",
            f"| first announcement → last clip stored (announcing takes {fig.announce_s:.0f} s) "
            f"| {fig.drain_s:.0f} s | | |",
            f"| CPU per GiB stored: both receivers (fetch over TLS, verify, upload) "
            f"| {fig.receiver_cpu_s_per_gib:.1f} s | | |",
            f"| CPU per GiB stored: SeaweedFS (S3 gateway, filer, volume; SHA-256 checked) "
            f"| {fig.weed_cpu_s_per_gib:.1f} s | | |",
            f"| store: `S3Store.put` against boto3 `upload_file`, {total_mib} MiB "
            f"| {total_mib / put:.0f} MiB/s | {total_mib / upload:.0f} MiB/s "
            f"| **{upload / put:.2f}×** |",
            f"| store: `S3Store.put` against a plain `put_object` "
            f"| {total_mib / put:.0f} MiB/s | {total_mib / plain:.0f} MiB/s "
            f"| **{plain / put:.2f}×** |",
            f"| PostgreSQL connections to the catalog, most seen | {fig.max_connections} | | |",
            f"| catalog size per 1,000 clips stored (rows, audit) "
            f"| {fig.ingest_bytes_per_clip * 1000 / MIB:.1f} MiB | | |",
            f"| catalog size per 1,000 clips extracted (features, QC) "
            f"| {fig.features_bytes_per_clip * 1000 / MIB:.1f} MiB | | |",
            f"| features folder (Parquet tables) per extracted 4 s clip "
            f"| {fig.features_disk_bytes_per_clip / 1024:.0f} KiB | | |",
        ]
    )


if __name__ == "__main__":
    figures = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
    print(figures)
    print(table(figures))
