"""``painav demo``: the whole path on one machine, from button press to the hospital store.

Provisions a throwaway site, starts Mosquitto with the generated TLS/ACL configuration, the
receiver (SQLite catalog, local store; with ``--receivers N --workers M`` several of each as
processes on a new PostgreSQL catalog, with ``--store s3`` a SeaweedFS S3 store) and K
simulated units; enrols a pain participant and a
control with consent and arms the first two units for their first visit, presses the buttons N
times, waits until every clip is stored, receipted and gone
from its unit; then an extraction worker decrypts each clip in memory, checks its quality and
extracts its voice features, and the quick verdict goes back to the unit. It prints what
happened. ``--workdir DIR`` keeps every file it made.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from daemon.control import ControlClient, ControlError
from protocol.store_config import StoreLocation
from provisioning.broker import write_broker_config
from provisioning.devices import add_device
from provisioning.extraction import extract_config
from provisioning.receivers import add_receiver, receiver_config
from provisioning.site import Site, init_site
from server.research.export import export_dataset
from server.research.importer import import_edc

from .localsite import HOST, broker_accepts_logins, broker_user, free_port, unit_config
from .scaleout import ServiceProcess, postgres_database, s3_store

if TYPE_CHECKING:
    from server.service import ReceiverService

SITE = "demo-ward"
PARTICIPANTS = (("PAIN-0001", "pain"), ("CTRL-0001", "control"))
"""Enrolled by the demo, one per unit (the first two units), each for their first visit."""
PAINAV = Path(sys.executable).with_name("painav")


@dataclass
class _Unit:
    device_id: str
    work: Path
    process: subprocess.Popen[bytes]

    @property
    def control(self) -> ControlClient:
        return ControlClient(self.work / "control.sock", device_id=self.device_id)

    def status(self) -> dict[str, Any]:
        return self.control.request(cmd="status")

    def in_state(self, *states: str) -> bool:
        return self.status()["state"] in states


def run(args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        work = stack.enter_context(_workdir(args.workdir))
        return _run(stack, work, args)


@contextmanager
def _workdir(requested: Path | None) -> Iterator[Path]:
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
        yield requested.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="painav-demo-") as tmp:
        yield Path(tmp)


def _armed_for(unit: _Unit, pseudonym: str) -> bool:
    return bool(unit.status()["participant"] == pseudonym)


def _say(text: str) -> None:
    print(text, flush=True)


def _run(stack: ExitStack, work: Path, args: argparse.Namespace) -> int:
    # Mosquitto started as root drops to its own account before reading its files.
    os.chmod(work, 0o755)
    if (work / "site").exists():
        _say(f"painav demo: {work} holds an earlier demo; give an empty or new --workdir")
        return 1
    started = time.monotonic()
    _say(f"painav demo: site {SITE}, {args.units} unit(s), {args.clips} clip(s), in {work}\n")

    _say("1. provisioning (hospital IT): site CAs, broker and receiver credentials, data key")
    site = init_site(work / "site", SITE, broker_hosts=(HOST, "localhost"))
    devices = [f"cart-{n:02d}" for n in range(1, args.units + 1)]
    for device_id in devices:
        add_device(site, device_id)
    _say(f"   units enrolled: {', '.join(devices)}")
    receivers = [site.receiver_id] + [
        add_receiver(site, str(n)) for n in range(2, max(1, args.receivers) + 1)
    ]

    _say("2. the broker: Mosquitto with mutual TLS, CRL and per-unit ACL")
    port = free_port()
    broker_dir = work / "broker"
    write_broker_config(site, broker_dir, port=port, bind=HOST, user=broker_user())
    _start_broker(stack, broker_dir, port, site)

    hospital = work / "hospital"
    hospital.mkdir(exist_ok=True)
    catalog_url, store = _hospital_parts(stack, args, work, hospital)
    _say(
        f"3. the hospital receiver(s): {', '.join(receivers)}; "
        f"{catalog_url.split(':', 1)[0]} catalog, "
        + ("S3 store (SeaweedFS)" if args.store == "s3" else "content-addressed store")
    )
    config_path = hospital / "receiver.toml"
    for receiver_id in receivers:
        own = hospital if receiver_id == site.receiver_id else hospital / receiver_id
        own.mkdir(exist_ok=True)
        (own / "receiver.toml").write_text(
            receiver_config(
                site,
                catalog_url=catalog_url,
                store_dir=store,
                spool_dir=own / "spool",
                broker_host=HOST,
                broker_port=port,
                receiver_id=receiver_id,
            )
        )
        if receiver_id != site.receiver_id:  # the first runs in this process: the demo uses it
            process = ServiceProcess.receiver(own / "receiver.toml", own / "receiver.log")
            stack.callback(process.stop)
            process.start()
    service = _start_receiver(stack, config_path)

    _say("4. the bedside units (simulated camera, microphone and button)")
    units = [_start_unit(stack, site, d, work / "units" / d, port, args.seconds) for d in devices]

    _say("5. a data manager enrols participants with consent; a researcher arms the carts")
    today = date.today()
    armed = list(zip(devices, PARTICIPANTS, strict=False))
    for device_id, (pseudonym, group) in armed:
        service.catalog.enrol(
            pseudonym,
            group=group,
            language="nl",
            enrolled_on=today,
            consented_on=today,
            form_version="demo-1",
        )
        visit = service.catalog.open_visit(pseudonym, on=today)
        # As `painav research arm` and the dashboard do: the request is audited; the receiver
        # signs the command with its own certified key (a unit refuses an unsigned one).
        service.catalog.acting_as("researcher").request_arm(device_id, pseudonym, visit.number)
        _say(f"   {pseudonym} ({group}) enrolled, visit {visit.label} open; {device_id} armed")
    for unit, (_, (pseudonym, _)) in zip(units, armed, strict=False):
        _wait(partial(_armed_for, unit, pseudonym), "the arm command", 15)

    _say(f"6. the nurse presses: {args.clips} recording(s) of {args.seconds:g} s")
    for n in range(args.clips):
        unit = units[n % len(units)]
        unit.control.request(cmd="press")
        _wait(partial(unit.in_state, "recording"), "recording to start", 10)
        time.sleep(args.seconds)
        unit.control.request(cmd="press")
        _wait(partial(unit.in_state, "idle", "armed"), "the clip to seal", 20)

    _say("7. waiting for every clip to be stored, receipted and gone from its unit")
    catalog = service.catalog
    deadline = time.monotonic() + 60 + 10 * args.clips
    while True:
        clips = catalog.clips()
        done = [c for c in clips if c.state.value == "receipted"]
        queued = sum(len(u.status()["queue"]) for u in units)
        states = ", ".join(
            f"{s} {sum(c.state.value == s for c in clips)}"
            for s in ("announced", "fetching", "stored", "receipted", "quarantined")
        )
        print(f"\r   catalog: {states}; on units: {queued}   ", end="", flush=True)
        if len(done) >= args.clips and queued == 0:
            break
        if time.monotonic() > deadline:
            print()
            _say("painav demo: timed out; see the logs in the workdir")
            return 1
        time.sleep(0.2)
    print()

    _say("8. the extraction worker decrypts each clip in memory: quality, voice and face features")
    extract_path = hospital / "extract.toml"
    extract_path.write_text(
        extract_config(
            site,
            catalog_url=catalog_url,
            store_dir=store,
            features_dir=hospital / "features",
            data_key=site.paths.data_key,
        )
    )
    if args.workers > 1:  # as systemd runs them: painav-extract@1, @2, ...
        for number in range(1, args.workers + 1):
            worker = ServiceProcess.worker(extract_path, number, hospital / f"extract-{number}.log")
            stack.callback(worker.stop)
            worker.start()
        _say(f"   {args.workers} worker processes share the catalog and the store")
    else:
        _start_worker(stack, extract_path)
    # The consent gate: a clip recorded unarmed (a third unit, say) waits to be assigned.
    ids = [c.clip_id for c in done if c.participant is not None]
    if len(ids) < len(done):
        _say(f"   {len(done) - len(ids)} clip(s) recorded unarmed wait to be assigned")
    _wait(
        lambda: all(catalog.clip(i).state.value in ("extracted", "failed") for i in ids),
        "the extraction",
        60 + 20 * args.clips,
    )
    first = catalog.clip(ids[0])
    with service.store.open(first.sha256) as f:  # as the worker does: in memory only
        facts = _media_facts(f, site.paths.data_key)
    _say(f"   {first.clip_id} decrypted in memory: {facts}")
    verdicts = catalog.last_verdicts(ids)
    for clip_id in ids:
        features = {f.feature_set: f for f in catalog.features(clip_id)}
        functionals = features.get("egemaps_functionals")
        lld = features.get("egemaps_lld")
        face = features.get("mediapipe_face_summary")
        share = (face.values or {}).get("face_share") if face else None
        qc = verdicts.get(clip_id)
        _say(
            f"   {clip_id}: quality {qc.verdict.value if qc else '-'}"
            f" ({', '.join(qc.reasons) if qc and qc.reasons else 'no reasons'}); "
            f"{len(functionals.values or {}) if functionals else 0} eGeMAPS functionals, "
            f"{lld.frames.frame_count if lld and lld.frames else 0} descriptor frames; "
            f"face in {share or 0:.0%} of frames (MediaPipe blendshapes, a proxy for AUs)"
        )
    last = units[(args.clips - 1) % len(units)]
    final = verdicts.get(ids[-1])  # the full check's, which follows the quick one's
    want = final.verdict.value if final else None

    def shown_final() -> bool:
        seen = last.status()["last_verdict"]
        return seen is not None and (want is None or seen["verdict"] == want)

    _wait(shown_final, "the verdict at the unit", 30)
    shown = last.status()["last_verdict"]
    _say(
        f"   {last.device_id} shows the verdict on its last clip: {shown['verdict']}"
        + (" — its light asks the nurse to record again" if shown["verdict"] == "repeat" else "")
    )

    _say("9. the data manager imports clinical data from the EDC and exports the dataset")
    edc, mapping = _edc_export(hospital, [pseudonym for _, (pseudonym, _) in armed])
    imported = import_edc(catalog, edc, mapping)
    _say(f"   {edc.name} (generated, REDCap format): {imported.new} rows of NRS, analgesics, "
         "tumour and questionnaire")  # fmt: skip
    out = (work if args.workdir else Path(tempfile.mkdtemp(prefix="painav-demo-"))) / "export"
    dataset = export_dataset(catalog, hospital / "features", out, folds=2, actor="demo")
    _say(f"   dataset of {dataset.participants} participants, {dataset.clips} clips: {out}")
    _say(f"   load it: pandas.read_csv('{out}/participants.tsv', sep='\\t')")

    _say("10. the dashboard: fleet, arming, recordings with their quality, the dataset, audit")
    from .demoweb import start_dashboard

    board = start_dashboard(
        stack,
        site,
        catalog,
        catalog_url=catalog_url,
        features_dir=hospital / "features",
        exports_dir=hospital / "exports",
    )
    _say(f"   {board.url}  sign in as {board.username}, password {board.password}")
    _say(f"   (its certificate is from the demo site's root: {board.ca})")

    _say("\nsummary")
    _say(f"   {'clip':<34} {'unit':<8} {'participant':<11} {'sec':>4} {'bytes':>9}  stored after")
    for c in sorted(done, key=lambda c: c.announced_at):
        latency = (c.stored_at - c.announced_at).total_seconds() if c.stored_at else 0
        _say(
            f"   {c.clip_id:<34} {c.device_id:<8} {c.participant or '-':<11} "
            f"{c.manifest.duration_s:>4.1f} {c.size_bytes:>9}  {latency * 1000:.0f} ms"
        )
    quarantined = [c for c in catalog.clips() if c.state.value == "quarantined"]
    _say(
        f"   {len(done)} clip(s) stored and receipted, {len(quarantined)} quarantined, "
        f"every unit's outbox empty; {time.monotonic() - started:.0f} s in all"
    )
    if args.workdir is not None:
        _say(f"\nkept in {work}: site/ (PKI, registry, bundles), broker/, hospital/ (catalog.db,")
        _say("store/, receiver.toml), units/<id>/ (device.toml, outbox/, daemon.log)")
        _say(f"   look inside: painav receiver clips --config {config_path}")
    if args.keep_running:
        _say(
            "\nrunning until Ctrl-C (press a unit: painav device press --config "
            f"{units[0].work / 'device.toml'})"
        )
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
    return 0


_EDC_MAPPING = """\
format = "redcap"
participant = "record_id"

