"""Units: enrolment (keys, certificate, bundle, registry entry), revocation and listing.

A unit's bundle is everything it needs and nothing more: its own keys and certificate, the site
root to check the broker and the receivers (and their signed receipts and arm commands), the
root's CRL as it is now, the public keys it encrypts clips to, and its config file. IT copies
the tar to the unit's boot partition, where the first-boot step installs and then removes it
(``firmware_config/``).
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from protocol.device_config import (
    ClipServerSection,
    DeviceConfig,
    KeysSection,
    MqttSection,
    OutboxSection,
    UnitSection,
)
from protocol.errors import MessageError
from protocol.registry import DeviceEntry, RetiredKey, names_a_receiver
from protocol.signing import SigningKey
from protocol.topics import validate_device_id

from . import pki
from .config_files import commented_defaults, toml_text
from .crl import revoke_serial, root_crl, write_crls
from .errors import DeviceError
from .site import Report, Site, locked

__all__ = ["BUNDLE_FILES", "DeviceRecord", "add_device", "list_devices", "revoke_device"]

UNIT_CERT_DAYS = 2 * 365
CLIP_SERVER_PORT = 8443

# Exactly what firmware_config/painav-firstboot.sh expects to find; a test keeps them in step.
BUNDLE_FILES = (
    "certs/ca-chain.pem",
    "certs/crl.pem",
    "certs/tls.crt",
    "device.toml",
    "keys/signing.key",
    "keys/tls.key",
    "recipients.txt",
)


@dataclass(frozen=True)
class DeviceRecord:
    """A unit as the registry knows it, plus where its bundle is."""

    entry: DeviceEntry
    bundle_dir: Path
    bundle_tar: Path


def _check_id(site: Site, device_id: str) -> None:
    try:
        validate_device_id(device_id)
    except MessageError as exc:
        raise DeviceError(str(exc)) from None
    if names_a_receiver(device_id, site.receiver_id):
        raise DeviceError(
            f"device id {device_id!r} is a receiver's name ({site.receiver_id!r} or "
            f"{site.receiver_id}-…); choose another"
        )


def device_config(site: Site, device_id: str) -> str:
    """The unit's ``device.toml``, with the paths the first-boot step installs files to."""
    config = DeviceConfig(
        unit=UnitSection(site_id=site.name, device_id=device_id),
        mqtt=MqttSection(host=site.broker_hosts[0], port=site.broker_port),
        clip_server=ClipServerSection(port=CLIP_SERVER_PORT, receiver_id=site.receiver_id),
        keys=KeysSection(
            signing_key=Path("/var/lib/painav/keys/signing.key"),
            tls_key=Path("/var/lib/painav/keys/tls.key"),
            tls_cert=Path("/etc/painav/certs/tls.crt"),
            ca_chain=Path("/etc/painav/certs/ca-chain.pem"),
            recipients=Path("/etc/painav/recipients.txt"),
            crl=Path("/etc/painav/certs/crl.pem"),
            crl_state=Path("/var/lib/painav/crl.pem"),
        ),
        outbox=OutboxSection(dir=Path("/var/lib/painav/outbox")),
    )
    header = (
        f"# painav bedside unit {device_id} of site {site.name}\n"
        "# made by 'painav provision device add'. Every other key has a default (README.md,\n"
        '# "The config file"); the hardware sections at the end show the defaults for a cart\n'
        "# wired as firmware_config/README.md describes: uncomment and change what differs.\n\n"
    )
    hardware = commented_defaults(
        (name, getattr(config, name)) for name in ("camera", "microphone", "button", "light")
    )
    return toml_text(config, header=header) + "\n" + hardware


