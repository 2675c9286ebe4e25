"""``painav provision …`` as hospital IT runs it: what it prints, what it writes for the broker."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from cryptography import x509

from painav.cli import main
from provisioning.site import Site
from tests.support.environment import missing
from tests.support.mosquitto import HOST, Broker, broker_user, free_port


def reload_lines(out: str) -> list[str]:
    """Lines telling IT to reload the broker (the test's own folder names hold "reload" too)."""
    return [line for line in out.splitlines() if re.search(r"reload (the broker|mosquitto)", line)]


def test_revoke_says_to_reload_the_broker_once(
    broker_site: Site, broker_out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = ["--dir", str(broker_site.dir)]
    assert main(["provision", "broker-config", *site, "--out", str(broker_out)]) == 0
    capsys.readouterr()

    assert (
        main(["provision", "device", "revoke", "cart-02", *site, "--broker-dir", str(broker_out)])
        == 0
    )
    out = capsys.readouterr().out
    assert len(reload_lines(out)) == 1, out
    assert "systemctl reload mosquitto" in out
    assert "cart-02" in (broker_out / "painav.acl").read_text()

    # Without a broker folder: still one line saying what is left to do.
    assert main(["provision", "device", "revoke", "cart-03", *site]) == 0
    out = capsys.readouterr().out
    assert len(reload_lines(out)) == 1 and "--broker-dir" in out, out


def listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def test_receiver_revoke_and_signing_key_rotation(
    broker_site: Site, broker_out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = ["--dir", str(broker_site.dir)]
    assert main(["provision", "receiver", "add", "2", *site]) == 0
    assert main(["provision", "broker-config", *site, "--out", str(broker_out)]) == 0
    first = broker_site.paths.receiver_dir
    old_signing = (first / "signing.crt").read_bytes()
    assert main(["provision", "receiver", "rotate-signing-key", "receiver", *site]) == 0
    assert (first / "signing.crt").read_bytes() != old_signing
    capsys.readouterr()

    args = ["provision", "receiver", "revoke", "receiver-2", *site, "--broker-dir", str(broker_out)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert len(reload_lines(out)) == 1, out
    assert (
        f"copy each remaining receiver's crl.pem to its host's credentials folder ({first}" in out
    )
    assert "user receiver-2\ntopic deny #" in (broker_out / "painav.acl").read_text()
    # The old signing certificate of the first receiver and both of receiver-2's are revoked.
    crl = x509.load_pem_x509_crl((first / "crl.pem").read_bytes())
    assert len(list(crl)) == 3
    assert crl.get_revoked_certificate_by_serial_number(
        x509.load_pem_x509_certificate(old_signing).serial_number
    )
    assert main(["provision", "receiver", "revoke", "receiver-9", *site]) == 1
    assert "no receiver 'receiver-9'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("listen", "served", "not_served"),
    [([], ["127.0.0.1", "127.0.0.2"], []), (["--listen", HOST], [HOST], ["127.0.0.2"])],
)
def test_broker_listens_where_broker_config_says(
    broker_site: Site,
    broker_out: Path,
    listen: list[str],
    served: list[str],
    not_served: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The generated config run by a real Mosquitto: by default on every interface, with
    --listen on that address alone (127.0.0.2 is another loopback address of this machine)."""
    port = free_port()
    args = ["provision", "broker-config", "--dir", str(broker_site.dir), "--out", str(broker_out)]
    assert main([*args, "--port", str(port), *listen]) == 0
    capsys.readouterr()
    conf = (broker_out / "mosquitto.conf").read_text()
    wanted = listen[1] if listen else "0.0.0.0"
    assert [ln for ln in conf.splitlines() if ln.startswith("listener")] == [
        f"listener {port} {wanted}"
    ]
    if broker_user() != "mosquitto":
        missing("the mosquitto account the generated config drops to")
    broker = Broker(broker_site, broker_out, port, broker_out / "mosquitto.log")
    try:
        broker.start()  # returns once a TLS login on 127.0.0.1 succeeds
        for address in served:
            assert listening(address, port), f"nothing on {address}:{port}"
        for address in not_served:
            assert not listening(address, port), f"{address}:{port} answers"
    finally:
        broker.stop()


def test_broker_config_refuses_a_listen_address_that_would_break_the_config(
    broker_site: Site, broker_out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["provision", "broker-config", "--dir", str(broker_site.dir), "--out", str(broker_out)]
    assert main([*args, "--listen", "0.0.0.0 allow_anonymous"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("painav: error:") and "bind address" in err and err.count("\n") == 1
    assert not broker_out.exists()


def test_add_and_revoke_install_the_registry_the_receiver_reads(
    broker_site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from protocol.registry import Registry

    copy = tmp_path / "etc" / "registry.json"
    copy.parent.mkdir()
    site = ["--dir", str(broker_site.dir), "--receiver-registry", str(copy)]
    assert main(["provision", "device", "add", "cart-09", *site]) == 0
    assert f"installed the unit registry for the receiver: {copy}" in capsys.readouterr().out
    assert Registry.load(copy).active_key("cart-09") is not None
    assert copy.stat().st_mode & 0o777 == 0o644  # the receiver's own user reads it
    assert main(["provision", "device", "revoke", "cart-09", *site]) == 0
    assert Registry.load(copy).active_key("cart-09") is None
    assert Registry.load(copy) == Registry.load(broker_site.paths.registry)


@pytest.mark.parametrize("command", [["add", "cart-10"], ["revoke", "cart-02"]])
def test_a_receiver_registry_in_a_missing_folder_is_refused_before_any_change(
    broker_site: Site, tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped --receiver-registry folder: one line naming it, and the site is as it was
    (before, the unit was enrolled or revoked and then a bare errno about a temporary file)."""
    registry = broker_site.paths.registry
    before = registry.read_bytes()
    copy = tmp_path / "missing" / "registry.json"
    args = ["--dir", str(broker_site.dir), "--receiver-registry", str(copy)]
    assert main(["provision", "device", *command, *args]) != 0
    err = capsys.readouterr().err
    assert err.startswith("painav: error:") and err.count("\n") == 1, err
    assert str(copy.parent) in err and ".tmp" not in err, err
    assert registry.read_bytes() == before
    assert not copy.parent.exists()


def test_a_bad_receiver_config_option_is_one_line(
    broker_site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["provision", "receiver", "config", "--dir", str(broker_site.dir)]
    paths = ["--store", str(tmp_path / "store"), "--spool", str(tmp_path / "spool")]
    assert main([*args, "--catalog-url", "", *paths]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "painav: error: receiver.toml: field 'url': String should have at least 1 character\n"
    )
