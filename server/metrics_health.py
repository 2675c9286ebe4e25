"""Health for ``/healthz``: a service is healthy while each of its loops has beaten recently
and its catalog answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .catalog import Catalog, CatalogError

__all__ = ["Heartbeat", "health_check"]


class Heartbeat:
    """When a loop last went round: it calls :meth:`beat` each time; it is alive while the last
    beat is younger than *max_age_s*. Thread-safe; time is monotonic (*clock*, for tests)."""

    def __init__(
        self, name: str, max_age_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None

    def beat(self) -> None:
        with self._lock:
            self._last = self._clock()

    def problem(self) -> str | None:
        """None while alive, else one line: never started, or silent for how long."""
        with self._lock:
            last = self._last
        if last is None:
            return f"{self.name} has not started"
        age_s = self._clock() - last
        if age_s > self.max_age_s:
            return f"{self.name} last went round {age_s:.0f} s ago (limit {self.max_age_s:.0f} s)"
        return None


def health_check(catalog: Catalog, *heartbeats: Heartbeat) -> Callable[[], str | None]:
    """The ``/healthz`` check of a service with these loops and this catalog."""

    def check() -> str | None:
        for heartbeat in heartbeats:
            problem = heartbeat.problem()
            if problem is not None:
                return problem
        try:
            catalog.ping()
        except CatalogError as exc:
            return f"catalog does not answer: {exc}"
        return None

    return check
