"""The site's receivers: their ``receiver.toml``, receivers beyond the first, and revoking one.

Several receivers split the units' clips between them (MQTT shared subscription, one catalog on
PostgreSQL). Each needs a certificate of its own: the broker takes a client's certificate name
as its client id, so two receivers with one certificate would push each other off. The added
receivers are named ``<receiver_id>-<name>`` (``receiver-2``), which is how a unit's clip server
recognises them without a new bundle; unit ids of that form are refused. Each signs receipts
and arm commands with a key of its own, certified by the site root: units trust whichever
receivers the root certifies and has not revoked, so revoking one (``provision receiver
revoke``) needs a new CRL on the units, never a new bundle.

The receivers' shared subscription uses the site's secret group name (:func:`subscription_group`,
``subscription-group`` in the site folder, 0600), which every ``receiver.toml`` carries: Mosquitto
does not check SUBSCRIBE against its ACL, so a unit that knew the name could join the group and
take its share of every unit's announcements and events.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from protocol.atomic import write_atomic
from protocol.errors import MessageError
from protocol.metrics_config import RECEIVER_METRICS_PORT, ReceiverMetricsSection
from protocol.receiver_config import (
    GROUP_PATTERN,
    PRIVATE_NETWORKS,
    UNIT_PORT,
    CatalogSection,
    MqttSection,
    PullSection,
    ReceiverConfig,
    SiteSection,
    StoreSection,
    TlsSection,
)
from protocol.registry import names_a_receiver
from protocol.store_config import StoreLocation
from protocol.topics import validate_device_id

from . import pki
from .config_files import build, toml_text
from .crl import (
    RECEIVER_CRL,
    read_revoked_receivers,
    receiver_folders,
    revoke_receiver_id,
    revoke_serial,
    write_crls,
)
from .errors import SiteError
from .site import SERVICE_DAYS, Report, Site, locked
from .stores import store_fields

__all__ = [
    "GROUP_FILE",
    "add_receiver",
    "receiver_config",
    "receiver_dir",
    "revoke_receiver",
    "rotate_signing",
    "subscription_group",
]

GROUP_FILE = "subscription-group"
"""The site's secret subscription group, in the site folder."""


def subscription_group(site: Site) -> str:
    """The site's secret shared-subscription group name, made on first use: 128 random bits as
    26 lower-case base32 characters, a valid topic level and painav id, kept 0600 in the site
    folder. Every receiver of the site must use the same one to share the work."""
    path = site.dir / GROUP_FILE
    with locked(site.dir):
        if not path.exists():
            group = base64.b32encode(os.urandom(16)).decode().rstrip("=").lower()
            write_atomic(path, (group + "\n").encode(), mode=0o600, overwrite=False)
        group = path.read_text().strip()
    if not re.fullmatch(GROUP_PATTERN, group):
        raise SiteError(f"{path}: not a subscription group this build made; delete it to make one")
    return group


LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def receiver_dir(site: Site, receiver_id: str) -> Path:
    """Where the credentials of *receiver_id* are: the first receiver's folder, or
    ``receivers/<id>/`` for an added one."""
    if receiver_id == site.receiver_id:
        return site.paths.receiver_dir
    return site.dir / "receivers" / receiver_id


