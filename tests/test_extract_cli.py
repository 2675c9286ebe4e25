"""``painav provision extract config`` and ``painav extract …`` as IT runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from painav.cli import main
from protocol.extract_config import ExtractConfig
from protocol.tomlconfig import load_toml
from provisioning.site import init_site


def written_config(tmp_path: Path, capsys: pytest.CaptureFixture[str], data_key: Path) -> Path:
    site = init_site(tmp_path / "site", "ward7", broker_hosts=("127.0.0.1",))
    args = ["provision", "extract", "config", "--dir", str(site.dir)]
    args += ["--catalog-url", f"sqlite:///{tmp_path / 'catalog.db'}"]
    args += ["--store", str(tmp_path / "store"), "--features", str(tmp_path / "features")]
    assert main([*args, "--data-key", str(data_key)]) == 0
    path = tmp_path / "extract.toml"
    path.write_text(capsys.readouterr().out)
    return path


def test_the_provisioned_config_loads_with_its_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = written_config(tmp_path, capsys, tmp_path / "site" / "extraction" / "data-key.txt")
    config = load_toml(path, ExtractConfig)
    assert config.site.site_id == "ward7"
    assert config.features.voice_rate_hz == 16_000 and config.work.max_attempts == 3
    assert main(["extract", "status", "--config", str(path)]) == 0
    assert capsys.readouterr().out == "waiting 0, extracting 0, extracted 0, failed 0\n"


def test_a_missing_data_key_stops_the_worker_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAINAV_DATA_KEY_FILE", raising=False)
    missing = tmp_path / "nowhere" / "data-key.txt"
    path = written_config(tmp_path, capsys, missing)
    assert main(["extract", "run", "--config", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"painav: error: data key {missing}: cannot read: No such file or directory\n"
    )
