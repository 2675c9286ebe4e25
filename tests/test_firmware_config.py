"""The Raspberry Pi OS files in firmware_config/: they parse, agree with each other, and the
first-boot script handles the provisioning bundle safely.

Real tools where the machine has them: alsa-lib (through `arecord`/`amixer`) loads
asound.conf, bash and GNU tar run painav-firstboot.sh's bundle checks, awk runs its fstab merge,
and the key names of the systemd drop-ins are checked against the stock configuration files the
installed systemd ships. cloud-init is not installed, and PyYAML is not in the project's venv:
user-data is read by a strict parser for the small YAML subset it uses (anything outside the
subset is an error), and cross-checked against the system Python's PyYAML when that exists.
"""

from __future__ import annotations

import configparser
import inspect
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
FW = REPO / "firmware_config"
UNITS = REPO / "systemd"
FIRSTBOOT = FW / "painav-firstboot.sh"

# Files on the boot partition's painav/ folder that do not come from firmware_config/.
COPIED_FROM_ELSEWHERE = {
    "painav-device.service": UNITS / "painav-device.service",  # README step 3
    "wheels": None,  # the release's wheelhouse, README step 3
}

# --- small parsers ----------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file's settings, each key with all its values (keys may repeat)."""
    settings: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = settings.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, f"{path}: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return settings


def strict_ini(path: Path) -> configparser.ConfigParser:
    """An INI-style file as systemd and NetworkManager read it; duplicates are errors."""
    parser = configparser.ConfigParser(
        strict=True, interpolation=None, comment_prefixes=("#", ";"), inline_comment_prefixes=None
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text(), source=str(path))
    return parser


def stock_keys(conf: str, section: str) -> set[str]:
    """Keys the installed systemd documents in its stock /etc/systemd/<conf> (as comments)."""
    text = Path("/etc/systemd", conf).read_text()
    body = text.split(f"[{section}]", 1)[1]
    return set(re.findall(r"^#?([A-Za-z]+)=", body, re.MULTILINE))


class YamlSubsetError(ValueError):
    pass


def _scalar(text: str, where: str) -> Any:
    text = text.strip()
    if text.startswith('"'):
        if not text.endswith('"') or len(text) < 2:
            raise YamlSubsetError(f"{where}: unterminated string")
        return json.loads(text)  # our double-quoted strings use JSON-compatible escapes only
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise YamlSubsetError(f"{where}: unterminated string")
        return text[1:-1].replace("''", "'")
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_scalar(item, where) for item in inner.split(",")] if inner else []
    if text[:1] in set("&*!|>%@`{[]}#,?-:") or ": " in text or " #" in text:
        raise YamlSubsetError(f"{where}: outside the supported YAML subset: {text!r}")
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text in ("null", "~", "yes", "no", "on", "off", "True", "False"):
        raise YamlSubsetError(f"{where}: ambiguous scalar {text!r}, quote it")
    return text


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i].rstrip()
    return line.rstrip()


def parse_yaml_subset(text: str) -> Any:
    """Block mappings and sequences, plain/quoted scalars, flow lists of scalars. Strict."""
    lines: list[tuple[int, str, int]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw:
            raise YamlSubsetError(f"line {number}: tab character")
        content = _strip_comment(raw)
        if content.strip():
            lines.append((len(content) - len(content.lstrip(" ")), content.strip(), number))

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1].startswith("- ") or lines[i][1] == "-":
            return sequence(i, indent)
        return mapping(i, indent)

    def mapping(i: int, indent: int) -> tuple[dict[str, Any], int]:
        result: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent:
            _, content, number = lines[i]
            key, sep, rest = content.partition(":")
            if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
                raise YamlSubsetError(f"line {number}: expected 'key: value', got {content!r}")
            if key in result:
                raise YamlSubsetError(f"line {number}: duplicate key {key!r}")
            if rest.strip():
                if not rest.startswith(" "):
                    raise YamlSubsetError(f"line {number}: missing space after ':'")
                result[key], i = _scalar(rest, f"line {number}"), i + 1
            else:
                if i + 1 >= len(lines) or lines[i + 1][0] <= indent:
                    raise YamlSubsetError(f"line {number}: {key!r} has no value")
                result[key], i = block(i + 1, lines[i + 1][0])
        if i < len(lines) and lines[i][0] > indent:
            raise YamlSubsetError(f"line {lines[i][2]}: unexpected indentation")
        return result, i

    def sequence(i: int, indent: int) -> tuple[list[Any], int]:
        result: list[Any] = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
            _, content, number = lines[i]
            item = content[1:].strip()
            if not item:
                raise YamlSubsetError(f"line {number}: empty sequence item")
            key, sep, _ = item.partition(":")
            if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key) and not item.startswith('"'):
                # "- key: value" opens a mapping whose further keys sit two columns deeper.
                lines[i] = (indent + 2, item, number)
                value, i = mapping(i, indent + 2)
            else:
                value, i = _scalar(item, f"line {number}"), i + 1
            result.append(value)
        return result, i

    if not lines:
        raise YamlSubsetError("empty document")
    document, end = block(0, lines[0][0])
    if end != len(lines):
        raise YamlSubsetError(f"line {lines[end][2]}: unexpected dedent")
    return document


