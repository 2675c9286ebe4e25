"""``painav provision …``: hospital IT's commands for a site's PKI, units and broker."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from protocol.metrics_config import RECEIVER_METRICS_PORT, WORKER_METRICS_PORT
from provisioning.site import Site, load_site

if TYPE_CHECKING:
    from protocol.store_config import StoreLocation


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    provision = commands.add_parser(
        "provision", help="site PKI, units, broker configuration and revocation (hospital IT)"
    )
    default_dir = os.environ.get("PAINAV_SITE_DIR")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        type=Path,
        default=Path(default_dir) if default_dir else None,
        help="the site's provisioning folder (default: $PAINAV_SITE_DIR)",
    )
    sub = provision.add_subparsers(dest="provision_command", required=True, metavar="COMMAND")

    site = sub.add_parser("site", help="create a site").add_subparsers(
        dest="site_command", required=True, metavar="ACTION"
    )
    init = site.add_parser("init", parents=[common], help="create the site's CAs and keys")
    init.add_argument("--site", required=True, help="site id, e.g. ward7 (a-z, 0-9, '-')")
    init.add_argument(
        "--broker-host",
        action="append",
        dest="broker_hosts",
        help="broker host name or IP for its certificate (repeatable; default localhost)",
    )
    init.add_argument("--broker-port", type=int, default=8883)
    init.add_argument("--receiver-id", default="receiver", help="CN of the receiver's cert")
    init.add_argument("--escrow-recipient", help="age1… key of the data steward's escrow key")
    init.set_defaults(handler="painav.provisioncmd:site_init")

    device = sub.add_parser("device", help="enrol, revoke and list units").add_subparsers(
        dest="device_command", required=True, metavar="ACTION"
    )
    receiver_registry = argparse.ArgumentParser(add_help=False)
    default_registry = os.environ.get("PAINAV_RECEIVER_REGISTRY")
    receiver_registry.add_argument(
        "--receiver-registry",
        type=Path,
        default=Path(default_registry) if default_registry else None,
        help="also install registry.json here, for a receiver that cannot read the site "
        "folder (default: $PAINAV_RECEIVER_REGISTRY)",
    )
    add = device.add_parser(
        "add", parents=[common, receiver_registry], help="enrol a unit (or re-enrol it)"
    )
    add.add_argument("id", help="unit id, e.g. cart-03")
    add.set_defaults(handler="painav.provisioncmd:device_add")
    broker_dir = argparse.ArgumentParser(add_help=False)
    default_broker = os.environ.get("PAINAV_BROKER_DIR")
    broker_dir.add_argument(
        "--broker-dir",
        type=Path,
        default=Path(default_broker) if default_broker else None,
        help="also install the new CRL and ACL into this broker folder (default: "
        "$PAINAV_BROKER_DIR); then reload the broker",
    )
    revoke = device.add_parser(
        "revoke",
        parents=[common, broker_dir, receiver_registry],
        help="take a unit out of service",
    )
    revoke.add_argument("id")
    revoke.set_defaults(handler="painav.provisioncmd:device_revoke")
    listing = device.add_parser("list", parents=[common], help="list the site's units")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler="painav.provisioncmd:device_list")

    receiver = sub.add_parser("receiver", help="receivers and their config").add_subparsers(
        dest="receiver_command", required=True, metavar="ACTION"
    )
    radd = receiver.add_parser(
        "add",
        parents=[common, broker_dir],
        help="add a receiver that shares the work (its own certificate: <receiver_id>-NAME)",
    )
    radd.add_argument("name", help="e.g. 2, giving receiver-2")
    radd.set_defaults(handler="painav.provisioncmd:receiver_add")
    rrevoke = receiver.add_parser(
        "revoke",
        parents=[common, broker_dir, receiver_registry],
        help="revoke a receiver (a stolen or retired host): its certificates go into the CRL",
    )
    rrevoke.add_argument("id", help="the receiver's id, e.g. receiver-2")
    rrevoke.set_defaults(handler="painav.provisioncmd:receiver_revoke")
    rrotate = receiver.add_parser(
        "rotate-signing-key",
        parents=[common, broker_dir],
        help="issue a receiver a new key for signing receipts and arm commands, revoking its "
        "old one (also: the first such key, for a receiver of an older site)",
    )
    rrotate.add_argument("id", help="the receiver's id, e.g. receiver or receiver-2")
    rrotate.set_defaults(handler="painav.provisioncmd:receiver_rotate")
    rconfig = receiver.add_parser(
        "config", parents=[common], help="print a receiver.toml for one of the site's receivers"
    )
    rconfig.add_argument("--id", help="the receiver's id (default: the site's first)")
    rconfig.add_argument(
        "--catalog-url", required=True, help="sqlite:///… or postgresql+psycopg://…"
    )
    rconfig.add_argument(
        "--store", required=True, help="the clip store: a folder, or s3://bucket[/prefix]"
    )
    _s3_options(rconfig)
    rconfig.add_argument(
        "--spool", type=Path, required=True, help="partial downloads (same file system)"
    )
    rconfig.add_argument(
        "--credentials", type=Path, help="where its TLS files and signing key will be"
    )
    rconfig.add_argument(
        "--registry",
        type=Path,
        help="where it reads registry.json (default: the site folder's, root-only)",
    )
    rconfig.add_argument(
        "--crl",
        type=Path,
        help="where it reads the site root's CRL, which it publishes to the units and IT "
        "replaces after a revocation (default: crl.pem beside its credentials)",
    )
    rconfig.add_argument(
        "--metrics-listen",
        default="127.0.0.1",
        help="address of its Prometheus /metrics and /healthz (default: %(default)s; beyond "
        "loopback over HTTPS, for clients with a certificate from the site CA)",
    )
    rconfig.add_argument(
        "--metrics-port",
        type=int,
        default=RECEIVER_METRICS_PORT,
        help="its metrics port (0: none; default %(default)s)",
    )
    rconfig.set_defaults(handler="painav.provisioncmd:receiver_config")

    extract = sub.add_parser("extract", help="the extraction worker's config").add_subparsers(
        dest="extract_command", required=True, metavar="ACTION"
    )
    econfig = extract.add_parser(
        "config", parents=[common], help="print an extract.toml for the site's workers"
    )
    econfig.add_argument(
        "--catalog-url", required=True, help="the receivers' catalog (postgresql+psycopg://…)"
    )
    econfig.add_argument(
        "--store", required=True, help="the receivers' clip store: a folder or s3://bucket[/prefix]"
    )
    _s3_options(econfig)
    econfig.add_argument(
        "--features", type=Path, required=True, help="where per-frame features are written"
    )
    econfig.add_argument(
        "--data-key",
        type=Path,
        default=Path("/etc/painav/keys/data-key.txt"),
        help="the data key (under systemd it comes as a credential instead)",
    )
    econfig.add_argument(
        "--metrics-listen",
        default="127.0.0.1",
        help="address of its Prometheus /metrics and /healthz (default: %(default)s; beyond "
        "loopback over HTTPS, for clients with a certificate from the site CA)",
    )
    econfig.add_argument(
        "--metrics-port",
        type=int,
        default=WORKER_METRICS_PORT,
        help="worker 1's metrics port; worker N: + N - 1 (0: none; default %(default)s)",
    )
    econfig.set_defaults(handler="painav.provisioncmd:extract_config")

    web = sub.add_parser(
        "web",
        parents=[common],
        help="the dashboard's HTTPS certificate, metrics token and web.toml (in web/)",
    )
    web.add_argument(
        "--host", action="append", required=True, help="a name or address it is reached by"
    )
    web.add_argument("--catalog-url", required=True, help="the receivers' catalog")
    web.add_argument("--features", type=Path, required=True, help="the workers' feature folder")
    web.add_argument(
        "--registry",
        type=Path,
        default=Path("/etc/painav/registry.json"),
        help="where it reads registry.json (default: %(default)s)",
    )
    web.add_argument("--exports", type=Path, help="where exports started in it are written")
    web.add_argument(
        "--credentials",
        type=Path,
        default=Path("/etc/painav/web"),
        help="where its files will be on its host (default: %(default)s)",
    )
    web.add_argument("--port", type=int, default=8443)
    web.set_defaults(handler="painav.provisioncmd:web")

    metrics = sub.add_parser(
        "metrics", help="certificates for monitoring (Prometheus, metrics endpoints)"
    ).add_subparsers(dest="metrics_command", required=True, metavar="ACTION")
    mcert = metrics.add_parser(
        "cert",
        parents=[common],
        help="issue a metrics endpoint's server certificate (--host) or Prometheus's client one",
    )
    mcert.add_argument("name", help="e.g. receiver-metrics, extract-metrics or prometheus")
    mcert.add_argument("--out", type=Path, required=True, help="folder for NAME.crt and NAME.key")
    mcert.add_argument(
        "--host",
        action="append",
        dest="hosts",
        default=[],
        help="an address Prometheus scrapes (repeatable): a server certificate; without: a "
        "client certificate",
    )
    mcert.set_defaults(handler="painav.provisioncmd:metrics_cert")

    broker = sub.add_parser(
        "broker-config", parents=[common], help="write a Mosquitto configuration for the site"
    )
    broker.add_argument("--out", type=Path, required=True, help="folder to write it to")
    broker.add_argument("--port", type=int, help="TLS listener port (default: the site's)")
    broker.add_argument(
        "--listen",
        metavar="ADDRESS",
        default="0.0.0.0",
        help="the address the listener binds to, e.g. the broker host's address on the hospital "
        "network (default: 0.0.0.0, every IPv4 interface)",
    )
    broker.set_defaults(handler="painav.provisioncmd:broker_config")

    crl = sub.add_parser("crl", help="certificate revocation lists").add_subparsers(
        dest="crl_command", required=True, metavar="ACTION"
    )
    refresh = crl.add_parser(
        "refresh", parents=[common, broker_dir], help="re-issue CRLs before they expire"
    )
    refresh.add_argument("--force", action="store_true", help="re-issue even if not due")
    refresh.set_defaults(handler="painav.provisioncmd:crl_refresh")


def _site(args: argparse.Namespace) -> Site:
    return load_site(args.dir)


def site_init(args: argparse.Namespace) -> int:
    from provisioning.errors import SiteError
    from provisioning.site import init_site

    if args.dir is None:
        raise SiteError("no site folder: pass --dir DIR or set PAINAV_SITE_DIR")
    init_site(
        args.dir,
        args.site,
        broker_hosts=tuple(args.broker_hosts or ("localhost", "127.0.0.1")),
        broker_port=args.broker_port,
        receiver_id=args.receiver_id,
        escrow_recipient=args.escrow_recipient,
        report=print,
    )
    return 0


def device_add(args: argparse.Namespace) -> int:
    from provisioning.devices import add_device

    site = _site(args)
    _check_registry_target(args.receiver_registry)
    add_device(site, args.id, report=print)
    _install_registry(site, args.receiver_registry)
    return 0


def device_revoke(args: argparse.Namespace) -> int:
    from provisioning.devices import revoke_device

    site = _site(args)
    _check_registry_target(args.receiver_registry)
    revoke_device(site, args.id, report=print)
    _install_registry(site, args.receiver_registry)
    _sync_broker(site, args.broker_dir)
    return 0


def receiver_add(args: argparse.Namespace) -> int:
    from provisioning.receivers import add_receiver

    site = _site(args)
    add_receiver(site, args.name, report=print)
    _sync_broker(site, args.broker_dir)
    return 0


def receiver_revoke(args: argparse.Namespace) -> int:
    from provisioning.receivers import revoke_receiver

    site = _site(args)
    _check_registry_target(args.receiver_registry)
    revoke_receiver(site, args.id, report=print)
    _install_registry(site, args.receiver_registry)
    _sync_broker(site, args.broker_dir)
    return 0


def receiver_rotate(args: argparse.Namespace) -> int:
    from provisioning.receivers import rotate_signing

    site = _site(args)
    rotate_signing(site, args.id, report=print)
    _sync_broker(site, args.broker_dir)
    return 0


def _s3_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("an S3 store (--store s3://bucket/prefix)")
    group.add_argument("--s3-endpoint", help="the S3 service, https://host:port")
    group.add_argument(
        "--s3-credentials",
        type=Path,
        help="where the service reads its S3 key (AWS credentials format, mode 0600)",
    )
    group.add_argument("--s3-ca", type=Path, help="CA bundle for the endpoint's certificate")
    group.add_argument("--s3-region", help="signing region (default us-east-1)")


def _store(args: argparse.Namespace) -> StoreLocation:
    from provisioning.stores import store_location

    return store_location(
        args.store,
        endpoint=args.s3_endpoint,
        credentials_file=args.s3_credentials,
        ca_file=args.s3_ca,
        region=args.s3_region,
    )


def receiver_config(args: argparse.Namespace) -> int:
    from provisioning.errors import SiteError
    from provisioning.receivers import receiver_config

    site = _site(args)
    if args.id is not None and args.id not in site.registry().receiver_ids():
        raise SiteError(f"--id {args.id!r}: not a receiver of site {site.name}")
    text = receiver_config(
        site,
        catalog_url=args.catalog_url,
        store_dir=_store(args),
        spool_dir=args.spool,
        credentials_dir=args.credentials,
        receiver_id=args.id,
        registry=args.registry,
        crl=args.crl,
        metrics_listen=args.metrics_listen,
        metrics_port=args.metrics_port,
    )
    print(text, end="")
    return 0


def _check_registry_target(path: Path | None) -> None:
    """Refuse a --receiver-registry that cannot be written before the site is changed: else the
    unit is enrolled or revoked and the receiver's copy silently left behind."""
    if path is None:
        return
    from provisioning.errors import SiteError

    if path.is_dir():
        raise SiteError(
            f"--receiver-registry {path}: a folder; name the file, e.g. {path}/registry.json"
        )
    if not path.parent.is_dir():
        raise SiteError(
            f"--receiver-registry {path}: no folder {path.parent}; create it first "
            f"(install -d -m 0755 {path.parent})"
        )