[nrs]
score = "nrs_score"
date = "nrs_date"

[analgesics]
form = "analgesics"
name = "analgesic_name"
route = "analgesic_route"
ome_mg = "analgesic_ome"

[tumour]
type = "tumour_type"
status = "clinical_status"

[questionnaire]
items = ["mood"]
"""


def _edc_export(folder: Path, pseudonyms: list[str]) -> tuple[Path, Path]:
    """A small REDCap export for the demo's participants (made up), and its mapping file."""
    today = date.today().isoformat()
    lines = [
        "record_id,redcap_event_name,redcap_repeat_instrument,redcap_repeat_instance,"
        "tumour_type,clinical_status,nrs_score,nrs_date,analgesic_name,analgesic_route,"
        "analgesic_ome,mood"
    ]
    for pseudonym in pseudonyms:
        pain = pseudonym.startswith("PAIN")
        lines.append(
            f"{pseudonym},visit_1_arm_1,,,{'lung' if pain else 'breast'},"
            f"{'admitted' if pain else 'chemotherapy'},{6 if pain else 0},{today},,,,2"
        )
        if pain:
            lines.append(f"{pseudonym},visit_1_arm_1,analgesics,1,,,,,oxycodone,oral,30,")
    export, mapping = folder / "edc-export.csv", folder / "edc-mapping.toml"
    export.write_text("\n".join(lines) + "\n")
    mapping.write_text(_EDC_MAPPING)
    return export, mapping