def system_pyyaml(text: str) -> Any | None:
    """The document as the system Python's PyYAML reads it, or None if it has no PyYAML."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        return None
    program = "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"
    proc = subprocess.run(
        [python, "-c", program], input=text, capture_output=True, text=True, timeout=30
    )
    if "ModuleNotFoundError" in proc.stderr:
        return None
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def fstab_entries(text: str) -> list[list[str]]:
    return [
        ln.split() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]


# --- every file ---------------------------------------------------------------------------------


def config_files() -> list[Path]:
    return sorted(p for p in FW.rglob("*") if p.is_file() and p.name != "README.md")


def test_every_file_opens_with_a_comment_saying_why() -> None:
    for path in config_files():
        lines = path.read_text().splitlines()
        body = lines[1:] if lines[0].startswith(("#!", "#cloud-config")) else lines
        assert body[0].startswith("# painav"), f"{path.relative_to(REPO)}: no explanatory header"


def test_the_first_boot_script_installs_every_file() -> None:
    """A file in firmware_config/ that the script never copies would silently do nothing."""
    script = FIRSTBOOT.read_text()
    installed = set(re.findall(r"\$SRC/([\w./@-]+)", script))
    not_by_script = {"README.md", "user-data", "painav-firstboot.sh"}
    for path in config_files():
        rel = str(path.relative_to(FW))
        if rel not in not_by_script:
            assert rel in installed, f"painav-firstboot.sh never installs {rel}"


def test_every_path_and_unit_named_exists_in_the_repository() -> None:
    texts = {p: p.read_text() for p in [*config_files(), FW / "README.md"]}
    units = set()
    for path, text in texts.items():
        for found in re.findall(r"(?:\$SRC|/boot/firmware/painav)/([\w.@-]+(?:/[\w.@-]+)*)", text):
            rel = found.rstrip(".")  # a path at the end of a sentence
            top = rel.split("/")[0]
            if top in COPIED_FROM_ELSEWHERE:
                source = COPIED_FROM_ELSEWHERE[top]
                assert source is None or source.is_file(), f"{path.name}: {rel}"
            else:
                assert (FW / rel).exists(), (
                    f"{path.name} names painav/{rel}, not in firmware_config/"
                )
        for found in re.findall(
            r"(?<![\w./-])((?:firmware_config|systemd)/[\w.@-]+(?:/[\w.@-]+)*)", text
        ):
            rel = found.rstrip(".")
            assert (REPO / rel).exists(), f"{path.name} names {rel}, which does not exist"
        units |= set(re.findall(r"\b(painav-[\w-]*@?\.(?:service|timer))\b", text))
    assert "painav-device.service" in units
    for unit in units:
        assert (UNITS / unit).is_file(), (
            f"unit {unit} is named in firmware_config but not in systemd/"
        )


# --- systemd and NetworkManager drop-ins ----------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "stock", "section"),
    [
        ("system.conf.d/painav-watchdog.conf", "system.conf", "Manager"),
        ("journald.conf.d/painav.conf", "journald.conf", "Journal"),
        ("timesyncd.conf.d/painav.conf", "timesyncd.conf", "Time"),
    ],
)
def test_systemd_drop_ins_use_only_keys_systemd_knows(rel: str, stock: str, section: str) -> None:
    conf = strict_ini(FW / rel)
    assert conf.sections() == [section]
    unknown = set(conf[section]) - stock_keys(stock, section)
    assert not unknown, f"{rel}: keys the installed systemd does not document: {unknown}"


def test_hardware_watchdog_fits_the_raspberry_pi() -> None:
    manager = strict_ini(FW / "system.conf.d/painav-watchdog.conf")["Manager"]
    runtime = re.fullmatch(r"(\d+)s", manager["RuntimeWatchdogSec"])
    assert runtime and 0 < int(runtime.group(1)) <= 15, "the Pi's watchdog counts to 15 s at most"
    assert manager["RebootWatchdogSec"]


def test_journal_is_volatile_and_capped() -> None:
    journal = strict_ini(FW / "journald.conf.d/painav.conf")["Journal"]
    assert journal["Storage"] == "volatile"
    cap = re.fullmatch(r"(\d+)([KMG])", journal["RuntimeMaxUse"])
    assert cap and int(cap.group(1)) * {"K": 1e3, "M": 1e6, "G": 1e9}[cap.group(2)] <= 128e6


def test_time_sync_uses_only_the_hospital_servers() -> None:
    time = strict_ini(FW / "timesyncd.conf.d/painav.conf")["Time"]
    assert time["NTP"].split(), "no NTP servers"
    assert time["FallbackNTP"] == "", "must not fall back to public NTP pools"


def test_time_wait_sync_drop_in_loads_in_systemd(tmp_path: Path) -> None:
    """The drop-in, placed where the script installs it, verified against the stock unit."""
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze not found: install the systemd package"
    shutil.copytree("/usr/lib/systemd/system", tmp_path / "usr/lib/systemd/system", symlinks=True)
    program = "/lib/systemd/systemd-time-wait-sync"
    (tmp_path / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    shutil.copy2(program, tmp_path / "usr/lib/systemd/systemd-time-wait-sync")
    (tmp_path / "lib").symlink_to("usr/lib")
    dropin = tmp_path / "etc/systemd/system/systemd-time-wait-sync.service.d"
    dropin.mkdir(parents=True)
    shutil.copy2(FW / "systemd-time-wait-sync.service.d/painav-timeout.conf", dropin)
    unit = tmp_path / "usr/lib/systemd/system/systemd-time-wait-sync.service"
    proc = subprocess.run(
        [tool, "verify", "--man=no", f"--root={tmp_path}", str(unit)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    timeout = strict_ini(dropin / "painav-timeout.conf")["Service"]["TimeoutStartSec"]
    assert timeout not in ("infinity", "0"), "the wait must be bounded"


def test_network_manager_turns_wifi_power_saving_off() -> None:
    conf = strict_ini(FW / "NetworkManager/conf.d/painav-wifi-powersave.conf")
    assert conf.sections() == ["connection"]
    assert dict(conf["connection"]) == {"wifi.powersave": "2"}


# --- config.txt -------------------------------------------------------------------------------

CONFIG_FILTERS = {"all", "pi4", "pi5", "pi400", "cm4", "cm5", "pi500", "none"}
REPEATABLE_CONFIG_KEYS = {"dtoverlay", "dtparam", "include"}


def test_config_txt_is_well_formed_and_sets_what_the_unit_needs() -> None:
    settings: dict[str, dict[str, list[str]]] = {}
    section = "all"
    for number, raw in enumerate((FW / "config.txt").read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            assert re.fullmatch(r"\[[a-z0-9]+\]", line), f"config.txt:{number}: {line!r}"
            section = line[1:-1]
            assert section in CONFIG_FILTERS, f"config.txt:{number}: unknown filter {line}"
            continue
        match = re.fullmatch(r"([a-z_0-9]+)=([\w.,=-]+)", line)
        assert match, f"config.txt:{number}: not key=value: {raw!r}"
        key, value = match.groups()
        seen = settings.setdefault(section, {}).setdefault(key, [])
        assert key in REPEATABLE_CONFIG_KEYS or not seen, f"config.txt:{number}: {key} set twice"
        seen.append(value)
    everywhere = settings["all"]
    assert "watchdog=on" in everywhere["dtparam"]
    assert everywhere.get("camera_auto_detect") == ["1"] or "imx708" in everywhere["dtoverlay"]
    assert settings["pi4"]["gpu_mem"] == ["128"]
    last = [ln for ln in (FW / "config.txt").read_text().splitlines() if ln.startswith("[")][-1]
    assert last == "[all]", "end in [all] so whatever follows the include applies to every model"


# --- ALSA -------------------------------------------------------------------------------------


def alsa(tool: str, args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    program = shutil.which(tool)
    assert program, f"{tool} not found: install alsa-utils"
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([program, *args], capture_output=True, text=True, timeout=30, env=env)


def test_alsa_loads_asound_conf_and_resolves_the_named_card(tmp_path: Path) -> None:
    """alsa-lib itself parses the file (as ~/.asoundrc) and follows painav_mic to the card
    named by the udev rule; with no such card here, opening it fails naming that card."""
    shutil.copy2(FW / "asound.conf", tmp_path / ".asoundrc")
    listing = alsa("arecord", ["-L"], tmp_path)
    assert "ALSA lib" not in listing.stderr, listing.stderr
    assert re.search(r"^painav_mic\n\s+painav USB microphone$", listing.stdout, re.MULTILINE)

    card = re.search(r'ATTR\{id\}="(\w+)"', (FW / "udev/90-painav-mic.rules").read_text())
    assert card, "the udev rule must name the card"
    conf = (FW / "asound.conf").read_text()
    assert f'"hw:CARD={card.group(1)},DEV=0"' in conf
    assert f"card {card.group(1)}" in conf

    opened = alsa("arecord", ["-D", "painav_mic", "-d", "1", "-f", "S16_LE", "/dev/null"], tmp_path)
    assert opened.returncode != 0
    assert f"Cannot get card index for {card.group(1)}" in opened.stderr, opened.stderr
    mixer = alsa("amixer", ["-D", "painav_mic"], tmp_path)
    assert f"Cannot get card index for {card.group(1)}" in mixer.stderr, mixer.stderr


def dsnoop_slave(text: str) -> dict[str, str]:
    """The slave { ... } settings of the dsnoop PCM in asound.conf."""
    block = re.search(r"type dsnoop.*?slave \{(.*?)\n    \}", text, re.S)
    assert block, "no dsnoop slave block in asound.conf"
    settings = {}
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, value = line.split(None, 1)
            settings[key] = value.strip('"')
    return settings


def test_dsnoop_period_is_the_recorders_block() -> None:
    """One ALSA period per recorder block, at the daemon's default rate: without a period size
    dsnoop takes 125 ms periods, and 20 ms blocks arrive in bursts of six."""
    from daemon.config import MicrophoneSection
    from daemon.hardware.pyaudio_mic import PyAudioMicrophone

    slave = dsnoop_slave((FW / "asound.conf").read_text())
    rate = MicrophoneSection().sample_rate_hz
    block_s = inspect.signature(PyAudioMicrophone).parameters["block_s"].default
    assert int(slave["rate"]) == rate
    assert "period_size" in slave, "no period size: alsa-lib's dsnoop default is 125 ms"
    assert int(slave["period_size"]) == round(rate * block_s)
    buffer = int(slave["buffer_size"])
    assert buffer % int(slave["period_size"]) == 0 and buffer // int(slave["period_size"]) >= 4


# --- fstab --------------------------------------------------------------------------------------


def test_fstab_makes_root_read_only_and_data_persistent() -> None:
    entries = {e[1]: e for e in fstab_entries((FW / "fstab").read_text())}
    assert all(len(e) == 6 for e in entries.values()), "fstab lines have six fields"
    # The overlay keeps the card's root read-only; fstab must not, or the root stays read-only
    # when IT turns the overlay off to update the OS.
    assert "ro" not in entries["/"][3].split(","), "/ read-only in fstab: no way to update"
    assert "ro" in entries["/boot/firmware"][3].split(",")
    # overlayroot (recurse, its default) would put any disk file system listed here under a RAM
    # layer: the data partition is mounted by a unit of its own instead.
    assert "/var/lib/painav" not in entries
    for entry in entries.values():
        if entry[1] != "/":
            assert entry[2] in OVERLAYROOT_LEAVES_ALONE, f"overlayroot would layer {entry[1]}"
    assert entries["/tmp"][2] == "tmpfs"
    assert not re.search(r"sed [^\n]*overlayroot", FIRSTBOOT.read_text()), (
        "the kernel command line's overlay stays as raspi-config writes it"
    )


OVERLAYROOT_LEAVES_ALONE = {"proc", "sys", "tmpfs", "dev", "udev", "debugfs", "vfat"}
"""File system types overlayroot's fstab rewrite passes through as they are, recurse or not
(cloud-initramfs-tools, overlayroot/scripts/init-bottom/overlayroot, overlayrootify_fstab)."""


def test_data_partition_mount_unit_loads_in_systemd(tmp_path: Path) -> None:
    """var-lib-painav.mount, verified by systemd, and equal in what it mounts to the fstab line
    systemd-fstab-generator would make of it (with fsck, pass 2)."""
    unit = FW / "var-lib-painav.mount"
    ours = unit_settings(unit)
    mount = ours["Mount"]
    assert mount["What"] == ["/dev/disk/by-label/PAINAV-DATA"] and mount["Type"] == ["ext4"]
    assert mount["Where"] == ["/var/lib/painav"]
    options = set(mount["Options"][0].split(","))
    assert {"noatime", "nodev", "nosuid", "noexec", "errors=remount-ro"} <= options
    assert "ro" not in options
    assert ours["Install"]["WantedBy"] == ["local-fs.target"]

    generator = Path("/usr/lib/systemd/system-generators/systemd-fstab-generator")
    assert generator.is_file(), "systemd-fstab-generator not found: install systemd"
    fstab = tmp_path / "fstab"
    fstab.write_text(f"LABEL=PAINAV-DATA /var/lib/painav ext4 {mount['Options'][0]} 0 2\n")
    out = tmp_path / "generated"
    out.mkdir()
    env = {**os.environ, "SYSTEMD_FSTAB": str(fstab), "SYSTEMD_PROC_CMDLINE": ""}
    subprocess.run(
        [str(generator), out, out, out], env=env, check=True, capture_output=True, timeout=30
    )
    generated = unit_settings(out / "var-lib-painav.mount")
    assert generated["Mount"] == mount
    for key in ("Requires", "After", "Before"):
        wanted = {u for value in generated["Unit"][key] for u in value.split()}
        have = {u for value in ours["Unit"][key] for u in value.split()}
        assert wanted <= have, f"{key}: {wanted - have} missing"

    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze not found: install the systemd package"
    proc = subprocess.run(
        [tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0 and "var-lib-painav" not in proc.stderr, proc.stderr
    script = FIRSTBOOT.read_text()
    assert "systemctl enable var-lib-painav.mount" in script
    assert "/etc/systemd/system/var-lib-painav.mount" in script


# raspi-config (RPi-Distro/raspi-config, branch bookworm, 9c55e7b): what its Overlay File System
# and write-protected boot partition options match and change, as its shell has them.
RASPI_CONFIG_STUB = r"""
CMDLINE=$RPI_CMDLINE
get_overlay_conf() { grep -q "overlayroot=tmpfs" $CMDLINE; echo $?; }
get_bootro_conf() { grep /boot/firmware $RPI_FSTAB | grep -q "defaults.*,ro[ ,]"; echo $?; }
enable_overlayfs() {
  if ! grep -q "overlayroot=tmpfs" $CMDLINE ; then
    sed -i $CMDLINE -e "s/^/overlayroot=tmpfs /"
  fi
}
disable_overlayfs() { sed -i $CMDLINE -e "s/\(.*\)overlayroot=tmpfs \(.*\)/\1\2/"; }
enable_bootro() {
  sed -i $RPI_FSTAB -e "s#\(.*/boot/firmware.*\)defaults\(.*\)#\1defaults,ro\2#"
}
disable_bootro() {
  sed -i $RPI_FSTAB -e "s#\(.*/boot/firmware.*\)defaults,ro\(.*\)#\1defaults\2#"
}
raspi-config() {  # only "nonint do_overlayfs 0|1" (the overlay part of do_overlayfs)
  [ "$1 $2" = "nonint do_overlayfs" ] || return 2
  if [ "$(get_overlay_conf)" -eq 0 ]; then current=1; else current=0; fi
  if [ "$3" -eq "$current" ]; then
    if [ "$3" -eq 0 ]; then enable_overlayfs; else disable_overlayfs; fi
  fi
}
"""

STOCK_CMDLINE = (
    "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 "
    "fsck.repair=yes rootwait quiet\n"
)


def first_boot_cmdline_steps(script: str) -> str:
    """The part of painav-firstboot.sh that edits the kernel command line, as a bash program:
    the memory cgroup loop, the read-only root step, and the functions they call."""
    start = script.index("cmdline=$BOOT/cmdline.txt")
    end = script.index("# painav itself:")
    cgroups = script[start:end].replace("cmdline=$BOOT/cmdline.txt", "")
    overlay = script[script.index("# Read-only root") : script.index("# --- 6. done")]
    function = re.search(r"^read_only_root\(\) \{\n.*?^\}\n", script, re.S | re.M)
    return "\n".join(
        [
            'die() { echo "error: $*" >&2; exit 1; }',
            RASPI_CONFIG_STUB,
            function.group(0) if function else "",
            "cmdline=$RPI_CMDLINE",
            cgroups,
            overlay,
        ]
    )


def run_bash(program: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash, "bash not found"
    return subprocess.run(
        [bash, "-euo", "pipefail", "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )


def check_overlay_round_trip(script: str, tmp_path: Path) -> None:
    """The cmdline the first boot leaves is one raspi-config sees as "overlay on", and its
    "off" then removes the overlay and nothing else; "on" again restores the same line."""
    cmdline = tmp_path / "cmdline.txt"
    cmdline.write_text(STOCK_CMDLINE)
    env = {"RPI_CMDLINE": str(cmdline), "RPI_FSTAB": str(FW / "fstab")}
    first = run_bash(first_boot_cmdline_steps(script), env)
    assert first.returncode == 0, first.stderr
    written = cmdline.read_text()
    assert written.count("\n") == 1 and "cgroup_enable=memory" in written
    assert run_bash(f"{RASPI_CONFIG_STUB}\nexit $(get_overlay_conf)", env).returncode == 0

    off = run_bash(f"{RASPI_CONFIG_STUB}\nraspi-config nonint do_overlayfs 1", env)
    assert off.returncode == 0, off.stderr
    assert "overlayroot" not in cmdline.read_text(), f"raspi-config left: {cmdline.read_text()}"
    assert cmdline.read_text().split() == [t for t in written.split() if "overlayroot" not in t]

    on = run_bash(f"{RASPI_CONFIG_STUB}\nraspi-config nonint do_overlayfs 0", env)
    assert on.returncode == 0, on.stderr
    assert cmdline.read_text() == written


def test_raspi_config_can_turn_the_first_boots_overlay_off_and_on(tmp_path: Path) -> None:
    """The update procedure in README.md: raspi-config's Overlay File System off, update, on."""
    check_overlay_round_trip(FIRSTBOOT.read_text(), tmp_path)


