"""The outbox: lifecycle, receipts, room to record, crash recovery with real process deaths."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.outbox import (
    ClipExistsError,
    ClipState,
    ClipStateError,
    InvalidClipIdError,
    InvalidSealError,
    NoRoom,
    NoRoomError,
    Outbox,
    OutboxError,
    ReceiptMismatchError,
    UnknownClipError,
)
from protocol.signing import Signature, SigningKey, sign_clip, verify_clip
from tests.protocol.message_examples import DEVICE, manifest

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
KEY = SigningKey.generate()
BIG = 1 << 50


def open_outbox(dir: Path, *, quota_bytes: int = BIG, min_free_bytes: int = 0) -> Outbox:
    return Outbox(dir, quota_bytes=quota_bytes, min_free_bytes=min_free_bytes)


def record(outbox: Outbox, clip_id: str, data: bytes) -> dict[str, object]:
    """Begin *clip_id*, write *data* as its partial file; return the arguments that seal it."""
    part = outbox.begin(clip_id, participant="PAIN-0042", visit="baseline", started_at=T0)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    signature, binding = sign_clip(
        KEY, part, clip_id, DEVICE, participant="PAIN-0042", visit="baseline"
    )
    text = manifest(clip_id=clip_id, sha256=binding.sha256, size_bytes=len(data))
    return {
        "manifest_json": text.model_dump_json(),
        "signature": signature.to_text(),
        "sha256": binding.sha256,
        "size_bytes": len(data),
    }


def sealed_clip(outbox: Outbox, clip_id: str, size: int = 200_000) -> bytes:
    """Record and seal a clip of *size* random bytes; return its bytes."""
    data = os.urandom(size)
    outbox.seal(clip_id, **record(outbox, clip_id, data))  # type: ignore[arg-type]
    return data


def files(outbox: Outbox) -> list[str]:
    return sorted(p.name for p in (outbox.dir / "clips").iterdir())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_full_lifecycle(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "ob") as outbox:
        data = os.urandom(300_000)
        args = record(outbox, "cart-03-20250301T093000Z-0001", data)
        entry = outbox.get("cart-03-20250301T093000Z-0001")
        assert (entry.state, entry.participant, entry.visit) == (
            ClipState.RECORDING,
            "PAIN-0042",
            "baseline",
        )
        assert entry.started_at == T0 and entry.sealed_at is None
        assert outbox.pending() == [] and outbox.queue_bytes() == len(data)  # partial counts

        sealed = outbox.seal("cart-03-20250301T093000Z-0001", **args)  # type: ignore[arg-type]
        assert sealed.state is ClipState.SEALED and sealed.size_bytes == len(data)
        assert sealed.sha256 == hashlib.sha256(data).hexdigest() and sealed.sealed_at is not None
        assert files(outbox) == [
            "cart-03-20250301T093000Z-0001.age",
            "cart-03-20250301T093000Z-0001.age.minisig",
        ]
        assert outbox.clip_path("cart-03-20250301T093000Z-0001").read_bytes() == data
        assert (
            mode(outbox.clip_path("cart-03-20250301T093000Z-0001"))
            == mode(outbox.signature_path("cart-03-20250301T093000Z-0001"))
            == 0o600
        )
        sig = outbox.signature_path("cart-03-20250301T093000Z-0001").read_text()
        assert sig == args["signature"]
        path = outbox.clip_path("cart-03-20250301T093000Z-0001")
        verify_clip(
            KEY.public_key,
            Signature.from_text(sig),
            path,
            clip_id="cart-03-20250301T093000Z-0001",
            device_id=DEVICE,
        )
        assert outbox.pending() == [sealed] and outbox.queue_bytes() == len(data)

        outbox.mark_announced("cart-03-20250301T093000Z-0001")
        outbox.mark_announced(
            "cart-03-20250301T093000Z-0001"
        )  # re-announced after a restart: counted, same state
        assert outbox.get("cart-03-20250301T093000Z-0001").state is ClipState.ANNOUNCED
        assert outbox.get("cart-03-20250301T093000Z-0001").announce_count == 2

        done = outbox.delete_receipted("cart-03-20250301T093000Z-0001", sealed.sha256)
        assert done.state is ClipState.DELETED and files(outbox) == []
        assert (
            outbox.delete_receipted("cart-03-20250301T093000Z-0001", sealed.sha256) == done
        )  # MQTT may deliver it twice
        outbox.mark_announced(
            "cart-03-20250301T093000Z-0001"
        )  # a late announce ack changes nothing
        assert outbox.get("cart-03-20250301T093000Z-0001") == done
        assert (
            outbox.pending() == []
            and outbox.queue_bytes() == 0
            and outbox.unreported_aborts() == []
        )

    with open_outbox(tmp_path / "ob") as again:  # everything was committed
        assert again.get("cart-03-20250301T093000Z-0001") == done


def test_abort_is_kept_and_reported_once(tmp_path: Path) -> None:
    with open_outbox(tmp_path) as outbox:
        record(outbox, "cart-03-20250301T093000Z-000a", b"partial")
        aborted = outbox.abort(
            "cart-03-20250301T093000Z-000a", "seal_failed: 2 validation errors\n  duration_s\n"
        )
        assert aborted.state is ClipState.ABORTED  # the reason is kept as one line for the event
        assert aborted.abort_reason == "seal_failed: 2 validation errors duration_s"
        assert files(outbox) == [] and outbox.pending() == []
        assert (
            outbox.abort("cart-03-20250301T093000Z-000a", "other") == aborted
        )  # idempotent, first reason kept
        assert outbox.unreported_aborts() == [aborted]
        outbox.mark_event_reported("cart-03-20250301T093000Z-000a")
        outbox.mark_event_reported("cart-03-20250301T093000Z-000a")
        assert (
            outbox.unreported_aborts() == []
            and outbox.get("cart-03-20250301T093000Z-000a").event_reported
        )
        with pytest.raises(ClipStateError):
            outbox.seal(
                "cart-03-20250301T093000Z-000a",
                manifest_json="{}",
                signature="",
                sha256="",
                size_bytes=1,
            )
        with pytest.raises(ClipStateError):
            outbox.mark_announced("cart-03-20250301T093000Z-000a")


def test_wrong_receipts_change_nothing(tmp_path: Path) -> None:
    with open_outbox(tmp_path) as outbox:
        data = sealed_clip(outbox, "cart-03-20250301T093000Z-0001")
        before = outbox.get("cart-03-20250301T093000Z-0001")
        with pytest.raises(ReceiptMismatchError):
            outbox.delete_receipted(
                "cart-03-20250301T093000Z-0001", hashlib.sha256(data + b"x").hexdigest()
            )
        with pytest.raises(ReceiptMismatchError):
            outbox.delete_receipted("cart-03-20250301T093000Z-0001", before.sha256.upper())  # type: ignore[union-attr]
        assert (
            outbox.get("cart-03-20250301T093000Z-0001") == before
            and outbox.clip_path("cart-03-20250301T093000Z-0001").read_bytes() == data
        )
        with pytest.raises(UnknownClipError):
            outbox.delete_receipted("cart-03-20250301T093000Z-0002", before.sha256)  # type: ignore[arg-type]
        record(outbox, "cart-03-20250301T093000Z-0003", b"abc")
        with pytest.raises(ClipStateError):
            outbox.delete_receipted(
                "cart-03-20250301T093000Z-0003", hashlib.sha256(b"abc").hexdigest()
            )
        with pytest.raises(ClipStateError):
            outbox.mark_event_reported("cart-03-20250301T093000Z-0001")  # not aborted


def test_seal_refuses_arguments_that_disagree(tmp_path: Path) -> None:
    with open_outbox(tmp_path) as outbox:
        args = record(outbox, "cart-03-20250301T093000Z-0001", b"x" * 1000)
        other = record(outbox, "cart-03-20250301T093000Z-0002", b"y" * 1000)
        bad_cases = [
            {**args, "sha256": "00" * 32},
            {**args, "size_bytes": 999},
            {**args, "signature": other["signature"]},  # signed for cart-03-20250301T093000Z-0002
            {**args, "manifest_json": other["manifest_json"]},
            {**args, "manifest_json": "{}"},
            {**args, "signature": "not a signature"},
        ]
        for bad in bad_cases:
            with pytest.raises(InvalidSealError):
                outbox.seal("cart-03-20250301T093000Z-0001", **bad)  # type: ignore[arg-type]
        assert outbox.get("cart-03-20250301T093000Z-0001").state is ClipState.RECORDING
        os.unlink(outbox.dir / "clips" / "cart-03-20250301T093000Z-0001.age.part")
        with pytest.raises(InvalidSealError, match="no partial file"):
            outbox.seal("cart-03-20250301T093000Z-0001", **args)  # type: ignore[arg-type]
        with pytest.raises(ClipExistsError):
            outbox.begin(
                "cart-03-20250301T093000Z-0002", participant=None, visit=None, started_at=T0
            )
        with pytest.raises(OutboxError, match="pseudonym"):
            outbox.begin(
                "cart-03-20250301T093000Z-0009", participant="Jan Jansen", visit=None, started_at=T0
            )
        with pytest.raises(OutboxError, match="timezone"):
            outbox.begin(
                "cart-03-20250301T093000Z-0009",
                participant=None,
                visit=None,
                started_at=datetime(2025, 1, 1),
            )


def test_a_full_disk_fails_the_seal_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(path: object, data: bytes, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with open_outbox(tmp_path) as outbox:
        args = record(outbox, "cart-03-20250301T093000Z-0001", b"q" * 4096)
        monkeypatch.setattr("daemon.outbox.write_atomic", no_space)
        with pytest.raises(OutboxError, match="not sealed, still recording"):
            outbox.seal("cart-03-20250301T093000Z-0001", **args)  # type: ignore[arg-type]
        assert (
            outbox.get("cart-03-20250301T093000Z-0001").state is ClipState.RECORDING
        )  # for the caller to abort
        assert (
            outbox.abort("cart-03-20250301T093000Z-0001", "seal_failed").state is ClipState.ABORTED
        )
        assert files(outbox) == []


def test_room_to_record(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "a", quota_bytes=100_000) as outbox:
        free = outbox.free_bytes()
        assert 0 < free == os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
        assert outbox.room_to_record(60_000) is None
        assert outbox.room_to_record(100_001) is NoRoom.QUOTA
        sealed_clip(outbox, "cart-03-20250301T093000Z-0001", 80_000)
        assert outbox.room_to_record(20_000) is None
        assert outbox.room_to_record(20_001) is NoRoom.QUOTA
        with pytest.raises(NoRoomError) as caught:
            outbox.begin(
                "cart-03-20250301T093000Z-0002",
                participant=None,
                visit=None,
                started_at=T0,
                expected_bytes=30_000,
            )
        assert caught.value.reason is NoRoom.QUOTA
        with pytest.raises(UnknownClipError):
            outbox.get("cart-03-20250301T093000Z-0002")  # nothing was begun
        sealed_sha256 = outbox.get("cart-03-20250301T093000Z-0001").sha256
        assert sealed_sha256 is not None
        outbox.delete_receipted("cart-03-20250301T093000Z-0001", sealed_sha256)
        assert outbox.room_to_record(60_000) is None

    with open_outbox(tmp_path / "b", min_free_bytes=free - 1_000_000) as outbox:
        assert outbox.room_to_record(0) is None
        assert outbox.room_to_record(2_000_000) is NoRoom.LOW_STORAGE  # checked before quota
        with pytest.raises(NoRoomError) as caught:
            outbox.begin(
                "cart-03-20250301T093000Z-0003",
                participant=None,
                visit=None,
                started_at=T0,
                expected_bytes=BIG,
            )
        assert caught.value.reason is NoRoom.LOW_STORAGE


@pytest.mark.parametrize(
    "clip_id",
    ["", ".", "..", "../x", "a/b", "/etc", "-rf", ".hidden", "a" * 65, "abc\n", "a b", "é", "a\0b"],
)
def test_bad_clip_ids_are_refused_before_the_file_system(tmp_path: Path, clip_id: str) -> None:
    with open_outbox(tmp_path / "ob") as outbox:
        before = sorted(p.name for p in tmp_path.rglob("*"))
        calls: list[Callable[[], object]] = [
            lambda: outbox.begin(clip_id, participant=None, visit=None, started_at=T0),
            lambda: outbox.get(clip_id),
            lambda: outbox.clip_path(clip_id),
            lambda: outbox.signature_path(clip_id),
            lambda: outbox.delete_receipted(clip_id, "00" * 32),
            lambda: outbox.abort(clip_id, "discarded"),
            lambda: outbox.open_pending(clip_id),
        ]
        for call in calls:
            with pytest.raises(InvalidClipIdError):
                call()
        assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_wal_fsync_schema_and_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_outbox(tmp_path / "ob") as outbox:
        db = outbox.dir / "outbox.sqlite"
        assert outbox._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert outbox._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        args = record(outbox, "cart-03-20250301T093000Z-0001", b"z" * 5000)
        synced: list[str] = []
        real_fsync = os.fsync

        def spy(fd: int) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", spy)
        outbox.seal("cart-03-20250301T093000Z-0001", **args)  # type: ignore[arg-type]
        monkeypatch.undo()
        clips = str(outbox.dir / "clips")
        assert (
            synced[0] == f"{clips}/cart-03-20250301T093000Z-0001.age.part"
        )  # the data before the row says SEALED
        assert any(p.endswith(".tmp") for p in synced)  # the signature file (write_atomic)
        assert synced[-1] == clips  # the rename
        for path in (db, db.with_name("outbox.sqlite-wal"), outbox.dir / "outbox.lock"):
            assert mode(path) == 0o600, path
        assert mode(outbox.dir) == mode(outbox.dir / "clips") == 0o700
    raw = sqlite3.connect(db)  # WAL is a property of the file, seen by any connection
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(OutboxError, match="schema v99"):
        open_outbox(tmp_path / "ob")


def test_one_process_at_a_time(tmp_path: Path) -> None:
    with open_outbox(tmp_path), pytest.raises(OutboxError, match="in use"):
        open_outbox(tmp_path)
    open_outbox(tmp_path).close()  # released on close
    closed = open_outbox(tmp_path)
    closed.close()
    closed.close()
    with pytest.raises(OutboxError, match="closed"):
        closed.pending()


def test_threads_share_one_outbox(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    done = threading.Event()
    with open_outbox(tmp_path) as outbox:

        def writer(n: int) -> None:
            try:
                for i in range(6):
                    clip_id = f"{DEVICE}-20250301T093000Z-{n:02x}{i:02x}"
                    data = sealed_clip(outbox, clip_id, 20_000 + n)
                    outbox.mark_announced(clip_id)
                    if i % 3 == 2:
                        record(outbox, f"{DEVICE}-20250301T093000Z-{n:02x}{i:02x}ff", b"p")
                        outbox.abort(f"{DEVICE}-20250301T093000Z-{n:02x}{i:02x}ff", "discarded")
                    outbox.delete_receipted(clip_id, hashlib.sha256(data).hexdigest())
            except BaseException as exc:
                errors.append(exc)

        def reader() -> None:
            try:
                while not done.is_set():
                    for entry in outbox.pending():
                        assert entry.state in (ClipState.SEALED, ClipState.ANNOUNCED)
                    outbox.queue_bytes()
                    outbox.unreported_aborts()
            except BaseException as exc:
                errors.append(exc)

        writers = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
        readers = [threading.Thread(target=reader) for _ in range(2)]
        for t in writers + readers:
            t.start()
        for t in writers:
            t.join()
        done.set()
        for t in readers:
            t.join()
        assert errors == []
        assert outbox.pending() == [] and files(outbox) == []
        assert len(outbox.unreported_aborts()) == 12
        for n in range(6):
            assert outbox.get(f"{DEVICE}-20250301T093000Z-{n:02x}05").state is ClipState.DELETED


# --- crashes ---------------------------------------------------------------------------------

_SEAL_IN_CHILD = """
import json, os, sys
from pathlib import Path
from daemon.outbox import Outbox

