"""The push button, status LED and optional buzzer on the Pi's GPIO header, through gpiozero."""

from __future__ import annotations

import itertools
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from .base import HardwareError, Pattern
from .patterns import PATTERNS, Blink

__all__ = ["GpioButton", "GpioLight"]

log = logging.getLogger(__name__)

TICK_S = 0.05  # the light's pattern steps are multiples of this


def _gpiozero() -> Any:
    try:
        import gpiozero
    except ImportError as exc:
        raise HardwareError(
            "gpio: gpiozero is not installed (pip install 'painav[device]')"
        ) from exc
    return gpiozero


def _pin_errors(gpiozero: Any) -> tuple[type[Exception], ...]:
    """What gpiozero raises for a pin it cannot use: its own errors, and ``lgpio.error``.

    gpiozero's lgpio pin factory (the default on a Pi 5) lets lgpio's errors through: "GPIO
    busy" when another program holds the line, "can not open gpiochip" when the chip will not
    open. lgpio may not be installed, so it is looked up only once gpiozero has imported it;
    evaluated in an ``except`` clause, that is after the error was raised.
    """
    error = getattr(sys.modules.get("lgpio"), "error", None)
    if isinstance(error, type) and issubclass(error, Exception):
        return (gpiozero.GPIOZeroError, error)
    return (gpiozero.GPIOZeroError,)


def _reason(exc: Exception) -> str:
    """One line for a pin error; lgpio's print as their repr, so use the message they carry."""
    if type(exc).__module__ == "lgpio":
        return f"{getattr(exc, 'value', exc)} (lgpio)"
    return str(exc)


def _call(callback: Callable[[], None] | None, what: str) -> None:
    if callback is None:
        return
    try:
        callback()
    except Exception:  # must not kill gpiozero's or the debounce timer's thread
        log.exception("button: the %s callback failed", what)


class GpioButton:
    """A push button between a GPIO and ground: short press on release, long press when held.

    Debounced here, in software: a press or release counts once the pin has kept its level for
    *bounce_s* (pin factories differ: a bounce time that ignores edges, as RPi.GPIO's, can
    drop the last edge of a burst; gpiozero's MockFactory has none). A press held for *hold_s*
    is a long press (gpiozero's ``when_held``) and its release is then not also a short press.
    Callbacks run on gpiozero's or the debounce timer's thread.

    >>> button = GpioButton(17, bounce_s=0.05, hold_s=2.0)
    >>> button.on_press(lambda: print("start/stop")); button.on_long_press(lambda: print("discard"))
    """

    def __init__(
        self,
        pin: int,
        *,
        pull_up: bool = True,
        bounce_s: float = 0.05,
        hold_s: float = 2.0,
        pin_factory: Any = None,
    ) -> None:
        if not 0 <= bounce_s < hold_s:
            raise ValueError(f"button: need 0 <= bounce_s ({bounce_s}) < hold_s ({hold_s})")
        gpiozero = _gpiozero()
        try:
            self._button: Any = gpiozero.Button(
                pin, pull_up=pull_up, bounce_time=None, hold_time=hold_s, pin_factory=pin_factory
            )
        except _pin_errors(gpiozero) as exc:
            raise HardwareError(f"button: cannot use GPIO{pin}: {_reason(exc)}") from exc
        self.pin = pin
        self.bounce_s = bounce_s
        self.hold_s = hold_s
        self._lock = threading.Lock()
        self._pressed = False  # the debounced level
        self._held = False  # the current press became a long press
        self._timer: threading.Timer | None = None
        self._on_press: Callable[[], None] | None = None
        self._on_long_press: Callable[[], None] | None = None
        self._button.when_activated = self._edge
        self._button.when_deactivated = self._edge
        self._button.when_held = self._hold

    def on_press(self, callback: Callable[[], None]) -> None:
        self._on_press = callback

    def on_long_press(self, callback: Callable[[], None]) -> None:
        self._on_long_press = callback

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
        self._button.close()

    def _edge(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.bounce_s, self._settle)
            self._timer.daemon = True
            self._timer.start()

    def _settle(self) -> None:
        """The pin has kept its level for bounce_s since the last edge."""
        try:
            active = bool(self._button.is_active)
        except Exception:  # closed meanwhile
            return
        with self._lock:
            if active == self._pressed:
                return
            self._pressed = active
            if active:
                self._held = False
                return
            short = not self._held
        if short:
            log.info("button: short press")
            _call(self._on_press, "press")

    def _hold(self) -> None:
        with self._lock:
            if self._held:
                return
            self._held = self._pressed = True
        log.info("button: long press")
        _call(self._on_long_press, "long press")


class GpioLight:
    """The status LED (PWM, for a dim and a bright steady) and optional buzzer on GPIO pins.

    Each :class:`Pattern` is drawn from :data:`PATTERNS` by gpiozero's ``source`` machinery,
    one brightness every ``TICK_S``; the buzzer, if fitted, beeps once when recording starts
    and twice when it stops.

    >>> light = GpioLight(18, buzzer_pin=27)
    >>> light.show(Pattern.RECORDING)
    """

    def __init__(
        self, led_pin: int, *, buzzer_pin: int | None = None, pin_factory: Any = None
    ) -> None:
        gpiozero = _gpiozero()
        self._led: Any = None
        self._buzzer: Any = None
        try:
            self._led = gpiozero.PWMLED(led_pin, pin_factory=pin_factory)
            if buzzer_pin is not None:
                self._buzzer = gpiozero.Buzzer(buzzer_pin, pin_factory=pin_factory)
        except _pin_errors(gpiozero) as exc:
            if self._led is not None:
                self._led.close()
            raise HardwareError(
                f"light: cannot use GPIO{led_pin}/{buzzer_pin}: {_reason(exc)}"
            ) from exc
        self._pattern: Pattern | None = None
        self._lock = threading.Lock()

    @property
    def pattern(self) -> Pattern | None:
        return self._pattern

    def show(self, pattern: Pattern) -> None:
        with self._lock:
            previous, self._pattern = self._pattern, pattern
            if pattern == previous:
                return
            self._render(PATTERNS[pattern])
            if self._buzzer is not None:
                if pattern == Pattern.RECORDING:
                    self._buzzer.beep(on_time=0.15, off_time=0.1, n=1, background=True)
                elif previous == Pattern.RECORDING:
                    self._buzzer.beep(on_time=0.08, off_time=0.08, n=2, background=True)
        log.debug("light: %s (%s)", pattern.value, PATTERNS[pattern].describe())

    def _render(self, blink: Blink) -> None:
        self._led.source = None  # stops the previous pattern's thread
        if blink.steady:
            self._led.value = blink.level
            return
        levels = [
            level
            for level, seconds in blink.steps()
            for _ in range(max(1, round(seconds / TICK_S)))
        ]
        self._led.source_delay = TICK_S
        self._led.source = itertools.cycle(levels)

    def close(self) -> None:
        with self._lock:
            for device in (self._led, self._buzzer):
                if device is not None:
                    device.close()
            self._led = self._buzzer = None
