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


# --- fstab --------------------------------------------------------------------------------------


def test_fstab_makes_root_read_only_and_data_persistent() -> None:
    entries = {e[1]: e for e in fstab_entries((FW / "fstab").read_text())}
    assert all(len(e) == 6 for e in entries.values()), "fstab lines have six fields"
    assert "ro" in entries["/"][3].split(",")
    assert "ro" in entries["/boot/firmware"][3].split(",")
    data = entries["/var/lib/painav"]
    assert data[0] == "LABEL=PAINAV-DATA" and data[2] == "ext4"
    assert {"noatime", "nodev", "nosuid", "noexec"} <= set(data[3].split(","))
    assert entries["/tmp"][2] == "tmpfs"
    fstab = (FW / "fstab").read_text()
    assert "overlayroot=tmpfs:recurse=0" in fstab
    assert "overlayroot=tmpfs:recurse=0" in FIRSTBOOT.read_text()


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
    for mount in ("/var/lib/painav", "/tmp", "/var/tmp"):
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
    "keys/receipt.pub": b"untrusted comment: minisign public key\n",
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


def test_first_boot_script_shreds_the_bundle_and_sets_key_modes() -> None:
    script = FIRSTBOOT.read_text()
    assert re.search(r'shred --remove[^\n]*"\$BUNDLE"', script)
    assert re.search(r"mktemp -d /run/", script), "the bundle is unpacked into RAM"
    for key in ("signing.key", "tls.key", "receipt.pub"):
        assert key in script
    assert re.search(r'install -m 0400 -o painav -g painav "\$stage/keys/\$f"', script)
    assert "systemctl enable painav-device.service" in script
    assert "systemctl enable systemd-time-wait-sync.service" in script
