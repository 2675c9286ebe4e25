"""Hashing a clip while it downloads, and the hash states kept between attempts so that a
resumed download need not read the partial file again."""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

from protocol.signing import ClipHasher

__all__ = ["BackgroundHashing", "ResumePoints", "copy_hasher"]

RESUME_POINTS: Final = 64
"""How many partial downloads' hash states are kept: one per clip, a few hundred bytes each."""


def copy_hasher(hasher: ClipHasher) -> ClipHasher:
    """An independent copy of *hasher*'s state."""
    copy = ClipHasher()
    copy.blake2b, copy.sha256, copy.size = hasher.blake2b.copy(), hasher.sha256.copy(), hasher.size
    return copy


class ResumePoints:
    """The hash states of partial downloads, keyed by spool file, announced hash and length.

    An interrupted download keeps its partial file; hashing it again before resuming would read
    up to 512 MiB from disk at every attempt (a unit cutting its downloads short on purpose
    makes that a lever). The state at the point of interruption is kept here instead, and
    used only if the file still has exactly that length. At most *limit* states, the oldest
    dropped first; after a receiver restart there are none, and the file is hashed again once.
    """

    def __init__(self, limit: int = RESUME_POINTS) -> None:
        self._limit = limit
        self._points: OrderedDict[tuple[str, str, int], ClipHasher] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, path: str, sha256: str, hasher: ClipHasher) -> None:
        """Remember *hasher* (copied) for the partial file *path* of the clip *sha256*."""
        with self._lock:
            for key in [k for k in self._points if k[:2] == (path, sha256)]:
                del self._points[key]
            self._points[(path, sha256, hasher.size)] = copy_hasher(hasher)
            while len(self._points) > self._limit:
                self._points.popitem(last=False)

    def take(self, path: str, sha256: str, size: int) -> ClipHasher | None:
        """The state for *path* at *size* bytes, if kept (and forget it: the file will grow)."""
        with self._lock:
            return self._points.pop((path, sha256, size), None)


class BackgroundHashing:
    """Feeds a :class:`ClipHasher` from a ring of buffers on two threads, one per digest, while
    the caller receives into the next buffer (hashlib releases the GIL on large updates).

    BLAKE2b costs more than TLS and the disk together; hashed in line, it would halve a
    download's speed. A buffer is handed out again only once both digests have taken it.
    """

    _RING = 3

    def __init__(self, hasher: ClipHasher, chunk_bytes: int) -> None:
        self._hasher = hasher
        self._buffers = [memoryview(bytearray(chunk_bytes)) for _ in range(self._RING)]
        self._pending: list[list[Future[None]]] = [[] for _ in range(self._RING)]
        self._next = 0
        self._threads = [ThreadPoolExecutor(1, thread_name_prefix="fetch-hash") for _ in range(2)]

    def __enter__(self) -> BackgroundHashing:
        return self

    def __exit__(self, *exc: object) -> None:
        for pool in self._threads:
            pool.shutdown(wait=True)  # every submitted update done, in order

    def free_buffer(self) -> memoryview:
        """The next buffer of the ring, once its previous contents are hashed."""
        for future in self._pending[self._next]:
            future.result()
        return self._buffers[self._next]

    def submit(self, n: int) -> None:
        """Hash the first *n* bytes of the buffer :meth:`free_buffer` last returned."""
        chunk = self._buffers[self._next][:n]
        blake2b, sha256 = self._hasher.blake2b, self._hasher.sha256
        self._pending[self._next] = [
            self._threads[0].submit(blake2b.update, chunk),
            self._threads[1].submit(sha256.update, chunk),
        ]
        self._hasher.size += n
        self._next = (self._next + 1) % self._RING