def _wait(predicate: Callable[[], object], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return
        except ControlError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"demo: timed out waiting for {what}")
        time.sleep(0.05)


def _hospital_parts(
    stack: ExitStack, args: argparse.Namespace, work: Path, hospital: Path
) -> tuple[str, Path | StoreLocation]:
    """The catalog's URL and the store: SQLite and a folder for one receiver and one worker;
    a new PostgreSQL database (kept with --workdir) when several share the work; SeaweedFS
    under work/s3 with --store s3."""
    if args.receivers > 1 or args.workers > 1:
        catalog_url = stack.enter_context(postgres_database(keep=args.workdir is not None))
        if args.workdir is not None:
            _say(f"   the catalog, kept after the demo: {catalog_url}")
    else:
        catalog_url = f"sqlite:///{hospital / 'catalog.db'}"
    if args.store == "s3":
        return catalog_url, s3_store(stack, work / "s3", hospital / "s3-credentials")
    return catalog_url, hospital / "store"


def _start_broker(stack: ExitStack, broker_dir: Path, port: int, site: Site) -> None:
    log = (broker_dir / "mosquitto.log").open("ab")
    stack.callback(log.close)
    process = subprocess.Popen(
        ["mosquitto", "-c", str(broker_dir / "mosquitto.conf")], stdout=log, stderr=log
    )
    stack.callback(_terminate, process)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto exited; see {broker_dir / 'mosquitto.log'}")
        return broker_accepts_logins(site, port)

    _wait(ready, "the broker", 15)


