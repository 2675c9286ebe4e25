"""The clip store's contract on both backends (a local folder, a real SeaweedFS bucket): layout,
idempotence, refusals, concurrent puts, ranged reads, and real process deaths mid-put."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from protocol.store_config import StoreLocation
from server.s3store import S3Store
from server.store import (
    ClipStore,
    HashMismatchError,
    InvalidKeyError,
    LocalStore,
    NotStoredError,
)
from server.stores import CredentialsError, open_store, read_credentials
from tests.support.seaweedfs import Bucket

REPO = Path(__file__).resolve().parents[2]
SIGNATURE = "untrusted comment: painav clip\nRUQ...\ntrusted comment: clip\nAAAA\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def clip_file(folder: Path, size: int = 300_000, name: str = "spool.age") -> tuple[Path, str]:
    data = os.urandom(size)
    path = folder / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def visible(root: Path) -> list[str]:
    """Every file in the store but the temp files a crash may leave."""
    return sorted(p.name for p in root.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))


def test_put_lays_out_files_and_modes(tmp_path: Path) -> None:
    store: ClipStore = LocalStore(tmp_path / "store")
    source, key = clip_file(tmp_path)
    assert not store.exists(key)
    assert store.put(key, source, SIGNATURE) == key
    assert store.exists(key)
    folder = tmp_path / "store" / key[:2] / key[2:4]
    assert sorted(p.name for p in folder.iterdir()) == [f"{key}.age", f"{key}.age.minisig"]
    assert mode(folder / f"{key}.age") == mode(folder / f"{key}.age.minisig") == 0o640
    assert mode(folder) == mode(folder.parent) == mode(tmp_path / "store") == 0o750
    with store.open(key) as stored:
        assert stored.read() == source.read_bytes()
    assert store.signature(key) == SIGNATURE


def test_modes_hold_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        store = LocalStore(tmp_path / "store")
        source, key = clip_file(tmp_path)
        store.put(key, source, SIGNATURE)
    finally:
        os.umask(old)
    assert mode(store.clip_path(key)) == mode(store.signature_path(key)) == 0o640
    assert mode(store.clip_path(key).parent) == mode(tmp_path / "store") == 0o750


def test_put_is_idempotent_and_never_rewrites(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    source, key = clip_file(tmp_path)
    store.put(key, source, SIGNATURE)
    before = store.clip_path(key).stat()
    sig_before = store.signature_path(key).stat()
    time.sleep(0.01)
    assert store.put(key, source, "another signature\n") == key
    after = store.clip_path(key).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert store.signature_path(key).stat().st_mtime_ns == sig_before.st_mtime_ns
    assert store.signature(key) == SIGNATURE  # the first one stored is kept


def test_bytes_that_hash_to_another_key_are_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    source, key = clip_file(tmp_path)
    _, other = clip_file(tmp_path, name="other.age")
    with pytest.raises(HashMismatchError, match=key):
        store.put(other, source, SIGNATURE)
    assert not store.exists(other)
    with pytest.raises(NotStoredError):
        store.open(other)
    assert not list((tmp_path / "store").rglob("*.tmp"))  # nothing left behind
    assert not store.clip_path(other).exists()


@pytest.mark.parametrize(
    "key", ["AB" * 32, "ab" * 31, "ab" * 32 + "\n", "../" + "a" * 61, "g" * 64, ""]
)
def test_bad_keys_are_refused_before_the_file_system(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "store")
    source, _ = clip_file(tmp_path)
    for action in (
        lambda: store.put(key, source, SIGNATURE),
        lambda: store.exists(key),
        lambda: store.open(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(InvalidKeyError):
            action()
    assert list((tmp_path / "store").iterdir()) == []


def test_delete_is_complete_and_idempotent(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    source, key = clip_file(tmp_path)
    _, kept = clip_file(tmp_path, name="kept.age")
    store.put(key, source, SIGNATURE)
    store.put(kept, tmp_path / "kept.age", SIGNATURE)
    store.delete(key)
    assert not store.exists(key) and store.exists(kept)
    assert visible(tmp_path / "store") == [f"{kept}.age", f"{kept}.age.minisig"]
    with pytest.raises(NotStoredError):
        store.open(key)
    with pytest.raises(NotStoredError):
        store.signature(key)
    store.delete(key)  # consent withdrawal may be retried
    assert store.put(key, source, SIGNATURE) == key and store.exists(key)


def child(script: str, root: Path, key: str, source: Path) -> subprocess.Popen[bytes]:
    code = (
        "import os, sys\nfrom pathlib import Path\nfrom server.store import LocalStore\n"
        f"{script}\n"
        "LocalStore(Path(sys.argv[1])).put(sys.argv[2], Path(sys.argv[3]), 'sig\\n')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", code, str(root), key, str(source)]
    return subprocess.Popen(args, env=env, cwd=REPO, stderr=subprocess.PIPE)


def test_sigkill_while_copying_leaves_nothing_under_the_key(tmp_path: Path) -> None:
    """A real kill mid-copy: the source is a pipe we fill halfway, so the copy is in flight."""
    root = tmp_path / "store"
    LocalStore(root)
    data = os.urandom(8 << 20)
    key = hashlib.sha256(data).hexdigest()
    fifo = tmp_path / "clip.fifo"
    os.mkfifo(fifo)
    process = child("", root, key, fifo)
    try:
        with open(fifo, "wb", buffering=0) as pipe:
            pipe.write(data[: len(data) // 2])
            deadline = time.monotonic() + 10
            while not any(p.stat().st_size >= 1 << 20 for p in root.rglob(f".{key}.age.*.tmp")):
                assert time.monotonic() < deadline, "the copy never started"
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            assert process.wait(10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()
    store = LocalStore(root)
    assert not store.exists(key)
    assert not store.clip_path(key).exists()
    with pytest.raises(NotStoredError):
        store.open(key)
    assert visible(root) == [f"{key}.age.minisig"]  # a signature without its clip: inert
    assert store.remove_leftovers(older_than_s=3600) == []  # a young temp file may be live
    leftovers = store.remove_leftovers(older_than_s=0)
    assert [p.name.startswith(f".{key}.age.") for p in leftovers] == [True]
    # The unit still holds the clip; pulled again, it is stored whole.
    source = tmp_path / "again.age"
    source.write_bytes(data)
    assert store.put(key, source, SIGNATURE) == key
    assert store.clip_path(key).read_bytes() == data and store.signature(key) == SIGNATURE


def test_death_just_before_the_commit_leaves_nothing_under_the_key(tmp_path: Path) -> None:
    root = tmp_path / "store"
    source, key = clip_file(tmp_path, 2_000_000)
    # The data is written and fsynced; the process dies where it would link it into place.
    process = child("os.link = lambda *a, **k: os._exit(3)", root, key, source)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 3, err.decode()
    store = LocalStore(root)
    assert not store.exists(key)
    assert [p.name for p in store.remove_leftovers(older_than_s=0)] != []
    assert store.put(key, source, SIGNATURE) == key
    with store.open(key) as stored:
        assert stored.read() == source.read_bytes()


def test_a_moved_file_is_renamed_into_place_not_copied(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    spool = tmp_path / "spool"
    spool.mkdir()
    source, key = clip_file(spool)
    os.chmod(source, 0o600)
    inode = source.stat().st_ino
    assert store.put(key, source, SIGNATURE, move=True) == key
    assert not source.exists()
    stored = store.clip_path(key)
    assert stored.stat().st_ino == inode  # the same file: no copy was made
    assert stored.stat().st_nlink == 1  # and the spool's name is gone, not a second link
    assert mode(stored) == 0o640
    assert visible(tmp_path / "store") == [f"{key}.age", f"{key}.age.minisig"]
    assert not list((tmp_path / "store").rglob("*.tmp"))
    # Moved again under a key already stored: nothing rewritten, the file still consumed.
    again, _ = clip_file(spool, name="again.age")
    assert store.put(key, again, "another\n", move=True) == key
    assert not again.exists()
    assert store.signature(key) == SIGNATURE and stored.stat().st_ino == inode


def test_a_file_moved_from_another_file_system_is_copied_and_checked(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("/dev/shm and the test folder share a file system: no cross-device move")
    store = LocalStore(tmp_path / "store")
    other = Path(tempfile.mkdtemp(dir=shm))
    try:
        source, key = clip_file(other)
        assert store.put(key, source, SIGNATURE, move=True) == key
        assert not source.exists()
        assert hashlib.sha256(store.clip_path(key).read_bytes()).hexdigest() == key
        # Across file systems the bytes are read, so a wrong hash is still caught.
        wrong, _ = clip_file(other, name="wrong.age")
        with pytest.raises(HashMismatchError):
            store.put("0" * 64, wrong, SIGNATURE, move=True)
        assert not wrong.exists() and not store.exists("0" * 64)
    finally:
        shutil.rmtree(other)


# --- the contract on both backends -----------------------------------------------------------


@dataclass
class Backend:
    """One store backend under test, and what a test needs to look behind its interface."""

    kind: str
    make: Callable[[], ClipStore]  # a new store object on the same storage (another process)
    visible: Callable[[], list[str]]  # the names of every object a reader could find
    stamp: Callable[[str], object]  # what changes if the clip under a key is rewritten


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        root = tmp_path / "store"

        def local_stamp(key: str) -> object:
            found = LocalStore(root).clip_path(key).stat()
            return (found.st_ino, found.st_mtime_ns)

        return Backend("local", lambda: LocalStore(root), lambda: visible(root), local_stamp)
    bucket: Bucket = request.getfixturevalue("seaweedfs")

    def s3_stamp(key: str) -> object:
        store = bucket.store()
        head = store.client.head_object(Bucket=bucket.name, Key=store.clip_key(key))
        return (head["ETag"], head["LastModified"])

    return Backend(
        "s3", bucket.store, lambda: [k.rsplit("/", 1)[1] for k in bucket.object_keys()], s3_stamp
    )


def test_put_then_read_back(backend: Backend, tmp_path: Path) -> None:
    store = backend.make()
    source, key = clip_file(tmp_path)
    assert not store.exists(key)
    assert store.put(key, source, SIGNATURE) == key
    assert store.exists(key) and backend.make().exists(key)
    assert backend.visible() == [f"{key}.age", f"{key}.age.minisig"]
    with store.open(key) as stored:
        assert stored.read() == source.read_bytes()
    assert store.signature(key) == SIGNATURE


def test_put_is_idempotent_and_keeps_the_first(backend: Backend, tmp_path: Path) -> None:
    store = backend.make()
    source, key = clip_file(tmp_path)
    store.put(key, source, SIGNATURE)
    before = backend.stamp(key)
    time.sleep(1.1)  # S3 times are to the second
    assert store.put(key, source, "another signature\n") == key
    assert backend.stamp(key) == before
    assert store.signature(key) == SIGNATURE


@pytest.mark.parametrize("size", [300_000, 12 << 20], ids=["whole", "multipart"])
def test_bytes_hashing_to_another_key_are_refused(
    backend: Backend, tmp_path: Path, size: int
) -> None:
    store = backend.make()
    source, key = clip_file(tmp_path, size)
    _, other = clip_file(tmp_path, 1000, name="other.age")
    with pytest.raises(HashMismatchError, match=key):
        store.put(other, source, SIGNATURE)
    assert not store.exists(other)
    with pytest.raises(NotStoredError):
        store.open(other)
    # The signature went first and stays inert (nothing reads a signature without its clip).
    assert backend.visible() == [f"{other}.age.minisig"]
    if isinstance(store, S3Store):  # the parts of a refused multipart upload are freed at once
        assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")


@pytest.mark.parametrize("key", ["AB" * 32, "ab" * 31, "ab" * 32 + "\n", "../" + "a" * 61, ""])
def test_bad_keys_are_refused_before_any_storage(
    backend: Backend, tmp_path: Path, key: str
) -> None:
    store = backend.make()
    source, _ = clip_file(tmp_path)
    for action in (
        lambda: store.put(key, source, SIGNATURE),
        lambda: store.exists(key),
        lambda: store.open(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(InvalidKeyError):
            action()
    assert backend.visible() == []


def test_delete_removes_both_and_may_be_repeated(backend: Backend, tmp_path: Path) -> None:
    store = backend.make()
    source, key = clip_file(tmp_path)
    kept_file, kept = clip_file(tmp_path, name="kept.age")
    store.put(key, source, SIGNATURE)
    store.put(kept, kept_file, SIGNATURE)
    store.delete(key)
    assert not store.exists(key) and store.exists(kept)
    assert backend.visible() == [f"{kept}.age", f"{kept}.age.minisig"]
    with pytest.raises(NotStoredError):
        store.open(key)
    with pytest.raises(NotStoredError):
        store.signature(key)
    store.delete(key)  # consent withdrawal may be retried
    assert store.put(key, source, SIGNATURE) == key and store.exists(key)


def test_a_moved_file_is_consumed_stored_or_not(backend: Backend, tmp_path: Path) -> None:
    store = backend.make()
    source, key = clip_file(tmp_path)
    data = source.read_bytes()
    assert store.put(key, source, SIGNATURE, move=True) == key
    assert not source.exists()
    again, _ = clip_file(tmp_path, name="again.age")
    assert store.put(key, again, "another\n", move=True) == key  # already stored
    assert not again.exists()
    if backend.kind == "s3":
        # An object store cannot take a file by renaming it: the bytes are read, and checked.
        wrong, _ = clip_file(tmp_path, name="wrong.age")
        with pytest.raises(HashMismatchError):
            store.put("0" * 64, wrong, SIGNATURE, move=True)
        assert not wrong.exists() and not store.exists("0" * 64)
    with store.open(key) as stored:
        assert stored.read() == data
    assert store.signature(key) == SIGNATURE


def test_concurrent_puts_of_one_clip_store_it_once(backend: Backend, tmp_path: Path) -> None:
    """Receivers racing on one clip (a redelivered announcement): each put succeeds, one clip
    is stored, and it is whole; on S3 the losers' conditional creates get 412."""
    data = os.urandom(6 << 20)
    key = hashlib.sha256(data).hexdigest()
    racers = 6
    start = threading.Barrier(racers)
    results: list[str | BaseException] = []

    def race(n: int) -> None:
        source = tmp_path / f"copy{n}.age"
        source.write_bytes(data)
        store = backend.make()  # each its own client, as separate receivers have
        start.wait()
        try:
            results.append(store.put(key, source, f"signature {n}\n", move=True))
        except BaseException as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [key] * racers
    store = backend.make()
    with store.open(key) as stored:
        assert hashlib.sha256(stored.read()).hexdigest() == key
    assert store.signature(key).startswith("signature ")
    assert backend.visible() == [f"{key}.age", f"{key}.age.minisig"]
    assert not list(tmp_path.glob("copy*.age"))


