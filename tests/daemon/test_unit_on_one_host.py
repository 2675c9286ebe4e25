"""Defects IT met on a first day, as real daemons: two units on one host, the retained status
after a normal stop, and a refused press that IT can see."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from daemon.control import ControlClient, ControlError
from protocol.messages import Status
from protocol.topics import Kind, topic
from tests.support.mosquitto import Broker, receiver_identity
from tests.support.unit import PAINAV, Hospital, edit_config, make_unit


def test_a_second_daemon_refuses_a_control_socket_in_use(
    broker_site, broker: Broker, tmp_path: Path
) -> None:
    first = make_unit(broker_site, broker, tmp_path / "cart-01").start()
    second = make_unit(broker_site, broker, tmp_path / "cart-02", device_id="cart-02")
    shared = str(first.work / "control.sock")
    edit_config(second, str(second.work / "control.sock"), shared)
    try:
        run = subprocess.run(
            [str(PAINAV), "device", "run", "--config", str(second.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 1
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith(f"painav: error: {shared}: control socket in use by unit cart-01")
        assert "[control] socket" in last
        # cart-01 still answers, and only as itself.
        assert first.status()["device_id"] == "cart-01"
        # A press meant for cart-02 that reaches cart-01's socket is refused, not recorded.
        press = subprocess.run(
            [str(PAINAV), "device", "press", "--config", str(second.config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert press.returncode == 1
        assert "belongs to unit cart-01, not cart-02" in press.stderr
        assert first.status()["state"] == "idle"
        with pytest.raises(ControlError, match="not cart-02"):
            ControlClient(Path(shared), device_id="cart-02").request(cmd="status")
    finally:
        assert first.stop() == 0, first.log()
    # Once cart-01 has stopped, its socket is free for cart-02 (the harness asks at its own).
    edit_config(second, shared, str(second.work / "control.sock"))
    second.start()
    assert second.status()["device_id"] == "cart-02"
    assert second.stop() == 0, second.log()


def test_the_retained_status_leaves_recording_after_a_normal_stop(
    broker_site, broker: Broker, make_client, tmp_path: Path
) -> None:
    unit = make_unit(broker_site, broker, tmp_path / "unit").start()
    hospital = Hospital(broker_site, make_client(receiver_identity(broker_site)))
    status_topic = topic(broker_site.name, "cart-01", Kind.STATUS)
    hospital.client.subscribe(status_topic)
    try:
        unit.press()
        unit.wait_state("recording")
        time.sleep(1.0)
        unit.press()
        unit.wait_state("idle")
        states: list[str] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and states[-2:] != ["recording", "online"]:
            try:
                message = hospital.client.messages.get(timeout=0.2)
            except Exception:
                continue
            if message.topic == status_topic:
                states.append(Status.parse(message.payload).state)
        assert states[-2:] == ["recording", "online"], states
        # What a newcomer (the receiver after a restart) reads from the broker:
        late = make_client(receiver_identity(broker_site)).connect()
        late.subscribe(status_topic)
        assert Status.parse(late.expect(status_topic).payload).state == "online"
    finally:
        assert unit.stop() == 0, unit.log()


def test_a_refused_press_is_said_at_start_and_in_device_status(
    broker_site, broker: Broker, tmp_path: Path
) -> None:
    unit = make_unit(broker_site, broker, tmp_path / "unit", min_free_bytes=1 << 60).start()
    try:
        assert "presses will be refused until this is fixed: storage: low_storage" in unit.log()
        before = subprocess.run(
            [str(PAINAV), "device", "status", "--config", str(unit.config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "refused     none" in before.stdout
        assert "camera      present" in before.stdout
        assert "clock       not synchronised (allowed" in before.stdout or (
            "clock       synchronised" in before.stdout
        )
        unit.press()
        deadline = time.monotonic() + 10
        while unit.status()["last_refusal"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        after = subprocess.run(
            [str(PAINAV), "device", "status", "--config", str(unit.config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "refused     low_storage at " in after.stdout, after.stdout
    finally:
        assert unit.stop() == 0, unit.log()
