"""The receiver's CRL publisher: what it sends to which units, and when it sends again."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from protocol.messages import CrlMessage
from provisioning.crl import root_crl
from provisioning.devices import add_device, revoke_device
from provisioning.receivers import add_receiver, revoke_receiver
from provisioning.site import Site, init_site
from server.crlpublish import CrlPublisher


@dataclass
class Handle:
    ok: bool = True

    def wait(self, timeout_s: float) -> bool:
        return self.ok


@dataclass
class Sent:
    to: list[tuple[str, CrlMessage]] = field(default_factory=list)
    ok: bool = True

    def __call__(self, device_id: str, message: CrlMessage) -> Handle:
        self.to.append((device_id, message))
        return Handle(self.ok)

    def units(self) -> list[str]:
        """The units sent to since the last call (and the messages kept in *last*)."""
        self.last = {m for _, m in self.to}
        units, self.to = sorted(d for d, _ in self.to), []
        return units

    last: set[CrlMessage] = field(default_factory=set)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    site = init_site(tmp_path / "site", "ward7")
    for unit in ("cart-01", "cart-02", "cart-03"):
        add_device(site, unit)
    revoke_device(site, "cart-03")
    return site


def poll(publisher: CrlPublisher, connects: int = 1) -> None:
    publisher.poll(connects)
    publisher.join(5)


def test_publishes_to_active_units_when_something_changed(site: Site) -> None:
    sent = Sent()
    crl_file = site.paths.receiver_dir / "crl.pem"
    publisher = CrlPublisher(crl_file, site.paths.registry, sent)
    poll(publisher)
    assert sent.units() == ["cart-01", "cart-02"]  # not the revoked unit
    assert sent.last == {CrlMessage(crl=message_of(site))}
    poll(publisher)
    assert sent.units() == []  # nothing changed
    poll(publisher, connects=2)
    assert sent.units() == ["cart-01", "cart-02"]  # a new connection: the broker may be new
    add_receiver(site, "2")
    before = message_of(site)
    revoke_receiver(site, "receiver-2")  # IT copies the new crl.pem into place
    poll(publisher, connects=2)
    assert sent.units() == ["cart-01", "cart-02"]
    assert sent.last == {CrlMessage(crl=message_of(site))} != {CrlMessage(crl=before)}
    add_device(site, "cart-04")
    poll(publisher, connects=2)
    assert sent.units() == ["cart-01", "cart-02", "cart-04"]


def message_of(site: Site) -> str:
    """The site root's CRL as a crl message carries it."""
    return base64.b64encode(root_crl(site).public_bytes(Encoding.DER)).decode()


def test_a_round_the_broker_did_not_acknowledge_is_tried_again(site: Site) -> None:
    sent = Sent(ok=False)
    publisher = CrlPublisher(site.paths.receiver_dir / "crl.pem", site.paths.registry, sent)
    poll(publisher)
    assert sent.units() == ["cart-01", "cart-02"]
    sent.ok = True
    poll(publisher)
    assert sent.units() == ["cart-01", "cart-02"]
    poll(publisher)
    assert sent.units() == []


def test_an_unreadable_crl_is_logged_once_and_not_sent(
    site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sent = Sent()
    bad = tmp_path / "crl.pem"
    bad.write_text("-----BEGIN X509 CRL-----\nnot a crl\n-----END X509 CRL-----\n")
    publisher = CrlPublisher(bad, site.paths.registry, sent)
    with caplog.at_level(logging.WARNING, logger="painav.receiver"):
        poll(publisher)
        poll(publisher)
        publisher_missing = CrlPublisher(tmp_path / "gone.pem", site.paths.registry, sent)
        poll(publisher_missing)
    assert sent.units() == []
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if "not a PEM CRL" in line] == [
        f"{bad}: not a PEM CRL; not published to the units"
    ]
    assert any("gone.pem" in line and "CRL not published" in line for line in lines)
