"""Provisioning: site init, unit enrolment, re-enrolment, revocation, CRLs, bad input."""

from __future__ import annotations

import io
import json
import stat
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from painav.cli import main
from protocol.envelope import EnvelopeReader, EnvelopeWriter
from protocol.hospital_signature import HospitalSigner, HospitalTrust
from protocol.registry import Registry
from protocol.signing import SigningKey
from protocol.x25519 import X25519Identity
from provisioning import pki
from provisioning.broker import _current_acl, acl_text
from provisioning.crl import CRL_DAYS, refresh_crl
from provisioning.devices import BUNDLE_FILES, add_device, list_devices, revoke_device
from provisioning.errors import DeviceError, KeyFileError, SiteError
from provisioning.receivers import add_receiver, receiver_dir, revoke_receiver
from provisioning.site import Site, init_site, load_site

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return init_site(tmp_path / "site", "ward7")


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under *root* with its mode and content: to show a command changed nothing."""
    return {
        str(p.relative_to(root)): (p.stat().st_mode, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def openssl_verify(site: Site, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-crl_check",
            "-CAfile",
            str(site.paths.ca_bundle),
            "-CRLfile",
            str(site.paths.crl),
            str(cert),
        ],
        capture_output=True,
        text=True,
    )


def test_private_files_are_private(site: Site) -> None:
    add_device(site, "cart-01")
    secret_markers = (b"PRIVATE KEY", b"AGE-SECRET-KEY", b"secret key")
    checked = 0
    for path in site.dir.rglob("*"):
        if path.is_file() and any(m in path.read_bytes() for m in secret_markers):
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
            checked += 1
    assert checked >= 8  # root, device CA, broker, receiver TLS + signing, data key, unit keys
    assert stat.S_IMODE(site.paths.data_key.stat().st_mode) == 0o400
    assert stat.S_IMODE((site.paths.devices_dir / "cart-01.tar").stat().st_mode) == 0o600


def test_init_refuses_an_existing_site_and_changes_nothing(site: Site) -> None:
    before = snapshot(site.dir)
    with pytest.raises(SiteError, match="already holds a site"):
        init_site(site.dir, "ward8")
    assert snapshot(site.dir) == before


@pytest.mark.parametrize(
    ("name", "escrow", "message"),
    [("Ward 7", None, "site id"), ("ward7", "age1nope", "escrow-recipient")],
)
def test_init_rejects_bad_input(
    tmp_path: Path, name: str, escrow: str | None, message: str
) -> None:
    with pytest.raises(SiteError, match=message):
        init_site(tmp_path / "s", name, escrow_recipient=escrow)
    assert not (tmp_path / "s").exists()


def test_data_key_and_escrow_both_open_clips(tmp_path: Path) -> None:
    escrow = X25519Identity.generate()
    site = init_site(tmp_path / "s", "ward7", escrow_recipient=str(escrow.recipient))
    record = add_device(site, "cart-01")
    recipients = (record.bundle_dir / "recipients.txt").read_text().split()
    out = io.BytesIO()
    with EnvelopeWriter(out, [r for r in recipients if r.startswith("age1")]) as env:
        env.write(b"clip")
    data_key = site.paths.data_key.read_text().splitlines()[-1]
    for identity in (data_key, str(escrow)):
        assert EnvelopeReader(io.BytesIO(out.getvalue()), [identity]).read() == b"clip"


def test_bundle_holds_exactly_what_the_unit_needs(site: Site) -> None:
    record = add_device(site, "cart-01")
    with tarfile.open(record.bundle_tar) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == sorted(BUNDLE_FILES)
    assert all(m.isfile() for m in members.values())
    assert {n for n, m in members.items() if m.mode & 0o077 == 0} == {
        "keys/signing.key",
        "keys/tls.key",
    }
    assert sorted(
        str(p.relative_to(record.bundle_dir)) for p in record.bundle_dir.rglob("*") if p.is_file()
    ) == sorted(BUNDLE_FILES)
    # The unit's certificate: CN is its id, issued by the device CA, chain included, valid.
    certs = pki.read_certs(record.bundle_dir / "certs" / "tls.crt")
    assert certs[0].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "cart-01"
    assert certs[1].subject == site.device_ca().cert.subject
    assert openssl_verify(site, record.bundle_dir / "certs" / "tls.crt").returncode == 0
    # The unit trusts the site root only, so no other unit's certificate can pass as receiver.
    assert pki.read_certs(record.bundle_dir / "certs" / "ca-chain.pem") == [site.root().cert]
    # The registry holds the public half of the bundle's signing key.
    key = SigningKey.from_file(record.bundle_dir / "keys" / "signing.key")
    assert site.registry().active_key("cart-01") == key.public_key
    # And the first-boot step on the unit accepts the tar.
    check = subprocess.run(
        [
            "bash",
            str(REPO / "firmware_config" / "painav-firstboot.sh"),
            "--check-bundle",
            str(record.bundle_tar),
        ],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_re_adding_a_unit_issues_new_keys_and_revokes_the_old_cert(site: Site) -> None:
    first = add_device(site, "cart-01")
    old_cert = site.dir / "old.crt"
    old_cert.write_bytes((first.bundle_dir / "certs" / "tls.crt").read_bytes())
    second = add_device(site, "cart-01")
    assert second.entry.cert_serial != first.entry.cert_serial
    assert second.entry.signing_key != first.entry.signing_key
    assert second.entry.revoked_serials == (first.entry.cert_serial,)
    assert [k.public_key for k in second.entry.retired_keys] == [first.entry.signing_key]
    result = openssl_verify(site, old_cert)
    assert result.returncode != 0 and "revoked" in result.stdout + result.stderr
    assert openssl_verify(site, second.bundle_dir / "certs" / "tls.crt").returncode == 0


def test_revocation_updates_registry_and_crl(site: Site) -> None:
    keep = add_device(site, "cart-01")
    gone = add_device(site, "cart-02")
    revoke_device(site, "cart-02")
    registry = Registry.load(site.paths.registry)
    assert registry.active_key("cart-02") is None
    assert registry.devices["cart-02"].status == "revoked"
    assert registry.active_key("cart-01") is not None
    result = openssl_verify(site, gone.bundle_dir / "certs" / "tls.crt")
    assert result.returncode != 0 and "revoked" in result.stdout + result.stderr
    assert openssl_verify(site, keep.bundle_dir / "certs" / "tls.crt").returncode == 0
    before = snapshot(site.dir)
    revoke_device(site, "cart-02")  # idempotent
    assert snapshot(site.dir) == before
    assert [(e.device_id, e.status) for e in list_devices(site)] == [
        ("cart-01", "active"),
        ("cart-02", "revoked"),
    ]


@pytest.mark.parametrize(
    ("device_id", "message"),
    [
        ("Cart_01", "device id"),
        ("receiver", "receiver's name"),
        ("receiver-2", "receiver's name"),  # the form added receivers take
        ("a" * 40, "device id"),
    ],
)
def test_bad_unit_ids_change_nothing(site: Site, device_id: str, message: str) -> None:
    before = snapshot(site.dir)
    with pytest.raises(DeviceError, match=message):
        add_device(site, device_id)
    with pytest.raises(DeviceError):
        revoke_device(site, device_id)
    assert snapshot(site.dir) == before


def test_an_added_receiver_has_its_own_certificates_and_no_shared_key(
    site: Site,
) -> None:
    add_device(site, "cart-01")
    second = add_receiver(site, "2")
    assert second == "receiver-2"
    folder = receiver_dir(site, second)
    assert sorted(p.name for p in folder.iterdir()) == [
        "ca.pem",
        "crl.pem",
        "signing.crt",
        "signing.key",
        "tls.crt",
        "tls.key",
    ]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "tls.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "signing.key").stat().st_mode) == 0o600
    first = site.paths.receiver_dir
    assert not (first / "receipt.key").exists()
    assert (folder / "signing.key").read_bytes() != (first / "signing.key").read_bytes()
    signer = HospitalSigner.from_files(folder / "signing.key", folder / "signing.crt")
    assert signer.receiver_id == second
    trust = HospitalTrust(roots=(site.root().cert,), receiver_id="receiver", crl=lambda: None)
    assert trust.check_signer(signer.cert, datetime.now(UTC)) == second
    cert = x509.load_pem_x509_certificate((folder / "tls.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == second
    assert openssl_verify(site, folder / "tls.crt").returncode == 0
    assert site.registry().receiver_ids() == ["receiver", "receiver-2"]
    assert "user receiver-2\n" in acl_text(site, (), site.registry().receiver_ids())
    # Refused, nothing changed: taken, a unit's id, not an id.
    before = snapshot(site.dir)
    for name, message in (("2", "exists already"), ("Two!", "receiver name")):
        with pytest.raises(SiteError, match=message):
            add_receiver(site, name)
    assert snapshot(site.dir) == before
    # What an interrupted run leaves (a folder no registry entry names) is replaced.
    leftover = site.dir / "receivers" / "receiver-3"
    leftover.mkdir()
    (leftover / "tls.key").write_text("half")
    assert add_receiver(site, "3") == "receiver-3"
    assert (leftover / "tls.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert not [p for p in (site.dir / "receivers").iterdir() if p.name.startswith(".")]


def test_revoking_a_receiver_lists_both_its_certificates_and_takes_it_out(
    site: Site,
) -> None:
    add_device(site, "cart-01")
    second = add_receiver(site, "2")
    add_receiver(site, "3")
    folder = receiver_dir(site, second)
    serials = {
        pki.read_certs(folder / name)[0].serial_number for name in ("tls.crt", "signing.crt")
    }
    lines: list[str] = []
    revoke_receiver(site, second, report=lines.append)
    assert site.registry().receiver_ids() == ["receiver", "receiver-3"]
    root_crl = x509.load_pem_x509_crl((site.paths.receiver_dir / "crl.pem").read_bytes())
    assert root_crl.issuer == site.root().cert.subject
    assert {r.serial_number for r in root_crl} == serials
    # Every remaining receiver holds the new root CRL to publish; the revoked one does not.
    third = receiver_dir(site, "receiver-3") / "crl.pem"
    assert third.read_bytes() == (site.paths.receiver_dir / "crl.pem").read_bytes()
    assert openssl_verify(site, folder / "tls.crt").returncode != 0
    assert any("copy each remaining receiver's crl.pem" in line for line in lines)
    acl, _ = _current_acl(site)  # what sync_revocation installs on the broker
    assert f"user {second}\ntopic deny #" in acl
    assert "user receiver-3\n" in acl
    # Idempotent; an unknown receiver is named; the name is not given out again.
    before = snapshot(site.dir)
    revoke_receiver(site, second)
    assert snapshot(site.dir) == before
    with pytest.raises(SiteError, match="no receiver 'receiver-9'"):
        revoke_receiver(site, "receiver-9")
    with pytest.raises(SiteError, match="was revoked"):
        add_receiver(site, "2")
    # A unit enrolled now has the root CRL in its bundle.
    bundle = add_device(site, "cart-02").bundle_dir
    assert (bundle / "certs" / "crl.pem").read_bytes() == third.read_bytes()


def test_a_site_of_the_previous_version_keeps_sending_old_receipts_until_it_is_told(
    site: Site, tmp_path: Path
) -> None:
    from provisioning.crl import root_crl
    from provisioning.receivers import receiver_config, rotate_signing
    from server.config import load_config

    def config_text() -> str:
        return receiver_config(
            site, catalog_url="sqlite:///c.db", store_dir=tmp_path, spool_dir=tmp_path
        )

    config = tmp_path / "receiver.toml"
    config.write_text(config_text())
    assert load_config(config).tls.receipt_key is None  # a new site has no shared key
    # A site made by the previous version: the shared key, no signing certificate yet.
    first = site.paths.receiver_dir
    (first / "signing.key").unlink()
    (first / "signing.crt").unlink()
    SigningKey.generate().save(first / "receipt.key")
    rotate_signing(site, "receiver")  # its first signing certificate; nothing to revoke
    assert list(root_crl(site)) == []
    config.write_text(config_text())
    tls = load_config(config).tls
    assert tls.receipt_key == first / "receipt.key" and tls.signing_cert == first / "signing.crt"


def test_unknown_unit_cannot_be_revoked(site: Site) -> None:
    with pytest.raises(DeviceError, match="no unit 'cart-09'"):
        revoke_device(site, "cart-09")


def test_a_key_readable_by_others_is_refused(site: Site) -> None:
    site.paths.device_ca_key.chmod(0o640)
    before = snapshot(site.dir)
    with pytest.raises(KeyFileError, match="readable by others"):
        add_device(site, "cart-01")
    assert snapshot(site.dir) == before


def test_missing_ca_is_a_clear_error(site: Site) -> None:
    site.paths.root_cert.unlink()
    with pytest.raises(SiteError, match=r"root\.crt is missing"):
        load_site(site.dir)
    with pytest.raises(SiteError, match="no site here"):
        load_site(site.dir / "nowhere")


def test_crl_refresh_reissues_only_when_due(site: Site) -> None:
    status = refresh_crl(site)
    assert not status.refreshed
    assert (status.next_update - datetime.now(UTC)).days >= CRL_DAYS - 1
    # A CRL a week from expiry, as after three weeks of failed timer runs: re-issued.
    revoked = {0x1234: datetime.now(UTC)}
    short = [pki.make_crl(ca, revoked, days=7) for ca in (site.root(), site.device_ca())]
    pki.write_cert(site.paths.crl, *short)
    status = refresh_crl(site)
    assert status.refreshed and (status.next_update - datetime.now(UTC)).days >= CRL_DAYS - 1
    assert refresh_crl(site, force=True).refreshed


def test_cli_prints_what_it_did_and_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_dir = tmp_path / "site"
    assert main(["provision", "site", "init", "--site", "ward7", "--dir", str(site_dir)]) == 0
    assert str(site_dir / "extraction" / "data-key.txt") in capsys.readouterr().out
    assert main(["provision", "device", "add", "cart-01", "--dir", str(site_dir)]) == 0
    assert str(site_dir / "devices" / "cart-01.tar") in capsys.readouterr().out
    assert main(["provision", "device", "list", "--json", "--dir", str(site_dir)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["device_id"] == "cart-01"
    assert main(["provision", "receiver", "add", "2", "--dir", str(site_dir)]) == 0
    assert str(site_dir / "receivers" / "receiver-2") in capsys.readouterr().out
    config_argv = ["provision", "receiver", "config", "--dir", str(site_dir), "--id"]
    paths = ["--catalog-url", "sqlite:////srv/c.db", "--store", "/srv/s", "--spool", "/srv/p"]
    assert main([*config_argv, "receiver-2", *paths]) == 0
    config = capsys.readouterr().out
    assert 'receiver_id = "receiver-2"' in config
    assert f'cert = "{site_dir / "receivers" / "receiver-2" / "tls.crt"}"' in config
    for argv in (
        ["provision", "site", "init", "--site", "ward7", "--dir", str(site_dir)],
        ["provision", "receiver", "add", "2", "--dir", str(site_dir)],
        [*config_argv, "receiver-3", *paths],
        ["provision", "device", "revoke", "cart-09", "--dir", str(site_dir)],
        ["provision", "device", "add", "cart-02", "--dir", str(tmp_path / "none")],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("painav: error: ") and err.count("\n") == 1, err
