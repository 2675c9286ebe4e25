"""The catalog's side of extraction on SQLite and PostgreSQL: the extraction queue and its
leases, retries and the failed state, features with provenance, quality checks and the verdict
outbox, and the audit rows of decrypts and outcomes."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from protocol.messages import QcVerdict
from server.audit import verify
from server.catalog import (
    Catalog,
    ClipNotFoundError,
    ClipState,
    ClipStateError,
    FrameFile,
    IllegalTransitionError,
    LeaseLostError,
    Provenance,
    QcPass,
    ResultConflictError,
    Verdict,
)
from server.catalog.engine import alembic_config
from tests.protocol.message_examples import clip_id_of

from .conftest import T0, Announce, enrolled

LEASE_S = 600.0
MAX = 3
OPENSMILE = Provenance(
    tool="opensmile",
    tool_version="2.6.0",
    config_hash="c" * 64,
    painav_version="0.3.0",
    sample_rate_hz=16000,
)
MEDIAPIPE = Provenance(
    tool="mediapipe",
    tool_version="0.10.14",
    config_hash="d" * 64,
    painav_version="0.3.0",
    model_file="face_landmarker.task",
    model_sha256="64184e22" + "0" * 56,
)


def receipted(catalog: Catalog, announce: Announce, clip_id: str, *, at: float = 0) -> None:
    """Bring a new clip to ``receipted``, stored and receipted *at* seconds after T0."""
    when = T0 + timedelta(seconds=at)
    enrolled(catalog)
    catalog.record_announcement(announce(clip_id), received_at=when)
    claimed = catalog.claim_next(worker="rx", now=when, lease_s=LEASE_S)
    assert claimed is not None and claimed.clip_id == clip_id
    catalog.mark_stored(clip_id, store_key=f"store/{clip_id}", stored_at=when, worker="rx")
    catalog.mark_receipted(clip_id, at=when)


def claim(
    catalog: Catalog,
    worker: str = "x1",
    *,
    at: float = 100,
    lease_s: float = LEASE_S,
    max_attempts: int = MAX,
) -> str | None:
    """The id of the clip *worker* claims *at* seconds after T0, or None."""
    clip = catalog.claim_for_extraction(
        worker=worker, now=T0 + timedelta(seconds=at), lease_s=lease_s, max_attempts=max_attempts
    )
    return None if clip is None else clip.clip_id


def actions(catalog: Catalog, clip_id: str) -> list[str]:
    return [entry.action for entry in catalog.audit.entries(clip_id=clip_id)]


def functionals(
    catalog: Catalog,
    clip_id: str,
    worker: str = "x1",
    *,
    version: str = "v02",
    provenance: Provenance = OPENSMILE,
    value: float = 31.5,
) -> bool:
    """Record eGeMAPS functionals for *clip_id*; whether a row was written."""
    _, new = catalog.record_features(
        clip_id,
        worker=worker,
        feature_set="egemaps_v02_functionals",
        version=version,
        provenance=provenance,
        values={"F0semitoneFrom27.5Hz_sma3nz_amean": value, "loudness_sma3_amean": 0.42},
        now=T0 + timedelta(seconds=101),
    )
    return new


# --- the lifecycle ----------------------------------------------------------------------------


def test_a_clip_goes_from_receipted_to_extracted(
    catalog: Catalog, db_url: str, announce: Announce
) -> None:
    receipted(catalog, announce, "cart-03-20250301T093000Z-0001")
    clip = catalog.claim_for_extraction(
        worker="x1", now=T0 + timedelta(seconds=100), lease_s=60, max_attempts=MAX
    )
    assert clip is not None and clip.clip_id == "cart-03-20250301T093000Z-0001"
    assert clip.state is ClipState.EXTRACTING and clip.lease_owner == "x1"
    assert clip.lease_expires_at == T0 + timedelta(seconds=160)
    assert clip.attempts == 0 and clip.extract_attempts == 0  # a clean fetch, a first try
    catalog.audit_decrypt("cart-03-20250301T093000Z-0001", worker="x1", purpose="extraction")
    renewed = catalog.renew_extraction_lease(
        "cart-03-20250301T093000Z-0001", worker="x1", now=T0 + timedelta(seconds=150), lease_s=60
    )
    assert renewed.lease_expires_at == T0 + timedelta(seconds=210)
    assert functionals(catalog, "cart-03-20250301T093000Z-0001")
    done = catalog.mark_extracted(
        "cart-03-20250301T093000Z-0001", worker="x1", now=T0 + timedelta(seconds=200)
    )
    assert done.state is ClipState.EXTRACTED and done.extracted_at == T0 + timedelta(seconds=200)
    assert done.lease_owner is None and done.lease_expires_at is None
    assert catalog.clip("cart-03-20250301T093000Z-0001") == done
    assert actions(catalog, "cart-03-20250301T093000Z-0001") == [
        *("ingest", "fetch", "stored", "receipt"),
        *("extract", "decrypt", "extracted"),
    ]
    entries = catalog.audit.entries(clip_id="cart-03-20250301T093000Z-0001")
    assert entries[-2].actor == "x1" and entries[-2].detail["purpose"] == "extraction"
    assert entries[-1].detail["features"] == ["egemaps_v02_functionals@v02"]
    assert claim(catalog, at=1000) is None
    assert verify(db_url).ok  # the chain as `python -m server.audit verify URL` checks it


def test_only_receipted_clips_that_are_due_are_claimed_first_tries_and_newest_first(
    catalog: Catalog, announce: Announce
) -> None:
    for n in range(1, 5):
        receipted(catalog, announce, clip_id_of(n=n), at=n)
    catalog.record_announcement(announce(clip_id_of(n=0xA00)), received_at=T0)
    # cart-03-20250301T093000Z-0004, the newest, fails once: its retry waits behind every first try.
    assert claim(catalog) == "cart-03-20250301T093000Z-0004"
    catalog.extraction_failed(
        "cart-03-20250301T093000Z-0004",
        worker="x1",
        reason="decoder: out of memory",
        now=T0 + timedelta(seconds=100),
        retry_at=T0 + timedelta(seconds=150),
        max_attempts=MAX,
    )
    assert claim(catalog, at=149) == "cart-03-20250301T093000Z-0003"
    assert claim(catalog, at=149) == "cart-03-20250301T093000Z-0002"
    assert claim(catalog, at=149) == "cart-03-20250301T093000Z-0001"
    assert (
        claim(catalog, at=149) is None
    )  # cart-03-20250301T093000Z-0004 is not due yet; the announced one never is
    assert claim(catalog, at=150) == "cart-03-20250301T093000Z-0004"
    assert catalog.clip(clip_id_of(n=0xA00)).state is ClipState.ANNOUNCED


def test_one_clip_is_claimed_by_name_even_before_its_retry_is_due(
    catalog: Catalog, announce: Announce
) -> None:
    receipted(catalog, announce, "cart-03-20250301T093000Z-0001")
    receipted(catalog, announce, "cart-03-20250301T093000Z-0002", at=1)
    assert claim(catalog) == "cart-03-20250301T093000Z-0002"
    now = T0 + timedelta(seconds=100)
    catalog.extraction_failed(
        "cart-03-20250301T093000Z-0002",
        worker="x1",
        reason="x",
        now=now,
        retry_at=now + timedelta(hours=1),
        max_attempts=MAX,
    )

    def by_name(clip_id: str) -> str | None:
        clip = catalog.claim_for_extraction(
            worker="manager", now=now, lease_s=LEASE_S, max_attempts=MAX, clip_id=clip_id
        )
        return None if clip is None else clip.clip_id

    assert (
        by_name("cart-03-20250301T093000Z-0002") == "cart-03-20250301T093000Z-0002"
    )  # `painav extract clip cart-03-20250301T093000Z-0002`: now, not in an hour
    assert by_name("cart-03-20250301T093000Z-0002") is None  # held
    assert by_name("nope") is None
    assert claim(catalog) == "cart-03-20250301T093000Z-0001"


def test_an_expired_extraction_lease_is_taken_over(catalog: Catalog, announce: Announce) -> None:
    receipted(catalog, announce, "cart-03-20250301T093000Z-0001")
    assert claim(catalog, "x1", at=100, lease_s=30) == "cart-03-20250301T093000Z-0001"
    assert claim(catalog, "x2", at=129, lease_s=30) is None
    assert claim(catalog, "x2", at=130, lease_s=30) == "cart-03-20250301T093000Z-0001"
    taken = catalog.clip("cart-03-20250301T093000Z-0001")
    assert taken.lease_owner == "x2" and taken.extract_attempts == 1
    assert taken.extraction_error == "lease of x1 expired"
    assert (
        catalog.audit.entries(clip_id="cart-03-20250301T093000Z-0001")[-1].detail["taken_from"]
        == "x1"
    )
    # The worker that hung comes back too late: everything it reports is refused.
    late = T0 + timedelta(seconds=140)
    with pytest.raises(LeaseLostError, match="x2"):
        catalog.mark_extracted("cart-03-20250301T093000Z-0001", worker="x1", now=late)
    with pytest.raises(LeaseLostError):
        functionals(catalog, "cart-03-20250301T093000Z-0001", "x1")
    with pytest.raises(LeaseLostError):
        catalog.renew_extraction_lease(
            "cart-03-20250301T093000Z-0001", worker="x1", now=late, lease_s=30
        )
    with pytest.raises(LeaseLostError):
        catalog.extraction_failed(
            "cart-03-20250301T093000Z-0001",
            worker="x1",
            reason="late",
            now=late,
            retry_at=late,
            max_attempts=MAX,
        )
    assert (
        catalog.mark_extracted("cart-03-20250301T093000Z-0001", worker="x2", now=late).state
        is ClipState.EXTRACTED
    )


def test_failures_are_retried_then_the_clip_fails_with_its_reason(
    catalog: Catalog, announce: Announce
) -> None:
    receipted(catalog, announce, "cart-03-20250301T093000Z-0001")
    at = 100.0
    for attempt in range(1, MAX + 1):
        assert claim(catalog, at=at) == "cart-03-20250301T093000Z-0001"
        now = T0 + timedelta(seconds=at)
        clip = catalog.extraction_failed(
            "cart-03-20250301T093000Z-0001",
            worker="x1",
            reason=f"pyav: Invalid data found\n  when processing input (try {attempt})",
            now=now,
            retry_at=now + timedelta(seconds=60),
            max_attempts=MAX,
        )
        assert clip.extract_attempts == attempt
        assert clip.extraction_error == (
            f"pyav: Invalid data found when processing input (try {attempt})"
        )
        at += 60
        if attempt < MAX:
            assert clip.state is ClipState.RECEIPTED
            assert clip.next_attempt_at == now + timedelta(seconds=60)
            assert claim(catalog, at=at - 1) is None
    assert clip.state is ClipState.FAILED and clip.lease_owner is None
    assert claim(catalog, at=at + 1000) is None  # failed is for good: no more tries
    assert actions(catalog, "cart-03-20250301T093000Z-0001")[4:] == [
        *("extract", "extract_failed", "extract", "extract_failed", "extract", "failed"),
    ]
    failed = catalog.audit.entries(clip_id="cart-03-20250301T093000Z-0001")[-1]
    assert failed.detail == {"error": clip.extraction_error, "attempts": MAX}
    assert [c.clip_id for c in catalog.clips(state=ClipState.FAILED)] == [
        "cart-03-20250301T093000Z-0001"
    ]
    # A data manager retries it once the cause is fixed: a fresh start, audited.
    again = catalog.requeue_extraction(
        "cart-03-20250301T093000Z-0001", reason="decoder_fixed", at=T0
    )
    assert (again.state, again.extract_attempts, again.extraction_error) == (
        ClipState.RECEIPTED,
        0,
        None,
    )
    assert actions(catalog, "cart-03-20250301T093000Z-0001")[-1] == "extract_requeued"
    assert claim(catalog, at=at) == "cart-03-20250301T093000Z-0001"


def test_a_permanent_failure_fails_at_once(catalog: Catalog, announce: Announce) -> None:
    receipted(catalog, announce, "cart-03-20250301T093000Z-0001")
    assert claim(catalog) == "cart-03-20250301T093000Z-0001"
    now = T0 + timedelta(seconds=100)
    clip = catalog.extraction_failed(
        "cart-03-20250301T093000Z-0001",
        worker="x1",
        reason="media: no audio stream",
        now=now,
        retry_at=now,
        max_attempts=MAX,
        permanent=True,
    )
    assert clip.state is ClipState.FAILED and clip.extract_attempts == 1
    with pytest.raises(ValueError, match="reason"):
        catalog.extraction_failed(
            "cart-03-20250301T093000Z-0001",
            worker="x1",
            reason=" \n",
            now=now,
            retry_at=now,
            max_attempts=MAX,
        )


def test_a_clip_that_keeps_killing_its_worker_ends_failed(
    catalog: Catalog, announce: Announce
) -> None:
    receipted(catalog, announce, "cart-03-20250301T093000Z-5743")
    receipted(catalog, announce, clip_id_of(n=0xF1), at=-1)  # older: claimed after the poison
    assert (
        claim(catalog, "x1", at=100, lease_s=10, max_attempts=2) == "cart-03-20250301T093000Z-5743"
    )
    assert claim(catalog, "x2", at=110, lease_s=10, max_attempts=2) == clip_id_of(n=0xF1)
    catalog.mark_extracted(clip_id_of(n=0xF1), worker="x2", now=T0 + timedelta(seconds=111))
    assert (
        claim(catalog, "x2", at=111, lease_s=10, max_attempts=2) == "cart-03-20250301T093000Z-5743"
    )  # 2nd try
    # Its second worker dies too: the next claim marks it failed and takes nothing.
    assert claim(catalog, "x3", at=125, lease_s=10, max_attempts=2) is None
    clip = catalog.clip("cart-03-20250301T093000Z-5743")
    assert clip.state is ClipState.FAILED and clip.extract_attempts == 2
    assert clip.extraction_error == "lease of x2 expired"
    assert actions(catalog, "cart-03-20250301T093000Z-5743")[-1] == "failed"


def test_a_restarted_worker_releases_its_own_leases(catalog: Catalog, announce: Announce) -> None:
    workers = ("ex@host/0", "ex@host/1", "ex@other/0", "ex_host/0")
    for n, worker in enumerate(workers):
        receipted(catalog, announce, clip_id_of(n=n), at=-n)  # newest first: the 0th first
        assert claim(catalog, worker) == clip_id_of(n=n)
    later = T0 + timedelta(seconds=105)
    assert sorted(catalog.release_extraction_leases("ex@host/", now=later)) == [
        "cart-03-20250301T093000Z-0000",
        "cart-03-20250301T093000Z-0001",
    ]
    released = catalog.clip("cart-03-20250301T093000Z-0000")
    assert (released.state, released.lease_owner, released.extract_attempts) == (
        ClipState.RECEIPTED,
        None,
        1,
    )
    assert released.extraction_error == "ex@host/0 stopped while extracting"
    assert released.next_attempt_at == later  # due now, not when the lease would have ended
    assert actions(catalog, "cart-03-20250301T093000Z-0000")[-1] == "extract_failed"
    assert (
        catalog.clip("cart-03-20250301T093000Z-0002").state
        is catalog.clip("cart-03-20250301T093000Z-0003").state
        is ClipState.EXTRACTING
    )
    assert claim(catalog, "ex@host/0", at=105) in (
        "cart-03-20250301T093000Z-0000",
        "cart-03-20250301T093000Z-0001",
    )
    assert catalog.release_extraction_leases("nobody/", now=later) == []


def test_extraction_moves_refuse_clips_in_other_states(
    catalog: Catalog, announce: Announce
) -> None:
    catalog.record_announcement(announce("cart-03-20250301T093000Z-0001"), received_at=T0)
    now = T0 + timedelta(seconds=1)
    with pytest.raises(LeaseLostError):
        catalog.mark_extracted("cart-03-20250301T093000Z-0001", worker="x1", now=now)
    with pytest.raises(ClipStateError, match="announced"):
        catalog.requeue_extraction("cart-03-20250301T093000Z-0001", reason="again")
    with pytest.raises(ClipStateError, match="not stored"):
        catalog.audit_decrypt("cart-03-20250301T093000Z-0001", worker="x1", purpose="extraction")
    with pytest.raises(ClipNotFoundError):
        catalog.audit_decrypt("nope", worker="x1", purpose="extraction")
    with pytest.raises(ValueError, match="purpose"):
        catalog.audit_decrypt("cart-03-20250301T093000Z-0001", worker="x1", purpose="Look at it")
    with pytest.raises(IllegalTransitionError):
        catalog.quarantine("cart-03-20250301T093000Z-0001", "bad_signature")
        catalog.mark_receipted("cart-03-20250301T093000Z-0001", at=now)
    assert actions(catalog, "cart-03-20250301T093000Z-0001") == ["ingest", "quarantine"]


# --- features ---------------------------------------------------------------------------------


def test_record_features_writes_once(catalog: Catalog, announce: Announce) -> None:
    receipted(catalog, announce, "cart-03-20250301T093000Z-0001")
    assert claim(catalog, "x1", lease_s=10) == "cart-03-20250301T093000Z-0001"
    frames = FrameFile(
        "cart-03-20250301T093000Z-0001/mediapipe_blendshapes.parquet", "e" * 64, frame_count=600
    )
    first, new = catalog.record_features(
        "cart-03-20250301T093000Z-0001",
        worker="x1",
        feature_set="mediapipe_blendshapes",
        version="1",
        provenance=MEDIAPIPE,
        values={"pspi_proxy_mp_mean": 0.8, "face_share": 0.92},
        frames=frames,
        now=T0 + timedelta(seconds=101),
    )
    assert new and first.frames == frames and first.provenance == MEDIAPIPE
    assert first.values == {"pspi_proxy_mp_mean": 0.8, "face_share": 0.92}
    assert functionals(catalog, "cart-03-20250301T093000Z-0001", "x1")
    # x1 is SIGKILLed before mark_extracted; x2 takes the clip over and runs it again.
    assert claim(catalog, "x2", at=111) == "cart-03-20250301T093000Z-0001"
    again, new = catalog.record_features(
        "cart-03-20250301T093000Z-0001",
        worker="x2",
        feature_set="mediapipe_blendshapes",
        version="1",
        provenance=MEDIAPIPE,
        values={"pspi_proxy_mp_mean": 0.81},
        frames=FrameFile("cart-03-20250301T093000Z-0001/other.parquet", "f" * 64),
        now=T0 + timedelta(seconds=112),
    )
    assert not new and again == first  # the first write stands, with its frame file
    assert not functionals(catalog, "cart-03-20250301T093000Z-0001", "x2", value=99.0)
    kept = catalog.features("cart-03-20250301T093000Z-0001")
    assert [(f.feature_set, f.worker) for f in kept] == [
        ("egemaps_v02_functionals", "x1"),
        ("mediapipe_blendshapes", "x1"),
    ]
    assert (
        kept[0].values is not None and kept[0].values["F0semitoneFrom27.5Hz_sma3nz_amean"] == 31.5
    )
    # The same key from another tool version: the configuration hash is not doing its job.
    newer_tool = Provenance(**{**OPENSMILE.__dict__, "tool_version": "2.7.0"})
    with pytest.raises(ResultConflictError, match="configuration hash"):
        functionals(catalog, "cart-03-20250301T093000Z-0001", "x2", provenance=newer_tool)


def test_a_newer_feature_set_version_adds_results_and_keeps_the_old(
    catalog: Catalog, announce: Announce
) -> None:
    receipted(catalog, announce, "cart-03-20250301T093000Z-0001")
    assert claim(catalog) == "cart-03-20250301T093000Z-0001"
    assert functionals(catalog, "cart-03-20250301T093000Z-0001")
    catalog.mark_extracted(
        "cart-03-20250301T093000Z-0001", worker="x1", now=T0 + timedelta(seconds=102)
    )
    catalog.requeue_extraction(
        "cart-03-20250301T093000Z-0001", reason="new_feature_set", at=T0 + timedelta(seconds=200)
    )
    assert claim(catalog, at=200) == "cart-03-20250301T093000Z-0001"
    assert functionals(catalog, "cart-03-20250301T093000Z-0001", version="v03", value=30.0)
    # Another configuration (say another analysis rate) is another result too.
    at_48k = Provenance(**{**OPENSMILE.__dict__, "config_hash": "a" * 64, "sample_rate_hz": 48000})
    assert functionals(catalog, "cart-03-20250301T093000Z-0001", provenance=at_48k)
    catalog.mark_extracted(
        "cart-03-20250301T093000Z-0001", worker="x1", now=T0 + timedelta(seconds=202)
    )
    rows = catalog.features("cart-03-20250301T093000Z-0001", feature_set="egemaps_v02_functionals")
    assert [(f.feature_set_version, f.provenance.sample_rate_hz) for f in rows] == [
        ("v02", 16000),
        ("v03", 16000),
        ("v02", 48000),
    ]
    assert catalog.audit.entries(clip_id="cart-03-20250301T093000Z-0001")[-1].detail[
        "features"
    ] == [
        "egemaps_v02_functionals@v02",
        "egemaps_v02_functionals@v02",
        "egemaps_v02_functionals@v03",
    ]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"values": None, "frames": None}, "values, a frame file"),
        ({"feature_set": "eGeMAPS functionals"}, "feature_set"),
        ({"frames": FrameFile("/var/lib/f.parquet", "e" * 64)}, "relative"),
        ({"frames": FrameFile("../f.parquet", "e" * 64)}, "relative"),
        ({"frames": FrameFile("f.parquet", "E" * 64)}, "SHA-256"),
        ({"values": {"f0": float("nan")}}, "JSON"),
        ({"provenance": Provenance("t", "1", "c", "0", model_file="m.task")}, "model"),
        ({"provenance": Provenance("t", "1", "c", "0", sample_rate_hz=0)}, "sample_rate"),
        ({"version": "v" * 33}, "version"),
    ],
)
def test_features_that_cannot_be_kept_are_refused(
    catalog: Catalog, announce: Announce, change: dict[str, object], match: str
) -> None:
    if not catalog.clips():
        receipted(catalog, announce, "cart-03-20250301T093000Z-0001")
        assert claim(catalog) == "cart-03-20250301T093000Z-0001"
    arguments: dict[str, object] = {
        "worker": "x1",
        "feature_set": "egemaps_v02_lld",
        "version": "v02",
        "provenance": OPENSMILE,
        "values": {"f0": 1.0},
        "frames": None,
        "now": T0,
        **change,
    }
    with pytest.raises(ValueError, match=match):
        catalog.record_features("cart-03-20250301T093000Z-0001", **arguments)  # type: ignore[arg-type]
    assert catalog.features("cart-03-20250301T093000Z-0001") == []


# --- quality checks and the verdict outbox ----------------------------------------------------


def test_quality_checks_and_the_verdict_outbox(catalog: Catalog, announce: Announce) -> None:
    receipted(catalog, announce, "cart-03-20250301T093000Z-0001")
    receipted(catalog, announce, "cart-03-20250301T093000Z-0002", at=1)
    catalog.record_announcement(
        announce("cart-03-20250301T093000Z-0000"), received_at=T0
    )  # not fetched yet

    def quick(clip_id: str, verdict: str, reasons: list[str], worker: str = "x1") -> bool:
        _, new = catalog.record_qc(
            clip_id,
            worker=worker,
            qc_pass="quick",
            verdict=verdict,
            reasons=reasons,
            metrics={"rms_dbfs": -23.5, "face_share": 0.4},
            config_hash="q" * 64,
            painav_version="0.3.0",
            now=T0 + timedelta(seconds=5),
        )
        return new

    # Quick checks come before extraction, without a lease.
    assert quick("cart-03-20250301T093000Z-0001", "repeat", ["no_face", "audio_clipping"])
    assert quick("cart-03-20250301T093000Z-0002", "usable", [])
    assert not quick(
        "cart-03-20250301T093000Z-0001", "usable", [], worker="x2"
    )  # a re-run writes nothing
    with pytest.raises(ClipStateError, match="announced"):
        quick("cart-03-20250301T093000Z-0000", "usable", [])
    with pytest.raises(ValueError, match="at least one reason"):
        quick("cart-03-20250301T093000Z-0002", "check", [])
    with pytest.raises(ValueError, match="repeated"):
        quick("cart-03-20250301T093000Z-0002", "check", ["no_face", "no_face"])
    with pytest.raises(ValueError, match="reason"):
        quick("cart-03-20250301T093000Z-0002", "check", ["No face!"])
    with pytest.raises(ValueError):
        quick("cart-03-20250301T093000Z-0002", "fine", [])

    pending = catalog.pending_verdicts()
    assert [(v.site_id, v.device_id, v.clip_id, v.qc_pass, v.verdict) for v in pending] == [
        ("ward7", "cart-03", "cart-03-20250301T093000Z-0001", QcPass.QUICK, Verdict.REPEAT),
        ("ward7", "cart-03", "cart-03-20250301T093000Z-0002", QcPass.QUICK, Verdict.USABLE),
    ]
    assert pending[0].reasons == ("no_face", "audio_clipping")
    message = pending[0].message(issued_at=T0 + timedelta(seconds=6))
    assert isinstance(message, QcVerdict)
    assert message.pass_ == "quick" and message.reasons == ("no_face", "audio_clipping")
    sent_at = T0 + timedelta(seconds=7)
    assert catalog.mark_verdict_sent("cart-03-20250301T093000Z-0001", QcPass.QUICK, at=sent_at)
    assert not catalog.mark_verdict_sent(
        "cart-03-20250301T093000Z-0001", "quick", at=sent_at + timedelta(seconds=1)
    )
    with pytest.raises(ClipNotFoundError):
        catalog.mark_verdict_sent("cart-03-20250301T093000Z-0001", "full", at=sent_at)
    assert [v.clip_id for v in catalog.pending_verdicts(limit=10)] == [
        "cart-03-20250301T093000Z-0002"
    ]
    assert catalog.qc("cart-03-20250301T093000Z-0001")[0].verdict_sent_at == sent_at

    # The full check is the extracting worker's, and replaces the quick one as the last word.
    def full(worker: str) -> bool:
        _, new = catalog.record_qc(
            "cart-03-20250301T093000Z-0001",
            worker=worker,
            qc_pass=QcPass.FULL,
            verdict=Verdict.CHECK,
            reasons=["low_face_share"],
            metrics={"face_share": 0.4, "snr_db": 18.0},
            config_hash="q" * 64,
            painav_version="0.3.0",
            now=T0 + timedelta(seconds=120),
        )
        return new

    with pytest.raises(LeaseLostError):
        full("x1")
    assert claim(catalog, "x1") == "cart-03-20250301T093000Z-0002"  # the newest first
    assert claim(catalog, "x1") == "cart-03-20250301T093000Z-0001"
    assert full("x1") and not full("x1")
    assert [(q.qc_pass, q.verdict) for q in catalog.qc("cart-03-20250301T093000Z-0001")] == [
        (QcPass.QUICK, Verdict.REPEAT),
        (QcPass.FULL, Verdict.CHECK),
    ]
    last = catalog.last_verdicts(
        [
            "cart-03-20250301T093000Z-0000",
            "cart-03-20250301T093000Z-0001",
            "cart-03-20250301T093000Z-0002",
            "cart-03-20250301T093000Z-0001",
        ]
    )
    assert {k: (v.qc_pass, v.verdict) for k, v in last.items()} == {
        "cart-03-20250301T093000Z-0001": (QcPass.FULL, Verdict.CHECK),
        "cart-03-20250301T093000Z-0002": (QcPass.QUICK, Verdict.USABLE),
    }
    assert [(v.clip_id, v.qc_pass) for v in catalog.pending_verdicts()] == [
        ("cart-03-20250301T093000Z-0002", QcPass.QUICK),
        ("cart-03-20250301T093000Z-0001", QcPass.FULL),
    ]
    assert catalog.audit.verify().ok


# --- several workers ----------------------------------------------------------------------------


def test_concurrent_workers_extract_every_clip_exactly_once(
    db_url: str, announce: Announce
) -> None:
    total = 60
    # Two catalogs are two engines (two hosts); two threads each share an engine.
    catalogs = [Catalog(db_url, actor=f"receiver-{n}") for n in (1, 2)]
    try:
        for n in range(total):
            receipted(catalogs[0], announce, clip_id_of(n=n), at=n / 10)
        now = T0 + timedelta(seconds=100)
        done: dict[str, list[str]] = {}
        errors: list[BaseException] = []

        def work(catalog: Catalog, worker: str) -> None:
            mine = done.setdefault(worker, [])
            try:
                while True:
                    clip = catalog.claim_for_extraction(
                        worker=worker, now=now, lease_s=LEASE_S, max_attempts=MAX
                    )
                    if clip is None:
                        # SKIP LOCKED may come back empty while others hold rows: look again.
                        if not catalog.clips(state=ClipState.RECEIPTED, limit=1):
                            return
                        continue
                    catalog.audit_decrypt(clip.clip_id, worker=worker, purpose="extraction")
                    functionals(catalog, clip.clip_id, worker)
                    catalog.mark_extracted(clip.clip_id, worker=worker, now=now)
                    mine.append(clip.clip_id)
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [
            threading.Thread(target=work, args=(catalog, f"x{n}-{t}"))
            for n, catalog in enumerate(catalogs)
            for t in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        every = [clip_id for clips in done.values() for clip_id in clips]
        assert len(every) == len(set(every)) == total
        clips = catalogs[1].clips(limit=total + 1)
        assert {c.state for c in clips} == {ClipState.EXTRACTED}
        assert all(len(catalogs[1].features(c.clip_id)) == 1 for c in clips)
        for clip_id in every:
            assert actions(catalogs[1], clip_id)[4:] == ["extract", "decrypt", "extracted"]
        report = catalogs[1].audit.verify()
        assert report.ok and report.rows == 7 * total + 1  # and the participant's enrolment
    finally:
        for catalog in catalogs:
            catalog.close()


# --- the migration ------------------------------------------------------------------------------


def test_migration_0002_goes_down_and_up_again(db_url: str, announce: Announce) -> None:
    with Catalog(db_url) as catalog:
        receipted(catalog, announce, "cart-03-20250301T093000Z-0001")
        assert claim(catalog) == "cart-03-20250301T093000Z-0001"
        catalog.extraction_failed(
            "cart-03-20250301T093000Z-0001",
            worker="x1",
            reason="broken",
            now=T0,
            retry_at=T0,
            max_attempts=1,
        )
    command.downgrade(alembic_config(db_url), "0001")
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            state = conn.execute(text("SELECT state FROM clips")).scalar_one()
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()
    assert (state, version) == ("receipted", "0001")
    with Catalog(db_url) as catalog:  # opening migrates to head again
        clip = catalog.clip("cart-03-20250301T093000Z-0001")
        assert clip.state is ClipState.RECEIPTED and clip.extract_attempts == 0
        assert catalog.audit.verify().ok
