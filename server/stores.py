"""Opens the clip store a ``[store]`` section names: a :class:`LocalStore` or an
:class:`S3Store` with its client, credentials read from a file only the service may read."""

from __future__ import annotations

import configparser
import os
import stat
from pathlib import Path
from typing import Final

from protocol.store_config import StoreLocation

from .store import ClipStore, LocalStore, StoreError

__all__ = ["CredentialsError", "open_store", "read_credentials"]

_PROFILE: Final = "default"
_TIMEOUT_S: Final = 30.0


class CredentialsError(StoreError, ValueError):
    """The S3 credentials file is missing, unreadable, malformed, or readable by others."""


def read_credentials(path: Path) -> tuple[str, str]:
    """The access key id and secret in *path* (AWS shared-credentials format, profile
    ``[default]``); refused unless only its owner may read it, as the data key is."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot read the S3 credentials: {exc.strerror}") from None
    with os.fdopen(fd, encoding="utf-8") as file:
        mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
        if mode & 0o077:
            raise CredentialsError(
                f"{path}: the S3 credentials are readable by others (mode {mode:04o}); "
                f"chmod 600 {path}"
            )
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_file(file)
            section = parser[_PROFILE]
            return section["aws_access_key_id"].strip(), section["aws_secret_access_key"].strip()
        except (configparser.Error, KeyError) as exc:
            raise CredentialsError(
                f"{path}: not an S3 credentials file with [{_PROFILE}] aws_access_key_id and "
                f"aws_secret_access_key ({exc.__class__.__name__})"
            ) from None


def open_store(location: StoreLocation) -> ClipStore:
    """The store *location* names; for S3, a client of its own (thread-safe, pooled)."""
    if location.backend == "local":
        assert location.dir is not None  # the model requires it
        return LocalStore(location.dir)
    import boto3  # only where an S3 store is used: it takes a while to import
    from botocore.config import Config

    from .s3store import S3Store

    assert location.credentials_file is not None and location.bucket is not None
    access_key, secret_key = read_credentials(location.credentials_file)
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=location.endpoint,
        region_name=location.region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        verify=str(location.ca_file) if location.ca_file else True,
        config=Config(
            s3={"addressing_style": "path"},  # bucket.host names need wildcard DNS and certs
            retries={"mode": "standard", "max_attempts": 4},
            connect_timeout=_TIMEOUT_S,
            read_timeout=_TIMEOUT_S,
            max_pool_connections=32,
            # The store sends its own SHA-256 checksums; no CRC32 on top (trailing checksums
            # in aws-chunked bodies are not understood by every S3 server).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    return S3Store(client, location.bucket, prefix=location.prefix)
