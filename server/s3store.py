"""The clip store in an S3 bucket (SeaweedFS, MinIO, Ceph RGW, AWS): the :class:`ClipStore`
contract with two objects per clip, conditional creates, and ranged reads."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Final

from botocore.exceptions import BotoCoreError, ClientError

from .store import HashMismatchError, NotStoredError, StoreError, check_key

__all__ = ["S3Store", "StoreUnavailableError"]

_MAX_SIGNATURE_BYTES: Final = 64 * 1024
_MiB: Final = 1 << 20
# S3 parts are 5 MiB at least (but the last); a clip of 60 s at 8 Mbit/s is about 60 MiB, so
# 8 MiB parts keep a put to a handful of requests and the memory of one put to one part.
PART_BYTES: Final = 8 * _MiB
READ_BYTES: Final = 8 * _MiB  # one ranged GET fills the reader's buffer this far


class StoreUnavailableError(StoreError, OSError):
    """The object store did not answer, or answered with an error: retry later.

    An ``OSError``, as the local store's I/O failures are, so callers that retry those (the
    puller, the worker) retry these too.
    """


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store:
    """A :class:`~server.store.ClipStore` in *bucket* under *prefix*, through a boto3 client.

    ``<prefix>/ab/cd/<sha256>.age`` holds the clip, ``.age.minisig`` its signature. A clip up
    to *part_bytes* is one ``PutObject``; a larger one a multipart upload of *part_bytes* parts,
    read and hashed part by part (memory: one part). Either way the create is conditional
    (``If-None-Match: *``) and carries SHA-256 checksums the server verifies::

        store = S3Store(client, "painav-clips", prefix="ward7")
        store.put(sha256, Path("spool/clip.age"), signature_text, move=True)
        with store.open(sha256) as clip:  # seekable; reads are ranged GETs
            clip.read(64)
    """

    def __init__(
        self, client: Any, bucket: str, *, prefix: str = "", part_bytes: int = PART_BYTES
    ) -> None:
        if part_bytes < 5 * _MiB:
            raise ValueError("S3 parts are 5 MiB at least")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_bytes = part_bytes

    # --- names ------------------------------------------------------------------------------

    def clip_key(self, sha256: str) -> str:
        key = check_key(sha256)
        name = f"{key[:2]}/{key[2:4]}/{key}.age"
        return f"{self.prefix}/{name}" if self.prefix else name

    def signature_key(self, sha256: str) -> str:
        return self.clip_key(sha256) + ".minisig"

    # --- the contract -----------------------------------------------------------------------

    def exists(self, sha256: str) -> bool:
        return self._head(self.clip_key(sha256)) is not None

    def put(self, sha256: str, clip_file: Path, signature_text: str, *, move: bool = False) -> str:
        """Store *clip_file* and its signature under *sha256*; return the key.

        The signature is uploaded first; the clip's conditional create is the commit point. A
        412 (another receiver stored the same clip first) is success. Raises
        :class:`HashMismatchError` (nothing stored under the key) if the bytes do not hash to
        *sha256*, :class:`StoreUnavailableError` when the store fails. With *move*, the file is
        removed from its own name whatever happens; it is read (an object store cannot take a
        file by renaming it) but not hashed again for a whole-object put: the service checks
        the bytes against the key's checksum. A multipart upload is hashed as it goes up.
        """
        key = self.clip_key(sha256)
        signature = signature_text.encode("utf-8")
        if len(signature) > _MAX_SIGNATURE_BYTES:
            raise StoreError(f"signature for {sha256} is over {_MAX_SIGNATURE_BYTES} bytes")
        try:
            if self.exists(sha256):
                return sha256  # same hash, same ciphertext: no rewrite
            # Replacing a signature left without its clip (a crash between the two) is safe:
            # nothing reads a signature whose clip is not there.
            self._call(
                "put the signature of",
                sha256,
                self.client.put_object,
                Bucket=self.bucket,
                Key=self.signature_key(sha256),
                Body=signature,
                ChecksumSHA256=_b64(hashlib.sha256(signature).digest()),
            )
            with open(clip_file, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                if size <= self.part_bytes:
                    self._put_whole(sha256, key, source.read(), vouched=move)
                else:
                    self._put_parts(sha256, key, source)
        finally:
            if move:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(clip_file)
        return sha256

    def open(self, sha256: str) -> BinaryIO:
        """The stored ciphertext as a seekable, buffered reader of ranged GETs; close it."""
        key = self.clip_key(sha256)
        head = self._head(key)
        if head is None:
            raise NotStoredError(f"no clip stored under {sha256}")
        raw = _RangeReader(self, key, int(head["ContentLength"]), str(head.get("ETag", "")))
        return io.BufferedReader(raw, buffer_size=READ_BYTES)

    def signature(self, sha256: str) -> str:
        if not self.exists(sha256):
            raise NotStoredError(f"no clip stored under {sha256}")
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.signature_key(sha256))
            body: bytes = reply["Body"].read(_MAX_SIGNATURE_BYTES + 1)
        except ClientError as exc:
            if _status(exc) == 404:  # deleted between the two looks
                raise NotStoredError(f"no clip stored under {sha256}") from None
            raise StoreUnavailableError(f"reading the signature of {sha256}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailableError(f"reading the signature of {sha256}: {exc}") from exc
        return body.decode("utf-8")

    def delete(self, sha256: str) -> None:
        """Remove the clip, then its signature; a missing key is a no-op.

        Called by consent withdrawal (:mod:`server.research.withdrawal`), which audits it, and
        by the puller for the bytes of a clip quarantined while it was being stored.
        """
        for key in (self.clip_key(sha256), self.signature_key(sha256)):
            self._call("delete", sha256, self.client.delete_object, Bucket=self.bucket, Key=key)

    def remove_leftovers(self, *, older_than_s: float = 3600.0) -> list[str]:
        """Abort multipart uploads a crash abandoned (invisible under any key); their keys.

        Only those begun more than *older_than_s* ago: a younger one may belong to a ``put``
        running in another receiver. A bucket lifecycle rule
        (``AbortIncompleteMultipartUpload``) does the same where the server supports it.
        """
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        removed: list[str] = []
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else ""
        )
        try:
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] <= cutoff:
                        with contextlib.suppress(ClientError):  # aborted meanwhile
                            self.client.abort_multipart_upload(
                                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                            )
                            removed.append(upload["Key"])
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailableError(f"listing abandoned uploads: {exc}") from exc
        return removed

    # --- the two ways up --------------------------------------------------------------------

    def _put_whole(self, sha256: str, key: str, data: bytes, *, vouched: bool) -> None:
        """One conditional ``PutObject`` whose checksum is the key: the service refuses bytes
        that hash to anything else. A caller that vouches for the hash (``move``: it hashed
        the bytes as they arrived) is not hashed again here."""
        if not vouched and (actual := hashlib.sha256(data).hexdigest()) != sha256:
            raise HashMismatchError(f"{key}: the bytes offered hash to {actual}; nothing stored")
        try:
            self._create(
                sha256,
                self.client.put_object,
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ChecksumSHA256=_b64(bytes.fromhex(sha256)),
                IfNoneMatch="*",
            )
        except HashMismatchError:
            actual = hashlib.sha256(data).hexdigest()
            raise HashMismatchError(
                f"{key}: the bytes offered hash to {actual}; the store refused them"
            ) from None

    def _put_parts(self, sha256: str, key: str, source: BinaryIO) -> None:
        started = self._call(
            "begin the upload of",
            sha256,
            self.client.create_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            ChecksumAlgorithm="SHA256",
        )
        upload_id = started["UploadId"]
        try:
            whole = hashlib.sha256()
            parts: list[dict[str, Any]] = []
            while chunk := source.read(self.part_bytes):
                whole.update(chunk)
                checksum = _b64(hashlib.sha256(chunk).digest())
                number = len(parts) + 1
                reply = self._call(
                    "upload a part of",
                    sha256,
                    self.client.upload_part,
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                    ChecksumSHA256=checksum,
                )
                parts.append(
                    {"ETag": reply["ETag"], "PartNumber": number, "ChecksumSHA256": checksum}
                )
            if whole.hexdigest() != sha256:
                raise HashMismatchError(
                    f"{key}: the bytes offered hash to {whole.hexdigest()}; nothing stored"
                )
            self._create(
                sha256,
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except BaseException:
            # Not committed: the parts are invisible under the key; free them now rather than
            # leave them to remove_leftovers or the lifecycle rule.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def _create(self, sha256: str, call: Any, **kwargs: Any) -> None:
        """A conditional create: 412 means the clip is there already (stored by another)."""
        try:
            call(**kwargs)
        except ClientError as exc:
            if _status(exc) == 412:
                return
            # 409: a concurrent conditional create of the same key is in flight; if it
            # committed, the clip is stored, which is all a put promises.
            if _status(exc) == 409 and self.exists(sha256):
                return
            if _code(exc) in ("BadDigest", "InvalidDigest"):  # the bytes are not the key's
                raise HashMismatchError(f"{kwargs['Key']}: the store refused the checksum") from exc
            raise StoreUnavailableError(f"storing {sha256}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailableError(f"storing {sha256}: {exc}") from exc

    # --- plumbing ---------------------------------------------------------------------------

    def _call(self, what: str, sha256: str, call: Any, **kwargs: Any) -> Any:
        try:
            return call(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailableError(f"could not {what} {sha256}: {exc}") from exc

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise StoreUnavailableError(f"looking up {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailableError(f"looking up {key}: {exc}") from exc
        return head

    def _range(self, key: str, etag: str, start: int, end: int) -> bytes:
        """Bytes *start* to *end* (inclusive) of the object, as it was when opened."""
        try:
            reply = self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end}", IfMatch=etag
            )
            data: bytes = reply["Body"].read()
        except ClientError as exc:
            if _status(exc) in (404, 412):  # deleted (withdrawn) while it was read
                raise NotStoredError(f"{key} is gone") from None
            raise StoreUnavailableError(f"reading {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailableError(f"reading {key}: {exc}") from exc
        return data


class _RangeReader(io.RawIOBase):
    """A stored object as a seekable raw stream: each read is one ranged GET."""

    def __init__(self, store: S3Store, key: str, size: int, etag: str) -> None:
        super().__init__()
        self._store, self._key, self._size, self._etag = store, key, size, etag
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readall(self) -> bytes:
        # The default reads in 8 KiB steps: one GET each. The rest at once, in large ranges.
        chunks = []
        while chunk := self.read(READ_BYTES):
            chunks.append(chunk)
        return b"".join(chunks)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._size - self._pos)
        if want <= 0:
            return 0
        data = self._store._range(self._key, self._etag, self._pos, self._pos + want - 1)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)
