"""``painav research …``: what a data manager types to enrol, consent and open visits."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from painav.cli import main
from provisioning.receivers import receiver_config
from provisioning.site import init_site
from server.catalog import Catalog
from tests.support.mosquitto import HOST, SITE
from tests.support.unit import PAINAV


@pytest.fixture
def config(tmp_path: Path) -> Path:
    site = init_site(tmp_path / "site", SITE, broker_hosts=(HOST,))
    path = tmp_path / "receiver.toml"
    path.write_text(
        receiver_config(
            site,
            catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}",
            store_dir=tmp_path / "store",
            spool_dir=tmp_path / "spool",
            broker_host=HOST,
            broker_port=8883,
        )
    )
    return path


@pytest.fixture
def extract(config: Path, tmp_path: Path) -> Path:
    """The extraction worker's config beside *config*, on the same catalog."""
    from provisioning.extraction import extract_config
    from provisioning.site import load_site

    site = load_site(tmp_path / "site")
    path = tmp_path / "extract.toml"
    path.write_text(
        extract_config(
            site,
            catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}",
            store_dir=tmp_path / "store",
            features_dir=tmp_path / "features",
            data_key=site.paths.data_key,
        )
    )
    return path


def test_enrol_open_a_visit_and_show(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--config", str(config)]
    assert main(["research", "enrol", "PAIN-0042", "--group", "pain", "--language", "nl",
                 "--consent-form", "v2", *common]) == 0  # fmt: skip
    assert main(["research", "visit", "open", "PAIN-0042", *common]) == 0
    assert main(["research", "visit", "close", "PAIN-0042", "1", *common]) == 0
    assert main(["research", "visit", "open", "PAIN-0042", *common]) == 0
    capsys.readouterr()
    assert main(["research", "show", "--json", *common]) == 0
    [shown] = json.loads(capsys.readouterr().out)
    assert shown["pseudonym"] == "PAIN-0042" and shown["consented"]
    assert [v["number"] for v in shown["visits"]] == [1, 2]
    assert shown["visits"][1]["closed_at"] is None
    assert main(["research", "show", *common]) == 0
    assert "V1 V2(open)" in capsys.readouterr().out
    url = f"sqlite:///{config.parent / 'catalog.db'}"
    with Catalog(url) as catalog:
        entries = catalog.audit.entries()
    assert {e.actor for e in entries} == {f"os:{__import__('getpass').getuser()}"}


def test_assigning_an_unknown_clip_is_one_line(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--config", str(config)]
    assert main(["research", "enrol", "CTRL-0001", "--group", "control", "--language", "en",
                 "--consent-form", "v1", *common]) == 0  # fmt: skip
    assert main(["research", "visit", "open", "CTRL-0001", *common]) == 0
    capsys.readouterr()
    assert main(["research", "assign", "cart-01-20261129T100000Z-ab12", "CTRL-0001",
                 "--visit", "1", *common]) == 1  # fmt: skip
    assert capsys.readouterr().err.strip().endswith("is not in the catalog")


def test_an_identifier_as_pseudonym_is_one_line_and_nothing_changes(config: Path) -> None:
    done = subprocess.run(
        [str(PAINAV), "research", "enrol", "PAT-140385", "--group", "control",
         "--language", "en", "--consent-form", "v1", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "reads as a date" in done.stderr
    with Catalog(f"sqlite:///{config.parent / 'catalog.db'}") as catalog:
        assert catalog.participants() == []


def test_withdraw_from_the_command_line(
    config: Path, extract: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["research", "enrol", "PAIN-0042", "--group", "pain", "--language", "nl",
                 "--consent-form", "v2", "--config", str(config)]) == 0  # fmt: skip
    assert main(["research", "withdraw", "PAIN-0042", "--extract-config", str(extract)]) == 0
    assert "PAIN-0042 withdrawn and erased (0 clips" in capsys.readouterr().out
    assert main(["research", "withdraw", "PAIN-0042", "--extract-config", str(extract)]) == 1
    assert "withdrew on" in capsys.readouterr().err


def test_export_from_the_command_line(
    config: Path, extract: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["research", "enrol", "CTRL-0001", "--group", "control", "--language", "en",
                 "--consent-form", "v1", "--config", str(config)]) == 0  # fmt: skip
    out = tmp_path / "dataset"
    assert main(["export", "--out", str(out), "--extract-config", str(extract)]) == 0
    assert "exported 1 participant(s), 0 clip(s)" in capsys.readouterr().out
    assert (out / "participants.tsv").read_text().splitlines()[1].startswith("sub-CTRL0001\t")
    assert main(["export", "--out", str(out), "--extract-config", str(extract)]) == 1
    assert "exists already" in capsys.readouterr().err
    assert main(["research", "exports", "--config", str(config)]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert "current" in line and "1 participant(s)" in line and line.endswith(str(out))


def test_import_from_the_command_line_reports_every_bad_row(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.server.edc_files import REDCAP_MAPPING, REDCAP_ROWS, redcap_csv

    common = ["--config", str(config)]
    for pseudonym, group in (("PAIN-0042", "pain"), ("CTRL-0001", "control")):
        assert main(["research", "enrol", pseudonym, "--group", group, "--language", "nl",
                     "--consent-form", "v1", *common]) == 0  # fmt: skip
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(REDCAP_MAPPING)
    good = redcap_csv(tmp_path / "redcap.csv")
    capsys.readouterr()
    assert main(["research", "import", str(good), "--mapping", str(mapping), *common]) == 0
    assert capsys.readouterr().out == "redcap.csv: 9 new, 0 updated (audited), 0 unchanged\n"
    bad = redcap_csv(tmp_path / "bad.csv", [*REDCAP_ROWS, "PAIN-0042,d9,,,w,,,x,2026-11-22,,,,,,,",
                                            "PAIN-0042,d8,,,w,,,3,22-11-2026,,,,,,,"])  # fmt: skip
    done = subprocess.run(
        [str(PAINAV), "research", "import", str(bad), "--mapping", str(mapping), *common],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "painav: bad.csv: row 8: field 'nrs_score': 'x' is not a number",
        "painav: bad.csv: row 9: field 'nrs_date': '22-11-2026' is not a date (%Y-%m-%d)",
        "painav: error: nothing imported: 2 problem(s)",
    ]


def test_a_decrypt_by_hand_is_audited_first(extract: Path, tmp_path: Path) -> None:
    import hashlib

    from protocol.envelope import EnvelopeWriter
    from protocol.messages import ClipAnnouncement
    from protocol.signing import SigningKey, sign_clip
    from protocol.x25519 import X25519Identity
    from tests.protocol.message_examples import manifest

    identity, key = X25519Identity.generate(), SigningKey.generate()
    clip = tmp_path / "clip.age"
    with clip.open("wb") as f, EnvelopeWriter(f, [identity.recipient]) as sealed:
        sealed.write(b"media" * 1000)
    clip_id = "cart-01-20261127T101500Z-ab12"
    signature, _ = sign_clip(key, clip, clip_id, "cart-01", participant=None, visit=None)
    clip.with_name("clip.age.minisig").write_text(signature.to_text())
    key.public_key.save(tmp_path / "unit.pub")
    (tmp_path / "data-key.txt").write_text(f"{identity}\n")
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    args = ["clip", "decrypt", str(clip), "-i", str(tmp_path / "data-key.txt"), "-o",
            str(tmp_path / "out.bin"), "--audit", str(extract)]  # fmt: skip
    assert main(args) == 2  # the audit names the clip its signature vouches for
    assert main([*args, "--pubkey", str(tmp_path / "unit.pub")]) == 1  # not in the catalog
    assert not (tmp_path / "out.bin").exists()
    with Catalog(url) as catalog:
        digest = hashlib.sha256(clip.read_bytes()).hexdigest()
        m = manifest(clip_id=clip_id, device_id="cart-01", sha256=digest,
                     size_bytes=clip.stat().st_size)  # fmt: skip
        ann = ClipAnnouncement(manifest=m, signature=signature.to_text(),
                               url=f"https://10.0.0.9:8443/v1/clips/{clip_id}.age")  # fmt: skip
        now = m.started_at
        catalog.record_announcement(ann, received_at=now)
        assert catalog.claim_next(worker="rx", now=now, lease_s=60) is not None
        catalog.mark_stored(clip_id, store_key="k", stored_at=now, worker="rx")
    assert main([*args, "--pubkey", str(tmp_path / "unit.pub")]) == 0
    assert (tmp_path / "out.bin").read_bytes() == b"media" * 1000
    with Catalog(url) as catalog:
        [entry] = [e for e in catalog.audit.entries() if e.action == "decrypt"]
    assert entry.clip_id == clip_id and entry.detail["purpose"] == "manual"
    assert entry.actor.startswith("os:")