def add_receiver(site: Site, name: str, *, report: Report = lambda _: None) -> str:
    """Add receiver ``<receiver_id>-<name>``: its TLS client certificate and key, its signing
    certificate and key, the site root and its CRL, in ``receivers/<id>/`` (keys 0600). Returns
    its id. Refuses an id already taken by a receiver or a unit, or once revoked, and changes
    nothing then.

    Then, on the broker host, run ``provision broker-config`` again (the ACL gains the
    receiver) and reload the broker.
    """
    receiver_id = f"{site.receiver_id}-{name}"
    try:
        validate_device_id(receiver_id)  # the same rule: an MQTT user name and a certificate CN
    except MessageError as exc:
        raise SiteError(f"receiver name {name!r}: {exc}") from None
    with locked(site.dir):
        registry = site.registry()
        if receiver_id in registry.receiver_ids():
            raise SiteError(f"receiver {receiver_id!r} exists already; nothing changed")
        if receiver_id in registry.devices:
            raise SiteError(f"{receiver_id!r} is a unit's id; choose another receiver name")
        if receiver_id in read_revoked_receivers(site):
            raise SiteError(f"receiver {receiver_id!r} was revoked; choose another receiver name")
        assert names_a_receiver(receiver_id, site.receiver_id)
        (site.dir / "receivers").mkdir(mode=0o700, exist_ok=True)
        root = site.root()
        issued = pki.issue_leaf(
            root, receiver_id, site.name, days=SERVICE_DAYS, server=False, client=True
        )
        signing = pki.issue_signing(root, receiver_id, site.name, days=SERVICE_DAYS)
        folder = receiver_dir(site, receiver_id)
        # Made aside and renamed into place, then registered: an interrupted run leaves at most
        # a folder no registry entry names, which the next run replaces.
        staging = Path(tempfile.mkdtemp(prefix=f".{receiver_id}.", dir=folder.parent))
        first = site.paths.receiver_dir
        pki.write_private_key(staging / "tls.key", issued.key)
        pki.write_cert(staging / "tls.crt", issued.cert)
        pki.write_private_key(staging / "signing.key", signing.key)
        pki.write_cert(staging / "signing.crt", signing.cert)
        for file_name, mode in (("ca.pem", 0o644), (RECEIVER_CRL, 0o644)):
            if (first / file_name).exists():
                data = (first / file_name).read_bytes()
                write_atomic(staging / file_name, data, mode=mode, overwrite=False)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
        receivers = [*registry.receivers, receiver_id]
        update = {"receivers": receivers, "updated_at": datetime.now(UTC)}
        registry.model_copy(update=update).save(site.paths.registry)
    report(f"receiver {receiver_id}: {folder}/ (TLS client and signing certificates, keys)")
    return receiver_id


def rotate_signing(site: Site, receiver_id: str, *, report: Report = lambda _: None) -> Path:
    """Give receiver *receiver_id* a new signing key and certificate (``signing.key``,
    ``signing.crt`` in its folder) and revoke the old certificate, if it had one: a key that may
    have leaked, or a receiver of a site made before receivers signed with keys of their own.
    Units need no new bundle; they refuse the old key once they hold the new CRL. Returns the
    folder."""
    with locked(site.dir):
        if receiver_id in read_revoked_receivers(site):
            raise SiteError(f"receiver {receiver_id!r} was revoked; add a new receiver instead")
        if receiver_id not in site.registry().receiver_ids():
            known = ", ".join(site.registry().receiver_ids())
            raise SiteError(f"no receiver {receiver_id!r} in site {site.name} (receivers: {known})")
        folder = receiver_dir(site, receiver_id)
        old = folder / "signing.crt"
        previous = pki.read_certs(old)[0] if old.exists() else None
        signing = pki.issue_signing(site.root(), receiver_id, site.name, days=SERVICE_DAYS)
        pki.write_private_key(folder / "signing.key", signing.key, overwrite=True)
        pki.write_cert(old, signing.cert)
        report(f"receiver {receiver_id}: new signing certificate {signing.cert.serial_number:x}")
        if previous is not None:
            revoke_serial(site, "root", previous.serial_number)
            report(f"old signing certificate {previous.serial_number:x} revoked")
        write_crls(site, report)
    report(
        f"next: install {folder}/signing.key and signing.crt on the receiver's host and restart "
        "it; copy the new crl.pem to every receiver, which publishes it to the units."
    )
    return folder


def revoke_receiver(site: Site, receiver_id: str, *, report: Report = lambda _: None) -> None:
    """Revoke receiver *receiver_id*: its TLS and signing certificates go into the site root's
    CRL, it leaves the registry's receivers (the first receiver's id stays there: it is the
    prefix the others are named by), and new CRLs are written, for the broker and for every
    remaining receiver's folder, whence receivers publish the root CRL to the units.
    Refuses an id that is not a receiver of the site; a second revocation changes nothing."""
    with locked(site.dir):
        registry = site.registry()
        if receiver_id in read_revoked_receivers(site):
            report(f"receiver {receiver_id} was already revoked; nothing to do")
            return
        if receiver_id not in registry.receiver_ids():
            known = ", ".join(registry.receiver_ids())
            raise SiteError(f"no receiver {receiver_id!r} in site {site.name} (receivers: {known})")
        folder = receiver_dir(site, receiver_id)
        serials = []
        for file_name in ("tls.crt", "signing.crt"):
            path = folder / file_name
            if path.exists():
                serials += [cert.serial_number for cert in pki.read_certs(path)[:1]]
        if not serials:
            raise SiteError(
                f"receiver {receiver_id!r}: no certificate in {folder}; nothing changed"
            )
        revoke_receiver_id(site, receiver_id, serials)
        if receiver_id in registry.receivers:
            receivers = [r for r in registry.receivers if r != receiver_id]
            update = {"receivers": receivers, "updated_at": datetime.now(UTC)}
            registry.model_copy(update=update).save(site.paths.registry)
        shown = ", ".join(f"{s:x}" for s in serials)
        report(f"receiver {receiver_id} revoked: certificates {shown} in the root CRL")
        write_crls(site, report)
    remaining = ", ".join(str(f / RECEIVER_CRL) for f in receiver_folders(site)) or "none left"
    report(
        "next: copy each remaining receiver's crl.pem to its host's credentials folder "
        f"({remaining}); each receiver publishes it to every unit within seconds. Units "
        f"provisioned from now on have it in their bundle. Destroy {folder}/ and the keys on "
        "the receiver's host."
    )


