"""The unit files in systemd/: they load cleanly and stay sandboxed.

Runs the real `systemd-analyze` (no systemd as PID 1 needed):

- `verify` loads each unit the way PID 1 would and reports unknown keys, bad values, bad
  specifiers and missing executables. It exits 0 even when it complains, so every line it
  prints counts as a failure. It checks that ExecStart= binaries exist, and painav is installed
  in /opt/painav/.venv on a unit, not on a development machine; rather than rewrite the units,
  the test builds a scratch root (`--root=`) holding the stock systemd units, the units under
  test *unmodified*, an empty executable at /opt/painav/.venv/bin/painav, and copies of the
  other binaries the units run (which must exist on this Debian host). The users the units name
  (painav, painav-receiver, painav-extract) need not exist: systemd 252's verify does not look
  them up, so no message has to be tolerated for them. TOLERATED_VERIFY_MESSAGES is the place
  to add a known-harmless message, with the reason, if a future systemd prints one.
- `security --offline=true` scores each unit's exposure (0 best, 10 worst): at most 2.0 for the
  device unit, which must reach camera, microphone and GPIO, and 1.5 for the hospital units.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "systemd"

DEVICE_UNIT = "painav-device.service"
HOSPITAL_SERVICES = (
    "painav-receiver.service",
    "painav-extract@.service",
    "painav-crl-refresh.service",
    "painav-web.service",
)
ALL_UNITS = (DEVICE_UNIT, *HOSPITAL_SERVICES, "painav-crl-refresh.timer")
MAX_EXPOSURE = {DEVICE_UNIT: 2.0, **dict.fromkeys(HOSPITAL_SERVICES, 1.5)}

PAINAV = "/opt/painav/.venv/bin/painav"
EXPECTED_EXEC_START = {
    DEVICE_UNIT: f"{PAINAV} device run --config /etc/painav/device.toml",
    "painav-receiver.service": f"{PAINAV} receiver run --config /etc/painav/receiver.toml",
    "painav-extract@.service": (
        f"{PAINAV} extract run --config /etc/painav/extract.toml --worker %i"
    ),
    "painav-crl-refresh.service": (
        f"{PAINAV} provision crl refresh --dir /etc/painav/site --broker-dir /etc/painav/broker"
    ),
    "painav-web.service": f"{PAINAV} web run --config /etc/painav/web.toml",
}
DATA_KEY = "/etc/painav/keys/data-key.txt"

# (pattern, why it is harmless). Empty: systemd 252 prints nothing for these units.
TOLERATED_VERIFY_MESSAGES: tuple[tuple[re.Pattern[str], str], ...] = ()

EXPOSURE_LINE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)")
EXEC_KEYS = ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost")

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(path: Path) -> Unit:
    """Sections of a unit file as ordered (key, value) lists; repeated keys are kept."""
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: not a key=value line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= expected once, found {found}"
    return found[0]


def words(unit: Unit, section: str, key: str) -> set[str]:
    return {w for v in values(unit, section, key) for w in v.split()}


def seconds(timespan: str) -> float:
    """A systemd time span such as "30s", "2min" or "1min 30s", in seconds."""
    factors = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", timespan):
        total += float(number) * factors[unit]
    return total


def executables(unit: Unit) -> set[str]:
    """Absolute paths of the programs a unit runs, without the +-@:! prefixes."""
    paths = set()
    for key in EXEC_KEYS:
        for value in values(unit, "Service", key):
            paths.add(value.lstrip("+-@:!").split()[0])
    return paths


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze not found: install the systemd package"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A root directory in which `verify` finds the stock units, ours, and their programs."""
    root = tmp_path_factory.mktemp("root")
    stock = Path("/usr/lib/systemd/system")
    assert stock.is_dir(), "no stock systemd units in /usr/lib/systemd/system"
    shutil.copytree(stock, root / "usr/lib/systemd/system", symlinks=True)
    target = root / "etc/systemd/system"
    target.mkdir(parents=True)
    for name in ALL_UNITS:
        shutil.copy2(UNITS / name, target / name)
        for program in executables(parse_unit(UNITS / name)):
            copy = root / program.lstrip("/")
            copy.parent.mkdir(parents=True, exist_ok=True)
            if program.startswith("/opt/painav/"):
                copy.write_text("#!/bin/sh\n# stands in for the installed painav command\n")
            else:
                assert Path(program).is_file(), f"{name} runs {program}, not on this system"
                shutil.copy2(program, copy)
            copy.chmod(0o755)
    yield root


def verify_messages(root: Path, unit_path: Path) -> list[str]:
    proc = analyze("verify", "--man=no", f"--root={root}", str(unit_path))
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    untolerated = [
        ln for ln in lines if not any(p.search(ln) for p, _ in TOLERATED_VERIFY_MESSAGES)
    ]
    if proc.returncode != 0 and not untolerated:
        untolerated = [f"exit status {proc.returncode}"]
    return untolerated


