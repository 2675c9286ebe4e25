"""Settings and the factory: each backend from its settings, heavy imports only when chosen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from daemon.hardware.base import HardwareError, Pattern
from daemon.hardware.factory import make_button, make_camera, make_light, make_microphone
from daemon.hardware.gpio import GpioButton, GpioLight
from daemon.hardware.settings import (
    ButtonSettings,
    CameraSettings,
    LightSettings,
    MicrophoneSettings,
)
from daemon.hardware.sim_camera import ReplayCamera, SimulatedCamera
from daemon.hardware.sim_controls import SimulatedButton, SimulatedLight
from daemon.hardware.sim_mic import SimulatedMicrophone

REPO = Path(__file__).resolve().parents[3]


def test_importing_the_factory_loads_no_backend_library():
    code = (
        "import json, sys, daemon.hardware.factory, daemon.hardware.settings\n"
        "print(json.dumps(sorted(m for m in ('av', 'pyaudio', 'gpiozero', 'picamera2', "
        "'numpy', 'skimage', 'cv2') if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True
    )
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CameraSettings(width=641), "camera: width must be even"),
        (lambda: CameraSettings(frame_rate_hz=0), "camera: frame_rate_hz"),
        (lambda: CameraSettings(backend="replay"), 'camera: backend "replay" needs replay_file'),
        (lambda: MicrophoneSettings(sample_rate_hz=4000), "microphone: sample_rate_hz"),
        (lambda: MicrophoneSettings(backend="pyaudio", device=" "), "microphone: device"),
        (lambda: ButtonSettings(pin=40), "button: pin 40 is not a GPIO"),
        (lambda: ButtonSettings(bounce_s=0.5, hold_s=0.3), "button: hold_s"),
        (lambda: LightSettings(led_pin=18, buzzer_pin=18), "light: buzzer_pin equals led_pin"),
    ],
)
def test_settings_refuse_bad_values_naming_the_device(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_simulated_backends(speech_wav: Path):
    camera = make_camera(CameraSettings(width=320, height=240, frame_rate_hz=15))
    assert isinstance(camera, SimulatedCamera)
    assert (camera.width, camera.height, camera.frame_rate_hz) == (320, 240, 15)
    assert camera.keyframe_interval_frames == 15  # one key frame a second
    camera.close()
    mic = make_microphone(MicrophoneSettings(sample_rate_hz=16_000, wav_file=speech_wav))
    assert isinstance(mic, SimulatedMicrophone) and mic.present
    mic.close()
    assert isinstance(make_button(ButtonSettings()), SimulatedButton)
    light = make_light(LightSettings())
    assert isinstance(light, SimulatedLight)
    light.show(Pattern.STARTING)


def test_replay_backend_takes_the_files_size(h264_file: Path, caplog: pytest.LogCaptureFixture):
    camera = make_camera(CameraSettings(backend="replay", replay_file=h264_file))
    assert isinstance(camera, ReplayCamera)
    assert (camera.width, camera.height) == (320, 240)
    assert "not the configured 1280x720" in caplog.text
    camera.close()


def test_gpio_backends_on_a_given_pin_factory():
    pins = MockFactory(pin_class=MockPWMPin)
    button = make_button(ButtonSettings(backend="gpio", pin=22, hold_s=3.0), pin_factory=pins)
    assert isinstance(button, GpioButton) and (button.pin, button.hold_s) == (22, 3.0)
    light = make_light(LightSettings(backend="gpio", led_pin=23), pin_factory=pins)
    assert isinstance(light, GpioLight)
    light.show(Pattern.ARMED)
    assert pins.pin(23).state == 1.0
    button.close()
    light.close()
    pins.reset()


def test_real_backends_missing_their_library_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    monkeypatch.setitem(sys.modules, "pyaudio", None)
    with pytest.raises(HardwareError, match="picamera2 is not installed"):
        make_camera(CameraSettings(backend="picamera2"))
    with pytest.raises(HardwareError, match=r"pyaudio is not installed \(pip install"):
        make_microphone(MicrophoneSettings(backend="pyaudio"))
