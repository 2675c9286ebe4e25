"""The clip store: ciphertext and its signature, content-addressed by SHA-256, never decrypted."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import time
from pathlib import Path
from typing import BinaryIO, Final, Protocol

__all__ = [
    "ClipStore",
    "HashMismatchError",
    "InvalidKeyError",
    "LocalStore",
    "NotStoredError",
    "StoreError",
    "check_key",
]

_KEY: Final = re.compile(r"[0-9a-f]{64}")
_CHUNK: Final = 1 << 20
_FILE_MODE: Final = 0o640  # group: the extraction service reads clips, nobody else
_DIR_MODE: Final = 0o750
_MAX_SIGNATURE_BYTES: Final = 64 * 1024


class StoreError(Exception):
    """Root of every error raised by the clip store."""


class InvalidKeyError(StoreError, ValueError):
    """A key that is not 64 lower-case hex digits (a SHA-256); refused before any file access."""


class HashMismatchError(StoreError, ValueError):
    """The bytes offered under a key hash to something else; nothing was stored."""


class NotStoredError(StoreError, LookupError):
    """No clip is stored under this key."""


class ClipStore(Protocol):
    """Where verified clips rest, still encrypted, keyed by the SHA-256 of their ciphertext.

    The contract every backend keeps:

    - ``put`` stores the clip whole or not at all: until it returns, nothing is visible under the
      key, and a crash leaves at most an unreferenced temporary object. It stores only bytes
      that hash to the key (:class:`HashMismatchError` otherwise). With ``move=True`` the
      caller hands the file over (it is gone from its name afterwards, stored or not) and
      vouches for its hash, computed as the bytes arrived: a backend that can take the file
      without copying it (a link on the same file system) need not read it again. It is
      idempotent: a key already stored is not rewritten (the first signature stored is kept),
      and the key is returned. Same hash means same ciphertext, so there is nothing to update.
    - ``exists`` is true only once ``put`` has returned (or a crash hit after its commit point).
    - ``open``/``signature`` raise :class:`NotStoredError` for an unknown key.
    - ``delete`` (consent withdrawal) removes both objects; deleting a missing key is a no-op.
    - Nothing here decrypts: the ingest service that writes the store holds no data key.

    An S3-compatible backend implements the same contract with two objects per clip,
    ``<prefix>/ab/cd/<sha256>.age`` and ``.age.minisig``: ``put`` uploads the signature first,
    then the clip with a checksum the service verifies on receipt (``x-amz-checksum-sha256``:
    the key itself, base64 of the raw digest, so a corrupted upload is refused by the service,
    as :meth:`LocalStore.put` refuses it by hashing while copying), and as a conditional create
    (``If-None-Match: *``: a 412 means another receiver stored the same clip first, which is
    success). Multipart uploads carry a checksum per part and a composite one; an abandoned
    multipart upload is invisible under the key and is removed by a lifecycle rule, like the
    ``.tmp`` files :meth:`LocalStore.remove_leftovers` removes. The clip object is the commit
    point, so ``exists`` is a ``HEAD`` of it, and ``delete`` removes the clip object first.
    """

    def put(
        self, sha256: str, clip_file: Path, signature_text: str, *, move: bool = False
    ) -> str: ...

    def exists(self, sha256: str) -> bool: ...

    def open(self, sha256: str) -> BinaryIO: ...

    def signature(self, sha256: str) -> str: ...

    def delete(self, sha256: str) -> None: ...


def check_key(sha256: str) -> str:
    """Return *sha256* if it is a valid store key, else raise :class:`InvalidKeyError`."""
    # fullmatch, and a str check: the key becomes a file name.
    if not isinstance(sha256, str) or not _KEY.fullmatch(sha256):
        raise InvalidKeyError(f"not a SHA-256 store key: {sha256!r:.80}")
    return sha256


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore:
    """A :class:`ClipStore` in a local folder: ``root/ab/cd/<sha256>.age`` and ``.age.minisig``.

    Files are mode 0640 and folders 0750, so that the extraction service, sharing the folder's
    group, reads clips and nothing else does. Writes are temp file, fsync, link, fsync folder;
    a moved file is renamed into the folder as the temp file, so a spool on the same file system
    is never copied::

        store = LocalStore(Path("/var/lib/painav/store"))
        key = store.put(sha256, Path("spool/clip.age"), signature_text)
        with store.open(key) as clip:
            ...
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            self.root.mkdir(parents=True, mode=_DIR_MODE)
            os.chmod(self.root, _DIR_MODE)  # mkdir's mode is filtered by the umask

    def clip_path(self, sha256: str) -> Path:
        key = check_key(sha256)
        return self.root / key[:2] / key[2:4] / f"{key}.age"

    def signature_path(self, sha256: str) -> Path:
        return self.clip_path(sha256).with_suffix(".age.minisig")

    def exists(self, sha256: str) -> bool:
        return self.clip_path(sha256).is_file()

    def put(self, sha256: str, clip_file: Path, signature_text: str, *, move: bool = False) -> str:
        """Store *clip_file* and its signature under *sha256*; return the key.

        The ``.minisig`` is written first and the clip's link into place is the commit point,
        so a stored clip always has its signature. Raises :class:`HashMismatchError` (nothing
        stored) if the file's bytes do not hash to *sha256*, and ``OSError`` for I/O failures.
        With *move*, the file is renamed into the store unread when it is on the same file
        system (the caller vouches for its hash), copied and checked otherwise, and removed
        from its own name in every case.
        """
        target = self.clip_path(sha256)
        signature = signature_text.encode("utf-8")
        if len(signature) > _MAX_SIGNATURE_BYTES:
            raise StoreError(f"signature for {sha256} is over {_MAX_SIGNATURE_BYTES} bytes")
        try:
            if target.is_file():
                return sha256  # same hash, same ciphertext: no rewrite
            self._make_dirs(target.parent)
            # Replacing a signature left without its clip (crash between the two writes) is
            # safe: nothing reads a signature whose clip is not there.
            self._write_temp_then(target.parent, self.signature_path(sha256), signature, None)
            if not (move and self._take(Path(clip_file), target)):
                with open(clip_file, "rb") as source:
                    self._write_temp_then(target.parent, target, source, sha256)
        finally:
            if move:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(clip_file)
        return sha256

    def open(self, sha256: str) -> BinaryIO:
        """The stored ciphertext, opened for reading; the caller closes it."""
        try:
            return open(self.clip_path(sha256), "rb")
        except FileNotFoundError:
            raise NotStoredError(f"no clip stored under {sha256}") from None

    def signature(self, sha256: str) -> str:
        """The stored clip's minisign signature text."""
        if not self.exists(sha256):
            raise NotStoredError(f"no clip stored under {sha256}")
        try:
            return self.signature_path(sha256).read_text(encoding="utf-8")
        except FileNotFoundError:  # deleted between the two looks
            raise NotStoredError(f"no clip stored under {sha256}") from None

    def delete(self, sha256: str) -> None:
        """Remove the clip and its signature; the clip first, so a crash leaves no half clip."""
        clip, signature = self.clip_path(sha256), self.signature_path(sha256)
        removed = False
        for path in (clip, signature):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed = True
        if removed:
            _fsync_dir(clip.parent)  # the deletion must survive a power cut, as a put does

    def remove_leftovers(self, *, older_than_s: float = 3600.0) -> list[Path]:
        """Remove temp files a crash left behind (invisible under any key); return them.

        Only those older than *older_than_s*: a younger one may belong to a ``put`` running
        in another process that shares the store.
        """
        cutoff = time.time() - older_than_s
        removed = []
        for path in self.root.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed.append(path)
        return removed

    def _take(self, clip_file: Path, target: Path) -> bool:
        """Rename *clip_file* into *target*'s folder as a temp file and link it into place;
        False if it is on another file system (nothing done then: copy it instead).

        Renamed first, so the caller's name is gone before the clip is visible: a spool file
        that a resumed download could write to never shares its bytes with a stored clip.
        """
        tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
        try:
            os.rename(clip_file, tmp)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False
            raise
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fchmod(fd, _FILE_MODE)  # a spool file is the receiver's alone
                os.fsync(fd)
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):  # stored meanwhile by another process
                os.link(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(target.parent)
        return True

    def _make_dirs(self, folder: Path) -> None:
        for directory in (folder.parent, folder):
            try:
                directory.mkdir(mode=_DIR_MODE)
            except FileExistsError:
                continue
            os.chmod(directory, _DIR_MODE)
            _fsync_dir(directory.parent)  # the new folder's name must be durable too

    def _write_temp_then(
        self, folder: Path, target: Path, data: bytes | BinaryIO, sha256: str | None
    ) -> None:
        """Write *data* to a temp file in *folder*, fsync it, then move it to *target*.

        With *sha256* (the clip): hash while copying, refuse a mismatch, and link rather than
        rename, so that a clip stored meanwhile by another process is never replaced.
        Without (the signature): replace whatever is there.
        """
        tmp = folder / f".{target.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        try:
            os.fchmod(fd, _FILE_MODE)  # the umask may have taken the group's read bit
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, bytes):
                    out.write(data)
                else:
                    while chunk := data.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if sha256 is None:
                os.replace(tmp, target)
            else:
                if digest.hexdigest() != sha256:
                    raise HashMismatchError(
                        f"{target.name}: the bytes offered hash to {digest.hexdigest()}; "
                        "nothing stored"
                    )
                # Exists already: another put stored the same bytes (and checked their hash).
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, target)
                os.unlink(tmp)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(folder)  # the new name must survive a power cut
