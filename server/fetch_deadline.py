"""A deadline over a whole exchange with a unit: a timer that shuts the socket when it passes,
whatever the unit is sending, since a per-read timeout lets one byte every few seconds through."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

__all__ = ["Deadline"]


class Deadline:
    """*seconds* from now, for the sockets :meth:`guard` is given; :meth:`cancel` when done.

    At the deadline the guarded socket is shut down (both ways), which ends any blocked
    connect, handshake or read at once; the caller sees :attr:`expired` and reports a timeout.
    The socket is shut at the file-descriptor level (``socket.socket.shutdown``), not through
    TLS, so that the timer thread never touches the TLS state the reading thread is using::

        deadline = Deadline(40.0)
        try:
            deadline.guard(sock)
            ...  # reads; an OSError after deadline.expired is the deadline's
        finally:
            deadline.cancel()
    """

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError("a deadline must be in the future")
        self.seconds = seconds
        self._at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.name = "fetch-deadline"
        self._timer.start()

    def remaining_s(self) -> float:
        """Seconds left (0 once passed)."""
        return max(0.0, self._at - time.monotonic())

    def guard(self, sock: socket.socket) -> None:
        """Shut *sock* at the deadline (at once if it has passed); replaces an earlier one."""
        with self._lock:
            self._sock = sock
            if self.expired:
                _shut(sock)

    @contextlib.contextmanager
    def unguarded(self) -> Iterator[None]:
        """Stop guarding the socket for the block (closing it): the timer never shuts a
        descriptor number that a close has freed for another connection to reuse."""
        with self._lock:
            self._sock = None
            yield

    def cancel(self) -> None:
        """The exchange is over: stop the timer."""
        self._timer.cancel()
        with self._lock:
            self._sock = None

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                _shut(self._sock)


def _shut(sock: socket.socket) -> None:
    # Not connected yet, or closed already: then the connect timeout bounds it.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
