"""Provisioning an S3 store: ``--store s3://bucket/prefix`` with the endpoint and credentials
file makes a ``[store]`` the receiver and the worker load back as the same location."""

from __future__ import annotations

from pathlib import Path

import pytest

from painav.cli import main
from protocol.extract_config import ExtractConfig
from protocol.tomlconfig import load_toml
from provisioning.errors import ProvisioningError
from provisioning.extraction import extract_config
from provisioning.receivers import receiver_config
from provisioning.site import init_site
from provisioning.stores import store_location
from server.config import load_config


def test_an_s3_store_round_trips_through_both_configs(tmp_path: Path) -> None:
    site = init_site(tmp_path / "site", "ward7")
    location = store_location(
        "s3://painav-clips/ward7/2026",
        endpoint="https://s3.hospital.example:8333",
        credentials_file=Path("/run/credentials/painav-receiver.service/s3"),
        ca_file=Path("/etc/painav/s3-ca.pem"),
    )
    receiver = tmp_path / "receiver.toml"
    receiver.write_text(
        receiver_config(
            site, catalog_url="sqlite:///c.db", store_dir=location, spool_dir=tmp_path / "spool"
        )
    )
    store = load_config(receiver).store
    assert (store.backend, store.bucket, store.prefix) == ("s3", "painav-clips", "ward7/2026")
    assert store.dir is None and store.spool == tmp_path / "spool"
    assert store.ca_file == Path("/etc/painav/s3-ca.pem")
    worker = tmp_path / "extract.toml"
    worker.write_text(
        extract_config(
            site, catalog_url="sqlite:///c.db", store_dir=location, features_dir=tmp_path / "f"
        )
    )
    assert load_toml(worker, ExtractConfig).store.endpoint == "https://s3.hospital.example:8333"
    # A folder, as before: the same keys as every config written before S3 stores.
    receiver.write_text(
        receiver_config(site, catalog_url="sqlite:///c.db", store_dir=tmp_path, spool_dir=tmp_path)
    )
    text = receiver.read_text()
    assert "backend" not in text and load_config(receiver).store.dir == tmp_path


def test_bad_store_options_are_one_line_naming_the_key() -> None:
    with pytest.raises(ProvisioningError, match="endpoint is required"):
        store_location("s3://painav-clips", credentials_file=Path("/c"))
    with pytest.raises(ProvisioningError, match="the --s3-\\* options are for an s3://bucket"):
        store_location("/var/lib/painav/store", endpoint="https://s3.example")
    with pytest.raises(ProvisioningError, match="ca_file is for an https endpoint only"):
        store_location(
            "s3://painav-clips",
            endpoint="http://127.0.0.1:8333",
            credentials_file=Path("/c"),
            ca_file=Path("/ca.pem"),
        )


def test_the_command_prints_an_s3_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_site(tmp_path / "site", "ward7")
    code = main(
        ["provision", "extract", "config", "--dir", str(tmp_path / "site"),
         "--catalog-url", "postgresql+psycopg://painav@db/painav",
         "--store", "s3://painav-clips/ward7", "--s3-endpoint", "https://s3.example:8333",
         "--s3-credentials", "/run/credentials/painav-extract@1.service/s3",
         "--features", "/var/lib/painav-extract/features"]
    )  # fmt: skip
    assert code == 0
    store = capsys.readouterr().out.split("[store]\n", 1)[1].split("\n\n", 1)[0]
    assert 'backend = "s3"' in store and 'bucket = "painav-clips"' in store
    assert "dir =" not in store
