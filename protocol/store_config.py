"""The ``[store]`` section the receiver and the extraction worker share: where the clip store
is, a local folder (``backend = "local"``, ``dir``) or an S3 bucket (``backend = "s3"``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["S3_KEYS", "StoreLocation"]

S3_KEYS = ("endpoint", "bucket", "prefix", "region", "credentials_file", "ca_file")
"""The keys that only an S3 store takes."""


class StoreLocation(BaseModel):
    """Where the clip store is; the receiver's and the worker's ``[store]`` extend it.

    A local store (the default, as every config before S3 stores had it)::

        [store]
        dir = "/var/lib/painav/store"

    An S3 store (SeaweedFS, MinIO, Ceph RGW, AWS...), objects under ``bucket/prefix/``::

        [store]
        backend = "s3"
        endpoint = "https://s3.hospital.example:8333"
        bucket = "painav-clips"
        prefix = "ward7"
        credentials_file = "/run/credentials/painav-receiver.service/s3"
        ca_file = "/etc/painav/s3-ca.pem"
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["local", "s3"] = "local"
    dir: Path | None = Field(default=None, description="local: the store's folder")
    endpoint: str | None = Field(default=None, description="s3: http(s)://host:port")
    bucket: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", description="s3: the bucket"
    )
    prefix: str = Field(
        default="",
        pattern=r"^([A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?$",
        description="s3: key prefix, e.g. the site (no leading or trailing slash)",
    )
    region: str = Field(default="us-east-1", min_length=1, description="s3: signing region")
    credentials_file: Path | None = Field(
        default=None,
        description="s3: AWS shared-credentials file ([default] aws_access_key_id, "
        "aws_secret_access_key), readable by the service only",
    )
    ca_file: Path | None = Field(
        default=None, description="s3: CA bundle for an https endpoint (default: the system's)"
    )

    @model_validator(mode="after")
    def _one_backend(self) -> StoreLocation:
        if self.backend == "local":
            if self.dir is None:
                raise ValueError('dir is required for a local store (backend = "local")')
            fields = type(self).model_fields
            stray = [key for key in S3_KEYS if getattr(self, key) != fields[key].default]
            if stray:
                raise ValueError(f'{", ".join(stray)}: only for backend = "s3"')
            return self
        if self.dir is not None:
            raise ValueError('dir: only for backend = "local"; an S3 store has no folder')
        for key in ("endpoint", "bucket", "credentials_file"):
            if getattr(self, key) is None:
                raise ValueError(f'{key} is required for backend = "s3"')
        assert self.endpoint is not None
        url = urlsplit(self.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
            raise ValueError(f"endpoint {self.endpoint!r} is not http(s)://host[:port]")
        if self.ca_file is not None and url.scheme != "https":
            raise ValueError("ca_file is for an https endpoint only")
        return self
