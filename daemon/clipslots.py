"""The clip server's connection slots: unauthenticated connections bounded apart from served ones.

Anyone on the ward network can open a TCP connection to a unit's clip server; only the
receiver can authenticate. So a connection is *pending* from its acceptance until its peer
passes the certificate check, and *served* from then on; the two are counted separately:

- at most ``max_pending`` connections are pending, and at most ``max_pending_per_address``
  from one address; a newcomer beyond either drops the oldest pending one (of its own address
  first), not itself, so idle or dribbling sockets cannot keep the receiver's next connection
  out: a host's sockets push out its own, and the receiver's handshake, a few milliseconds,
  outlives a flood from other addresses until ``max_pending`` newer ones have arrived;
- a pending connection is dropped ``handshake_s`` after it was accepted, whatever it sends;
- at most ``max_served`` authenticated connections are served at once.

No I/O here: the methods say which connections to drop, and the caller shuts them down::

    slots = Slots(max_pending=32, max_pending_per_address=8, max_served=8, handshake_s=5.0)
    for old in slots.admit(conn, "10.0.0.5", now=time.monotonic()):
        shut_down(old)
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Slots", "State"]

Conn = TypeVar("Conn", bound=Hashable)


class State(enum.Enum):
    PENDING = "pending"  # accepted; handshake or certificate check not yet passed
    SERVED = "served"  # the peer authenticated as a receiver
    DROPPED = "dropped"  # shut down by us; its thread has not left yet


@dataclass
class _Entry:
    address: str
    accepted: float
    state: State = State.PENDING


class Slots(Generic[Conn]):
    """The open connections of one clip server and their states (not thread-safe: the caller
    holds its lock around every call)."""

    def __init__(
        self, *, max_pending: int, max_pending_per_address: int, max_served: int, handshake_s: float
    ) -> None:
        if min(max_pending, max_pending_per_address, max_served) < 1:
            raise ValueError("max_pending, max_pending_per_address and max_served must be >= 1")
        if not handshake_s > 0:
            raise ValueError("handshake_s must be positive")
        self.max_pending = max_pending
        self.max_pending_per_address = max_pending_per_address
        self.max_served = max_served
        self.handshake_s = handshake_s
        self._entries: dict[Conn, _Entry] = {}
        self.dropped = 0
        """How many pending connections were dropped (pool full or past the deadline)."""

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Conn]:
        return iter(list(self._entries))

    def count(self, state: State) -> int:
        return sum(1 for e in self._entries.values() if e.state is state)

    def state(self, conn: Conn) -> State | None:
        entry = self._entries.get(conn)
        return None if entry is None else entry.state

    def admit(self, conn: Conn, address: str, *, now: float) -> list[Conn]:
        """Take *conn*, from *address*, as pending; return the connection to drop for it (the
        oldest pending one of *address* if it has its fill, else the oldest of all if the pool
        is full), or nothing."""
        pending = [(c, e) for c, e in self._entries.items() if e.state is State.PENDING]
        own = [(c, e) for c, e in pending if e.address == address]
        victims: list[Conn] = []
        for crowd, limit in ((own, self.max_pending_per_address), (pending, self.max_pending)):
            if len(crowd) >= limit:
                victims.append(self._drop(min(crowd, key=lambda item: item[1].accepted)[0]))
                break
        self._entries[conn] = _Entry(address, now)
        return victims

    def replace(self, old: Conn, new: Conn, *, now: float) -> bool:
        """Track *new* (a TLS socket) in place of *old* (the raw socket it wraps), keeping its
        age and state; False if it was dropped (or never admitted): the caller shuts it down."""
        entry = self._entries.pop(old, None) or _Entry("", now, State.DROPPED)
        self._entries[new] = entry
        return entry.state is not State.DROPPED

    def authenticated(self, conn: Conn) -> bool:
        """Move a pending *conn* whose peer passed the certificate check to a served slot;
        False if every served slot is taken, or it is no longer pending."""
        entry = self._entries.get(conn)
        if entry is None or entry.state is not State.PENDING:
            return False
        if self.count(State.SERVED) >= self.max_served:
            return False
        entry.state = State.SERVED
        return True

    def leave(self, conn: Conn) -> None:
        """Forget *conn*: its thread is done with it."""
        self._entries.pop(conn, None)

    def expired(self, *, now: float) -> list[Conn]:
        """Drop and return the pending connections accepted more than ``handshake_s`` ago."""
        late = [
            c
            for c, e in self._entries.items()
            if e.state is State.PENDING and now - e.accepted > self.handshake_s
        ]
        return [self._drop(c) for c in late]

    def _drop(self, conn: Conn) -> Conn:
        self._entries[conn].state = State.DROPPED
        self.dropped += 1
        return conn
