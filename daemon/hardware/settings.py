"""Which backend drives each device, and its options: small frozen records the factory reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["ButtonSettings", "CameraSettings", "LightSettings", "MicrophoneSettings"]

# BCM numbers of the Raspberry Pi's 40-pin header GPIOs.
_GPIO_PINS = range(0, 28)


def _require(ok: bool, section: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{section}: {message}")


@dataclass(frozen=True)
class CameraSettings:
    """The camera: the Pi camera through picamera2, a simulated face, or a replayed .h264 file."""

    backend: Literal["picamera2", "simulated", "replay"] = "simulated"
    width: int = 1280
    height: int = 720
    frame_rate_hz: float = 30.0
    bitrate_bps: int = 4_000_000
    replay_file: Path | None = None  # Annex B H.264 elementary stream, for backend "replay"

    def __post_init__(self) -> None:
        _require(self.width > 0 and self.width % 2 == 0, "camera", "width must be even and > 0")
        _require(self.height > 0 and self.height % 2 == 0, "camera", "height must be even and > 0")
        _require(0 < self.frame_rate_hz <= 120, "camera", "frame_rate_hz must be in (0, 120]")
        _require(self.bitrate_bps > 0, "camera", "bitrate_bps must be > 0")
        _require(
            self.backend != "replay" or self.replay_file is not None,
            "camera",
            'backend "replay" needs replay_file',
        )


@dataclass(frozen=True)
class MicrophoneSettings:
    """The microphone: a sound card through PyAudio/PortAudio, or a simulated one playing a file."""

    backend: Literal["pyaudio", "simulated"] = "simulated"
    device: str = "painav_mic"  # substring of the PortAudio (ALSA) device name
    sample_rate_hz: int = 48_000
    channels: int = 1
    wav_file: Path | None = None  # for backend "simulated"; None plays a built-in test signal

    def __post_init__(self) -> None:
        _require(
            8_000 <= self.sample_rate_hz <= 192_000, "microphone", "sample_rate_hz out of range"
        )
        _require(1 <= self.channels <= 8, "microphone", "channels must be 1..8")
        _require(
            self.backend != "pyaudio" or bool(self.device.strip()), "microphone", "device is empty"
        )


@dataclass(frozen=True)
class ButtonSettings:
    """The nurse's push button: a GPIO input to ground, or simulated (local control socket)."""

    backend: Literal["gpio", "simulated"] = "simulated"
    pin: int = 17  # BCM number
    bounce_s: float = 0.05
    hold_s: float = 2.0

    def __post_init__(self) -> None:
        _require(self.pin in _GPIO_PINS, "button", f"pin {self.pin} is not a GPIO (0..27)")
        _require(0 <= self.bounce_s < 1, "button", "bounce_s must be in [0, 1)")
        _require(self.hold_s > self.bounce_s, "button", "hold_s must be longer than bounce_s")


@dataclass(frozen=True)
class LightSettings:
    """The status LED (and optional buzzer): GPIO outputs, or simulated (logged)."""

    backend: Literal["gpio", "simulated"] = "simulated"
    led_pin: int = 18  # BCM number
    buzzer_pin: int | None = None

    def __post_init__(self) -> None:
        _require(self.led_pin in _GPIO_PINS, "light", f"led_pin {self.led_pin} is not a GPIO")
        _require(
            self.buzzer_pin is None or self.buzzer_pin in _GPIO_PINS,
            "light",
            f"buzzer_pin {self.buzzer_pin} is not a GPIO",
        )
        _require(self.buzzer_pin != self.led_pin, "light", "buzzer_pin equals led_pin")