@pytest.mark.parametrize("name", ALL_UNITS)
def test_unit_verifies_without_a_single_message(scratch_root: Path, name: str) -> None:
    messages = verify_messages(scratch_root, scratch_root / "etc/systemd/system" / name)
    assert messages == [], f"systemd-analyze verify {name}:\n" + "\n".join(messages)


def test_verify_harness_catches_a_broken_unit(scratch_root: Path) -> None:
    """Control: the same harness reports a misspelt key and a missing program."""
    text = (UNITS / DEVICE_UNIT).read_text()
    broken = scratch_root / "etc/systemd/system/painav-broken.service"
    broken.write_text(
        text.replace("ProtectClock=yes", "ProtectClok=yes").replace(PAINAV, "/opt/nowhere/painav")
    )
    try:
        messages = "\n".join(verify_messages(scratch_root, broken))
    finally:
        broken.unlink()
    assert "Unknown key 'ProtectClok'" in messages
    assert "/opt/nowhere/painav" in messages


@pytest.mark.parametrize("name", tuple(MAX_EXPOSURE))
def test_exposure_is_within_the_limit(name: str) -> None:
    proc = analyze("security", "--offline=true", "--no-pager", str(UNITS / name))
    assert proc.returncode == 0, proc.stderr
    match = EXPOSURE_LINE.search(proc.stdout)
    assert match, f"no exposure line in:\n{proc.stdout[-2000:]}"
    score = float(match.group(2))
    print(f"{name}: exposure {score} (limit {MAX_EXPOSURE[name]})")
    assert score <= MAX_EXPOSURE[name], f"{name}: exposure {score} > {MAX_EXPOSURE[name]}"


@pytest.mark.parametrize("name", tuple(EXPECTED_EXEC_START))
def test_units_run_the_documented_command(name: str) -> None:
    assert one(parse_unit(UNITS / name), "Service", "ExecStart") == EXPECTED_EXEC_START[name]


def test_device_unit_is_a_watched_sandboxed_notify_service() -> None:
    unit = parse_unit(UNITS / DEVICE_UNIT)
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert 0 < seconds(one(unit, "Service", "WatchdogSec")) <= 60
    assert one(unit, "Service", "Restart") == "on-failure"
    assert int(one(unit, "Unit", "StartLimitBurst")) > 0
    assert seconds(one(unit, "Unit", "StartLimitIntervalSec")) > 0
    assert {"time-sync.target", "network-online.target"} <= words(unit, "Unit", "After")
    # systemd.special(7): a service orders itself after time-sync.target; only the time
    # service (systemd-time-wait-sync, chrony-wait) pulls it in.
    for key in ("Wants", "Requires", "Requisite", "BindsTo", "Upholds"):
        assert "time-sync.target" not in words(unit, "Unit", key), f"{key}=time-sync.target"
    assert "/var/lib/painav" in words(unit, "Unit", "RequiresMountsFor")
    assert seconds(one(unit, "Service", "TimeoutStopSec")) >= 20, "stop must leave time to seal"
    assert one(unit, "Service", "StateDirectory") == "painav"
    assert one(unit, "Service", "User") == "painav"
    assert words(unit, "Service", "SupplementaryGroups") == {"video", "audio", "gpio"}
    assert one(unit, "Service", "DevicePolicy") == "closed"
    allowed = {v.split()[0] for v in values(unit, "Service", "DeviceAllow")}
    assert allowed == {
        "char-video4linux",
        "char-media",
        "char-dma_heap",
        "char-gpiochip",
        "char-alsa",
    }
    families = words(unit, "Service", "RestrictAddressFamilies")
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert one(unit, "Service", "MemorySwapMax") == "0", "raw frames must never be swapped out"
    assert one(unit, "Service", "LimitCORE") == "0"
    assert one(unit, "Service", "CapabilityBoundingSet") == ""


def test_only_the_extraction_worker_can_load_the_data_key() -> None:
    for name in (*HOSPITAL_SERVICES, DEVICE_UNIT):
        unit = parse_unit(UNITS / name)
        credentials = {v.split(":", 1)[1] for v in values(unit, "Service", "LoadCredential")}
        if name == "painav-extract@.service":
            assert credentials == {DATA_KEY}
            assert one(unit, "Service", "User") == "painav-extract"
        else:
            assert DATA_KEY not in (UNITS / name).read_text(), f"{name} names the data key"
    receiver = parse_unit(UNITS / "painav-receiver.service")
    hidden = {p.lstrip("-") for p in words(receiver, "Service", "InaccessiblePaths")}
    assert "/etc/painav/keys" in hidden
    assert one(receiver, "Service", "User") != "painav-extract"


def test_extraction_worker_keeps_plaintext_in_memory() -> None:
    unit = parse_unit(UNITS / "painav-extract@.service")
    tmpfs = {v.split(":")[0] for v in values(unit, "Service", "TemporaryFileSystem")}
    assert tmpfs == {"/tmp", "/var/tmp"}
    # PrivateTmp= would take precedence over TemporaryFileSystem= on /tmp (a disk-backed
    # directory under the host's /tmp), so the two must not be combined.
    assert not values(unit, "Service", "PrivateTmp")
    assert one(unit, "Service", "MemorySwapMax") == "0"
    assert one(unit, "Service", "LimitCORE") == "0"