def test_open_is_seekable_for_ranged_reads(backend: Backend, tmp_path: Path) -> None:
    store = backend.make()
    source, key = clip_file(tmp_path, 9 << 20)
    data = source.read_bytes()
    store.put(key, source, SIGNATURE)
    with store.open(key) as stored:
        assert stored.seekable()
        stored.seek(5_000_000)
        assert stored.read(1000) == data[5_000_000:5_001_000]
        assert stored.seek(-10, io.SEEK_END) == len(data) - 10
        assert stored.read() == data[-10:]
        assert stored.read(10) == b""
        stored.seek(0)
        assert stored.read() == data


# --- S3 only: crashes mid-upload, the credentials file, the config ---------------------------


def s3_child(script: str, bucket: Bucket, key: str, source: Path) -> subprocess.Popen[bytes]:
    """A child process that puts *source* through the store factory, as a receiver does."""
    location = bucket.location().model_dump_json()
    code = (
        "import os, sys\nfrom pathlib import Path\n"
        "from protocol.store_config import StoreLocation\nfrom server.stores import open_store\n"
        "store = open_store(StoreLocation.model_validate_json(sys.argv[1]))\n"
        "store.part_bytes = 5 << 20\n"
        f"{script}\n"
        "store.put(sys.argv[2], Path(sys.argv[3]), 'sig\\n')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", code, location, key, str(source)]
    return subprocess.Popen(args, env=env, cwd=REPO, stderr=subprocess.PIPE)


