"""The daemon under systemd's Type=notify: READY=1 once it serves, WATCHDOG=1 while it runs."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.support.mosquitto import Broker
from tests.support.unit import make_unit


def test_readiness_and_watchdog_reach_the_notify_socket(
    broker_site, broker: Broker, tmp_path: Path
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        unit = make_unit(broker_site, broker, tmp_path / "unit")
        # A 1.5 s watchdog: the daemon must ping at least every 0.5 s.
        unit.env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1500000"}
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
