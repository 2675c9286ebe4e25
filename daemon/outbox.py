"""The unit's durable outbox: every clip from the first frame until a receipt lets it go."""

from __future__ import annotations

import enum
import fcntl
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final

from protocol.atomic import write_atomic
from protocol.clip_manifest import ClipManifest
from protocol.message_fields import (
    CLIP_ID_PATTERN,
    PSEUDONYM_PATTERN,
    VISIT_PATTERN,
    format_timestamp,
)
from protocol.minisign import Signature
from protocol.signing import ClipBinding

__all__ = [
    "ClipExistsError",
    "ClipState",
    "ClipStateError",
    "InvalidClipIdError",
    "InvalidSealError",
    "NoRoom",
    "NoRoomError",
    "Outbox",
    "OutboxEntry",
    "OutboxError",
    "ReceiptMismatchError",
    "Recovery",
    "UnknownClipError",
    "check_clip_id",
]

SCHEMA_VERSION: Final = 1
_CLIP_ID = re.compile(CLIP_ID_PATTERN)


class ClipState(enum.StrEnum):
    """Where a clip is in its life on the unit; the values are stored in the database."""

    RECORDING = "recording"
    SEALED = "sealed"
    ANNOUNCED = "announced"
    RECEIPTED = "receipted"
    DELETED = "deleted"
    ABORTED = "aborted"


PENDING: Final = (ClipState.SEALED, ClipState.ANNOUNCED)


class NoRoom(enum.StrEnum):
    """Why there is no room to record; ``LOW_STORAGE`` doubles as the manifest's stop reason."""

    LOW_STORAGE = "low_storage"
    QUOTA = "quota"


class OutboxError(Exception):
    """Root of every error raised by the outbox."""


class InvalidClipIdError(OutboxError, ValueError):
    """A clip id that does not match ``CLIP_ID_PATTERN``; refused before any file is touched."""


class UnknownClipError(OutboxError, LookupError):
    """No clip with this id was ever begun in this outbox."""


class ClipExistsError(OutboxError):
    """A clip with this id was already begun: ids are never reused."""


class ClipStateError(OutboxError):
    """The clip exists but its state does not allow this step (e.g. a receipt while recording)."""


class InvalidSealError(OutboxError, ValueError):
    """Seal arguments that disagree with each other, the row or the partial file."""


class ReceiptMismatchError(OutboxError, ValueError):
    """A receipt naming another SHA-256 than the sealed clip's; nothing was deleted."""


