"""The bedside daemon as painav-device.service runs it on a Pi, as far as this machine allows.

- Config: what ``painav provision device add`` writes (production defaults, so
  ``require_clock_sync = true``), changing only what cannot be the same off a Pi: simulated
  camera, microphone, button and light; the test's broker, clip-server port (on loopback) and
  control socket; the bundle's key paths and an outbox in the test's folder instead of where
  the first boot installs them; and timesyncd's "synchronized" file, which the test creates
  and removes, in the test's folder.
- Sandbox: the daemon runs under the same system-call filter, error number, clock protection
  and address families as the unit file says (tests.support.sandbox reads
  systemd/painav-device.service and loads them with libseccomp before exec). Mounts, devices,
  users and IP filters need systemd as PID 1 and are not applied.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path
from typing import Any

from daemon.config import load_config
from painav.localsite import HOST, free_port
from protocol.signing import Signature, verify_clip
from provisioning.devices import device_config
from provisioning.site import Site
from tests.support.mosquitto import Broker, receiver_identity
from tests.support.sandbox import launcher
from tests.support.unit import Hospital, Unit

REPO = Path(__file__).resolve().parents[2]
UNIT_FILE = REPO / "systemd" / "painav-device.service"
DEVICE = "cart-01"


def _toml(config: dict[str, dict[str, Any]]) -> str:
    """*config* (sections of strings, numbers, booleans and paths) as TOML."""
    out = []
    for section, keys in config.items():
        out.append(f"[{section}]")
        for key, value in keys.items():
            if isinstance(value, bool):
                out.append(f"{key} = {str(value).lower()}")
            elif isinstance(value, int | float):
                out.append(f"{key} = {value}")
            else:
                out.append(f'{key} = "{value}"')
        out.append("")
    return "\n".join(out)


def production_config(site: Site, broker: Broker, work: Path, clock_file: Path) -> Path:
    """``device.toml`` as provisioned, with only the off-a-Pi changes (module docstring)."""
    config: dict[str, dict[str, Any]] = tomllib.loads(device_config(site, DEVICE))
    bundle = site.paths.devices_dir / DEVICE
    assert "recorder" not in config, "provisioning now sets [recorder]: review this test"
    config["mqtt"].update(host=HOST, port=broker.port)
    config["clip_server"].update(host=HOST, port=free_port(), advertise_host=HOST)
    config["keys"] = {
        "signing_key": bundle / "keys/signing.key",
        "tls_key": bundle / "keys/tls.key",
        "tls_cert": bundle / "certs/tls.crt",
        "ca_chain": bundle / "certs/ca-chain.pem",
        "recipients": bundle / "recipients.txt",
        "crl": bundle / "certs/crl.pem",
        "crl_state": work / "crl.pem",
    }
    config["outbox"]["dir"] = work / "outbox"
    config["recorder"] = {"clock_sync_file": clock_file}
    for part in ("camera", "microphone", "button", "light"):
        config[part] = {"backend": "simulated"}
    config["control"] = {"socket": work / "control.sock"}
    path = work / "device.toml"
    path.write_text(_toml(config))
    loaded = load_config(path)
    assert loaded.recorder.require_clock_sync, "the production default must be kept"
    return path


def sandboxed_unit(site: Site, broker: Broker, work: Path, clock_file: Path) -> Unit:
    work.mkdir(parents=True)
    config = production_config(site, broker, work, clock_file)
    unit = Unit(DEVICE, config, work, wrapper=launcher(UNIT_FILE))
    python_path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    unit.env = {"PYTHONPATH": os.pathsep.join(python_path)}
    return unit


def assert_sandboxed(unit: Unit) -> None:
    """The daemon process itself carries the filters: no new privileges, seccomp filtering."""
    assert unit.process is not None
    status = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{unit.process.pid}/status").read_text().splitlines()
    )
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # SECCOMP_MODE_FILTER
    # address families, ProtectClock=, SystemCallFilter=
    assert int(status["Seccomp_filters"]) >= 3


def test_without_timesyncds_file_a_press_is_refused_as_clock_unsynchronised(
    broker_site: Site, broker: Broker, make_client, tmp_path: Path
) -> None:
    clock_file = tmp_path / "timesync" / "synchronized"
    clock_file.parent.mkdir()
    unit = sandboxed_unit(broker_site, broker, tmp_path / "unit", clock_file).start()
    hospital = Hospital(broker_site, make_client(receiver_identity(broker_site)))
    hospital.subscribe_all()
    try:
        assert_sandboxed(unit)
        assert not unit.status()["clock_synced"]
        unit.press()
        event = hospital.wait_event("refused")
        assert event.reason == "clock_unsynchronised", event
        assert unit.status()["state"] == "idle"
        assert not list((unit.work / "outbox").rglob("*.age"))
    finally:
        assert unit.stop() == 0, unit.log()


def test_with_timesyncds_file_a_press_becomes_a_clip_the_hospital_fetches(
    broker_site: Site, broker: Broker, make_client, tmp_path: Path
) -> None:
    clock_file = tmp_path / "timesync" / "synchronized"
    clock_file.parent.mkdir()
    unit = sandboxed_unit(broker_site, broker, tmp_path / "unit", clock_file).start()
    hospital = Hospital(broker_site, make_client(receiver_identity(broker_site)))
    hospital.subscribe_all()
    try:
        assert_sandboxed(unit)
        clock_file.touch()  # timesyncd has synchronised the clock
        deadline = time.monotonic() + 5  # the status snapshot is at most a second old
        while not unit.status()["clock_synced"]:
            assert time.monotonic() < deadline, "the unit never saw the clock file"
            time.sleep(0.1)
        unit.press()
        time.sleep(1.5)
        unit.press()
        announcement = hospital.wait_clip()
        manifest = announcement.manifest
        assert manifest.device_id == DEVICE and manifest.clock_synced
        assert manifest.stop_reason == "button"
        assert manifest.video.frames > 20 and manifest.audio.sample_rate_hz == 48_000

        ciphertext = hospital.fetch(announcement.url)  # mutual TLS, the receiver's certificate
        signature = Signature.from_text(hospital.fetch(announcement.url + ".minisig"))
        key = broker_site.registry().active_key(DEVICE)
        assert key is not None
        verify_clip(
            key, signature, io.BytesIO(ciphertext), clip_id=manifest.clip_id, device_id=DEVICE
        )
        assert hashlib.sha256(ciphertext).hexdigest() == manifest.sha256

        clock_file.unlink()  # e.g. a new boot before NTP answers
        unit.press()
        assert hospital.wait_event("refused").reason == "clock_unsynchronised"
    finally:
        assert unit.stop() == 0, unit.log()


def test_in_the_same_sandbox_the_kernels_clock_state_cannot_be_read() -> None:
    """Why the old check refused every press: adjtimex(modes=0) fails with EPERM."""
    probe = textwrap.dedent(
        """
        import ctypes, ctypes.util
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        print(libc.adjtimex(ctypes.byref((ctypes.c_byte * 512)())), ctypes.get_errno())
        """
    )
    sandboxed = subprocess.run(
        [*launcher(UNIT_FILE), sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert sandboxed.stdout.split() == ["-1", "1"], sandboxed.stderr  # -1, EPERM
    free = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert free.stdout.split()[0] != "-1", "control: outside the sandbox adjtimex answers"
