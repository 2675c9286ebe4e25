"""Build each device from its section of ``device.toml``; a backend's heavy imports happen only
when it is chosen."""

from __future__ import annotations

import logging
from typing import Any

from protocol.device_config import ButtonSection, CameraSection, LightSection, MicrophoneSection

from .base import Button, Camera, HardwareError, Light, Microphone

__all__ = ["make_button", "make_camera", "make_light", "make_microphone"]

log = logging.getLogger(__name__)


def _missing(device: str, exc: ImportError, extra: str) -> HardwareError:
    return HardwareError(f"{device}: {exc.name or exc} is not installed (pip install '{extra}')")


def make_camera(cfg: CameraSection) -> Camera:
    """The camera *cfg* describes."""
    if cfg.backend == "picamera2":
        from .picamera import PiCamera

        return PiCamera(
            width=cfg.width,
            height=cfg.height,
            frame_rate_hz=cfg.frame_rate_hz,
            bitrate_bps=cfg.bitrate_bps,
            keyframe_interval_frames=max(1, round(cfg.frame_rate_hz)),
        )
    try:
        from .sim_camera import ReplayCamera, SimulatedCamera
    except ImportError as exc:
        raise _missing("camera", exc, "painav[sim]") from exc
    if cfg.backend == "replay":
        assert cfg.replay_file is not None  # checked by CameraSection
        camera = ReplayCamera(cfg.replay_file, frame_rate_hz=cfg.frame_rate_hz)
        if (camera.width, camera.height) != (cfg.width, cfg.height):
            log.warning(
                "camera: %s is %dx%d, not the configured %dx%d; using the file's size",
                cfg.replay_file,
                camera.width,
                camera.height,
                cfg.width,
                cfg.height,
            )
        return camera
    return SimulatedCamera(
        width=cfg.width,
        height=cfg.height,
        frame_rate_hz=cfg.frame_rate_hz,
        bitrate_bps=cfg.bitrate_bps,
        keyframe_interval_frames=max(1, round(cfg.frame_rate_hz)),
    )


def make_microphone(cfg: MicrophoneSection) -> Microphone:
    """The microphone *cfg* describes."""
    if cfg.backend == "pyaudio":
        from .pyaudio_mic import PyAudioMicrophone

        return PyAudioMicrophone(
            device=cfg.device, sample_rate_hz=cfg.sample_rate_hz, channels=cfg.channels
        )
    from .sim_mic import SimulatedMicrophone

    return SimulatedMicrophone(
        cfg.wav_file, sample_rate_hz=cfg.sample_rate_hz, channels=cfg.channels
    )


def make_button(cfg: ButtonSection, *, pin_factory: Any = None) -> Button:
    """The button *cfg* describes (*pin_factory*: a gpiozero pin factory, default the Pi's)."""
    if cfg.backend == "gpio":
        from .gpio import GpioButton

        return GpioButton(
            cfg.pin, bounce_s=cfg.bounce_s, hold_s=cfg.hold_s, pin_factory=pin_factory
        )
    from .sim_controls import SimulatedButton

    return SimulatedButton()


def make_light(cfg: LightSection, *, pin_factory: Any = None) -> Light:
    """The status light (and buzzer) *cfg* describes."""
    if cfg.backend == "gpio":
        from .gpio import GpioLight

        return GpioLight(cfg.led_pin, buzzer_pin=cfg.buzzer_pin, pin_factory=pin_factory)
    from .sim_controls import SimulatedLight

    return SimulatedLight()
