"""Withdrawal of consent: erase everything of a participant and leave a tombstone.

In this order, each step safe to repeat: the units armed for them are disarmed and the consent
gate closes (their clips are no longer fetched, extracted or exported); workers holding one of
their clips are waited for; the ciphertexts leave the store and their feature tables the
feature folder; then, in one transaction, the catalog rows go (clips, features, quality checks,
visits, consent, clinical data, arm requests, the participant) and the tombstone and audit row
are written. Interrupted anywhere, running it again finishes it. A clip of theirs still on a
unit is receipted and discarded when it arrives, never stored.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ..catalog import Catalog, StudyError
from ..catalog.withdrawal import ClipToErase, TombstoneRecord
from ..store import ClipStore

__all__ = ["withdraw"]


def withdraw(
    catalog: Catalog,
    store: ClipStore,
    features_dir: Path,
    pseudonym: str,
    *,
    wait_s: float = 900.0,
    poll_s: float = 1.0,
    say: Callable[[str], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> TombstoneRecord:
    """Withdraw *pseudonym*; return the tombstone. Waits up to *wait_s* for workers that hold
    one of their clips (a fetch or an extraction under way), then :class:`StudyError`."""
    deadline = monotonic() + wait_s
    files = 0
    for device_id in catalog.armed_for(pseudonym):  # no unit records them any more
        catalog.request_disarm(device_id)
        say(f"{pseudonym}: {device_id} disarmed")
    while True:
        clips = catalog.begin_withdrawal(pseudonym)
        busy = [c for c in clips if c.busy_until is not None]
        if not busy:
            files += _erase_files(clips, store, features_dir)
            try:
                tombstone = catalog.finish_withdrawal(pseudonym, files_erased=files)
            except StudyError:  # a fetch claimed one of their clips meanwhile
                if monotonic() > deadline:
                    raise
            else:
                catalog.scrub()
                return tombstone
        elif monotonic() > deadline:
            raise StudyError(
                f"{pseudonym}: {len(busy)} clip(s) still held by a worker; nothing of theirs is "
                "extracted or exported any more: run withdraw again to finish the erasure"
            )
        else:
            say(f"{pseudonym}: waiting for a worker to let go of {len(busy)} clip(s)")
        sleep(poll_s)


def _erase_files(clips: list[ClipToErase], store: ClipStore, features_dir: Path) -> int:
    """Remove the clips' ciphertexts and feature tables; return how many files went."""
    erased = 0
    for clip in clips:
        if clip.stored and store.exists(clip.sha256):
            store.delete(clip.sha256)
            erased += 1
        folder = features_dir / clip.clip_id  # the worker writes a clip's tables here
        if folder.is_dir():
            erased += sum(1 for path in folder.rglob("*") if path.is_file())
            shutil.rmtree(folder)
    return erased
