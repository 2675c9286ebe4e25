"""A site's provisioning folder as files: where each part lives (:class:`SitePaths`) and the loaded
site (:class:`Site`), apart from the commands that create and change it (:mod:`.site`,
:mod:`.crl`), so that those can share it without importing each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protocol.registry import Registry
from protocol.x25519 import X25519Recipient

from . import pki

__all__ = ["Report", "Site", "SitePaths"]

Report = Callable[[str], None]


@dataclass(frozen=True)
class SitePaths:
    """Where each file of a site lives, relative to its folder."""

    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "site.toml"

    @property
    def registry(self) -> Path:
        return self.dir / "registry.json"

    @property
    def lock(self) -> Path:
        return self.dir / ".lock"

    @property
    def ca_dir(self) -> Path:
        return self.dir / "ca"

    @property
    def root_cert(self) -> Path:
        return self.ca_dir / "root.crt"

    @property
    def root_key(self) -> Path:
        return self.ca_dir / "root.key"

    @property
    def device_ca_cert(self) -> Path:
        return self.ca_dir / "devices.crt"

    @property
    def device_ca_key(self) -> Path:
        return self.ca_dir / "devices.key"

    @property
    def ca_bundle(self) -> Path:
        """Root and device CA certificates: what the broker trusts for client logins."""
        return self.ca_dir / "ca-bundle.pem"

    @property
    def crl(self) -> Path:
        """The current CRLs of the root and the device CA, concatenated."""
        return self.ca_dir / "crl.pem"

    @property
    def revoked(self) -> Path:
        """Every revoked serial by issuing CA, from which the CRLs are made."""
        return self.ca_dir / "revoked.json"

    @property
    def broker_cert(self) -> Path:
        return self.dir / "broker" / "broker.crt"

    @property
    def broker_key(self) -> Path:
        return self.dir / "broker" / "broker.key"

    @property
    def receiver_dir(self) -> Path:
        return self.dir / "receiver"

    @property
    def data_key(self) -> Path:
        """The hospital data key's private part, meant for the extraction host alone."""
        return self.dir / "extraction" / "data-key.txt"

    @property
    def recipients(self) -> Path:
        """The age recipients every clip is encrypted to: data key, and escrow if any."""
        return self.dir / "recipients.txt"

    @property
    def devices_dir(self) -> Path:
        return self.dir / "devices"


@dataclass(frozen=True)
class Site:
    """A loaded site: its name, settings and paths."""

    name: str
    dir: Path
    receiver_id: str
    broker_hosts: tuple[str, ...]
    broker_port: int

    @property
    def paths(self) -> SitePaths:
        return SitePaths(self.dir)

    def recipients(self) -> list[X25519Recipient]:
        lines = self.paths.recipients.read_text().splitlines()
        return [X25519Recipient.from_string(x) for x in lines if x and not x.startswith("#")]

    def registry(self) -> Registry:
        return Registry.load(self.paths.registry)

    def root(self) -> pki.Authority:
        return pki.load_authority(self.paths.root_cert, self.paths.root_key)

    def device_ca(self) -> pki.Authority:
        return pki.load_authority(self.paths.device_ca_cert, self.paths.device_ca_key)