class NoRoomError(OutboxError):
    """Not enough room to start a recording; :attr:`reason` says which limit."""

    def __init__(self, reason: NoRoom) -> None:
        super().__init__(f"no room to record: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class OutboxEntry:
    """One clip's row: its state and, once sealed, what is announced about it."""

    clip_id: str
    state: ClipState
    participant: str | None
    visit: str | None
    started_at: datetime
    sealed_at: datetime | None
    size_bytes: int | None
    sha256: str | None
    manifest_json: str | None
    signature: str | None
    abort_reason: str | None
    event_reported: bool
    announce_count: int


@dataclass(frozen=True)
class Recovery:
    """What :meth:`Outbox.recover` found: clips it aborted, clips to (re)announce, repairs made."""

    aborted: list[OutboxEntry]
    to_announce: list[OutboxEntry]
    repaired: list[str]


_STATES = ", ".join(f"'{s}'" for s in ClipState)
_DDL: Final = f"""
BEGIN IMMEDIATE;
CREATE TABLE clips (
    seq INTEGER PRIMARY KEY,
    clip_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ({_STATES})),
    participant TEXT,
    visit TEXT,
    started_at TEXT NOT NULL,
    sealed_at TEXT,
    size_bytes INTEGER,
    sha256 TEXT,
    manifest_json TEXT,
    signature TEXT,
    abort_reason TEXT,
    event_reported INTEGER NOT NULL DEFAULT 0,
    announce_count INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
) STRICT;
CREATE INDEX clips_by_state ON clips (state, seq);
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""
_COLUMNS: Final = (
    "clip_id, state, participant, visit, started_at, sealed_at, size_bytes, sha256, "
    "manifest_json, signature, abort_reason, event_reported, announce_count"
)


def check_clip_id(clip_id: str) -> str:
    """Return *clip_id* if it is a valid clip id (safe as a file name), else raise."""
    # fullmatch: the pattern's '$' would also accept a trailing newline.
    if not isinstance(clip_id, str) or not _CLIP_ID.fullmatch(clip_id):
        raise InvalidClipIdError(f"not a clip id: {clip_id!r:.80}")
    return clip_id


def _entry(row: sqlite3.Row) -> OutboxEntry:
    def when(text: str | None) -> datetime | None:
        return None if text is None else datetime.fromisoformat(text)

    started = when(row["started_at"])
    assert started is not None  # NOT NULL in the schema
    return OutboxEntry(
        clip_id=row["clip_id"],
        state=ClipState(row["state"]),
        participant=row["participant"],
        visit=row["visit"],
        started_at=started,
        sealed_at=when(row["sealed_at"]),
        size_bytes=row["size_bytes"],
        sha256=row["sha256"],
        manifest_json=row["manifest_json"],
        signature=row["signature"],
        abort_reason=row["abort_reason"],
        event_reported=bool(row["event_reported"]),
        announce_count=row["announce_count"],
    )


def _now() -> str:
    return format_timestamp(datetime.now(UTC))


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class Outbox:
    """The unit's durable outbox: a SQLite database (WAL, ``synchronous=FULL``) beside ``clips/``.

    Rows are the truth; files follow them, and :meth:`recover` (once, at start-up, before any
    recording) repairs whatever a crash left in between. Safe to share between threads: one
    connection behind one lock. A clip sees a handful of writes over a minute, so contention is
    nil; the lock makes each check-then-update atomic without ``SQLITE_BUSY`` retry loops, and
    keeps a row and its files changing together, so a reader never sees a SEALED row without its
    file. One process at a time: a second ``Outbox`` on the same folder raises ``OutboxError``::

        outbox = Outbox(Path("/var/lib/painav/outbox"), quota_bytes=8 << 30, min_free_bytes=1 << 30)
        recovery = outbox.recover()
    """

    def __init__(self, dir: Path, *, quota_bytes: int, min_free_bytes: int) -> None:
        self.dir = Path(dir)
        self._clips = self.dir / "clips"
        self._quota = quota_bytes
        self._min_free = min_free_bytes
        self._lock = threading.RLock()
        # Fault-injection seam for the crash tests: called with the name of each seal step.
        self._fault: Callable[[str], None] = lambda step: None
        for folder in (self.dir, self._clips):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        self._lockfd = os.open(
            self.dir / "outbox.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lockfd)
            raise OutboxError(f"{self.dir}: outbox in use by another process") from None
        try:
            self._db: sqlite3.Connection | None = self._open(self.dir / "outbox.sqlite")
        except BaseException:
            os.close(self._lockfd)
            raise

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        # Created 0600 before SQLite sees it: SQLite gives the -wal and -shm files the same mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when COMMIT returns
            if mode != "wal":
                raise OutboxError(f"{path}: SQLite refused WAL mode (got {mode!r})")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.executescript(_DDL)
            elif version != SCHEMA_VERSION:
                raise OutboxError(
                    f"{path}: outbox schema v{version}, this software knows v{SCHEMA_VERSION}"
                )
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        """Close the database and release the folder; idempotent."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
                os.close(self._lockfd)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError(f"{self.dir}: outbox is closed")
        return self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _set(self, clip_id: str, **fields: object) -> None:
        """Update one row's *fields* (and ``updated_at``) in its own committed transaction."""
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._write() as db:
            db.execute(
                f"UPDATE clips SET {assignments}, updated_at = ? WHERE clip_id = ?",
                (*fields.values(), _now(), clip_id),
            )

    def _select(self, where: str, *args: object) -> list[OutboxEntry]:
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM clips WHERE {where} ORDER BY seq", args)
        return [_entry(row) for row in rows]

    def _part(self, clip_id: str) -> Path:
        return self._clips / f"{clip_id}.age.part"

    def _files(self, clip_id: str) -> tuple[Path, Path, Path]:
        return self.clip_path(clip_id), self.signature_path(clip_id), self._part(clip_id)

    def _delete_files(self, clip_id: str) -> None:
        for path in self._files(clip_id):
            _remove(path)
        _fsync_path(self._clips, directory=True)

    # --- queries ------------------------------------------------------------------------------

    def get(self, clip_id: str) -> OutboxEntry:
        """The row of *clip_id*; :class:`UnknownClipError` if there is none."""
        check_clip_id(clip_id)
        with self._lock:
            found = self._select("clip_id = ?", clip_id)
        if not found:
            raise UnknownClipError(f"unknown clip {clip_id}")
        return found[0]

    def clip_path(self, clip_id: str) -> Path:
        return self._clips / f"{check_clip_id(clip_id)}.age"

    def signature_path(self, clip_id: str) -> Path:
        return self._clips / f"{check_clip_id(clip_id)}.age.minisig"

    def pending(self) -> list[OutboxEntry]:
        """Clips sealed and not yet receipted (SEALED or ANNOUNCED), oldest first."""
        with self._lock:
            return self._select("state IN (?, ?)", *PENDING)

    def unreported_aborts(self) -> list[OutboxEntry]:
        """Aborted clips whose event was not yet reported, oldest first."""
        with self._lock:
            return self._select("state = ? AND event_reported = 0", ClipState.ABORTED)

    def open_pending(
        self, clip_id: str, *, signature: bool = False
    ) -> tuple[OutboxEntry, BinaryIO]:
        """Open a pending clip's file (or its ``.minisig``) for reading, with its row.

        Row and open happen under the lock, so a receipt cannot delete the file in between; once
        open, the file stays readable to the end even if a receipt unlinks it meanwhile.
        """
        with self._lock:
            entry = self.get(clip_id)
            if entry.state not in PENDING:
                raise ClipStateError(f"clip {clip_id} is {entry.state}, not pending")
            path = self.signature_path(clip_id) if signature else self.clip_path(clip_id)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        return entry, os.fdopen(fd, "rb")

    def queue_bytes(self) -> int:
        """Bytes the clips not yet deleted take: sealed sizes plus partial files being recorded."""
        with self._lock:
            sealed = self._conn.execute(
                "SELECT COALESCE(SUM(size_bytes), 0) FROM clips WHERE state IN (?, ?, ?)",
                (*PENDING, ClipState.RECEIPTED),
            ).fetchone()[0]
            recording = self._select("state = ?", ClipState.RECORDING)
        partial = 0
        for entry in recording:
            with suppress(FileNotFoundError):  # sealed or aborted since the query
                partial += self._part(entry.clip_id).stat().st_size
        return int(sealed) + partial

    def free_bytes(self) -> int:
        """Bytes free for this (unprivileged) process on the outbox's file system."""
        stat = os.statvfs(self.dir)
        return stat.f_bavail * stat.f_frsize

    def room_to_record(self, expected_bytes: int) -> NoRoom | None:
        """None if a clip of *expected_bytes* fits, else why not (free space checked first)."""
        if self.free_bytes() - expected_bytes < self._min_free:
            return NoRoom.LOW_STORAGE
        if self.queue_bytes() + expected_bytes > self._quota:
            return NoRoom.QUOTA
        return None

    # --- lifecycle ----------------------------------------------------------------------------

    def begin(
        self,
        clip_id: str,
        *,
        participant: str | None,
        visit: str | None,
        started_at: datetime,
        expected_bytes: int = 0,
    ) -> Path:
        """Commit a RECORDING row, then return the partial file's path for the caller to write.

        The caller creates it (``os.open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)``). The row
        comes first so that a crash while recording always leaves a row to abort and report.
        Raises :class:`NoRoomError` if a clip of *expected_bytes* would not fit.
        """
        check_clip_id(clip_id)
        if participant is not None and not re.fullmatch(PSEUDONYM_PATTERN, participant):
            raise OutboxError(f"clip {clip_id}: participant is not a study pseudonym")
        if visit is not None and not re.fullmatch(VISIT_PATTERN, visit):
            raise OutboxError(f"clip {clip_id}: bad visit label {visit!r:.40}")
        if started_at.tzinfo is None:
            raise OutboxError(f"clip {clip_id}: started_at must be timezone-aware")
        with self._lock:
            reason = self.room_to_record(expected_bytes)
            if reason is not None:
                raise NoRoomError(reason)
            try:
                with self._write() as db:
                    db.execute(
                        "INSERT INTO clips (clip_id, state, participant, visit, started_at, "
                        "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (clip_id, ClipState.RECORDING, participant, visit,
                         format_timestamp(started_at), _now()),
                    )  # fmt: skip
            except sqlite3.IntegrityError:
                raise ClipExistsError(f"clip {clip_id} already exists") from None
        return self._part(clip_id)

    def _check_seal(
        self, entry: OutboxEntry, manifest_json: str, signature: str, sha256: str, size: int
    ) -> None:
        clip_id = entry.clip_id
        try:
            manifest = ClipManifest.model_validate_json(manifest_json)
            binding = ClipBinding.from_comment(Signature.from_text(signature).trusted_comment)
        except ValueError as exc:
            raise InvalidSealError(f"clip {clip_id}: {exc}") from exc
        facts = {
            "manifest clip id": (manifest.clip_id, clip_id),
            "manifest sha256": (manifest.sha256, sha256),
            "manifest size": (manifest.size_bytes, size),
            "manifest participant": (manifest.participant, entry.participant),
            "manifest visit": (manifest.visit, entry.visit),
            "signed clip id": (binding.clip_id, clip_id),
            "signed sha256": (binding.sha256, sha256),
            "signed device": (binding.device_id, manifest.device_id),
        }
        if binding.version >= 2:  # form 1 (a clip sealed before an upgrade) signs no labels
            facts["signed participant"] = (binding.participant, manifest.participant)
            facts["signed visit"] = (binding.visit, manifest.visit)
        for what, (got, want) in facts.items():
            if got != want:
                # No values in the message: the participant is among them.
                raise InvalidSealError(f"clip {clip_id}: {what} disagrees with the seal")
        try:
            on_disk = self._part(clip_id).stat().st_size
        except FileNotFoundError:
            raise InvalidSealError(f"clip {clip_id}: no partial file to seal") from None
        if on_disk != size:
            raise InvalidSealError(f"clip {clip_id}: partial file has {on_disk} bytes, not {size}")

    def seal(
        self, clip_id: str, *, manifest_json: str, signature: str, sha256: str, size_bytes: int
    ) -> OutboxEntry:
        """Make a finished recording durable and servable: RECORDING → SEALED.

        The caller has closed the partial file. The arguments are checked against each other,
        the row and the file (manifest and signature must name this clip, hash and size) before
        anything changes. Steps, and what a crash (process killed or power cut) just before each
        one leaves behind:

        1. fsync ``<id>.age.part``. Row RECORDING → ``recover`` aborts it ("interrupted") and
           removes the partial file.
        2. Write ``<id>.age.minisig`` (temp file, fsync, rename, fsync folder; the folder fsync
           also makes the partial file's name durable). As 1; a leftover ``.tmp`` is removed.
        3. Commit the row SEALED with manifest, signature, hash and size: the commit point, atomic
           (WAL, ``synchronous=FULL``). As 2, with the ``.minisig`` removed as well.
        4. Rename ``.part`` → ``.age``. Row SEALED, partial file complete and durable (step 1) →
           ``recover`` finishes the rename if the partial file has the row's size, and rewrites
           the ``.minisig`` from the row if it is missing or differs.
        5. fsync the folder. A power cut may still undo the rename → as 4.
        6. Done: consistent; ``recover`` finds nothing to do.

        Why this order: manifest and signature exist only in the caller's memory until the row
        holds them, so the commit comes before the rename and every crash after it rolls forward
        instead of losing a finished clip; the ``.minisig``, the one write that needs free space,
        comes before the commit, so a full disk fails the seal cleanly (row still RECORDING, for
        the caller to abort). If the rename or the folder fsync fails (I/O error) the row is
        already SEALED: this raises, and the next ``recover`` completes the files, as long as
        the caller leaves the partial file alone.
        """
        check_clip_id(clip_id)
        part = self._part(clip_id)
        with self._lock:
            entry = self.get(clip_id)
            if entry.state is not ClipState.RECORDING:
                raise ClipStateError(f"clip {clip_id} is {entry.state}, cannot seal")
            self._check_seal(entry, manifest_json, signature, sha256, size_bytes)
            try:
                self._fault("fsync_part")
                _fsync_path(part)
                self._fault("write_signature")
                # Its folder fsync also makes the partial file's name durable before the commit.
                write_atomic(
                    self.signature_path(clip_id), signature.encode(), mode=0o600, overwrite=True
                )
            except OSError as exc:
                raise OutboxError(f"clip {clip_id} not sealed, still recording: {exc}") from exc
            self._fault("commit")
            fields = {"manifest_json": manifest_json, "signature": signature, "sha256": sha256}
            self._set(
                clip_id, state=ClipState.SEALED, sealed_at=_now(), size_bytes=size_bytes, **fields
            )
            try:
                self._fault("rename")
                os.rename(part, self.clip_path(clip_id))
                self._fault("fsync_dir")
                _fsync_path(self._clips, directory=True)
            except OSError as exc:
                raise OutboxError(
                    f"clip {clip_id} is sealed, but its file is finished only at the next "
                    f"start-up: {exc}"
                ) from exc
            self._fault("done")
            return self.get(clip_id)

    def abort(self, clip_id: str, reason: str) -> OutboxEntry:
        """End a recording without a clip: RECORDING → ABORTED(*reason*), partial file removed.

        *reason* is one line for the abort event's detail (a code such as ``camera_timeout``, or
        an error message); whitespace runs become one space and it is cut to 200 characters.
        Aborting an aborted clip returns it unchanged, first reason kept; a sealed clip is never
        aborted (only a receipt ends it).
        """
        check_clip_id(clip_id)
        reason = " ".join(reason.split())[:200] or "unspecified"
        with self._lock:
            entry = self.get(clip_id)
            if entry.state is ClipState.ABORTED:
                return entry
            if entry.state is not ClipState.RECORDING:
                raise ClipStateError(f"clip {clip_id} is {entry.state}, cannot abort")
            # Row first: a crash before the unlink leaves an orphan that recover() removes.
            self._set(clip_id, state=ClipState.ABORTED, abort_reason=reason)
            self._delete_files(clip_id)
            return self.get(clip_id)

    def mark_announced(self, clip_id: str) -> None:
        """Record an announcement: SEALED → ANNOUNCED, ``announce_count`` + 1 (also on re-announce).

        A no-op once receipted: the receiver may pull from the list before the announcement's ack.
        """
        with self._lock:
            entry = self.get(clip_id)
            if entry.state in (ClipState.RECEIPTED, ClipState.DELETED):
                return
            if entry.state not in PENDING:
                raise ClipStateError(f"clip {clip_id} is {entry.state}, cannot be announced")
            self._set(clip_id, state=ClipState.ANNOUNCED, announce_count=entry.announce_count + 1)

    def delete_receipted(self, clip_id: str, sha256: str) -> OutboxEntry:
        """Apply the receiver's receipt: → RECEIPTED, delete the files, → DELETED.

        Only if *sha256* is the sealed clip's, else :class:`ReceiptMismatchError` and nothing
        changes. A repeated receipt (MQTT delivers at least once) returns the DELETED row.
        """
        with self._lock:
            entry = self.get(clip_id)
            if entry.state not in (*PENDING, ClipState.RECEIPTED, ClipState.DELETED):
                raise ClipStateError(f"clip {clip_id} is {entry.state}, cannot take a receipt")
            if sha256 != entry.sha256:
                raise ReceiptMismatchError(
                    f"receipt for clip {clip_id} names sha256 {sha256!r:.70}, "
                    f"the clip has {entry.sha256}"
                )
            if entry.state is ClipState.DELETED:
                return entry
            # RECEIPTED is committed before the unlinks, so a crash between leaves a row that
            # says "delete these", which recover() finishes.
            self._set(clip_id, state=ClipState.RECEIPTED)
            self._delete_files(clip_id)
            self._set(clip_id, state=ClipState.DELETED)
            return self.get(clip_id)

    def mark_event_reported(self, clip_id: str) -> None:
        """Record that an aborted clip's event was published; idempotent."""
        with self._lock:
            entry = self.get(clip_id)
            if entry.state is not ClipState.ABORTED:
                raise ClipStateError(f"clip {clip_id} is {entry.state}, has no abort event")
            if not entry.event_reported:
                self._set(clip_id, event_reported=1)

    # --- start-up -----------------------------------------------------------------------------

    def _finish_files(self, entry: OutboxEntry, repaired: list[str]) -> str | None:
        """Bring a pending clip's files in line with its row; return an abort reason if lost."""
        age, sig, part = self._files(entry.clip_id)
        if not age.exists():
            if not part.exists():
                return "clip_file_missing"
            if part.stat().st_size != entry.size_bytes:
                return "clip_file_damaged"
        elif age.stat().st_size != entry.size_bytes:
            return "clip_file_damaged"
        assert entry.signature is not None  # set with SEALED
        text = entry.signature.encode()
        try:
            intact = sig.read_bytes() == text
        except FileNotFoundError:
            intact = False
        if not intact:
            write_atomic(sig, text, mode=0o600, overwrite=True)
            repaired.append(f"{entry.clip_id}: signature file rewritten from the outbox")
        if not age.exists():
            os.rename(part, age)
            repaired.append(f"{entry.clip_id}: finished sealing (renamed the partial file)")
        elif _remove(part):
            repaired.append(f"{entry.clip_id}: removed a stale partial file")
        return None

    def recover(self) -> Recovery:
        """Repair what a crash left; call once at start-up, before any recording begins.

        RECORDING rows become ABORTED("interrupted") and lose their partial file; SEALED and
        ANNOUNCED rows get their files completed (or, if the clip file is gone, are aborted);
        RECEIPTED rows finish deleting. Leftover ``.part`` and ``.tmp`` files are removed, as
        are files of deleted or aborted clips; a clip file with no row at all is left in place
        and reported, because deleting ciphertext whose fate is unknown could lose a clip.
        """
        aborted: list[OutboxEntry] = []
        repaired: list[str] = []
        with self._lock:
            for entry in self._select("state = ?", ClipState.RECORDING):
                self._set(entry.clip_id, state=ClipState.ABORTED, abort_reason="interrupted")
                self._delete_files(entry.clip_id)
                aborted.append(self.get(entry.clip_id))
            for entry in self._select("state IN (?, ?)", *PENDING):
                reason = self._finish_files(entry, repaired)
                if reason is not None:
                    self._set(entry.clip_id, state=ClipState.ABORTED, abort_reason=reason)
                    self._delete_files(entry.clip_id)
                    aborted.append(self.get(entry.clip_id))
                    repaired.append(f"{entry.clip_id}: {entry.state} but {reason}; aborted")
            for entry in self._select("state = ?", ClipState.RECEIPTED):
                self._delete_files(entry.clip_id)
                self._set(entry.clip_id, state=ClipState.DELETED)
                repaired.append(f"{entry.clip_id}: finished deleting after its receipt")
            self._sweep(repaired)
            _fsync_path(self._clips, directory=True)
            return Recovery(aborted, self.pending(), repaired)

    def _sweep(self, repaired: list[str]) -> None:
        keep = {p.name for e in self.pending() for p in self._files(e.clip_id)[:2]}
        for path in sorted(self._clips.iterdir()):
            name = path.name
            if name in keep:
                continue
            if name.endswith((".tmp", ".age.part")):
                path.unlink()
                repaired.append(f"removed leftover {name}")
                continue
            clip_id = name.removesuffix(".minisig").removesuffix(".age")
            gone = (ClipState.DELETED, ClipState.ABORTED)
            if name.endswith(".age") or name.endswith(".age.minisig"):
                try:
                    known = self.get(clip_id).state in gone
                except OutboxError:  # not a clip id, or no row
                    known = False
                if known:
                    path.unlink()
                    repaired.append(f"removed {name} of a finished clip")
                    continue
            repaired.append(f"{name}: not part of any pending clip; left in place")
