"""The unit's systemd glue: readiness, watchdog and status text, and journal fields.

Uses systemd-python when it is installed; without it (a developer's machine, the demo) the
notifications go nowhere and logs go to stderr, and nothing else changes.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

__all__ = ["Notifier", "log_fields", "setup_logging"]


def _systemd(module: str) -> Any:
    # Imported by name: the repository's own systemd/ folder (unit files) would otherwise
    # shadow systemd-python for the type checker.
    return importlib.import_module(f"systemd.{module}")


class Notifier:
    """Sends READY, WATCHDOG and STATUS to systemd when run under ``Type=notify``."""

    def __init__(self) -> None:
        self._notify: Any = None
        if os.environ.get("NOTIFY_SOCKET"):
            try:
                self._notify = _systemd("daemon").notify
            except ImportError:
                self._notify = None
        usec = os.environ.get("WATCHDOG_USEC")
        # Ping at a third of the interval, so one slow loop iteration is not fatal.
        self.watchdog_interval_s = int(usec) / 3e6 if usec and usec.isdigit() else None

    def _send(self, text: str) -> None:
        if self._notify is not None:
            self._notify(text)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")


def log_fields(**fields: str | None) -> dict[str, str]:
    """``extra=`` for a log call: journal fields such as CLIP_ID, DEVICE_ID, STATE."""
    return {k.upper(): v for k, v in fields.items() if v is not None}


class _Plain(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [f"{k}={v}" for k, v in vars(record).items() if k.isupper()]
        return f"{text} [{' '.join(extras)}]" if extras else text


def setup_logging(level: int = logging.INFO) -> None:
    """To the journal with structured fields under systemd, else to stderr."""
    root = logging.getLogger()
    root.setLevel(level)
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        try:
            handler = _systemd("journal").JournalHandler(SYSLOG_IDENTIFIER="painav-device")
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Plain("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
