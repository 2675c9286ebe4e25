"""How each status :class:`Pattern` looks on a single LED: one table, shared by every light."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Pattern

__all__ = ["PATTERNS", "Blink"]


@dataclass(frozen=True)
class Blink:
    """*count* flashes of *on_s* on, *off_s* off (repeating forever if None), then *pause_s* off.

    With ``on_s == 0`` the light is steady at *level* (0..1 brightness).
    """

    level: float = 1.0
    on_s: float = 0.0
    off_s: float = 0.0
    count: int | None = None
    pause_s: float = 0.0

    @property
    def steady(self) -> bool:
        return self.on_s == 0

    def steps(self) -> list[tuple[float, float]]:
        """One cycle as (brightness, seconds) steps."""
        if self.steady:
            return [(self.level, 1.0)]
        cycle = [(self.level, self.on_s), (0.0, self.off_s)] * (self.count or 1)
        cycle[-1] = (0.0, self.off_s + self.pause_s)
        return cycle

    def describe(self) -> str:
        if self.steady:
            return "off" if self.level == 0 else f"steady at {self.level:.0%}"
        flashes = f"{self.count} flashes" if self.count else "blinking"
        pause = f", {self.pause_s:g} s pause" if self.pause_s else ""
        return f"{flashes} {self.on_s:g} s on / {self.off_s:g} s off{pause}"


PATTERNS: dict[Pattern, Blink] = {
    Pattern.STARTING: Blink(on_s=1.0, off_s=1.0),
    Pattern.IDLE: Blink(level=0.1),
    Pattern.ARMED: Blink(level=1.0),
    Pattern.RECORDING: Blink(on_s=0.25, off_s=0.25),
    Pattern.SEALING: Blink(on_s=0.1, off_s=0.1),
    Pattern.REFUSED_STORAGE: Blink(on_s=0.2, off_s=0.3, count=2, pause_s=1.2),
    Pattern.REFUSED_CLOCK: Blink(on_s=0.2, off_s=0.3, count=3, pause_s=1.2),
    Pattern.REFUSED_HARDWARE: Blink(on_s=0.2, off_s=0.3, count=4, pause_s=1.2),
    Pattern.ERROR: Blink(on_s=1.5, off_s=0.3),
    # Unlike the counted refusals (0.2 s flashes): a flurry too quick to count, then a pause.
    Pattern.RECORD_AGAIN: Blink(on_s=0.1, off_s=0.1, count=6, pause_s=1.5),
}
