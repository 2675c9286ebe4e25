"""Checking a clip server's response against the announcement and the HTTP contract: where a
clip's body starts, and a small body (signature, listing) read whole within its limit."""

from __future__ import annotations

import http.client
import re
from typing import Final

from .fetch_errors import FetchError, FetchErrorKind, status_error

__all__ = ["body_start", "small_body"]

_CONTENT_RANGE: Final = re.compile(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18})")


def body_start(
    response: http.client.HTTPResponse, where: str, offset: int, size: int, sha256: str
) -> int:
    """Check a clip response's status and headers against the announcement; return the byte
    offset its body starts at (0 for a whole file, *offset* for the range asked)."""
    if response.status not in (200, 206):
        raise status_error(response, where)
    etag = response.getheader("ETag")
    if etag is not None and etag.strip() != f'"{sha256}"':
        raise FetchError(
            FetchErrorKind.MISMATCH, f"{where}: unit serves ETag {etag[:70]}, announced {sha256}"
        )
    total = response.length  # Content-Length, if the response has one
    first = 0
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch((response.getheader("Content-Range") or "").strip())
        if match is None:
            raise FetchError(FetchErrorKind.PROTOCOL, f"{where}: 206 without a byte Content-Range")
        first, last, total = (int(g) for g in match.groups())
        if first != offset or last != total - 1 or response.length not in (None, last - first + 1):
            raise FetchError(
                FetchErrorKind.PROTOCOL,
                f"{where}: Content-Range {first}-{last}/{total} is not the range asked",
            )
    if total is not None and total > size:
        raise FetchError(
            FetchErrorKind.TOO_LARGE, f"{where}: unit serves {total} bytes, announced {size}"
        )
    if total is not None and total < size:
        raise FetchError(
            FetchErrorKind.MISMATCH, f"{where}: unit serves {total} bytes, announced {size}"
        )
    return first


def small_body(response: http.client.HTTPResponse, where: str, limit: int) -> bytes:
    if response.status != 200:
        raise status_error(response, where)
    declared = response.length
    if declared is not None and declared > limit:
        raise FetchError(FetchErrorKind.TOO_LARGE, f"{where}: {declared} bytes, limit {limit}")
    body = response.read(limit + 1)
    if len(body) > limit:
        raise FetchError(FetchErrorKind.TOO_LARGE, f"{where}: more than {limit} bytes")
    if declared is not None and len(body) < declared:
        raise FetchError(
            FetchErrorKind.TRUNCATED, f"{where}: body ended after {len(body)} of {declared} bytes"
        )
    return body
