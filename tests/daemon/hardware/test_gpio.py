"""The GPIO button and light, on gpiozero's own MockFactory pins (there is no GPIO header here)."""

from __future__ import annotations

import itertools
import sys
import time
import types
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from daemon.hardware.base import HardwareError, Pattern
from daemon.hardware.gpio import TICK_S, GpioButton, GpioLight
from daemon.hardware.patterns import PATTERNS, Blink

BUTTON_PIN, LED_PIN, BUZZER_PIN = 17, 18, 27


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    pins = MockFactory(pin_class=MockPWMPin)
    yield pins
    pins.reset()


class Presses:
    def __init__(self, button: GpioButton) -> None:
        self.short = 0
        self.long = 0
        button.on_press(self._short)
        button.on_long_press(self._long)

    def _short(self) -> None:
        self.short += 1

    def _long(self) -> None:
        self.long += 1


@pytest.fixture
def button(factory: MockFactory) -> Iterator[tuple[GpioButton, Presses]]:
    device = GpioButton(BUTTON_PIN, bounce_s=0.05, hold_s=0.4, pin_factory=factory)
    yield device, Presses(device)
    device.close()


def toggle(pin, levels: str, every_s: float = 0.003) -> None:
    """Drive *pin* through levels ("0"/"1") quickly, as contacts bounce."""
    for level in levels:
        pin.drive_high() if level == "1" else pin.drive_low()
        time.sleep(every_s)


def test_a_press_and_release_is_one_short_press(factory: MockFactory, button):
    _, presses = button
    pin = factory.pin(BUTTON_PIN)  # pulled up: pressing pulls it low
    pin.drive_low()
    time.sleep(0.15)
    assert presses.short == 0  # a short press is known only at release
    pin.drive_high()
    time.sleep(0.15)
    assert (presses.short, presses.long) == (1, 0)
    pin.drive_low()
    time.sleep(0.12)
    pin.drive_high()
    time.sleep(0.12)
    assert (presses.short, presses.long) == (2, 0)


def test_contact_bounce_on_press_and_release_is_still_one_press(factory: MockFactory, button):
    _, presses = button
    pin = factory.pin(BUTTON_PIN)
    toggle(pin, "010100")  # closing: bounces, ends low
    time.sleep(0.15)
    toggle(pin, "101011")  # opening: bounces, ends high
    time.sleep(0.15)
    assert (presses.short, presses.long) == (1, 0)


def test_a_glitch_shorter_than_the_bounce_time_is_not_a_press(factory: MockFactory, button):
    _, presses = button
    pin = factory.pin(BUTTON_PIN)
    pin.drive_low()
    time.sleep(0.01)
    pin.drive_high()
    time.sleep(0.15)
    assert (presses.short, presses.long) == (0, 0)


def test_holding_is_one_long_press_and_its_release_no_short_press(factory: MockFactory, button):
    _, presses = button
    pin = factory.pin(BUTTON_PIN)
    toggle(pin, "0100")
    time.sleep(0.25)
    assert presses.long == 0  # not yet held for hold_s
    time.sleep(0.35)
    assert presses.long == 1
    time.sleep(0.5)
    assert presses.long == 1  # once per hold, not repeated
    toggle(pin, "1011")
    time.sleep(0.15)
    assert (presses.short, presses.long) == (0, 1)
    pin.drive_low()  # and the next quick press is short again
    time.sleep(0.1)
    pin.drive_high()
    time.sleep(0.12)
    assert (presses.short, presses.long) == (1, 1)


def test_a_pin_already_in_use_is_a_hardware_error(factory: MockFactory, button):
    with pytest.raises(HardwareError, match="button: cannot use GPIO17"):
        GpioButton(BUTTON_PIN, pin_factory=factory)
    with pytest.raises(ValueError, match="bounce_s"):
        GpioButton(5, bounce_s=0.5, hold_s=0.2, pin_factory=factory)


@pytest.fixture
def light(factory: MockFactory) -> Iterator[GpioLight]:
    device = GpioLight(LED_PIN, buzzer_pin=BUZZER_PIN, pin_factory=factory)
    yield device
    device.close()


def on_off_durations(pin) -> list[tuple[float, float]]:
    """(level, seconds held) for each state the pin went through, the last one excluded."""
    states = pin.states
    return [(a.state, b.timestamp) for a, b in itertools.pairwise(states)]


