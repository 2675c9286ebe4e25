"""The extraction worker killed mid-clip, again and again: every clip ends extracted, each
result written once, nothing half-written and no plaintext left anywhere."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from protocol.envelope import EnvelopeReader, EnvelopeWriter
from protocol.extract_config import (
    CatalogSection,
    ExtractConfig,
    FeaturesSection,
    KeysSection,
    SiteSection,
    StoreSection,
    WorkSection,
)
from protocol.x25519 import X25519Identity
from provisioning.config_files import toml_text
from server.catalog import Catalog, ClipRecord, ClipState
from server.store import LocalStore
from tests.daemon.test_unit_e2e import assert_no_plaintext_media
from tests.server.conftest import Announce, enrolled
from tests.support.unit import PAINAV

from .clips import synthetic_clip, wav_samples

CLIPS = 6
KILLS = 10


def stock(
    tmp_path: Path, announce: Announce, speech: Path, url: str | None = None
) -> tuple[Path, list[str]]:
    """*CLIPS* receipted clips of speech in a store and a SQLite catalog, encrypted to a data
    key; the worker's extract.toml (20 attempts: every kill costs the clip one)."""
    identity = X25519Identity.generate()
    key = tmp_path / "data-key.txt"
    key.write_text(f"# test\n{identity}\n")
    store = LocalStore(tmp_path / "store")
    url = url or f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = Catalog(url)
    pcm = wav_samples(speech).tobytes()
    ids = []
    try:
        for n in range(CLIPS):
            made = synthetic_clip(tmp_path / f"made-{n}.age", pcm, seconds=4.0)
            spool = tmp_path / f"clip-{n}.age"
            with made.path.open("rb") as src, EnvelopeReader(src, [made.identity]) as reader:
                plaintext = reader.read()
            with spool.open("wb") as out, EnvelopeWriter(out, [identity.recipient]) as writer:
                writer.write(plaintext)
            made.path.unlink()
            digest = hashlib.sha256(spool.read_bytes()).hexdigest()
            store_key = store.put(digest, spool, "untrusted comment: test\n", move=True)
            clip_id = f"cart-03-20250301T093000Z-{n:04x}"
            now = datetime.now(UTC)
            enrolled(catalog)
            catalog.record_announcement(announce(clip_id, sha256=digest), received_at=now)
            assert catalog.claim_next(worker="rx", now=now, lease_s=60) is not None
            catalog.mark_stored(clip_id, store_key=store_key, stored_at=now, worker="rx")
            catalog.mark_receipted(clip_id, at=now)
            ids.append(clip_id)
    finally:
        catalog.close()
    config = ExtractConfig(
        site=SiteSection(site_id="ward7"),
        catalog=CatalogSection(url=url),
        store=StoreSection(dir=tmp_path / "store"),
        keys=KeysSection(data_key=key),
        features=FeaturesSection(dir=tmp_path / "features"),
        work=WorkSection(max_attempts=20, idle_poll_s=0.2, lease_s=600),
    )
    path = tmp_path / "extract.toml"
    path.write_text(toml_text(config))
    return path, ids


def extracting(catalog: Catalog) -> list[ClipRecord]:
    return catalog.clips(state=ClipState.EXTRACTING)


def start(config: Path, log: Path, number: int = 1) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "PAINAV_DATA_KEY_FILE"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(PAINAV), "extract", "run", "--config", str(config), "--worker", str(number)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "TMPDIR": str(config.parent / "tmp")},
        )


@pytest.mark.slow
def test_a_worker_killed_mid_clip_ten_times_loses_and_repeats_nothing(
    tmp_path: Path, announce: Announce, speech_48k: Path
) -> None:
    config, ids = stock(tmp_path, announce, speech_48k)
    (tmp_path / "tmp").mkdir()
    log = tmp_path / "worker.log"
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    rng = random.Random(10)
    kills = 0
    try:
        while kills < KILLS:
            # A killed worker's clip stays "extracting" under its old lease: wait for a lease
            # this run took.
            before = {(c.clip_id, c.lease_expires_at) for c in extracting(catalog)}
            worker = start(config, log)
            deadline = time.monotonic() + 60
            busy = False
            while time.monotonic() < deadline and worker.poll() is None:
                if {(c.clip_id, c.lease_expires_at) for c in extracting(catalog)} - before:
                    busy = True
                    break
                if all(catalog.clip(i).state is ClipState.EXTRACTED for i in ids):
                    break
                time.sleep(0.02)
            if not busy:
                worker.terminate()
                worker.wait(30)
                break  # everything was extracted before the next kill
            time.sleep(rng.uniform(0.0, 0.6))  # somewhere inside the clip
            worker.send_signal(signal.SIGKILL)
            worker.wait(30)
            kills += 1
        runs = log.read_text().count("OpenFace is not configured")
        worker = start(config, log)  # the last run finishes the rest
        deadline = time.monotonic() + 180
        while log.read_text().count("OpenFace is not configured") == runs:  # it is up
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        while not all(catalog.clip(i).state is ClipState.EXTRACTED for i in ids):
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        worker.terminate()
        assert worker.wait(30) == 0
        assert kills == KILLS, f"killed inside a clip only {kills} times"
        assert log.read_text().count("took back 1 clip(s)") == KILLS
        for clip_id in ids:
            features = catalog.features(clip_id)
            assert sorted(f.feature_set for f in features) == [
                "egemaps_functionals",
                "egemaps_lld",
                "mediapipe_face_frames",
                "mediapipe_face_summary",
            ]
            assert len(catalog.qc(clip_id)) == 2  # quick and full
            for frames in [f.frames for f in features if f.frames is not None]:
                written = (tmp_path / "features" / frames.path).read_bytes()
                assert hashlib.sha256(written).hexdigest() == frames.sha256
        leftovers = [p.name for p in (tmp_path / "features").rglob(".*")]
        assert leftovers == []  # temp files of killed runs were removed by the next one
        assert catalog.audit.verify().ok
        assert_no_plaintext_media(tmp_path / "features")
        assert_no_plaintext_media(tmp_path / "tmp")
    finally:
        catalog.close()