def test_the_first_boot_refuses_an_overlay_raspi_config_cannot_turn_off(tmp_path: Path) -> None:
    """Control: had raspi-config written an overlay with options, the first boot stops."""
    cmdline = tmp_path / "cmdline.txt"
    cmdline.write_text(STOCK_CMDLINE)
    stub = RASPI_CONFIG_STUB.replace("overlayroot=tmpfs /", "overlayroot=tmpfs:recurse=0 /")
    program = first_boot_cmdline_steps(FIRSTBOOT.read_text()).replace(RASPI_CONFIG_STUB, stub)
    proc = run_bash(program, {"RPI_CMDLINE": str(cmdline)})
    assert proc.returncode != 0 and proc.stderr.startswith("error: "), proc.stderr


def test_raspi_config_recognises_the_write_protected_boot_partition(tmp_path: Path) -> None:
    """raspi-config's boot partition option sees fstab's /boot/firmware as read-only, and its
    "writable" and "read-only" edits give back exactly fstab's options without and with ro."""
    fstab = tmp_path / "fstab"
    shutil.copy2(FW / "fstab", fstab)
    env = {"RPI_CMDLINE": "/dev/null", "RPI_FSTAB": str(fstab)}
    assert run_bash(f"{RASPI_CONFIG_STUB}\nexit $(get_bootro_conf)", env).returncode == 0
    assert run_bash(f"{RASPI_CONFIG_STUB}\ndisable_bootro", env).returncode == 0
    boot = {e[1]: e for e in fstab_entries(fstab.read_text())}["/boot/firmware"]
    assert "ro" not in boot[3].split(",")
    assert run_bash(f"{RASPI_CONFIG_STUB}\nenable_bootro", env).returncode == 0
    assert fstab.read_text() == (FW / "fstab").read_text()


