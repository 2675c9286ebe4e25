"""The unit's config file (``device.toml``), loaded: its model is the contract in
:mod:`protocol.device_config`, shared with provisioning, which writes it."""

from __future__ import annotations

from pathlib import Path

from protocol.device_config import (
    ButtonSection,
    CameraSection,
    DeviceConfig,
    LightSection,
    MicrophoneSection,
    RecorderSection,
)
from protocol.tomlconfig import ConfigError, load_toml

__all__ = [
    "ButtonSection",
    "CameraSection",
    "ConfigError",
    "DeviceConfig",
    "LightSection",
    "MicrophoneSection",
    "RecorderSection",
    "load_config",
]


def load_config(path: Path) -> DeviceConfig:
    """Read and check *path*; raise :class:`ConfigError` with one line on any problem."""
    return load_toml(path, DeviceConfig)
