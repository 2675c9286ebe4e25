"""Where a receiver's or worker's clip store is, as provisioning is told it: a folder, or an
``s3://bucket/prefix`` URL with the endpoint and credentials file of the S3 service."""

from __future__ import annotations

from pathlib import Path

from protocol.store_config import StoreLocation

from .config_files import build
from .errors import ProvisioningError

__all__ = ["store_fields", "store_location"]


def store_location(
    store: str | Path,
    *,
    endpoint: str | None = None,
    credentials_file: Path | None = None,
    ca_file: Path | None = None,
    region: str | None = None,
) -> StoreLocation:
    """The ``[store]`` location *store* names: ``s3://bucket[/prefix]`` (with *endpoint* and
    *credentials_file*, required then) or a folder. Raises ``ProvisioningError`` naming the
    bad value."""
    text = str(store)
    if not text.startswith("s3://"):
        if endpoint or credentials_file or ca_file or region:
            raise ProvisioningError(
                f"--store {text}: a folder; the --s3-* options are for an s3://bucket store"
            )
        return build("[store]", lambda: StoreLocation(dir=Path(text)))
    bucket, _, prefix = text.removeprefix("s3://").partition("/")
    fields: dict[str, object] = {
        "backend": "s3",
        "endpoint": endpoint,
        "bucket": bucket,
        "prefix": prefix.strip("/"),
        "credentials_file": credentials_file,
        "ca_file": ca_file,
    }
    if region:
        fields["region"] = region
    return build("[store]", lambda: StoreLocation.model_validate(fields))


def store_fields(store: Path | StoreLocation) -> dict[str, object]:
    """The ``[store]`` keys for a folder or a location, only those set (defaults left out)."""
    if isinstance(store, StoreLocation):
        return store.model_dump(exclude_unset=True)
    return {"dir": store}
