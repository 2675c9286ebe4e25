"""The clip server's slot bookkeeping, in-process: who is dropped, and when (no sockets)."""

from __future__ import annotations

import pytest

from daemon.clipslots import Slots, State


def slots(**changes: float) -> Slots[str]:
    options: dict[str, float] = {
        "max_pending": 4,
        "max_pending_per_address": 2,
        "max_served": 1,
        "handshake_s": 5.0,
    }
    options.update(changes)
    return Slots(**options)  # type: ignore[arg-type]


def test_a_full_address_drops_its_own_oldest_pending_connection() -> None:
    s = slots()
    assert s.admit("a1", "10.0.0.9", now=0) == []
    assert s.admit("r1", "10.0.0.5", now=1) == []
    assert s.admit("a2", "10.0.0.9", now=2) == []
    assert s.admit("a3", "10.0.0.9", now=3) == ["a1"]  # its own, not the older of another
    assert s.admit("a4", "10.0.0.9", now=4) == ["a2"]
    assert (s.state("r1"), s.state("a1"), s.count(State.PENDING)) == (
        State.PENDING,
        State.DROPPED,
        3,
    )
    assert s.dropped == 2


def test_a_full_pool_drops_the_oldest_pending_of_all() -> None:
    s = slots()
    for n, address in enumerate(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]):
        assert s.admit(f"c{n}", address, now=n) == []
    assert s.admit("c4", "10.0.0.5", now=9) == ["c0"]  # never the newcomer itself
    assert s.state("c4") is State.PENDING


def test_served_slots_are_taken_only_after_authentication() -> None:
    s = slots(max_pending=8, max_pending_per_address=8)
    for conn in ("r1", "r2", "x"):
        s.admit(conn, "10.0.0.5", now=0)
    assert s.authenticated("r1") is True
    assert s.authenticated("r2") is False  # the one served slot is taken
    assert s.count(State.SERVED) == 1 and s.state("r2") is State.PENDING
    # A served connection is never dropped for a newcomer, nor at the handshake deadline.
    for n in range(8):
        s.admit(f"n{n}", "10.0.0.5", now=1)
    assert s.state("r1") is State.SERVED
    assert s.expired(now=100) == ["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7"]
    s.leave("r1")
    assert s.state("r1") is None and len(s) == 10


def test_the_deadline_counts_from_acceptance_and_a_dropped_one_cannot_be_served() -> None:
    s = slots()
    s.admit("raw", "10.0.0.5", now=0)
    assert s.replace("raw", "tls", now=3) is True  # keeps its age: still due at 5 s
    assert s.expired(now=5) == []
    assert s.expired(now=5.1) == ["tls"]
    assert s.expired(now=9) == []  # dropped once
    assert s.authenticated("tls") is False
    assert s.replace("gone", "tls2", now=9) is False  # evicted before it was wrapped


def test_limits_must_allow_a_connection() -> None:
    with pytest.raises(ValueError):
        slots(max_served=0)
    with pytest.raises(ValueError):
        slots(handshake_s=0)
