"""A simulated button (pressed from code or the local control socket) and a logging light."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .base import HardwareError, Pattern
from .patterns import PATTERNS

__all__ = ["LightChange", "SimulatedButton", "SimulatedLight"]

log = logging.getLogger(__name__)


class SimulatedButton:
    """The nurse's button, pressed in software: :meth:`press` and :meth:`long_press` run the
    registered callback on the caller's thread, as a real button's would run on its own.

    >>> button = SimulatedButton()
    >>> button.on_press(lambda: print("pressed"))
    >>> button.press()
    pressed
    """

    def __init__(self) -> None:
        self._on_press: Callable[[], None] | None = None
        self._on_long_press: Callable[[], None] | None = None
        self._closed = False
        self.presses = 0
        self.long_presses = 0

    def on_press(self, callback: Callable[[], None]) -> None:
        self._on_press = callback

    def on_long_press(self, callback: Callable[[], None]) -> None:
        self._on_long_press = callback

    def press(self) -> None:
        """A short press (released before the hold time)."""
        self._fire("press", self._on_press)
        self.presses += 1

    def long_press(self) -> None:
        """A press held past the hold time."""
        self._fire("long press", self._on_long_press)
        self.long_presses += 1

    def _fire(self, what: str, callback: Callable[[], None] | None) -> None:
        if self._closed:
            raise HardwareError(f"button: {what} after close()")
        log.info("button: %s (simulated)", what)
        if callback is not None:
            callback()

    def close(self) -> None:
        self._closed = True
        self._on_press = self._on_long_press = None


@dataclass(frozen=True)
class LightChange:
    """One entry of :attr:`SimulatedLight.history`."""

    at_ns: int  # time.monotonic_ns() of the change
    pattern: Pattern


class SimulatedLight:
    """A status light that logs each change of pattern and remembers it, with its monotonic time.

    >>> light = SimulatedLight()
    >>> light.show(Pattern.ARMED)
    >>> [change.pattern for change in light.history]
    [<Pattern.ARMED: 'armed'>]
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._history: list[LightChange] = []
        self._closed = False

    @property
    def history(self) -> tuple[LightChange, ...]:
        with self._lock:
            return tuple(self._history)

    @property
    def pattern(self) -> Pattern | None:
        with self._lock:
            return self._history[-1].pattern if self._history else None

    def show(self, pattern: Pattern) -> None:
        with self._lock:
            if self._closed:
                raise HardwareError("light: show() after close()")
            if self._history and self._history[-1].pattern == pattern:
                return
            self._history.append(LightChange(time.monotonic_ns(), pattern))
        log.info("light: %s (%s)", pattern.value, PATTERNS[pattern].describe())

    def close(self) -> None:
        with self._lock:
            self._closed = True