def test_every_pattern_has_a_rendering_in_ticks():
    assert set(PATTERNS) == set(Pattern)
    for blink in PATTERNS.values():
        for _, seconds in blink.steps():
            assert round(seconds / TICK_S) * TICK_S == pytest.approx(seconds)
    assert Blink(on_s=0.2, off_s=0.3, count=2, pause_s=1.2).steps() == [
        (1.0, 0.2),
        (0.0, 0.3),
        (1.0, 0.2),
        (0.0, 1.5),
    ]


def test_steady_patterns_set_the_brightness(factory: MockFactory, light: GpioLight):
    led = factory.pin(LED_PIN)
    light.show(Pattern.ARMED)
    assert led.state == pytest.approx(1.0)
    light.show(Pattern.IDLE)
    assert led.state == pytest.approx(PATTERNS[Pattern.IDLE].level)
    assert 0 < led.state < 0.5  # dim, not off
    assert light.pattern == Pattern.IDLE


def test_recording_blinks_fast_and_beeps_once_then_twice_at_the_stop(
    factory: MockFactory, light: GpioLight
):
    led, buzzer = factory.pin(LED_PIN), factory.pin(BUZZER_PIN)
    light.show(Pattern.IDLE)
    led.clear_states()
    buzzer.clear_states()
    light.show(Pattern.RECORDING)
    time.sleep(1.15)
    held = on_off_durations(led)[1:]  # after the dim idle level
    assert [level for level, _ in held[:4]] == [1.0, 0.0, 1.0, 0.0]
    for _, seconds in held[:4]:
        assert seconds == pytest.approx(0.25, abs=0.06)
    assert [s.state for s in buzzer.states] == [False, True, False]  # one beep
    buzzer.clear_states()
    light.show(Pattern.SEALING)
    time.sleep(0.45)
    assert [s.state for s in buzzer.states] == [False, True, False, True, False]  # two beeps
    sealing = on_off_durations(led)[-3:]  # 0.1 s flashes
    assert all(seconds == pytest.approx(0.1, abs=0.05) for _, seconds in sealing)


def test_refusals_flash_a_count_then_pause(factory: MockFactory, light: GpioLight):
    led = factory.pin(LED_PIN)
    light.show(Pattern.IDLE)
    led.clear_states()
    light.show(Pattern.REFUSED_STORAGE)  # two flashes, then a pause
    time.sleep(1.2)
    held = on_off_durations(led)[1:]  # after the dim idle level
    assert [level for level, _ in held] == [1.0, 0.0, 1.0]
    for (_, seconds), wanted in zip(held, (0.2, 0.3, 0.2), strict=True):
        assert seconds == pytest.approx(wanted, abs=0.06)
    assert led.state == 0.0  # in the 1.5 s pause
    assert factory.pin(BUZZER_PIN).state == 0  # no beep outside recording


class LgpioError(Exception):
    """A stand-in for ``lgpio.error``, which gpiozero's lgpio pins let through untranslated."""

    __module__ = "lgpio"

    def __init__(self, value: str) -> None:
        self.value = value

    def __str__(self) -> str:
        return repr(self.value)  # as lgpio's own error prints


@pytest.fixture
def lgpio_busy(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockFactory]:
    """A pin factory whose pins fail as LGPIOPin does when another program holds the line."""
    module = types.ModuleType("lgpio")
    module.error = LgpioError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lgpio", module)

    class BusyPin(MockPWMPin):  # type: ignore[misc]
        def __init__(self, factory: MockFactory, info: object) -> None:
            raise LgpioError("GPIO busy")  # LGPIOPin.__init__: gpio_claim_input

    pins = MockFactory(pin_class=BusyPin)
    yield pins
    pins.reset()


def test_an_lgpio_error_is_a_hardware_error_in_one_line(lgpio_busy: MockFactory):
    with pytest.raises(HardwareError) as error:
        GpioButton(BUTTON_PIN, pin_factory=lgpio_busy)
    assert str(error.value) == "button: cannot use GPIO17: GPIO busy (lgpio)"
    assert isinstance(error.value.__cause__, LgpioError)
    with pytest.raises(HardwareError) as error:
        GpioLight(LED_PIN, buzzer_pin=BUZZER_PIN, pin_factory=lgpio_busy)
    assert str(error.value) == "light: cannot use GPIO18/27: GPIO busy (lgpio)"