def test_crl_refresh_reloads_mosquitto_and_runs_daily() -> None:
    service = parse_unit(UNITS / "painav-crl-refresh.service")
    assert one(service, "Service", "Type") == "oneshot"
    reload_cmd = one(service, "Service", "ExecStartPost")
    assert re.search(r"systemctl (reload|kill -s HUP) mosquitto\.service$", reload_cmd)
    timer = parse_unit(UNITS / "painav-crl-refresh.timer")
    assert values(timer, "Timer", "OnCalendar"), "the timer needs a schedule"
    # verify does not complain when a timer's service is missing, so check it here.
    activates = values(timer, "Timer", "Unit") or ["painav-crl-refresh.service"]
    assert all((UNITS / name).is_file() for name in activates)
    assert one(timer, "Install", "WantedBy") == "timers.target"


def test_sysusers_creates_the_hospital_accounts(tmp_path: Path) -> None:
    """systemd-sysusers, into an empty scratch root, creates every User=/Group= we name."""
    tool = shutil.which("systemd-sysusers")
    assert tool, "systemd-sysusers not found: install the systemd package"
    conf = (UNITS / "painav-sysusers.conf").read_text()
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(
        [tool, f"--root={tmp_path}", "-"], input=conf, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    groups = {
        ln.split(":")[0]: ln.split(":")[2]
        for ln in (tmp_path / "etc/group").read_text().splitlines()
    }
    users = {
        ln.split(":")[0]: ln.split(":")[3]
        for ln in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    for name in HOSPITAL_SERVICES:
        unit = parse_unit(UNITS / name)
        user = one(unit, "Service", "User")
        if user == "root":
            continue
        assert user in users, f"{name}: User={user} not created by painav-sysusers.conf"
        group = one(unit, "Service", "Group")
        assert groups.get(group) == users[user], f"{name}: {user} is not in group {group}"


def test_device_unit_can_read_the_clock_signals_it_may_not_ask_the_kernel_for() -> None:
    """ProtectClock= and ~@privileged deny adjtimex(); daemon/clock.py reads timesyncd's file
    in /run/systemd/timesync instead, or asks chronyd on 127.0.0.1:323. Nothing may hide them."""
    unit = parse_unit(UNITS / DEVICE_UNIT)
    assert one(unit, "Service", "ProtectClock") == "yes"
    signal = Path("/run/systemd/timesync/synchronized")
    hiding = [
        *words(unit, "Service", "InaccessiblePaths"),
        *(v.split(":")[0] for v in values(unit, "Service", "TemporaryFileSystem")),
        *(v.split(":")[-1] for v in values(unit, "Service", "BindPaths")),
        *(v.split(":")[-1] for v in values(unit, "Service", "BindReadOnlyPaths")),
    ]
    for path in hiding:
        hidden = Path(path.lstrip("-+"))
        assert not signal.is_relative_to(hidden), f"{path} hides {signal}"
    assert one(unit, "Service", "ProtectSystem") == "strict"  # /run readable, not writable
    assert values(unit, "Service", "PrivateNetwork") in ([], ["no"]), "chronyd is on loopback"
    assert "localhost" in words(unit, "Service", "IPAddressAllow"), "chronyc needs 127.0.0.1"
    assert "AF_INET" in words(unit, "Service", "RestrictAddressFamilies")


def test_the_receiver_config_for_systemd_names_only_what_its_unit_hands_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What IT runs, as the README says: the config `provision receiver config --credentials`
    prints for the service reads files the unit loads as credentials, and a registry outside
    the root-only site folder."""
    from painav.cli import main
    from provisioning.site import init_site
    from server.config import load_config

    site = init_site(tmp_path / "site", "ward7", broker_hosts=("broker.example",))
    creds = Path("/run/credentials/painav-receiver.service")
    assert (
        main(
            [
                "provision",
                "receiver",
                "config",
                "--dir",
                str(site.dir),
                "--catalog-url",
                "sqlite:////var/lib/painav-receiver/catalog.db",
                "--store",
                "/var/lib/painav-receiver/store",
                "--spool",
                "/var/lib/painav-receiver/spool",
                "--credentials",
                str(creds),
                "--registry",
                "/etc/painav/registry.json",
                "--crl",
                "/etc/painav/crl.pem",
            ]
        )
        == 0
    )
    (tmp_path / "receiver.toml").write_text(capsys.readouterr().out)
    config = load_config(tmp_path / "receiver.toml")
    unit = parse_unit(UNITS / "painav-receiver.service")
    loaded = {v.split(":", 1)[0] for v in values(unit, "Service", "LoadCredential")}
    tls = config.tls
    for path in (tls.cert, tls.key, tls.ca, tls.signing_key, tls.signing_cert):
        assert path.parent == creds and path.name in loaded, path
    assert tls.crl == Path("/etc/painav/crl.pem")  # public, and re-read while running
    assert config.site.registry == Path("/etc/painav/registry.json")
