"""device.toml: a bad key gets one line naming the file, the section, the key and what is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import ConfigError, load_config

MINIMAL = """
[unit]
site_id = "ward7"
device_id = "cart-01"
[mqtt]
host = "broker.example"
[keys]
signing_key = "k"
tls_key = "k"
tls_cert = "c"
ca_chain = "c"
receipt_pub = "r"
recipients = "r"
[outbox]
dir = "outbox"
"""


def _load(tmp_path: Path, extra: str) -> str:
    path = tmp_path / "device.toml"
    path.write_text(MINIMAL + extra)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_an_unknown_key_names_the_valid_ones(tmp_path: Path) -> None:
    message = _load(tmp_path, '[camera]\ntype = "simulated"\n')
    assert message.startswith(f"{tmp_path / 'device.toml'}: [camera] type: unknown key")
    assert "valid keys: backend, bitrate_bps, frame_rate_hz, height, replay_file, width" in message
    assert "\n" not in message


def test_an_unknown_section_names_the_valid_sections(tmp_path: Path) -> None:
    message = _load(tmp_path, "[camrea]\nbackend = 'simulated'\n")
    assert "[camrea]: unknown key" in message
    assert "camera" in message.split("valid keys:")[1]


def test_a_bad_value_names_the_bound(tmp_path: Path) -> None:
    message = _load(tmp_path, "[recorder]\nmax_seconds = 90\n")
    assert "[recorder] max_seconds" in message and "60" in message


def test_a_provisioned_bundles_device_toml_loads_with_production_defaults(tmp_path: Path) -> None:
    from provisioning.devices import add_device
    from provisioning.site import init_site

    site = init_site(tmp_path / "site", "ward7", broker_hosts=("broker.ward7.example",))
    add_device(site, "cart-01")
    bundled = site.paths.devices_dir / "cart-01" / "device.toml"
    config = load_config(bundled)
    assert config.unit.device_id == "cart-01" and config.mqtt.host == "broker.ward7.example"
    assert config.recorder.require_clock_sync is True
    assert config.camera.backend == "picamera2" and config.button.backend == "gpio"
    # The commented hardware sections are the defaults, and valid once uncommented.
    text = bundled.read_text()
    hardware = text[text.index("# [camera]") :]
    uncommented = "\n".join(line.removeprefix("# ") for line in hardware.splitlines())
    edited = tmp_path / "device.toml"
    edited.write_text(text[: text.index("# [camera]")] + uncommented.replace("#\n", "\n"))
    assert load_config(edited) == config
