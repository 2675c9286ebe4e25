"""Pulling clips from a unit's clip server over mutual TLS, resuming interrupted downloads."""

from __future__ import annotations

import enum
import http.client
import json
import os
import re
import ssl
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

from link import issued_by_any
from protocol.clipserver import CLIPS_PATH
from protocol.listing import MAX_SIGNATURE_BYTES, ListedClip, parse_listing
from protocol.message_fields import SHA256_PATTERN
from protocol.signing import ClipDigests, ClipHasher

__all__ = ["FetchClient", "FetchError", "FetchErrorKind", "FetchResult", "UnitConnection"]

_SHA256: Final = re.compile(SHA256_PATTERN)
_CONTENT_RANGE: Final = re.compile(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18})")
_MAX_LISTING_BYTES: Final = 4 * 1024 * 1024  # thousands of pending clips; a unit holds tens


class FetchErrorKind(enum.StrEnum):
    """What went wrong in a fetch; :attr:`FetchError.retryable` follows from it."""

    UNREACHABLE = "unreachable"  # refused, no route, name not resolved
    TIMEOUT = "timeout"
    RESET = "reset"  # connection dropped or reset mid-exchange
    TRUNCATED = "truncated"  # body ended before its declared length
    SERVER_ERROR = "server_error"  # 5xx, 429
    LOCAL = "local"  # the receiver cannot write its own spool file
    NOT_FOUND = "not_found"  # 404: not (or no longer) pending on the unit
    FORBIDDEN = "forbidden"  # 401/403: the unit refuses our certificate
    IDENTITY = "identity"  # the server is not the unit the announcement names
    TLS = "tls"  # handshake failed: untrusted certificate, alert
    TOO_LARGE = "too_large"  # more bytes than announced
    MISMATCH = "mismatch"  # the unit serves another file (ETag, size) than announced
    PROTOCOL = "protocol"  # a response the clip server contract does not allow


_RETRYABLE: Final = frozenset(
    {
        FetchErrorKind.UNREACHABLE,
        FetchErrorKind.TIMEOUT,
        FetchErrorKind.RESET,
        FetchErrorKind.TRUNCATED,
        FetchErrorKind.SERVER_ERROR,
        FetchErrorKind.LOCAL,
    }
)