def _write_bundle(site: Site, device_id: str, signing: SigningKey, tls: pki.Issued) -> Path:
    """Write the bundle folder afresh, then the tar beside it; return the folder."""
    devices_dir = site.paths.devices_dir
    devices_dir.mkdir(mode=0o700, exist_ok=True)
    final = devices_dir / device_id
    staging = devices_dir / f".{device_id}.new"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "keys").mkdir(parents=True, mode=0o700)
    os.chmod(staging, 0o700)
    pki.write_private_key(staging / "keys" / "tls.key", tls.key)
    signing.save(staging / "keys" / "signing.key")
    pki.write_cert(staging / "certs" / "tls.crt", tls.cert, site.device_ca().cert)
    root = site.root().cert
    pki.write_cert(staging / "certs" / "ca-chain.pem", root)
    pki.write_cert(staging / "certs" / "crl.pem", root_crl(site))
    shutil.copyfile(site.paths.recipients, staging / "recipients.txt")
    (staging / "device.toml").write_text(device_config(site, device_id))

    tar_path = devices_dir / f"{device_id}.tar"
    tar_tmp = devices_dir / f".{device_id}.tar.new"
    fd = os.open(tar_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for name in BUNDLE_FILES:
            data = (staging / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600 if name.startswith("keys/") else 0o644
            info.mtime = int(datetime.now(UTC).timestamp())
            tar.addfile(info, io.BytesIO(data))
        raw.flush()
        os.fsync(raw.fileno())
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    tar_tmp.rename(tar_path)
    return final


def add_device(site: Site, device_id: str, *, report: Report = lambda _: None) -> DeviceRecord:
    """Enrol *device_id*, or re-enrol it: new keys and certificate, old certificate revoked."""
    _check_id(site, device_id)
    with locked(site.dir):
        registry = site.registry()
        device_ca = site.device_ca()
        now = datetime.now(UTC)
        signing = SigningKey.generate()
        tls = pki.issue_leaf(
            device_ca, device_id, site.name, days=UNIT_CERT_DAYS, server=True, client=True
        )
        previous = registry.devices.get(device_id)
        revoked_serials: tuple[str, ...] = ()
        retired: tuple[RetiredKey, ...] = ()
        if previous is not None:
            revoked_serials = (*previous.revoked_serials, previous.cert_serial)
            retired = (
                *previous.retired_keys,
                RetiredKey(public_key=previous.signing_key, retired_at=now),
            )
        entry = DeviceEntry(
            device_id=device_id,
            status="active",
            signing_key=signing.public_key.to_string(),
            cert_serial=tls.serial_hex,
            cert_sha256=pki.cert_sha256(tls.cert),
            added_at=now,
            cert_not_after=tls.cert.not_valid_after_utc,
            revoked_serials=revoked_serials,
            retired_keys=retired,
        )
        bundle = _write_bundle(site, device_id, signing, tls)
        if previous is not None:
            # Revoke only once the new bundle exists: a failure above leaves the unit working.
            revoke_serial(site, "devices", int(previous.cert_serial, 16))
        registry.with_device(entry, now).save(site.paths.registry)
        verb = "re-enrolled" if previous else "enrolled"
        report(
            f"unit {device_id} {verb}: certificate serial {tls.serial_hex}, "
            f"signing key {signing.public_key.key_id_hex}"
        )
        report(f"bundle: {bundle}/ and {bundle}.tar (copy the tar to the unit's boot partition)")
        if previous is not None:
            report(f"old certificate {previous.cert_serial} of {device_id} revoked")
            write_crls(site, report)
        return DeviceRecord(entry, bundle, bundle.with_suffix(".tar"))


def revoke_device(site: Site, device_id: str, *, report: Report = lambda _: None) -> DeviceRecord:
    """Take *device_id* out of service: registry says revoked, CRL lists its certificate."""
    _check_id(site, device_id)
    with locked(site.dir):
        registry = site.registry()
        entry = registry.devices.get(device_id)
        if entry is None:
            known = ", ".join(sorted(registry.devices)) or "none"
            raise DeviceError(f"no unit {device_id!r} in site {site.name} (units: {known})")
        bundle = site.paths.devices_dir / device_id
        if entry.status == "revoked":
            report(
                f"unit {device_id} was already revoked on {entry.revoked_at:%Y-%m-%d}; "
                "nothing to do"
            )
            return DeviceRecord(entry, bundle, bundle.with_suffix(".tar"))
        now = datetime.now(UTC)
        revoked = entry.model_copy(update={"status": "revoked", "revoked_at": now})
        revoke_serial(site, "devices", int(entry.cert_serial, 16))
        registry.with_device(revoked, now).save(site.paths.registry)
        report(f"unit {device_id} revoked: the receiver refuses its clips from now on")
        write_crls(site, report)
        # Not "reload the broker" here: the broker reads its own copy of the CRL, so the next
        # step is installing it there; the command doing that says to reload, once.
        return DeviceRecord(revoked, bundle, bundle.with_suffix(".tar"))


def list_devices(site: Site) -> list[DeviceEntry]:
    return sorted(site.registry().devices.values(), key=lambda e: e.device_id)
