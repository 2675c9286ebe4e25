"""The ``[metrics]`` section: what provisioning writes loads back; a bad key is named in one
line; TLS beyond loopback; each worker of a host on a port of its own; the endpoint refuses
to start on a port that is taken, with one line, and the health checks."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from protocol.extract_config import ExtractConfig
from protocol.metrics_config import (
    RECEIVER_METRICS_PORT,
    WORKER_METRICS_PORT,
    ReceiverMetricsSection,
    WorkerMetricsSection,
)
from protocol.tomlconfig import ConfigError, load_toml
from provisioning.errors import ProvisioningError
from provisioning.extraction import extract_config
from provisioning.layout import Site
from provisioning.receivers import receiver_config
from provisioning.site import init_site
from server.config import load_config
from server.metrics_health import Heartbeat
from server.metrics_http import MetricsEndpoint, MetricsEndpointError, new_registry


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return init_site(tmp_path / "site", "ward7", broker_hosts=("127.0.0.1",))


def receiver_toml(site: Site, tmp_path: Path, **options: object) -> Path:
    path = tmp_path / "receiver.toml"
    path.write_text(
        receiver_config(
            site,
            catalog_url="sqlite:///x.db",
            store_dir=tmp_path / "store",
            spool_dir=tmp_path / "spool",
            **options,  # type: ignore[arg-type]
        )
    )
    return path


def extract_toml(site: Site, tmp_path: Path, **options: object) -> Path:
    path = tmp_path / "extract.toml"
    path.write_text(
        extract_config(
            site,
            catalog_url="sqlite:///x.db",
            store_dir=tmp_path / "store",
            features_dir=tmp_path / "features",
            **options,  # type: ignore[arg-type]
        )
    )
    return path


def test_provisioning_writes_the_section_and_it_loads_back(site: Site, tmp_path: Path) -> None:
    path = receiver_toml(site, tmp_path)
    assert f'[metrics]\nlisten = "127.0.0.1"\nport = {RECEIVER_METRICS_PORT}\n' in path.read_text()
    metrics = load_config(path).metrics
    assert metrics.enabled and not metrics.uses_tls
    worker = load_toml(extract_toml(site, tmp_path), ExtractConfig).metrics
    assert worker.port == WORKER_METRICS_PORT and not worker.uses_tls
    # Beyond loopback: HTTPS by default, with a server certificate (the receiver's own is
    # for clients only), and the client CA of its [tls] unless named.
    with pytest.raises(
        ProvisioningError, match="cert, key required: the endpoint listens beyond loopback"
    ):
        receiver_toml(site, tmp_path, metrics_listen="10.1.2.3")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "prot = 9464",
            "[metrics] prot: unknown key (a typo?); valid keys: cert, client_ca, key, listen, "
            "port, tls",
        ),
        ("port = 70000", "[metrics] port: Input should be less than or equal to 65535"),
        ('listen = "example.org"', "[metrics] listen: value is not a valid IPv4 or IPv6 address"),
        ('tls = "maybe"', "[metrics] tls: Input should be a valid boolean"),
    ],
)
def test_a_bad_metrics_key_is_named_in_one_line(
    site: Site, tmp_path: Path, line: str, expected: str
) -> None:
    path = receiver_toml(site, tmp_path)
    head, metrics = path.read_text().split("[metrics]\n")  # the last section
    key = line.split(" = ")[0]
    kept = [old for old in metrics.splitlines() if not old.startswith(f"{key} = ")]
    path.write_text(head + "[metrics]\n" + "\n".join([*kept, line]) + "\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {expected}"), message
    assert "\n" not in message


def test_a_worker_beyond_loopback_needs_its_tls_files(site: Site, tmp_path: Path) -> None:
    with pytest.raises(ProvisioningError) as error:
        extract_toml(site, tmp_path, metrics_listen="0.0.0.0")
    assert "cert, key, client_ca required" in str(error.value)
    path = extract_toml(site, tmp_path)
    path.write_text(path.read_text().replace('listen = "127.0.0.1"', 'listen = "10.0.0.5"'))
    with pytest.raises(ConfigError) as loaded:
        load_toml(path, ExtractConfig)
    assert f"{path}: [metrics]: cert, key, client_ca required" in str(loaded.value)
    plain = WorkerMetricsSection(listen="10.0.0.5", tls=False)
    assert not plain.uses_tls  # IT's explicit choice for a network it trusts


def test_each_worker_of_a_host_has_its_own_port() -> None:
    section = WorkerMetricsSection()
    assert [section.for_worker(n).port for n in ("1", "2", "3")] == [9465, 9466, 9467]
    assert section.for_worker("cli").port == 9465
    assert WorkerMetricsSection(port=0).for_worker("4").port == 0  # off stays off
    with pytest.raises(ConfigError, match="past 65535"):
        WorkerMetricsSection(port=65535).for_worker("2")


def test_an_endpoint_on_a_taken_port_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        endpoint = MetricsEndpoint(ReceiverMetricsSection(port=port), new_registry(), lambda: None)
        with pytest.raises(MetricsEndpointError) as error:
            endpoint.start()
    assert str(error.value) == (
        f"metrics endpoint http://127.0.0.1:{port}: cannot listen: Address already in use"
    )


def test_a_heartbeat_is_alive_until_it_is_late() -> None:
    now = [100.0]
    beat = Heartbeat("the loop", 30.0, clock=lambda: now[0])
    assert beat.problem() == "the loop has not started"
    beat.beat()
    now[0] += 30.0
    assert beat.problem() is None
    now[0] += 1.0
    assert beat.problem() == "the loop last went round 31 s ago (limit 30 s)"


def test_monitoring_certificates_come_from_the_site_root(site: Site, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from provisioning.errors import SiteError
    from provisioning.monitoring import issue_monitoring_certificate

    out = tmp_path / "certs"
    server, _ = issue_monitoring_certificate(site, "receiver-metrics", out, hosts=["10.1.2.3"])
    client, key = issue_monitoring_certificate(site, "prometheus", out)
    root = x509.load_pem_x509_certificate(site.paths.root_cert.read_bytes())
    for path, usage in (
        (server, ExtendedKeyUsageOID.SERVER_AUTH),
        (client, ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        assert cert.issuer == root.subject
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
    assert key.stat().st_mode & 0o077 == 0
    with pytest.raises(SiteError, match="exists already"):
        issue_monitoring_certificate(site, "prometheus", out)
    with pytest.raises(SiteError, match="a certificate name is"):
        issue_monitoring_certificate(site, "../x", out)