def test_two_workers_on_postgresql_extract_every_clip_exactly_once(
    tmp_path: Path, announce: Announce, speech_48k: Path, postgres_url: str
) -> None:
    config, ids = stock(tmp_path, announce, speech_48k, url=postgres_url)
    (tmp_path / "tmp").mkdir()
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    workers = [start(config, log, number) for number, log in enumerate(logs, 1)]
    catalog = Catalog(postgres_url)
    try:
        deadline = time.monotonic() + 180
        while not all(catalog.clip(i).state is ClipState.EXTRACTED for i in ids):
            assert all(w.poll() is None for w in workers), [log.read_text() for log in logs]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for clip_id in ids:
            assert len(catalog.features(clip_id)) == 4 and len(catalog.qc(clip_id)) == 2
            extracted = [
                e for e in catalog.audit.entries(clip_id=clip_id) if e.action == "extracted"
            ]
            assert len(extracted) == 1
        done = [log.read_text().count(" extracted (quick check") for log in logs]
        assert sum(done) == CLIPS, done
    finally:
        for w in workers:
            w.terminate()
            w.wait(30)
        catalog.close()


def test_the_worker_runs_under_its_units_sandbox_with_the_provisioned_config(
    tmp_path: Path, announce: Announce, speech_48k: Path
) -> None:
    """``painav provision extract config``'s file, the data key handed over as systemd does
    ($PAINAV_DATA_KEY_FILE), and painav-extract@.service's system-call filter, clock
    protection, address families and W^X memory: a call the sandbox forbids fails here as it
    would fail the service."""
    from painav.cli import main
    from provisioning.site import init_site
    from tests.support.sandbox import launcher

    _, ids = stock(tmp_path, announce, speech_48k)
    site = init_site(tmp_path / "site", "ward7", broker_hosts=("127.0.0.1",))
    config = tmp_path / "provisioned.toml"
    args = ["provision", "extract", "config", "--dir", str(site.dir)]
    args += ["--catalog-url", f"sqlite:///{tmp_path / 'catalog.db'}"]
    args += ["--store", str(tmp_path / "store"), "--features", str(tmp_path / "features")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0  # data_key: /etc/painav/keys/data-key.txt, as on the host
    config.write_text(out.getvalue())
    unit = Path(__file__).resolve().parents[3] / "systemd" / "painav-extract@.service"
    env = {**os.environ, "PAINAV_DATA_KEY_FILE": str(tmp_path / "data-key.txt")}
    run = subprocess.run(
        [*launcher(unit), str(PAINAV), "extract", "clip", ids[0], "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"clip {ids[0]}: extracted" in run.stdout
    assert "egemaps_functionals" in run.stdout and "egemaps_lld" in run.stdout


def test_with_openface_configured_the_worker_records_action_units(
    tmp_path: Path, announce: Announce, speech_48k: Path
) -> None:
    """OpenFace through its adapter (here its stand-in, which checks it is given the clip as
    a memory file and writes OpenFace's exact CSV), beside voice and MediaPipe."""
    from protocol.tomlconfig import load_toml
    from server.extract.worker import ExtractionWorker, load_identities

    path, ids = stock(tmp_path, announce, speech_48k)
    config = load_toml(path, ExtractConfig)
    standin = Path(__file__).with_name("openface_standin.py")
    features = config.features.model_copy(update={"openface_bin": standin})
    config = config.model_copy(update={"features": features})
    worker = ExtractionWorker(
        config, worker_id="x1@test", identities=load_identities(config.keys.data_key)
    )
    try:
        outcome = worker.extract_one(ids[0])
        assert outcome is not None and outcome.result == "extracted", outcome
        sets = {f.feature_set: f for f in worker.catalog.features(ids[0])}
        assert {"openface_au_summary", "openface_au_frames"} <= set(sets)
        summary = sets["openface_au_summary"]
        assert summary.provenance.tool == "openface" and summary.provenance.model_sha256
        assert summary.values is not None and "pspi_au45_for_au43_mean" in summary.values
    finally:
        worker.close()
