"""The daemon under systemd's Type=notify: READY=1 once it serves, WATCHDOG=1 while it runs.

The notifications are sd_notify datagrams on a real AF_UNIX socket, with systemd-python
installed and without it: a unit whose image lacks it must still say READY=1, or systemd kills
it after TimeoutStartSec= without saying why.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from daemon.sdnotify import Notifier, notify_address
from tests.support.mosquitto import Broker
from tests.support.unit import make_unit


def hide_systemd_python(folder: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes ``import systemd.daemon`` fail as it does
    where systemd-python is not installed."""
    package = folder / "systemd"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        'raise ImportError("systemd-python hidden by the test (not installed)")\n'
    )
    return folder


@pytest.fixture
def without_systemd_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process, systemd-python cannot be imported."""
    for name in [m for m in sys.modules if m == "systemd" or m.startswith("systemd.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "systemd", None)
    monkeypatch.setitem(sys.modules, "systemd.daemon", None)


def test_notify_socket_names() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract/name") == "\0abstract/name"
    assert notify_address("@") is None
    assert notify_address("vsock:2:1234") is None
    assert notify_address("relative/path") is None


@pytest.mark.usefixtures("without_systemd_python")
def test_ready_reaches_a_path_socket_without_systemd_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        notifier = Notifier()
        notifier.ready("idle; 0 clip(s) queued")
        notifier.watchdog()
        assert sock.recv(4096) == b"READY=1\nSTATUS=idle; 0 clip(s) queued"
        assert sock.recv(4096) == b"WATCHDOG=1"


@pytest.mark.usefixtures("without_systemd_python")
def test_ready_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"painav-test-notify-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        Notifier().ready("idle")
        assert sock.recv(4096) == b"READY=1\nSTATUS=idle"


def test_a_socket_that_is_gone_is_logged_once_and_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    notifier = Notifier()
    with caplog.at_level(logging.WARNING, logger="daemon.sdnotify"):
        notifier.ready("idle")
        notifier.watchdog()
    assert len([r for r in caplog.records if "cannot notify systemd" in r.message]) == 1


@pytest.mark.parametrize("systemd_python", ["installed", "missing"])
def test_readiness_and_watchdog_reach_the_notify_socket(
    broker_site, broker: Broker, tmp_path: Path, systemd_python: str
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        unit = make_unit(broker_site, broker, tmp_path / "unit")
        # A 1.5 s watchdog: the daemon must ping at least every 0.5 s.
        unit.env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1500000"}
        if systemd_python == "missing":
            shadow = str(hide_systemd_python(tmp_path / "shadow"))
            unit.env["PYTHONPATH"] = os.pathsep.join(
                [shadow, *filter(None, [os.environ.get("PYTHONPATH")])]
            )
        unit.start()
        try:
            messages: list[str] = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and messages.count("WATCHDOG=1") < 3:
                messages.extend(sock.recv(4096).decode().splitlines())
            ready = messages.index("READY=1")
            assert any(m.startswith("STATUS=") for m in messages)
            assert messages.count("WATCHDOG=1") >= 3
            assert ready < messages.index("WATCHDOG=1")
        finally:
            assert unit.stop() == 0, unit.log()
        sock.settimeout(2)
        after_stop: list[str] = []
        while "STOPPING=1" not in after_stop:  # watchdog pings may be queued before it
            after_stop.extend(sock.recv(4096).decode().splitlines())