def test_s3_sigkill_mid_upload_leaves_nothing_under_the_key(
    seaweedfs: Bucket, tmp_path: Path
) -> None:
    """A real kill while parts go up (the child waits after its second part, so the kill
    lands mid-upload): no object under the key, and the upload is found and aborted."""
    source, key = clip_file(tmp_path, 24 << 20)
    gate = tmp_path / "parts-sent"
    slow = (
        "upload = store.client.upload_part\n"
        "def slow(**kw):\n"
        "    reply = upload(**kw)\n"
        f"    if kw['PartNumber'] == 2:\n        Path({str(gate)!r}).touch()\n"
        "        import time; time.sleep(60)\n"
        "    return reply\n"
        "store.client.upload_part = slow\n"
    )
    process = s3_child(slow, seaweedfs, key, source)
    try:
        deadline = time.monotonic() + 30
        while not gate.exists():
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()
    store = seaweedfs.store()
    assert not store.exists(key)
    with pytest.raises(NotStoredError):
        store.open(key)
    assert [k.rsplit("/", 1)[1] for k in seaweedfs.object_keys()] == [f"{key}.age.minisig"]
    uploads = store.client.list_multipart_uploads(Bucket=seaweedfs.name).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [store.clip_key(key)]
    assert store.remove_leftovers(older_than_s=3600) == []  # a young upload may be live
    assert store.remove_leftovers(older_than_s=0) == [store.clip_key(key)]
    assert not store.client.list_multipart_uploads(Bucket=seaweedfs.name).get("Uploads")
    # The unit still holds the clip; pulled again, it is stored whole.
    assert store.put(key, source, SIGNATURE) == key
    with store.open(key) as stored:
        assert stored.read() == source.read_bytes()