class FetchError(Exception):
    """A fetch failed; :attr:`kind` says how, the message says where in one line."""

    def __init__(self, kind: FetchErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def retryable(self) -> bool:
        """Whether trying again later may succeed (network trouble, not a refusal)."""
        return self.kind in _RETRYABLE


@dataclass(frozen=True)
class FetchResult:
    """A completed download: the whole file's digests, and what this call added."""

    digests: ClipDigests
    transferred: int
    resumed: bool

    @property
    def size(self) -> int:
        return self.digests.size

    @property
    def sha256(self) -> str:
        return self.digests.sha256


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    path: str


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"not an https URL: {url!r:.200}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.hostname, parts.port or 443, path)


class FetchClient:
    """An HTTPS client for units' clip servers, with the receiver's client certificate.

    The unit is reached by IP or a DHCP name, so the host name is not checked; instead, after
    the handshake, the unit's certificate must chain to the site root (*ca_file*, checked by
    OpenSSL), be issued by the device CA rather than by the root itself, and name the expected
    device as its CN. Every socket operation times out after *timeout_s* seconds. Every failure
    is a :class:`FetchError`. :meth:`connect` keeps one connection for several requests (a clip
    and its signature); the other calls open one each::

        client = FetchClient(cert_file=rdir / "tls.crt", key_file=rdir / "tls.key",
                             ca_file=rdir / "ca.pem")
        with client.connect(announcement.url, device_id="cart-01") as unit:
            result = unit.fetch(announcement.url, spool / f"{clip_id}.age",
                                expected_size=manifest.size_bytes, expected_sha256=manifest.sha256)
            signature = unit.fetch_signature(announcement.url + ".minisig")
    """

    def __init__(
        self,
        *,
        cert_file: Path,
        key_file: Path,
        ca_file: Path,
        timeout_s: float = 30.0,
        chunk_bytes: int = 1 << 20,
    ) -> None:
        if timeout_s <= 0 or chunk_bytes <= 0:
            raise ValueError("timeout_s and chunk_bytes must be positive")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False  # replaced by the device-id check after the handshake
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(cert_file, key_file)
        context.load_verify_locations(cafile=ca_file)
        self._context = context
        self._roots = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
        self.timeout_s = timeout_s
        self.chunk_bytes = chunk_bytes

    @contextmanager
    def connect(self, url: str, *, device_id: str) -> Iterator[UnitConnection]:
        """A connection to the clip server of *url*, which must be unit *device_id*; closed on
        leaving. Nothing is sent until the first request."""
        target = _target(url)
        connection = UnitConnection(self, target.host, target.port, device_id)
        try:
            yield connection
        finally:
            connection.close()

    def fetch(
        self, url: str, dest: Path, *, device_id: str, expected_size: int, expected_sha256: str
    ) -> FetchResult:
        """:meth:`UnitConnection.fetch` on a connection of its own."""
        with self.connect(url, device_id=device_id) as unit:
            return unit.fetch(
                url, dest, expected_size=expected_size, expected_sha256=expected_sha256
            )

    def fetch_signature(self, url: str, *, device_id: str) -> str:
        """:meth:`UnitConnection.fetch_signature` on a connection of its own."""
        with self.connect(url, device_id=device_id) as unit:
            return unit.fetch_signature(url)

    def list_clips(self, base_url: str, *, device_id: str) -> list[ListedClip]:
        """The clips *device_id* still holds (``GET <base_url>/v1/clips``), for reconciliation."""
        with self.connect(base_url, device_id=device_id) as unit:
            return unit.list_clips(base_url)

    def _identity_problem(self, sock: ssl.SSLSocket, device_id: str) -> str | None:
        der = sock.getpeercert(binary_form=True)
        if der is None:  # cannot happen with CERT_REQUIRED; refuse rather than assume
            return "presented no certificate"
        cert = x509.load_der_x509_certificate(der)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(names[0].value) if len(names) == 1 else None
        if cn != device_id:
            return f"presents the certificate of {cn!r}, not of unit {device_id!r}"
        # OpenSSL has checked the chain ends at the site root. The site's root issues service
        # certificates (receiver, broker) itself and only one intermediate, the device CA
        # (root path length 1), so a chain not issued by the root directly goes through the
        # device CA: a service certificate named like a unit is refused here.
        if issued_by_any(cert, self._roots):
            return f"certificate {cn!r} is issued by the site root, not by the device CA"
        try:
            if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                return f"certificate {cn!r} is a CA certificate"
        except x509.ExtensionNotFound:
            pass
        return None


class UnitConnection:
    """One kept-alive connection to a unit's clip server (from :meth:`FetchClient.connect`).

    Requests go one after another; when the unit closes the connection, the next request opens
    a new one and checks the unit's identity again.
    """

    def __init__(self, client: FetchClient, host: str, port: int, device_id: str) -> None:
        self._client = client
        self.device_id = device_id
        self._conn = http.client.HTTPSConnection(
            host, port, timeout=client.timeout_s, context=client._context
        )

    def close(self) -> None:
        self._conn.close()

    def _target(self, url: str) -> _Target:
        """*url*, which must be on this connection's host and port."""
        target = _target(url)
        if (target.host, target.port) != (self._conn.host, self._conn.port):
            raise ValueError(f"{url!r:.200} is not on {self._conn.host}:{self._conn.port}")
        return target

    def fetch(
        self, url: str, dest: Path, *, expected_size: int, expected_sha256: str
    ) -> FetchResult:
        """Download the clip at *url* into *dest*, resuming from what *dest* already holds.

        A non-empty *dest* is re-hashed and the rest asked for with ``Range`` and ``If-Range``
        (the clip server's ETag is the SHA-256, so the announced one is the validator); a unit
        that answers with the whole file gets it written afresh. The body streams to disk in
        *chunk_bytes* pieces, hashed on the way (SHA-256 and BLAKE2b, on threads of their own
        while the next piece arrives), so nothing needs to read the file again. More bytes than
        *expected_size* are refused, never written. The returned digests are of the whole file;
        comparing them is the verifier's decision. A *dest* already *expected_size* long is not
        fetched again (``transferred == 0``): if its hash is wrong, the caller removes it and
        fetches afresh.
        """
        if expected_size <= 0 or not _SHA256.fullmatch(expected_sha256):
            raise ValueError("expected_size must be positive, expected_sha256 64 hex digits")
        target = self._target(url)
        where = f"unit {self.device_id}: GET {target.path}"
        try:
            fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise FetchError(FetchErrorKind.LOCAL, f"{where}: cannot open {dest}: {exc}") from exc
        with os.fdopen(fd, "r+b") as file:
            hasher = self._rehash(file, expected_size, where)
            offset = hasher.size
            if offset == expected_size:
                return FetchResult(hasher.digests(), 0, resumed=True)
            headers = {}
            if offset:
                headers = {"Range": f"bytes={offset}-", "If-Range": f'"{expected_sha256}"'}
            with self._exchange(target, headers) as response:
                start = _body_start(response, where, offset, expected_size, expected_sha256)
                if start != offset:  # the unit sent the whole file: start over
                    hasher = ClipHasher()
                    _local(where, file.seek, 0)
                    _local(where, file.truncate)
                transferred = self._stream(response, file, hasher, expected_size - start, where)
            _local(where, file.flush)
        return FetchResult(hasher.digests(), transferred, resumed=start > 0)

    def fetch_signature(self, url: str) -> str:
        """The text of a clip's ``.minisig`` (small: read into memory, at most 16 KiB)."""
        target = self._target(url)
        where = f"unit {self.device_id}: GET {target.path}"
        with self._exchange(target, {}) as response:
            body = _small_body(response, where, MAX_SIGNATURE_BYTES)
        try:
            return body.decode("ascii")
        except UnicodeDecodeError:
            raise FetchError(FetchErrorKind.PROTOCOL, f"{where}: signature is not ASCII") from None

    def list_clips(self, base_url: str) -> list[ListedClip]:
        """The clips the unit still holds (``GET <base_url>/v1/clips``)."""
        target = self._target(base_url.rstrip("/") + CLIPS_PATH)
        where = f"unit {self.device_id}: GET {target.path}"
        with self._exchange(target, {}) as response:
            body = _small_body(response, where, _MAX_LISTING_BYTES)
        try:
            return parse_listing(json.loads(body), self.device_id)
        except (ValueError, TypeError, RecursionError) as exc:
            raise FetchError(
                FetchErrorKind.PROTOCOL, f"{where}: malformed clip list: {exc}"
            ) from None

    # --- the exchange -------------------------------------------------------------------------

    @contextmanager
    def _exchange(
        self, target: _Target, headers: Mapping[str, str]
    ) -> Iterator[http.client.HTTPResponse]:
        """Connect if need be (checking the unit's identity), send a GET; map every failure to
        FetchError. A failed exchange closes the connection: its state is unknown."""
        where = f"unit {self.device_id}: GET {target.path}"
        conn = self._conn
        phase = "connecting"
        try:
            if conn.sock is None:
                # http.client would reconnect on its own at the next request, unchecked: the
                # identity is checked here on every new connection instead.
                conn.connect()
                assert isinstance(conn.sock, ssl.SSLSocket)  # HTTPSConnection with a context
                problem = self._client._identity_problem(conn.sock, self.device_id)
                if problem is not None:
                    raise FetchError(FetchErrorKind.IDENTITY, f"{where}: {problem}")
            phase = "waiting for the response"
            conn.request("GET", target.path, headers=dict(headers))
            response = conn.getresponse()
            phase = "reading the body"
            try:
                yield response
                # A body left unread would be taken for the next response: drop the connection.
                if not response.isclosed():
                    conn.close()
            finally:
                # A response that ends with the connection owns the socket: conn.close()
                # alone would leave it open.
                response.close()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _network_error(exc, f"{where}: {phase}", self._client.timeout_s) from exc
        except BaseException:
            conn.close()
            raise

    # --- the body -----------------------------------------------------------------------------

    def _rehash(self, file: IO[bytes], expected_size: int, where: str) -> ClipHasher:
        """Hash what *file* holds already (so the digests cover the whole file); a file longer
        than the clip cannot be a prefix of it and is emptied."""
        hasher = ClipHasher()
        try:
            if os.fstat(file.fileno()).st_size > expected_size:
                file.truncate(0)
                return hasher
            while chunk := file.read(self._client.chunk_bytes):
                hasher.update(chunk)
        except OSError as exc:
            raise FetchError(
                FetchErrorKind.LOCAL, f"{where}: cannot read the spool file: {exc}"
            ) from exc
        return hasher

    def _stream(
        self,
        response: http.client.HTTPResponse,
        file: IO[bytes],
        hasher: ClipHasher,
        wanted: int,
        where: str,
    ) -> int:
        received = 0
        with _BackgroundHashing(hasher, self._client.chunk_bytes) as hashing:
            while True:
                buffer = hashing.free_buffer()
                # One byte more than still wanted: a body without a length that runs on is
                # caught with one byte read and none written.
                n = response.readinto(buffer[: min(len(buffer), wanted - received + 1)])
                if not n:
                    break
                if received + n > wanted:
                    raise FetchError(
                        FetchErrorKind.TOO_LARGE, f"{where}: more than the {wanted} bytes expected"
                    )
                hashing.submit(n)
                _local(where, file.write, buffer[:n])
                received += n
        if received < wanted:
            raise FetchError(
                FetchErrorKind.TRUNCATED, f"{where}: body ended after {received} of {wanted} bytes"
            )
        return received


class _BackgroundHashing:
    """Feeds a :class:`ClipHasher` from a ring of buffers on two threads, one per digest, while
    the caller receives into the next buffer (hashlib releases the GIL on large updates).

    BLAKE2b costs more than TLS and the disk together; hashed in line, it would halve a
    download's speed. A buffer is handed out again only once both digests have taken it.
    """

    _RING = 3

    def __init__(self, hasher: ClipHasher, chunk_bytes: int) -> None:
        self._hasher = hasher
        self._buffers = [memoryview(bytearray(chunk_bytes)) for _ in range(self._RING)]
        self._pending: list[list[Future[None]]] = [[] for _ in range(self._RING)]
        self._next = 0
        self._threads = [ThreadPoolExecutor(1, thread_name_prefix="fetch-hash") for _ in range(2)]

    def __enter__(self) -> _BackgroundHashing:
        return self

    def __exit__(self, *exc: object) -> None:
        for pool in self._threads:
            pool.shutdown(wait=True)  # every submitted update done, in order

    def free_buffer(self) -> memoryview:
        """The next buffer of the ring, once its previous contents are hashed."""
        for future in self._pending[self._next]:
            future.result()
        return self._buffers[self._next]

    def submit(self, n: int) -> None:
        """Hash the first *n* bytes of the buffer :meth:`free_buffer` last returned."""
        chunk = self._buffers[self._next][:n]
        blake2b, sha256 = self._hasher.blake2b, self._hasher.sha256
        self._pending[self._next] = [
            self._threads[0].submit(blake2b.update, chunk),
            self._threads[1].submit(sha256.update, chunk),
        ]
        self._hasher.size += n
        self._next = (self._next + 1) % self._RING


def _local(where: str, action: Callable[..., object], *args: object) -> None:
    """Run a spool-file operation: its OSError is the receiver's trouble, not the unit's."""
    try:
        action(*args)
    except OSError as exc:
        raise FetchError(
            FetchErrorKind.LOCAL, f"{where}: cannot write the spool file: {exc}"
        ) from exc


def _status_error(response: http.client.HTTPResponse, where: str) -> FetchError:
    status = response.status
    what = f"{where}: HTTP {status} {response.reason}"
    if status == 404:
        return FetchError(FetchErrorKind.NOT_FOUND, what)
    if status in (401, 403):
        return FetchError(FetchErrorKind.FORBIDDEN, what)
    if status == 416:  # the unit's file is shorter than what we hold of it
        return FetchError(FetchErrorKind.MISMATCH, what)
    if status >= 500 or status == 429:
        return FetchError(FetchErrorKind.SERVER_ERROR, what)
    return FetchError(FetchErrorKind.PROTOCOL, what)


def _body_start(
    response: http.client.HTTPResponse, where: str, offset: int, size: int, sha256: str
) -> int:
    """Check a clip response's status and headers against the announcement; return the byte
    offset its body starts at (0 for a whole file, *offset* for the range asked)."""
    if response.status not in (200, 206):
        raise _status_error(response, where)
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


def _small_body(response: http.client.HTTPResponse, where: str, limit: int) -> bytes:
    if response.status != 200:
        raise _status_error(response, where)
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


def _network_error(exc: BaseException, where: str, timeout_s: float) -> FetchError:
    """Translate an exception of the socket, TLS or HTTP layer into a FetchError."""
    kind, what = FetchErrorKind.PROTOCOL, f"malformed response ({type(exc).__name__})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        kind, what = FetchErrorKind.TLS, f"certificate not trusted: {exc.verify_message}"
    elif isinstance(exc, ssl.SSLError) and "ALERT" in (exc.reason or ""):
        # An alert from the unit: it refused our certificate or the protocol. TLS 1.3 reports a
        # refused client certificate only at the first read, hence in any phase; and a reset
        # can overtake the alert, which then looks like RESET (retried; the unit logs why).
        kind, what = FetchErrorKind.TLS, f"TLS refused by the unit: {exc.reason}"
    elif isinstance(exc, TimeoutError):
        kind, what = FetchErrorKind.TIMEOUT, f"no progress for {timeout_s:g} s"
    elif isinstance(exc, ConnectionRefusedError):
        kind, what = FetchErrorKind.UNREACHABLE, "connection refused"
    elif isinstance(exc, http.client.IncompleteRead):
        kind, what = FetchErrorKind.TRUNCATED, "body ended early"
    elif isinstance(
        exc, ConnectionError | ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError
    ):
        kind, what = FetchErrorKind.RESET, "connection closed by the unit"
    elif isinstance(exc, ssl.SSLError):
        kind, what = FetchErrorKind.TLS, f"TLS failure: {exc.reason or exc}"
    elif isinstance(exc, OSError):
        kind, what = FetchErrorKind.UNREACHABLE, f"network error: {exc.strerror or exc}"
    return FetchError(kind, f"{where}: {what}")