def _install_registry(site: Site, path: Path | None) -> None:
    """Give the receiver the registry as it is now: it checks each clip's unit against it."""
    if path is not None:
        site.registry().save(path)
        print(f"installed the unit registry for the receiver: {path}")


def extract_config(args: argparse.Namespace) -> int:
    from provisioning.extraction import extract_config

    text = extract_config(
        _site(args),
        catalog_url=args.catalog_url,
        store_dir=_store(args),
        features_dir=args.features,
        data_key=args.data_key,
        metrics_listen=args.metrics_listen,
        metrics_port=args.metrics_port,
    )
    print(text, end="")
    return 0


def web(args: argparse.Namespace) -> int:
    from provisioning.web import provision_web

    provision_web(
        _site(args),
        hosts=args.host,
        catalog_url=args.catalog_url,
        features_dir=args.features,
        registry=args.registry,
        exports_dir=args.exports,
        credentials=args.credentials,
        port=args.port,
        report=print,
    )
    return 0


def metrics_cert(args: argparse.Namespace) -> int:
    from provisioning.monitoring import issue_monitoring_certificate

    issue_monitoring_certificate(_site(args), args.name, args.out, hosts=args.hosts, report=print)
    return 0


def _sync_broker(site: Site, broker_dir: Path | None) -> None:
    """Put the site's CRL and revoked-unit ACL where the broker reads them."""
    if broker_dir is None:
        print(
            "broker not updated: run this again with --broker-dir (or PAINAV_BROKER_DIR) "
            "naming the broker's folder, then reload the broker"
        )
        return
    from provisioning.broker import sync_revocation

    sync_revocation(site, broker_dir, report=print)  # its report says to reload the broker


def device_list(args: argparse.Namespace) -> int:
    from provisioning.devices import list_devices

    entries = list_devices(_site(args))
    if args.json:
        print(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
        return 0
    if not entries:
        print("no units yet: painav provision device add ID")
    for e in entries:
        since = e.revoked_at if e.status == "revoked" else e.added_at
        assert since is not None
        print(f"{e.device_id:<24} {e.status:<8} since {since:%Y-%m-%d}  cert {e.cert_serial[:16]}")
    return 0


def broker_config(args: argparse.Namespace) -> int:
    from provisioning.broker import write_broker_config

    site = _site(args)
    port = site.broker_port if args.port is None else args.port
    written = write_broker_config(site, args.out, port=port, bind=args.listen, report=print)
    for path in written:
        print(f"wrote {path}")
    print(f"start it with: mosquitto -c {args.out / 'mosquitto.conf'}")
    return 0


def crl_refresh(args: argparse.Namespace) -> int:
    from provisioning.crl import refresh_crl

    site = _site(args)
    refresh_crl(site, force=args.force, report=print)
    _sync_broker(site, args.broker_dir)
    return 0
