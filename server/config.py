"""The receiver's config file (``receiver.toml``), loaded: its model is the contract in
:mod:`protocol.receiver_config`, shared with provisioning, which writes it."""

from __future__ import annotations

from pathlib import Path

from protocol.receiver_config import ReceiverConfig
from protocol.tomlconfig import ConfigError, load_toml

__all__ = ["ConfigError", "ReceiverConfig", "load_config"]


def load_config(path: Path) -> ReceiverConfig:
    """Read and check *path*; raise :class:`ConfigError` with one line on any problem."""
    return load_toml(path, ReceiverConfig)