folder, step, args = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
outbox = Outbox(folder, quota_bytes=1 << 50, min_free_bytes=0)
outbox._fault = lambda at: os._exit(70) if at == step else None
outbox.seal(**args)
os._exit(0)
"""

_RECORD_IN_CHILD = """
import os, sys, time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from daemon.outbox import Outbox

outbox = Outbox(Path(sys.argv[1]), quota_bytes=1 << 50, min_free_bytes=0)
part = outbox.begin(
    "cart-03-20250301T093000Z-8254",
    participant="PAIN-0042",
    visit=None,
    started_at=datetime.now(UTC),
)
fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
for i in range(2000):
    os.write(fd, os.urandom(64 * 1024))
    if i == 0:
        print("recording", flush=True)
    time.sleep(0.005)
"""


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


SEAL_STEPS = ["fsync_part", "write_signature", "commit", "rename", "fsync_dir", "done"]


@pytest.mark.parametrize("step", SEAL_STEPS)
def test_a_crash_at_each_step_of_seal_recovers(tmp_path: Path, step: str) -> None:
    with open_outbox(tmp_path) as outbox:
        data = os.urandom(150_000)
        args = record(outbox, "cart-03-20250301T093000Z-000c", data)
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            _SEAL_IN_CHILD,
            str(tmp_path),
            step,
            json.dumps({"clip_id": "cart-03-20250301T093000Z-000c", **args}),
        ],
        env=child_env(),
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == 70, child.stderr.decode()  # it died at that step
    with open_outbox(tmp_path) as outbox:
        recovery = outbox.recover()
        entry = outbox.get("cart-03-20250301T093000Z-000c")
        if SEAL_STEPS.index(step) <= SEAL_STEPS.index("commit"):
            # Died before the commit point: a reported failure, never a clip.
            assert (entry.state, entry.abort_reason) == (ClipState.ABORTED, "interrupted")
            assert recovery.aborted == [entry] and recovery.to_announce == []
            assert files(outbox) == []
        else:
            # Died after it: rolled forward, byte for byte.
            assert entry.state is ClipState.SEALED and recovery.to_announce == [entry]
            assert recovery.aborted == []
            assert files(outbox) == [
                "cart-03-20250301T093000Z-000c.age",
                "cart-03-20250301T093000Z-000c.age.minisig",
            ]
            assert outbox.clip_path("cart-03-20250301T093000Z-000c").read_bytes() == data
            assert (
                outbox.signature_path("cart-03-20250301T093000Z-000c").read_text()
                == args["signature"]
            )
            assert bool(recovery.repaired) == (step == "rename")
        assert outbox.recover().repaired == []  # a second recovery finds nothing to do


def test_sigkill_while_recording_leaves_a_reported_abort(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _RECORD_IN_CHILD, str(tmp_path)],
        env=child_env(),
        stdout=subprocess.PIPE,
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"recording\n"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    assert (tmp_path / "clips" / "cart-03-20250301T093000Z-8254.age.part").stat().st_size > 0
    with open_outbox(tmp_path) as outbox:
        recovery = outbox.recover()
        entry = outbox.get("cart-03-20250301T093000Z-8254")
        assert (entry.state, entry.abort_reason) == (ClipState.ABORTED, "interrupted")
        assert recovery.aborted == [entry] and outbox.unreported_aborts() == [entry]
        assert recovery.to_announce == [] and outbox.pending() == [] and files(outbox) == []


def test_recovery_from_states_a_power_cut_can_leave(tmp_path: Path) -> None:
    with open_outbox(tmp_path) as outbox:
        undone = sealed_clip(outbox, "cart-03-20250301T093000Z-9e84")
        sealed_clip(outbox, "cart-03-20250301T093000Z-3b9c")
        sealed_clip(outbox, "cart-03-20250301T093000Z-bd52")
        sealed_clip(outbox, "cart-03-20250301T093000Z-1185")
        sealed_sha256 = outbox.get("cart-03-20250301T093000Z-1185").sha256
        assert sealed_sha256 is not None
        outbox.delete_receipted("cart-03-20250301T093000Z-1185", sealed_sha256)
    clips = tmp_path / "clips"
    # The rename and the signature never reached the disk.
    os.rename(
        clips / "cart-03-20250301T093000Z-9e84.age",
        clips / "cart-03-20250301T093000Z-9e84.age.part",
    )
    os.unlink(clips / "cart-03-20250301T093000Z-9e84.age.minisig")
    os.unlink(clips / "cart-03-20250301T093000Z-3b9c.age")  # damage: a pending clip's file is gone
    (clips / ".cart-03-20250301T093000Z-bd52.age.minisig.0123abcd.tmp").write_bytes(
        b"half"
    )  # write_atomic's temp
    (clips / "cart-03-20250301T093000Z-1185.age").write_bytes(
        b"resurrected"
    )  # an unlink that never hit the disk
    (clips / "nobody.age.part").write_bytes(b"orphan")
    (clips / "stranger.age").write_bytes(b"unknown ciphertext")
    db = sqlite3.connect(tmp_path / "outbox.sqlite")  # receipt committed, unlinks lost
    db.execute(
        "UPDATE clips SET state = 'receipted' WHERE clip_id = 'cart-03-20250301T093000Z-bd52'"
    )
    db.commit()
    db.close()

    with open_outbox(tmp_path) as outbox:
        recovery = outbox.recover()
        assert [e.clip_id for e in recovery.to_announce] == ["cart-03-20250301T093000Z-9e84"]
        assert outbox.clip_path("cart-03-20250301T093000Z-9e84").read_bytes() == undone
        assert (
            outbox.signature_path("cart-03-20250301T093000Z-9e84").read_text()
            == outbox.get("cart-03-20250301T093000Z-9e84").signature
        )
        lost = outbox.get("cart-03-20250301T093000Z-3b9c")
        assert (lost.state, lost.abort_reason) == (ClipState.ABORTED, "clip_file_missing")
        assert recovery.aborted == [lost]
        assert outbox.get("cart-03-20250301T093000Z-bd52").state is ClipState.DELETED
        # Ciphertext nobody knows about is reported, never deleted.
        assert files(outbox) == [
            "cart-03-20250301T093000Z-9e84.age",
            "cart-03-20250301T093000Z-9e84.age.minisig",
            "stranger.age",
        ]
        assert any("stranger.age" in line for line in recovery.repaired)
        assert not any("PAIN" in line for line in recovery.repaired)
