"""Delays between retries: exponential with full jitter, capped."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays between retries: exponential with full jitter, capped.

    Attempt *n* waits a uniform random time in ``[0, min(cap_s, base_s * factor**n)]``, so that
    receivers retrying the same unit spread out instead of arriving together::

        backoff = Backoff(base_s=1.0, cap_s=300.0)
        time.sleep(backoff.next_s())  # after each failure
        backoff.reset()  # after a success
    """

    def __init__(
        self,
        *,
        base_s: float = 1.0,
        cap_s: float = 300.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < base_s <= cap_s or factor < 1:
            raise ValueError("Backoff needs 0 < base_s <= cap_s and factor >= 1")
        self.base_s, self.cap_s, self.factor = base_s, cap_s, factor
        self._rng = rng or random.Random()
        self.attempts = 0

    def ceiling_s(self, attempt: int) -> float:
        """The longest delay before retry *attempt* (0 for the first retry)."""
        try:
            return min(self.cap_s, self.base_s * self.factor ** max(attempt, 0))
        except OverflowError:  # after some thousand attempts
            return self.cap_s

    def delay_s(self, attempt: int) -> float:
        """A delay before retry *attempt*, for a caller that counts attempts itself."""
        return self._rng.uniform(0.0, self.ceiling_s(attempt))

    def next_s(self) -> float:
        """The delay before the next retry; counts an attempt."""
        delay = self.delay_s(self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0