def test_s3_death_just_before_the_commit_leaves_nothing(seaweedfs: Bucket, tmp_path: Path) -> None:
    source, key = clip_file(tmp_path, 12 << 20)
    die = "store.client.complete_multipart_upload = lambda **kw: os._exit(3)"
    process = s3_child(die, seaweedfs, key, source)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 3, err.decode()
    store = seaweedfs.store()
    assert not store.exists(key)
    assert store.remove_leftovers(older_than_s=0) == [store.clip_key(key)]
    assert store.put(key, source, SIGNATURE) == key and store.exists(key)


def test_s3_objects_are_under_the_prefix(seaweedfs: Bucket, tmp_path: Path) -> None:
    source, key = clip_file(tmp_path)
    seaweedfs.store(prefix="site-a/ward7").put(key, source, SIGNATURE)
    folder = f"site-a/ward7/{key[:2]}/{key[2:4]}"
    assert seaweedfs.object_keys() == [f"{folder}/{key}.age", f"{folder}/{key}.age.minisig"]
    assert not seaweedfs.store(prefix="site-b").exists(key)


def write_credentials(path: Path, mode: int, text: str | None = None) -> Path:
    path.write_text(text or "[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n")
    os.chmod(path, mode)
    return path


def test_credentials_readable_by_others_are_refused(tmp_path: Path) -> None:
    path = write_credentials(tmp_path / "s3", 0o600)
    assert read_credentials(path) == ("AK", "SK")
    os.chmod(path, 0o640)
    with pytest.raises(CredentialsError, match=r"readable by others \(mode 0640\); chmod 600"):
        read_credentials(path)
    location = StoreLocation(
        backend="s3", endpoint="http://127.0.0.1:1", bucket="clips", credentials_file=path
    )
    with pytest.raises(CredentialsError):
        open_store(location)
    bad = write_credentials(tmp_path / "bad", 0o600, "[default]\naws_access_key_id = AK\n")
    with pytest.raises(CredentialsError, match="aws_secret_access_key"):
        read_credentials(bad)
    with pytest.raises(CredentialsError, match="cannot read"):
        read_credentials(tmp_path / "missing")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "dir is required"),
        ({"dir": "/s", "bucket": "clips"}, 'bucket: only for backend = "s3"'),
        ({"backend": "s3", "bucket": "clips", "credentials_file": "/c"}, "endpoint is required"),
        (
            {"backend": "s3", "endpoint": "http://h:1", "bucket": "clips", "credentials_file": "/c",
             "dir": "/s"},
            "dir: only for",
        ),
        (
            {"backend": "s3", "endpoint": "http://h:1", "bucket": "clips", "credentials_file": "/c",
             "ca_file": "/ca.pem"},
            "ca_file is for an https endpoint only",
        ),
        (
            {"backend": "s3", "endpoint": "ftp://h", "bucket": "clips", "credentials_file": "/c"},
            "is not http",
        ),
        (
            {"backend": "s3", "endpoint": "http://h", "bucket": "C", "credentials_file": "/c"},
            "bucket",
        ),
    ],
)  # fmt: skip
def test_store_location_names_the_bad_key(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StoreLocation.model_validate(fields)


def test_an_existing_local_config_still_loads() -> None:
    assert StoreLocation.model_validate({"dir": "/var/lib/painav/store"}).backend == "local"