def test_first_boot_fstab_merge_keeps_the_image_devices(tmp_path: Path) -> None:
    """Runs the awk program from painav-firstboot.sh on a stock Raspberry Pi OS fstab."""
    match = re.search(
        r"awk -v snippet=\"\$SRC/fstab\" '(.*?)' /etc/fstab", FIRSTBOOT.read_text(), re.S
    )
    assert match, "fstab merge not found in painav-firstboot.sh"
    stock = tmp_path / "fstab"
    stock.write_text(
        "proc            /proc           proc    defaults          0       0\n"
        "PARTUUID=4e639091-01  /boot/firmware  vfat    defaults          0       2\n"
        "PARTUUID=4e639091-02  /               ext4    defaults,noatime  0       1\n"
        "# a comment IT left\n"
        "tmpfs /tmp tmpfs defaults 0 0\n"
    )
    awk = shutil.which("awk")
    assert awk, "awk not found"
    proc = subprocess.run(
        [awk, "-v", f"snippet={FW / 'fstab'}", match.group(1), str(stock)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    merged = {e[1]: e for e in fstab_entries(proc.stdout)}
    wanted = {e[1]: e for e in fstab_entries((FW / "fstab").read_text())}
    assert merged["/"][0] == "PARTUUID=4e639091-02" and merged["/"][3] == wanted["/"][3]
    assert merged["/boot/firmware"][0] == "PARTUUID=4e639091-01"
    assert merged["/boot/firmware"][3] == wanted["/boot/firmware"][3]
    assert merged["/proc"][0] == "proc"
    for mount in ("/tmp", "/var/tmp"):
        assert merged[mount] == wanted[mount]
    assert [e[1] for e in fstab_entries(proc.stdout)].count("/tmp") == 1
    assert "# a comment IT left" in proc.stdout


# --- cloud-init user-data -------------------------------------------------------------------------

CLOUD_INIT_KEYS = {
    "hostname",
    "users",
    "ssh_pwauth",
    "apt",
    "package_update",
    "packages",
    "runcmd",
    "power_state",
}


def user_data() -> dict[str, Any]:
    text = (FW / "user-data").read_text()
    assert text.splitlines()[0] == "#cloud-config", "cloud-init ignores user-data without it"
    document = parse_yaml_subset(text)
    assert isinstance(document, dict)
    return document


def test_yaml_subset_parser_refuses_what_it_does_not_understand() -> None:
    """Control for the parser the next tests rely on."""
    bad = [
        "a: 1\na: 2\n",
        "a:\n\t- b\n",
        "a: &anchor 1\n",
        "a: |\n  text\n",
        "a:b\n",
        "a:\n  - x\n b: 1\n",
        "a: yes\n",
        "a: 'open\n",
    ]
    for text in bad:
        with pytest.raises(YamlSubsetError):
            parse_yaml_subset(text)
    good = parse_yaml_subset('a: [x, "y z"]\nb:\n  - name: n\n    list: []\n  - plain # c\n')
    assert good == {"a": ["x", "y z"], "b": [{"name": "n", "list": []}, "plain"]}


def test_user_data_parses_and_agrees_with_pyyaml() -> None:
    document = user_data()
    assert set(document) <= CLOUD_INIT_KEYS, set(document) - CLOUD_INIT_KEYS
    reference = system_pyyaml((FW / "user-data").read_text())
    if reference is not None:
        assert reference == document


def test_user_data_creates_the_painav_account_the_device_unit_runs_as() -> None:
    users = {u["name"]: u for u in user_data()["users"] if isinstance(u, dict)}
    painav = users["painav"]
    assert painav["system"] is True and painav["lock_passwd"] is True
    assert painav["shell"] == "/usr/sbin/nologin"
    unit = (UNITS / "painav-device.service").read_text()
    groups = re.search(r"^SupplementaryGroups=(.+)$", unit, re.MULTILINE)
    assert groups and set(painav["groups"]) == set(groups.group(1).split())
    assert re.search(r"^User=painav$", unit, re.MULTILINE)
    assert user_data()["ssh_pwauth"] is False
    for user in users.values():
        assert "passwd" not in user and "plain_text_passwd" not in user, "no passwords on FAT"


def test_user_data_and_first_boot_script_agree_on_packages_and_groups() -> None:
    """The script repeats user-data's work for images without cloud-init; keep them in step."""
    script = FIRSTBOOT.read_text()
    packages = re.search(r'^PACKAGES="([^"]+)"$', script, re.MULTILINE)
    groups = re.search(r"^PAINAV_GROUPS=(\S+)$", script, re.MULTILINE)
    assert packages and groups
    document = user_data()
    assert set(packages.group(1).split()) == set(document["packages"])
    painav = next(u for u in document["users"] if isinstance(u, dict) and u["name"] == "painav")
    assert set(groups.group(1).split(",")) == set(painav["groups"])


def test_user_data_runs_the_first_boot_script_and_reboots_only_on_success() -> None:
    document = user_data()
    assert document["runcmd"] == [["bash", "/boot/firmware/painav/painav-firstboot.sh"]]
    power = document["power_state"]
    assert power["mode"] == "reboot"
    marker = re.fullmatch(r"test -f (\S+)", power["condition"])
    assert marker, "reboot only when the script left its marker"
    assert f'> "$DATA/{Path(marker.group(1)).name}"' in FIRSTBOOT.read_text()
    assert marker.group(1).startswith("/var/lib/painav/")


# --- painav-firstboot.sh ------------------------------------------------------------------------

BUNDLE = {
    "device.toml": b'device_id = "unit-001"\n',
    "recipients.txt": b"age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq\n",
    "certs/tls.crt": b"-----BEGIN CERTIFICATE-----\n",
    "certs/ca-chain.pem": b"-----BEGIN CERTIFICATE-----\n",
    "keys/signing.key": b"untrusted comment: minisign secret key\n",
    "keys/tls.key": b"-----BEGIN PRIVATE KEY-----\n",
    "certs/crl.pem": b"-----BEGIN X509 CRL-----\n",
}


def make_bundle(
    path: Path, edit: Callable[[tarfile.TarFile], None] | None = None, **files: bytes
) -> Path:
    contents = {**BUNDLE, **{k.replace("__", "/"): v for k, v in files.items()}}
    with tarfile.open(path, "w") as tar:
        for name, data in contents.items():
            if data == b"<omit>":
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        if edit:
            edit(tar)
    return path


def check_bundle(path: Path) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash, "bash not found"
    return subprocess.run(
        [bash, str(FIRSTBOOT), "--check-bundle", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_first_boot_script_is_valid_bash() -> None:
    proc = subprocess.run(
        ["bash", "-n", str(FIRSTBOOT)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert os.access(FIRSTBOOT, os.X_OK)


def test_first_boot_script_accepts_a_well_formed_bundle(tmp_path: Path) -> None:
    proc = check_bundle(make_bundle(tmp_path / "painav-bundle.tar"))
    assert proc.returncode == 0, proc.stderr
    assert "bundle layout OK" in proc.stdout


def _symlink(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("keys/evil")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/shadow"
    tar.addfile(info)


def _absolute(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("/etc/cron.d/evil")
    info.size = 1
    tar.addfile(info, io.BytesIO(b"x"))


@pytest.mark.parametrize(
    ("case", "files", "edit", "complaint"),
    [
        ("missing key", {"keys__tls.key": b"<omit>"}, None, "expected files"),
        ("extra file", {"keys__extra.key": b"x"}, None, "expected files"),
        ("no recipient", {"recipients.txt": b"# nobody\n"}, None, "no age1"),
        ("symlink", {}, _symlink, "unexpected links"),
        ("absolute path", {}, _absolute, "expected files"),
    ],
)
def test_first_boot_script_rejects_a_malformed_bundle(
    tmp_path: Path,
    case: str,
    files: dict[str, bytes],
    edit: Callable[[tarfile.TarFile], None] | None,
    complaint: str,
) -> None:
    proc = check_bundle(make_bundle(tmp_path / "painav-bundle.tar", edit, **files))
    assert proc.returncode != 0, f"{case}: accepted"
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("painav-firstboot: error:")]
    assert len(errors) == 1 and complaint in errors[0], f"{case}: {proc.stderr}"
    assert not list(Path("/etc/cron.d").glob("evil")), "the check must not write outside its dir"


def test_first_boot_script_rejects_a_file_that_is_not_a_tar(tmp_path: Path) -> None:
    junk = tmp_path / "painav-bundle.tar"
    junk.write_bytes(b"this is not a tar file\n" * 40)
    proc = check_bundle(junk)
    assert proc.returncode != 0
    assert "not a readable tar file" in proc.stderr


def test_first_boot_masks_hciuart_when_bluetooth_is_off() -> None:
    """disable-bt leaves hciuart.service failing at every boot unless it is disabled."""
    config = (FW / "config.txt").read_text()
    assert re.search(r"^dtoverlay=disable-bt$", config, re.MULTILINE)
    assert re.search(r"^systemctl (mask|disable) hciuart\.service$", FIRSTBOOT.read_text(), re.M)


def test_readme_builds_the_wheelhouse_with_what_the_device_extra_needs() -> None:
    """PyAudio 0.2.14 is newer than Bookworm's and is built from source: the recipe installs
    its build dependencies; systemd-python comes from the OS, not from a build."""
    readme = (FW / "README.md").read_text()
    recipe = readme[readme.index("\n## The wheelhouse\n") + 1 :]
    recipe = recipe[: recipe.index("\n## ")]
    for package in ("portaudio19-dev", "python3-dev", "gcc", "python3-systemd"):
        assert re.search(rf"\b{re.escape(package)}\b", recipe), f"wheelhouse: no {package}"
    assert "--system-site-packages" in recipe
    listed = re.search(r'^PACKAGES="([^"]+)"$', FIRSTBOOT.read_text(), re.MULTILINE)
    assert listed
    packages = set(listed.group(1).split())
    assert {"python3-systemd", "libportaudio2"} <= packages
    assert "python3-pyaudio" not in packages, "Bookworm's 0.2.13 is older than painav needs"


def test_first_boot_script_shreds_the_bundle_and_sets_key_modes() -> None:
    script = FIRSTBOOT.read_text()
    assert re.search(r'shred --remove[^\n]*"\$BUNDLE"', script)
    assert re.search(r"mktemp -d /run/", script), "the bundle is unpacked into RAM"
    for key in ("signing.key", "tls.key", "crl.pem"):
        assert key in script
    assert re.search(r'install -m 0400 -o painav -g painav "\$stage/keys/\$f"', script)
    assert "systemctl enable painav-device.service" in script
    assert "systemctl enable systemd-time-wait-sync.service" in script