def receiver_config(
    site: Site,
    *,
    catalog_url: str,
    store_dir: Path | StoreLocation,
    spool_dir: Path,
    broker_host: str | None = None,
    broker_port: int | None = None,
    credentials_dir: Path | None = None,
    concurrency: int = 4,
    receiver_id: str | None = None,
    registry: Path | None = None,
    unit_networks: Sequence[str] | None = None,
    unit_ports: Sequence[int | str] | None = None,
    crl: Path | None = None,
    metrics_listen: str = "127.0.0.1",
    metrics_port: int = RECEIVER_METRICS_PORT,
) -> str:
    """``receiver.toml`` for *site*'s receiver *receiver_id* (default: the first one).
    *credentials_dir* is where the receiver's TLS files and signing key are (default: its folder
    in the site; under systemd, its credentials directory); *registry* is where the receiver
    reads the site's ``registry.json`` (default: in the site folder, which is root-only); *crl*
    is where it reads the site root's CRL, to publish to the units (default: ``crl.pem`` in
    *credentials_dir*).

    *unit_networks* and *unit_ports* are where units' clip servers may be (announced URLs
    elsewhere are refused): by default the private address ranges and port 8443; for a site
    whose units reach the broker on loopback (the demo, the tests), loopback and any port above
    1023, since its units run beside it on picked ports.

    ``[metrics]``: Prometheus's ``/metrics`` and ``/healthz`` on *metrics_listen*:*metrics_port*
    (0: none); beyond loopback over HTTPS with the receiver's certificate, for clients with a
    certificate from the site CA."""
    receiver_id = receiver_id or site.receiver_id
    # Units reach the broker at the site's first broker host (their bundles say so): if that is
    # loopback, they run on this machine, as in the demo and the tests.
    local = _is_loopback(site.broker_hosts[0])
    networks = unit_networks or (LOOPBACK_NETWORKS if local else PRIVATE_NETWORKS)
    ports = unit_ports or (("1024-65535",) if local else (UNIT_PORT,))
    creds = credentials_dir or receiver_dir(site, receiver_id)
    config = build(
        "receiver.toml",
        lambda: ReceiverConfig(
            site=SiteSection(
                site_id=site.name,
                receiver_id=receiver_id,
                registry=registry or site.paths.registry,
                data_key_recipient=str(site.recipients()[0]),
            ),
            mqtt=MqttSection(
                host=broker_host or site.broker_hosts[0],
                port=broker_port or site.broker_port,
                group=subscription_group(site),
            ),
            tls=TlsSection(
                cert=creds / "tls.crt",
                key=creds / "tls.key",
                ca=creds / "ca.pem",
                signing_key=creds / "signing.key",
                signing_cert=creds / "signing.crt",
                crl=crl or creds / RECEIVER_CRL,
                # A site made by the previous version: its receivers also send receipts/1,
                # signed with the shared key, until IT removes this line (README, upgrading).
                receipt_key=(
                    creds / "receipt.key"
                    if (receiver_dir(site, receiver_id) / "receipt.key").exists()
                    else None
                ),
            ),
            store=StoreSection(**store_fields(store_dir), spool=spool_dir),
            catalog=CatalogSection(url=catalog_url),
            pull=PullSection.model_validate(
                {"concurrency": concurrency, "unit_networks": networks, "unit_ports": ports}
            ),
            metrics=ReceiverMetricsSection.model_validate(
                {"listen": metrics_listen, "port": metrics_port}
            ),
        ),
    )
    return toml_text(
        config, header=f"# painav receiver of site {site.name}, made by painav provisioning.\n\n"
    )
