"""The local clip store: layout, modes, idempotence, refusals, and real process deaths mid-put."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from server.store import (
    ClipStore,
    HashMismatchError,
    InvalidKeyError,
    LocalStore,
    NotStoredError,
)

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
