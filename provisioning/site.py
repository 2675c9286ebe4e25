"""A site's provisioning folder: its layout, ``site init``, and loading it back.

One folder per site holds everything hospital IT provisions: the root CA and the device CA, the
broker's and the receiver's credentials (TLS, and the certified key it signs receipts and arm
commands with), the hospital data key (private part for the extraction
host only), the device registry and the unit bundles. Commands that change it take a lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from protocol.atomic import write_atomic
from protocol.errors import KeyFormatError, MessageError
from protocol.registry import Registry
from protocol.topics import validate_site_id
from protocol.x25519 import X25519Identity, X25519Recipient

from . import pki
from .crl import write_crls
from .errors import SiteError
from .layout import Report, Site, SitePaths

__all__ = ["Report", "Site", "SitePaths", "init_site", "load_site", "locked"]

ROOT_DAYS = 20 * 365
DEVICE_CA_DAYS = 10 * 365
SERVICE_DAYS = 2 * 365


@contextmanager
def locked(site_dir: Path) -> Iterator[None]:
    """Hold the site's lock, so two IT sessions never interleave changes."""
    fd = os.open(site_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def init_site(
    dir: Path,
    name: str,
    *,
    broker_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    broker_port: int = 8883,
    receiver_id: str = "receiver",
    escrow_recipient: str | None = None,
    report: Report = lambda _: None,
) -> Site:
    """Create a site in *dir* (empty or absent): CAs, broker and receiver credentials, the
    data key, an empty registry. Refuses an existing site and changes nothing then."""
    try:
        validate_site_id(name)
        validate_site_id(receiver_id)
    except MessageError as exc:
        raise SiteError(str(exc)) from None
    escrow = None
    if escrow_recipient is not None:
        try:
            escrow = X25519Recipient.from_string(escrow_recipient)
        except KeyFormatError as exc:
            raise SiteError(f"--escrow-recipient: {exc}") from None
    paths = SitePaths(dir)
    if paths.config.exists():
        raise SiteError(f"{dir} already holds a site ({paths.config}); nothing changed")
    if dir.exists() and any(p.name != ".lock" for p in dir.iterdir()):
        raise SiteError(f"{dir} is not empty; give an empty or new folder for a new site")
    dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(dir, 0o700)

    with locked(dir):
        root = pki.issue_ca(f"painav {name} root CA", name, days=ROOT_DAYS, path_length=1)
        devices = pki.issue_ca(
            f"painav {name} device CA", name, days=DEVICE_CA_DAYS, parent=root, path_length=0
        )
        pki.write_private_key(paths.root_key, root.key)
        pki.write_cert(paths.root_cert, root.cert)
        pki.write_private_key(paths.device_ca_key, devices.key)
        pki.write_cert(paths.device_ca_cert, devices.cert)
        pki.write_cert(paths.ca_bundle, root.cert, devices.cert)
        report(f"root CA and device CA: {paths.root_cert}, {paths.device_ca_cert}")

        broker = pki.issue_leaf(
            root,
            broker_hosts[0],
            name,
            days=SERVICE_DAYS,
            server=True,
            client=False,
            hosts=broker_hosts,
        )
        pki.write_private_key(paths.broker_key, broker.key)
        pki.write_cert(paths.broker_cert, broker.cert)
        report(f"broker certificate for {', '.join(broker_hosts)}: {paths.broker_cert}")

        receiver = pki.issue_leaf(
            root, receiver_id, name, days=SERVICE_DAYS, server=False, client=True
        )
        rdir = paths.receiver_dir
        pki.write_private_key(rdir / "tls.key", receiver.key)
        pki.write_cert(rdir / "tls.crt", receiver.cert)
        pki.write_cert(rdir / "ca.pem", root.cert)
        # Its own signing key for receipts and arm commands; no key shared between receivers.
        signing = pki.issue_signing(root, receiver_id, name, days=SERVICE_DAYS)
        pki.write_private_key(rdir / "signing.key", signing.key)
        pki.write_cert(rdir / "signing.crt", signing.cert)
        report(f"receiver TLS client certificate and signing certificate: {rdir}/")

        data_key = X25519Identity.generate()
        paths.data_key.parent.mkdir(mode=0o700, exist_ok=True)
        text = f"# painav {name} hospital data key; public key: {data_key.recipient}\n{data_key}\n"
        write_atomic(paths.data_key, text.encode(), mode=0o400, overwrite=False)
        lines = [f"# data key\n{data_key.recipient}\n"]
        if escrow is not None:
            lines.append(f"# escrow key (data steward)\n{escrow}\n")
        write_atomic(paths.recipients, "".join(lines).encode(), mode=0o644, overwrite=False)
        report(f"hospital data key: {paths.data_key} (mode 0400; move it to the extraction host)")

        now = datetime.now(UTC)
        Registry(site_id=name, receiver_id=receiver_id, updated_at=now).save(paths.registry)
        write_atomic(
            paths.revoked,
            b'{"root": {}, "devices": {}, "receivers": {}}\n',
            mode=0o644,
            overwrite=False,
        )
        config = (
            f"# painav site, made by 'painav provision site init' on {now:%Y-%m-%d}\n"
            f"name = {_toml_str(name)}\n"
            f"receiver_id = {_toml_str(receiver_id)}\n"
            f"broker_hosts = [{', '.join(_toml_str(h) for h in broker_hosts)}]\n"
            f"broker_port = {broker_port}\n"
        )
        site = Site(name, dir, receiver_id, tuple(broker_hosts), broker_port)

        write_crls(site, report)
        # site.toml last: its presence marks a complete site.
        write_atomic(paths.config, config.encode(), mode=0o644, overwrite=False)
        report(f"site {name!r} ready in {dir}")
    return site


def load_site(dir: Path | None) -> Site:
    """Load the site in *dir*; one clear :class:`SiteError` if there is none or it is damaged."""
    if dir is None:
        raise SiteError("no site folder: pass --dir DIR or set PAINAV_SITE_DIR")
    paths = SitePaths(dir)
    try:
        config = tomllib.loads(paths.config.read_text())
    except FileNotFoundError:
        raise SiteError(
            f"{dir}: no site here (missing {paths.config.name}); run 'painav provision site init'"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SiteError(f"{paths.config}: {exc}") from None
    try:
        site = Site(
            name=str(config["name"]),
            dir=dir,
            receiver_id=str(config["receiver_id"]),
            broker_hosts=tuple(str(h) for h in config["broker_hosts"]),
            broker_port=int(config["broker_port"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SiteError(f"{paths.config}: missing or bad setting {exc}") from None
    for required in (paths.root_cert, paths.device_ca_cert, paths.registry, paths.recipients):
        if not required.exists():
            raise SiteError(f"{dir}: damaged site, {required} is missing")
    return site
