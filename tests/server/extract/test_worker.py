"""The extraction worker on real parts: a unit records (simulated camera and microphone, real
H.264 and PCM), the real receiver stores the clip; the worker decrypts it in memory, checks it,
extracts voice features with provenance; the receiver sends the quick verdict back to the unit,
which shows it. Nothing the worker wrote holds plaintext media."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from protocol.extract_config import (
    CatalogSection,
    ExtractConfig,
    FeaturesSection,
    KeysSection,
    SiteSection,
    StoreSection,
    WorkSection,
)
from server.catalog import ClipState
from server.extract.worker import ExtractError, ExtractionWorker, load_identities
from tests.daemon.test_unit_e2e import assert_no_plaintext_media
from tests.server.conftest import Announce, enrolled
from tests.server.test_receiver_e2e import wait_for
from tests.support.mosquitto import Broker
from tests.support.unit import make_unit, start_receiver


def extract_config(site_name: str, receiver: Path, work: Path, data_key: Path) -> ExtractConfig:
    return ExtractConfig(
        site=SiteSection(site_id=site_name),
        catalog=CatalogSection(url=f"sqlite:///{receiver / 'catalog.db'}"),
        store=StoreSection(dir=receiver / "store"),
        keys=KeysSection(data_key=data_key),
        features=FeaturesSection(dir=work / "features"),
        work=WorkSection(idle_poll_s=0.2),
    )


def test_a_recorded_clip_is_extracted_and_its_verdict_reaches_the_unit(
    broker_site, broker: Broker, tmp_path: Path
) -> None:
    site = broker_site
    receiver = start_receiver(site, broker, tmp_path / "receiver")
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=4.0).start()
    work = tmp_path / "worker"
    config = extract_config(site.name, tmp_path / "receiver", work, site.paths.data_key)
    worker = ExtractionWorker(
        config, worker_id="x1@test", identities=load_identities(site.paths.data_key)
    )
    try:
        unit.press()  # stops by itself at 4 s
        catalog = receiver.service.catalog
        (clip,) = wait_for(
            lambda: catalog.clips(state=ClipState.RECEIPTED) or None, "a receipted clip", 60
        )
        # The consent gate: a clip recorded unarmed is decrypted only once it is assigned to a
        # participant whose consent is in force.
        assert clip.participant is None and worker.extract_one() is None
        enrolled(catalog)
        catalog.open_visit("PAIN-0042", on=datetime.now(UTC).date())
        assert catalog.assign_clip(clip.clip_id, "PAIN-0042", 1).visit == "V1"
        outcome = worker.extract_one()
        assert outcome is not None and outcome.result == "extracted", outcome
        assert catalog.clip(clip.clip_id).state is ClipState.EXTRACTED

        features = {f.feature_set: f for f in catalog.features(clip.clip_id)}
        assert set(features) == {
            "egemaps_functionals",
            "egemaps_lld",
            "mediapipe_face_summary",
            "mediapipe_face_frames",
        }
        functionals = features["egemaps_functionals"]
        assert len(functionals.values or {}) == 88
        assert functionals.provenance.tool == "opensmile"
        assert functionals.provenance.sample_rate_hz == 16_000
        lld = features["egemaps_lld"]
        assert lld.frames is not None
        table = pq.read_table(work / "features" / lld.frames.path)
        assert table.num_rows == lld.frames.frame_count > 300  # 10 ms frames of about 4 s
        assert len(table.column_names) == 2 + 25

        face = features["mediapipe_face_summary"]
        assert face.provenance.tool == "mediapipe" and face.provenance.model_sha256
        assert face.values is not None and "pspi_proxy_mp_mean" in face.values
        checks = {qc.qc_pass.value: qc for qc in catalog.qc(clip.clip_id)}
        assert set(checks) == {"quick", "full"}
        assert checks["quick"].verdict.value == outcome.verdict
        shown = wait_for(
            lambda: unit.status().get("last_verdict") or None, "the verdict at the unit", 30
        )
        assert shown["clip_id"] == clip.clip_id
        assert shown["verdict"] in {qc.verdict.value for qc in checks.values()}

        assert worker.extract_one() is None  # nothing else to do
        assert_no_plaintext_media(work)
        assert catalog.audit.verify().ok
        actions = [e.action for e in catalog.audit.entries(clip_id=clip.clip_id)]
        assert actions.index("decrypt") < actions.index("extracted")
    finally:
        assert unit.stop() == 0, unit.log()
        receiver.stop()
        worker.close()


def test_a_missing_data_key_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ExtractError, match=r"data key .*missing.txt: cannot read: No such file"):
        load_identities(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing here\n")
    with pytest.raises(ExtractError, match="no AGE-SECRET-KEY-1"):
        load_identities(tmp_path / "empty.txt")


def test_a_valid_age_file_with_broken_media_fails_at_once_with_its_reason(
    tmp_path: Path, announce: Announce
) -> None:
    from protocol.envelope import EnvelopeWriter
    from protocol.x25519 import X25519Identity
    from server.catalog import Catalog
    from server.store import LocalStore

    identity = X25519Identity.generate()
    key = tmp_path / "data-key.txt"
    key.write_text(f"# test\n{identity}\n")
    spool = tmp_path / "garbage.age"
    with spool.open("wb") as f, EnvelopeWriter(f, [identity.recipient]) as envelope:
        envelope.write(b"not Matroska at all " * 1000)
    digest = hashlib.sha256(spool.read_bytes()).hexdigest()
    store_key = LocalStore(tmp_path / "store").put(digest, spool, "untrusted comment: test\n")
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    now = datetime.now(UTC)
    enrolled(catalog)
    catalog.record_announcement(
        announce("cart-03-20250301T093000Z-0001", sha256=digest), received_at=now
    )
    assert catalog.claim_next(worker="rx", now=now, lease_s=60) is not None
    catalog.mark_stored(
        "cart-03-20250301T093000Z-0001", store_key=store_key, stored_at=now, worker="rx"
    )
    catalog.mark_receipted("cart-03-20250301T093000Z-0001", at=now)
    config = extract_config("ward7", tmp_path, tmp_path / "worker", key)
    worker = ExtractionWorker(
        config, worker_id="x1@test", identities=load_identities(key), catalog=catalog
    )
    try:
        outcome = worker.extract_one()
        assert outcome is not None and outcome.result == "failed"
        clip = catalog.clip("cart-03-20250301T093000Z-0001")
        assert clip.state is ClipState.FAILED
        assert clip.extraction_error is not None
        assert clip.extraction_error.startswith("MediaError: ")
        assert worker.extract_one() is None  # not retried: it would fail the same way
        # What Prometheus reads: one failure, for its media; no latency of an extracted clip.
        sample = worker.metrics.registry.get_sample_value
        assert sample("painav_extraction_failures_total", {"reason": "media"}) == 1
        assert sample("painav_extraction_failures_total", {"reason": "error"}) == 0
        assert sample("painav_extractions_total", {"result": "failed"}) == 1
        assert sample("painav_stored_to_extracted_seconds_count") == 0
    finally:
        catalog.close()


def test_a_clip_replaced_in_the_store_is_not_extracted(tmp_path: Path, announce: Announce) -> None:
    """Whoever runs the store holds no data key, but could swap in another clip sealed to the
    same key: the worker hashes the ciphertext as it decrypts and refuses a mismatch."""
    from protocol.envelope import EnvelopeWriter
    from protocol.x25519 import X25519Identity
    from server.catalog import Catalog
    from server.store import LocalStore

    identity = X25519Identity.generate()
    key = tmp_path / "data-key.txt"
    key.write_text(f"# test\n{identity}\n")
    sealed = []
    for name in ("signed", "other"):
        path = tmp_path / f"{name}.age"
        with path.open("wb") as f, EnvelopeWriter(f, [identity.recipient]) as envelope:
            envelope.write(name.encode() * 1000)
        sealed.append(path)
    digest = hashlib.sha256(sealed[0].read_bytes()).hexdigest()
    store = LocalStore(tmp_path / "store")
    store_key = store.put(digest, sealed[0], "untrusted comment: test\n")
    [stored] = (tmp_path / "store").rglob(f"{digest}.age")
    stored.chmod(0o640)
    stored.write_bytes(sealed[1].read_bytes())  # the swap: a valid clip, not the signed one
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    now = datetime.now(UTC)
    enrolled(catalog)
    clip_id = "cart-03-20250301T093000Z-0002"
    catalog.record_announcement(announce(clip_id, sha256=digest), received_at=now)
    assert catalog.claim_next(worker="rx", now=now, lease_s=60) is not None
    catalog.mark_stored(clip_id, store_key=store_key, stored_at=now, worker="rx")
    catalog.mark_receipted(clip_id, at=now)
    config = extract_config("ward7", tmp_path, tmp_path / "worker", key)
    worker = ExtractionWorker(
        config, worker_id="x1@test", identities=load_identities(key), catalog=catalog
    )
    try:
        outcome = worker.extract_one()
        assert outcome is not None and outcome.result == "failed"
        clip = catalog.clip(clip_id)
        assert clip.state is ClipState.FAILED and clip.extraction_error is not None
        assert clip.extraction_error.startswith("NotTheSignedClipError: the stored ciphertext")
        assert catalog.features(clip_id) == [] and catalog.qc(clip_id) == []
    finally:
        worker.close()
        catalog.close()
