"""The simulated button and light that the demo, the control socket and the tests use."""

from __future__ import annotations

import logging
import time

import pytest

from daemon.hardware.base import HardwareError, Pattern
from daemon.hardware.sim_controls import LightChange, SimulatedButton, SimulatedLight


def test_press_and_long_press_run_the_registered_callbacks():
    button = SimulatedButton()
    events: list[str] = []
    button.press()  # nothing registered yet: nothing happens
    button.on_press(lambda: events.append("press"))
    button.on_long_press(lambda: events.append("long"))
    button.press()
    button.long_press()
    button.press()
    assert events == ["press", "long", "press"]
    assert (button.presses, button.long_presses) == (3, 1)
    button.close()
    with pytest.raises(HardwareError, match="after close"):
        button.press()
    assert events == ["press", "long", "press"]


def test_light_remembers_each_change_with_its_monotonic_time(caplog: pytest.LogCaptureFixture):
    light = SimulatedLight()
    assert light.pattern is None
    assert not light.history
    before = time.monotonic_ns()
    with caplog.at_level(logging.INFO, logger="daemon.hardware.sim_controls"):
        light.show(Pattern.IDLE)
        light.show(Pattern.IDLE)  # not a change
        light.show(Pattern.RECORDING)
    after = time.monotonic_ns()
    assert [c.pattern for c in light.history] == [Pattern.IDLE, Pattern.RECORDING]
    times = [c.at_ns for c in light.history]
    assert before <= times[0] <= times[1] <= after
    assert light.pattern == Pattern.RECORDING
    assert "light: recording (blinking 0.25 s on / 0.25 s off)" in caplog.text
    assert isinstance(light.history[0], LightChange)
    light.close()
    with pytest.raises(HardwareError):
        light.show(Pattern.ERROR)
