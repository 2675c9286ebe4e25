"""The puller: claims announced clips from the catalog, fetches, verifies, stores, receipts.

Each worker takes one clip at a time under a lease (so several receivers share the work and a
crashed one's clips are taken over), downloads it into the spool with byte-range resume, runs
the verification decisions, and only then moves the ciphertext into the store, marks it stored
and hands it to the receipt sender. A clip that fails verification is quarantined with its
reason, never receipted, and stays on the unit.

One unit cannot stop the others' ingest: each download has a deadline for the whole of it
(:meth:`FetchClient.fetch_deadline_s`), at most ``per_unit_concurrency`` workers fetch from one
unit at a time (the claim skips a unit that has as many), a unit's partial downloads may hold at
most ``spool_quota_bytes_per_unit`` of the spool (a fetch that would go over waits), and after
``max_attempts`` attempts on which the unit answered, a clip is quarantined as
``fetch_attempts_exhausted`` (it stays on its unit; the quarantine listing shows it). A clip
whose URL is outside the unit networks is quarantined as ``url_not_allowed`` without any
connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from protocol.registry import Registry

from .backoff import Backoff
from .catalog import Catalog, ClipState
from .catalog.errors import CatalogUnavailableError, IllegalTransitionError, LeaseLostError
from .catalog.records import ClipRecord
from .fetch import FetchClient, FetchError, FetchErrorKind
from .store import ClipStore
from .verify import verify_clip_file

__all__ = ["PullSettings", "Puller"]

log = logging.getLogger("painav.receiver.puller")


@dataclass(frozen=True)
class PullSettings:
    concurrency: int = 4
    lease_s: float = 300.0
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    idle_poll_s: float = 1.0  # how long a worker waits when the queue is empty
    per_unit_concurrency: int = 1
    max_attempts: int = 20
    spool_quota_bytes_per_unit: int = 1 << 30


class Puller:
    """*concurrency* workers pulling clips until :meth:`stop`."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        store: ClipStore,
        fetcher: FetchClient,
        registry_path: Path,
        data_key_recipient: str,
        spool: Path,
        on_stored: Callable[[ClipRecord], None],
        worker_id: str,
        settings: PullSettings = PullSettings(),
        on_quarantined: Callable[[str], None] = lambda _reason: None,
        on_fetch_failed: Callable[[str], None] = lambda _kind: None,
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._fetcher = fetcher
        self._registry_path = registry_path
        self._data_key = data_key_recipient
        self._spool = spool
        self._on_stored = on_stored
        # For the metrics: each quarantine's reason, each failed fetch's kind.
        self._on_quarantined = on_quarantined
        self._on_fetch_failed = on_fetch_failed
        self._worker_id = worker_id
        self._settings = settings
        self._lease_s = settings.lease_s
        self._backoff = Backoff(base_s=settings.retry_base_s, cap_s=settings.retry_max_s)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._reserved: dict[str, dict[str, int]] = {}  # unit -> clip -> bytes, being fetched
        self._reserving = threading.Lock()
        spool.mkdir(parents=True, exist_ok=True, mode=0o700)

    def start(self) -> None:
        # Leases held under our name are from a run that ended without releasing them (killed,
        # power cut): their fetches are dead, so they are due now, not when the leases expire.
        released = self._catalog.release_leases(f"{self._worker_id}/", now=datetime.now(UTC))
        if released:
            log.info("took back %d clips this receiver was fetching when it stopped", len(released))
        for n in range(self._settings.concurrency):
            name = f"{self._worker_id}/{n}"
            thread = threading.Thread(target=self._work, args=(name,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """Something was announced: idle workers look at the queue now."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _work(self, worker: str) -> None:
        unavailable = False
        while not self._stop.is_set():
            try:
                clip = self._catalog.claim_next(
                    worker=worker,
                    now=datetime.now(UTC),
                    lease_s=self._settings.lease_s,
                    per_unit=self._settings.per_unit_concurrency,
                )
            except CatalogUnavailableError as exc:  # wait for it; one warning per worker per outage
                if not unavailable:
                    log.warning(
                        "%s: claiming clips waits until the catalog is back: %s", worker, exc
                    )
                unavailable = True
                clip = None
            except Exception:  # a bug must not end the worker either
                log.exception("claiming a clip failed")
                clip = None
            else:
                if unavailable:
                    log.info("%s: the catalog is back", worker)
                unavailable = False
            if clip is None:
                self._wake.wait(self._settings.idle_poll_s)
                self._wake.clear()
                continue
            try:
                self.pull(clip, worker)
            except Exception:  # one bad clip must not end the worker
                log.exception("pulling %s failed", clip.clip_id)
                self._retry(clip, worker, "internal error, see the journal")

    def pull(self, clip: ClipRecord, worker: str) -> None:
        """Fetch, verify and store one claimed clip."""
        part = self._spool / f"{clip.clip_id}.part"
        over = self._reserve(clip)
        if over is not None:
            # Counted: partial files of one unit that leave no room for one another would
            # otherwise wait forever; exhausted, a clip is quarantined and its file freed.
            self._retry(clip, worker, over)
            return
        try:
            self._pull(clip, worker, part)
        finally:
            self._release(clip)

    def _pull(self, clip: ClipRecord, worker: str, part: Path) -> None:
        # The lease must outlast the download: a lapsed lease lets a second worker at the unit.
        deadline_s = min(self._fetcher.fetch_deadline_s(clip.size_bytes), 0.8 * self._lease_s)
        try:
            # Clip and signature over one connection: one handshake, one identity check.
            with self._fetcher.connect(
                clip.url, device_id=clip.device_id, deadline_s=deadline_s
            ) as unit:
                result = unit.fetch(
                    clip.url, part, expected_size=clip.size_bytes, expected_sha256=clip.sha256
                )
                signature = unit.fetch_signature(clip.url + ".minisig")
        except FetchError as exc:
            self._on_fetch_failed(exc.kind.value)
            if exc.kind is FetchErrorKind.NOT_ALLOWED:
                self._quarantine(clip, "url_not_allowed", str(exc), part)
            elif exc.retryable:
                # A unit that does not answer at all costs nothing: not counted, so a unit
                # switched off for a weekend does not exhaust its clips' attempts.
                answered = exc.kind is not FetchErrorKind.UNREACHABLE
                self._retry(clip, worker, str(exc), counted=answered)
            else:
                self._quarantine(clip, f"fetch_{exc.kind}", str(exc), part)
            return
        verdict = verify_clip_file(
            Registry.load(self._registry_path),
            device_id=clip.device_id,
            clip_id=clip.clip_id,
            announced_sha256=clip.sha256,
            signature_text=signature,
            clip_file=part,
            data_key_recipient=self._data_key,
            manifest_recipients=list(clip.manifest.recipients),
            participant=clip.manifest.participant,
            visit=clip.manifest.visit,
            digests=result.digests,  # hashed as it arrived: the file is not read again
        )
        if not verdict.ok:
            assert verdict.reason is not None
            self._quarantine(clip, verdict.reason.value, verdict.detail, part)
            return
        # The spool file is moved, not copied: its hash was computed while it arrived.
        key = self._store.put(clip.sha256, part, signature, move=True)
        try:
            stored = self._catalog.mark_stored(
                clip.clip_id, store_key=key, stored_at=datetime.now(UTC), worker=worker
            )
        except (LeaseLostError, IllegalTransitionError):
            # The clip changed hands while we fetched. Quarantined meanwhile (re-announced with
            # another hash): its bytes must not stay in the store, unless another clip that is
            # stored has the same hash (then they are that clip's too). Taken over by another
            # worker: that worker stores the same bytes under the same key, so they stay.
            quarantined = self._catalog.clip(clip.clip_id).state is ClipState.QUARANTINED
            if quarantined and not self._catalog.stored_with_hash(clip.sha256):
                self._store.delete(clip.sha256)
            log.warning("%s changed hands while it was fetched; not marked stored", clip.clip_id)
            return
        log.info(
            "stored %s from %s (%d bytes, %d transferred%s)",
            clip.clip_id,
            clip.device_id,
            result.size,
            result.transferred,
            ", resumed" if result.resumed else "",
        )
        self._on_stored(stored)

    def _retry(self, clip: ClipRecord, worker: str, error: str, *, counted: bool = True) -> None:
        if counted and clip.attempts + 1 >= self._settings.max_attempts:
            detail = f"{clip.attempts + 1} attempts, the last: {error}"
            self._quarantine(clip, "fetch_attempts_exhausted", detail, self._part(clip))
            return
        # Exponential backoff with full jitter, so a unit that comes back is not stampeded; an
        # unanswered attempt backs off as if it were the sixth (up to a minute at the base 2 s).
        delay_s = self._backoff.delay_s(clip.attempts if counted else max(clip.attempts, 5))
        retry_at = datetime.now(UTC) + timedelta(seconds=delay_s)
        log.warning("fetching %s failed, retrying: %s", clip.clip_id, error)
        try:
            self._catalog.fetch_failed(
                clip.clip_id, error=error, retry_at=retry_at, worker=worker, counted=counted
            )
        except Exception:  # the lease lapses and another worker takes it
            log.exception("could not record the failed fetch of %s", clip.clip_id)

    # --- the spool quota ----------------------------------------------------------------------

    def _part(self, clip: ClipRecord) -> Path:
        return self._spool / f"{clip.clip_id}.part"

    def _reserve(self, clip: ClipRecord) -> str | None:
        """Reserve the clip's announced size in its unit's spool quota; None if done, else why
        the fetch must wait. A unit's share is its other clips being fetched here (at their
        announced size, which they may reach) and its partial files (at what they hold)."""
        quota = self._settings.spool_quota_bytes_per_unit
        waiting = [
            c.clip_id
            for state in (ClipState.ANNOUNCED, ClipState.FETCHING)
            for c in self._catalog.clips(state=state, device_id=clip.device_id)
            if c.clip_id != clip.clip_id
        ]
        with self._reserving:
            reserved = self._reserved.setdefault(clip.device_id, {})
            held = sum(
                reserved.get(clip_id, _size(self._spool / f"{clip_id}.part")) for clip_id in waiting
            )
            if held + clip.size_bytes > quota:
                return (
                    f"spool quota: unit {clip.device_id}'s partial downloads hold {held} bytes; "
                    f"this clip's {clip.size_bytes} would pass its {quota}-byte quota"
                )
            reserved[clip.clip_id] = clip.size_bytes
        return None

    def _release(self, clip: ClipRecord) -> None:
        with self._reserving:
            reserved = self._reserved.get(clip.device_id, {})
            reserved.pop(clip.clip_id, None)
            if not reserved:
                self._reserved.pop(clip.device_id, None)

    def _quarantine(self, clip: ClipRecord, reason: str, detail: str, part: Path) -> None:
        log.error("quarantined %s from %s: %s (%s)", clip.clip_id, clip.device_id, reason, detail)
        self._catalog.quarantine(clip.clip_id, reason)
        self._on_quarantined(reason)
        part.unlink(missing_ok=True)  # nothing of a rejected clip is kept; the unit keeps it


def _size(path: Path) -> int:
    """The size of *path*, 0 if there is none."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
