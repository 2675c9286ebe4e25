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
from daemon.hardware.sim_camera import ReplayCamera, SimulatedCamera
from daemon.hardware.sim_controls import SimulatedButton, SimulatedLight
from daemon.hardware.sim_mic import SimulatedMicrophone
from protocol.device_config import ButtonSection, CameraSection, LightSection, MicrophoneSection

REPO = Path(__file__).resolve().parents[3]


def test_importing_the_factory_loads_no_backend_library():
    code = (
        "import json, sys, daemon.hardware.factory, protocol.device_config\n"
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
        (lambda: CameraSection(width=642, height=481), "width and height must be even"),
        (lambda: CameraSection(frame_rate_hz=0), "frame_rate_hz"),
        (lambda: CameraSection(backend="replay"), "replay_file: required when backend is 'replay'"),
        (lambda: MicrophoneSection(sample_rate_hz=4000), "sample_rate_hz"),
        (lambda: MicrophoneSection(backend="pyaudio", device=" "), "device: empty"),
        (lambda: ButtonSection(pin=40), "pin"),
        (lambda: ButtonSection(bounce_s=0.5, hold_s=0.3), "hold_s must be longer than bounce_s"),
        (lambda: LightSection(led_pin=18, buzzer_pin=18), "buzzer_pin equals led_pin"),
    ],
)
def test_sections_refuse_bad_values(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_simulated_backends(speech_wav: Path):
    camera = make_camera(
        CameraSection(backend="simulated", width=320, height=240, frame_rate_hz=15)
    )
    assert isinstance(camera, SimulatedCamera)
    assert (camera.width, camera.height, camera.frame_rate_hz) == (320, 240, 15)
    assert camera.keyframe_interval_frames == 15  # one key frame a second
    camera.close()
    mic = make_microphone(
        MicrophoneSection(backend="simulated", sample_rate_hz=16_000, wav_file=speech_wav)
    )
    assert isinstance(mic, SimulatedMicrophone) and mic.present
    mic.close()
    assert isinstance(make_button(ButtonSection(backend="simulated")), SimulatedButton)
    light = make_light(LightSection(backend="simulated"))
    assert isinstance(light, SimulatedLight)
    light.show(Pattern.STARTING)


def test_replay_backend_takes_the_files_size(h264_file: Path, caplog: pytest.LogCaptureFixture):
    camera = make_camera(CameraSection(backend="replay", replay_file=h264_file))
    assert isinstance(camera, ReplayCamera)
    assert (camera.width, camera.height) == (320, 240)
    assert "not the configured 1280x720" in caplog.text
    camera.close()


def test_gpio_backends_on_a_given_pin_factory():
    pins = MockFactory(pin_class=MockPWMPin)
    button = make_button(ButtonSection(backend="gpio", pin=22, hold_s=3.0), pin_factory=pins)
    assert isinstance(button, GpioButton) and (button.pin, button.hold_s) == (22, 3.0)
    light = make_light(LightSection(backend="gpio", led_pin=23), pin_factory=pins)
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
        make_camera(CameraSection(backend="picamera2"))
    with pytest.raises(HardwareError, match=r"pyaudio is not installed \(pip install"):
        make_microphone(MicrophoneSection(backend="pyaudio"))
