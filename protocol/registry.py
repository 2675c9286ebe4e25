"""The device registry: which units a site has, their signing keys, certificates and status.

Provisioning writes it (``painav provision device add/revoke``); the receiver reads it to decide
whose clips it accepts. A JSON file with a schema version, replaced atomically on every change.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from .atomic import StrPath, write_atomic
from .errors import ProtocolError
from .message_codec import Part
from .message_fields import DeviceId, ReceiverId, SiteId, Timestamp
from .minisign import PublicKey

__all__ = ["DeviceEntry", "Registry", "RegistryError", "RetiredKey", "names_a_receiver"]

_MAX_BYTES = 16 * 1024 * 1024


def names_a_receiver(cn: str, receiver_id: str) -> bool:
    """Whether certificate name *cn* is one of a site's receivers: its first receiver's id
    *receiver_id*, or that id, ``-`` and a name (``receiver-2``), as ``provision receiver add``
    names the others. A name only: the caller must also check the site root issued it."""
    return cn == receiver_id or (
        cn.startswith(receiver_id + "-") and len(cn) > len(receiver_id) + 1
    )


class RegistryError(ProtocolError, ValueError):
    """The registry file is missing, unreadable or not a valid registry."""


class RetiredKey(Part):
    """A signing key a unit used before it was re-enrolled."""

    public_key: str = Field(description="minisign public key (the base64 line).")
    retired_at: Timestamp


class DeviceEntry(Part):
    """One unit: its current signing key and certificate, and whether it is still trusted."""

    device_id: DeviceId
    status: Literal["active", "revoked"]
    signing_key: str = Field(description="minisign public key (the base64 line).")
    cert_serial: str = Field(pattern=r"^[0-9a-f]{1,40}$", description="TLS certificate serial.")
    cert_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="TLS certificate SHA-256.")
    added_at: Timestamp
    cert_not_after: Timestamp | None = Field(
        default=None, description="When the TLS certificate expires (older registries: unknown)."
    )
    revoked_at: Timestamp | None = None
    revoked_serials: tuple[str, ...] = Field(
        default=(), description="Serials of this unit's earlier certificates, all revoked."
    )
    retired_keys: tuple[RetiredKey, ...] = ()

    def public_key(self) -> PublicKey:
        return PublicKey.from_string(self.signing_key)


class Registry(Part):
    """All units of one site."""

    schema_id: Literal["painav.registry/1"] = Field(default="painav.registry/1", alias="schema")
    site_id: SiteId
    receiver_id: ReceiverId
    updated_at: Timestamp
    devices: dict[DeviceId, DeviceEntry] = Field(default_factory=dict)
    receivers: list[ReceiverId] = Field(
        default_factory=list,
        description="Receivers added to the first one, each with a certificate of its own.",
    )

    def receiver_ids(self) -> list[str]:
        """Every receiver of the site, the first one first."""
        return [self.receiver_id, *self.receivers]

    def active_key(self, device_id: str) -> PublicKey | None:
        """The signing key of *device_id* if it is registered and not revoked, else None."""
        entry = self.devices.get(device_id)
        if entry is None or entry.status != "active":
            return None
        return entry.public_key()

    def with_device(self, entry: DeviceEntry, now: datetime) -> Registry:
        devices = {**self.devices, entry.device_id: entry}
        return self.model_copy(update={"devices": devices, "updated_at": now})

    @classmethod
    def load(cls, path: StrPath) -> Registry:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise RegistryError(
                f"{path}: cannot read the device registry: {exc.strerror}"
            ) from None
        if len(data) > _MAX_BYTES:
            raise RegistryError(f"{path}: larger than {_MAX_BYTES} bytes, not a device registry")
        try:
            return cls.model_validate(json.loads(data), strict=False)
        except (ValueError, ValidationError) as exc:
            first = str(exc).splitlines()
            detail = " ".join(first[:3]) if first else "invalid"
            raise RegistryError(f"{path}: not a valid device registry: {detail}") from None

    def save(self, path: StrPath) -> None:
        text = self.model_dump_json(by_alias=True, indent=2) + "\n"
        write_atomic(path, text.encode(), mode=0o644, overwrite=True)