def _start_receiver(stack: ExitStack, config_path: Path) -> ReceiverService:
    import logging

    from server.config import load_config
    from server.service import ReceiverService as Service

    handler = logging.FileHandler(config_path.parent / "receiver.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    service = Service(load_config(config_path))
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), name="receiver", daemon=True)
    thread.start()
    stack.callback(thread.join, 60)
    stack.callback(stop.set)
    _wait(lambda: service.link.connected, "the receiver to connect", 15)
    return service


def _start_worker(stack: ExitStack, config_path: Path) -> None:
    from protocol.extract_config import ExtractConfig
    from protocol.tomlconfig import load_toml
    from server.extract.worker import ExtractionWorker, data_key_path, load_identities

    config = load_toml(config_path, ExtractConfig)
    worker = ExtractionWorker(
        config, worker_id="extract-demo", identities=load_identities(data_key_path(config))
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="extract", daemon=True)
    thread.start()
    stack.callback(worker.close)
    stack.callback(thread.join, 60)
    stack.callback(stop.set)


def _media_facts(ciphertext: BinaryIO, data_key: Path) -> str:
    from server.extract.media import ClipMedia
    from server.extract.worker import load_identities

    facts = ClipMedia.decrypt(ciphertext, load_identities(data_key)).facts()
    video_s = facts.video_end_s - facts.video_start_s
    audio_s = facts.audio_end_s - facts.audio_start_s
    return (
        f"video {facts.video_codec} {facts.width}x{facts.height} {video_s:.1f} s, "
        f"audio {facts.audio_codec} {facts.audio_sample_rate_hz} Hz {audio_s:.1f} s"
    )


def _start_unit(
    stack: ExitStack, site: Site, device_id: str, work: Path, port: int, seconds: float
) -> _Unit:
    work.mkdir(parents=True, exist_ok=True)
    config = work / "device.toml"
    config.write_text(
        unit_config(site, device_id, work, port, max_seconds=60.0, width=640, height=360)
    )
    log = (work / "daemon.log").open("ab")
    stack.callback(log.close)
    process = subprocess.Popen(
        [str(PAINAV), "device", "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TMPDIR": str(work)},
    )
    stack.callback(_terminate, process)
    unit = _Unit(device_id, work, process)
    _wait(lambda: unit.status()["connected"], f"{device_id} to connect", 30)
    return unit


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=25)
        except subprocess.TimeoutExpired:
            process.kill()
