"""Pulling clips from a unit's clip server over mutual TLS, resuming interrupted downloads."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from link import issued_by_any
from protocol.clipserver import CLIPS_PATH
from protocol.listing import MAX_SIGNATURE_BYTES, ListedClip, parse_listing
from protocol.message_fields import SHA256_PATTERN
from protocol.receiver_config import PullSection, TlsSection
from protocol.signing import ClipDigests, ClipHasher

from .fetch_deadline import Deadline
from .fetch_errors import FetchError, FetchErrorKind, NoAnswerError, network_error
from .fetch_hashing import BackgroundHashing, ResumePoints
from .fetch_response import body_start, small_body
from .unit_address import AddressNotAllowedError, CheckedTarget, UnitAddressPolicy

__all__ = [
    "FetchClient",
    "FetchError",
    "FetchErrorKind",
    "FetchResult",
    "UnitAddressPolicy",
    "UnitConnection",
]

_SHA256: Final = re.compile(SHA256_PATTERN)
_MAX_LISTING_BYTES: Final = 4 * 1024 * 1024  # thousands of pending clips; a unit holds tens


@dataclass(frozen=True)
class FetchResult:
    """A completed download: the whole file's digests, what this call added, and how much of
    the partial file it had to read back to resume (0 when the hash state was kept)."""

    digests: ClipDigests
    transferred: int
    resumed: bool
    rehashed: int = 0

    @property
    def size(self) -> int:
        return self.digests.size

    @property
    def sha256(self) -> str:
        return self.digests.sha256


class FetchClient:
    """An HTTPS client for units' clip servers, with the receiver's client certificate.

    A URL is checked against *policy* (where units may serve) before anything is sent, and the
    connection goes to the address checked. The unit is reached by IP or a DHCP name, so the
    host name is not checked in TLS; instead, after the handshake, the unit's certificate must
    chain to the site root (*ca_file*, checked by OpenSSL), be issued by the device CA rather
    than by the root itself, and name the expected device as its CN. Every socket operation
    times out after *timeout_s* seconds, and every exchange has a deadline for the whole of it
    (:meth:`fetch_deadline_s`, *listing_deadline_s*), so a unit that sends one byte at a time
    cannot hold a worker. Every failure is a :class:`FetchError`. :meth:`connect` keeps one
    connection for several requests (a clip and its signature); the other calls open one each::

        client = FetchClient(cert_file=rdir / "tls.crt", key_file=rdir / "tls.key",
                             ca_file=rdir / "ca.pem", policy=UnitAddressPolicy(nets, [8443]))
        size, deadline_s = manifest.size_bytes, client.fetch_deadline_s(manifest.size_bytes)
        with client.connect(url, device_id="cart-01", deadline_s=deadline_s) as unit:
            result = unit.fetch(url, spool / f"{clip_id}.age",
                                expected_size=size, expected_sha256=manifest.sha256)
            signature = unit.fetch_signature(url + ".minisig")
    """

    def __init__(
        self,
        *,
        cert_file: Path,
        key_file: Path,
        ca_file: Path,
        policy: UnitAddressPolicy,
        timeout_s: float = 30.0,
        chunk_bytes: int = 1 << 20,
        min_rate_bytes_s: float = 256 * 1024,
        handshake_allowance_s: float = 10.0,
        listing_deadline_s: float = 30.0,
    ) -> None:
        if min(timeout_s, chunk_bytes, min_rate_bytes_s, handshake_allowance_s) <= 0:
            raise ValueError("timeouts, rates and chunk_bytes must be positive")
        if listing_deadline_s <= 0:
            raise ValueError("listing_deadline_s must be positive")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False  # replaced by the device-id check after the handshake
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(cert_file, key_file)
        context.load_verify_locations(cafile=ca_file)
        self._context = context
        self._roots = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
        self.policy = policy
        self.timeout_s = timeout_s
        self.chunk_bytes = chunk_bytes
        self.min_rate_bytes_s = min_rate_bytes_s
        self.handshake_allowance_s = handshake_allowance_s
        self.listing_deadline_s = listing_deadline_s
        self.resume_points = ResumePoints()

    @classmethod
    def for_receiver(cls, tls: TlsSection, pull: PullSection) -> FetchClient:
        """The client of a receiver with the ``[tls]`` and ``[pull]`` sections of its config."""
        return cls(
            cert_file=tls.cert,
            key_file=tls.key,
            ca_file=tls.ca,
            policy=UnitAddressPolicy(pull.unit_networks, pull.unit_ports),
            timeout_s=pull.timeout_s,
            min_rate_bytes_s=pull.min_rate_bytes_s,
            handshake_allowance_s=pull.handshake_allowance_s,
            listing_deadline_s=pull.listing_deadline_s,
        )

    def fetch_deadline_s(self, size: int) -> float:
        """How long fetching a clip of *size* bytes and its signature may take in all: the
        handshake allowance, and the size at the minimum rate."""
        return self.handshake_allowance_s + size / self.min_rate_bytes_s

    def check(self, url: str, device_id: str) -> CheckedTarget:
        """Where *url* leads, if a unit may serve there; else FetchError ``NOT_ALLOWED``."""
        try:
            return self.policy.check(url)
        except AddressNotAllowedError as exc:
            raise FetchError(
                FetchErrorKind.NOT_ALLOWED, f"unit {device_id}: URL {url!r:.200} refused: {exc}"
            ) from None

    @contextmanager
    def connect(self, url: str, *, device_id: str, deadline_s: float) -> Iterator[UnitConnection]:
        """A connection to the clip server of *url*, which must be unit *device_id*, for at
        most *deadline_s* seconds in all; closed on leaving. The URL is checked first (a refused
        one raises FetchError ``NOT_ALLOWED``, nothing connected); nothing is sent until the
        first request."""
        target = self.check(url, device_id)
        connection = UnitConnection(self, target, device_id, Deadline(deadline_s))
        try:
            yield connection
        finally:
            connection.close()

    def fetch(
        self, url: str, dest: Path, *, device_id: str, expected_size: int, expected_sha256: str
    ) -> FetchResult:
        """:meth:`UnitConnection.fetch` on a connection of its own."""
        deadline_s = self.fetch_deadline_s(expected_size)
        with self.connect(url, device_id=device_id, deadline_s=deadline_s) as unit:
            return unit.fetch(
                url, dest, expected_size=expected_size, expected_sha256=expected_sha256
            )

    def fetch_signature(self, url: str, *, device_id: str) -> str:
        """:meth:`UnitConnection.fetch_signature` on a connection of its own."""
        deadline_s = self.fetch_deadline_s(MAX_SIGNATURE_BYTES)
        with self.connect(url, device_id=device_id, deadline_s=deadline_s) as unit:
            return unit.fetch_signature(url)

    def list_clips(self, base_url: str, *, device_id: str) -> list[ListedClip]:
        """The clips *device_id* still holds (``GET <base_url>/v1/clips``), for reconciliation,
        within the listing deadline."""
        deadline_s = self.listing_deadline_s
        with self.connect(base_url, device_id=device_id, deadline_s=deadline_s) as unit:
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


class _CheckedConnection(http.client.HTTPSConnection):
    """An HTTPS connection to the checked address of its target (never a new lookup of the
    name), whose socket the deadline guards from before the handshake on."""

    def __init__(
        self, target: CheckedTarget, deadline: Deadline, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._address = target.address
        self._deadline = deadline
        self._ssl_context = context

    def connect(self) -> None:
        remaining = self._deadline.remaining_s()
        if not remaining:
            raise TimeoutError("deadline passed")
        wait_s = min(self.timeout or remaining, remaining)
        try:
            sock = socket.create_connection((self._address, self.port), timeout=wait_s)
        except TimeoutError:
            raise NoAnswerError(f"{self._address} port {self.port}, {wait_s:.3g} s") from None
        try:
            self._deadline.guard(sock)
            sock.settimeout(self.timeout)
            tls = self._ssl_context.wrap_socket(
                sock, server_hostname=self.host, do_handshake_on_connect=False
            )
        except BaseException:
            sock.close()
            raise
        self._deadline.guard(tls)  # the same descriptor, now owned by the TLS socket
        self.sock = tls
        tls.do_handshake()

    def close(self) -> None:
        with self._deadline.unguarded():
            super().close()


class UnitConnection:
    """One kept-alive connection to a unit's clip server (from :meth:`FetchClient.connect`).

    Requests go one after another; when the unit closes the connection, the next request opens
    a new one and checks the unit's identity again. All of them end by the deadline.
    """

    def __init__(
        self, client: FetchClient, target: CheckedTarget, device_id: str, deadline: Deadline
    ) -> None:
        self._client = client
        self.device_id = device_id
        self._checked = target
        self._deadline = deadline
        self._conn = _CheckedConnection(target, deadline, client.timeout_s, client._context)

    def close(self) -> None:
        self._conn.close()
        self._deadline.cancel()

    def _target(self, url: str) -> CheckedTarget:
        """*url*, which must be on this connection's host and port."""
        target = self._client.check(url, self.device_id)
        if (target.host, target.port) != (self._checked.host, self._checked.port):
            raise ValueError(f"{url!r:.200} is not on {self._checked.host}:{self._checked.port}")
        return target

    def fetch(
        self, url: str, dest: Path, *, expected_size: int, expected_sha256: str
    ) -> FetchResult:
        """Download the clip at *url* into *dest*, resuming from what *dest* already holds.

        The hash state over a non-empty *dest* is the one kept when the last attempt was cut
        short (:class:`ResumePoints`), or else *dest* is hashed again (after a restart; the
        result's ``rehashed`` says how many bytes that read). The rest is asked for with
        ``Range`` and ``If-Range`` (the clip server's ETag is the SHA-256, so the announced one
        is the validator); a unit that answers with the whole file gets it written afresh. The
        body streams to disk in *chunk_bytes* pieces, hashed on the way (SHA-256 and BLAKE2b,
        on threads of their own while the next piece arrives), so nothing needs to read the file
        again. More bytes than *expected_size* are refused, never written. The returned digests
        are of the whole file; comparing them is the verifier's decision. A *dest* already
        *expected_size* long is not fetched again (``transferred == 0``): if its hash is wrong,
        the caller removes it and fetches afresh.
        """
        if expected_size <= 0 or not _SHA256.fullmatch(expected_sha256):
            raise ValueError("expected_size must be positive, expected_sha256 64 hex digits")
        target = self._target(url)
        where = f"unit {self.device_id}: GET {target.path}"
        try:
            fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise FetchError(FetchErrorKind.LOCAL, f"{where}: cannot open {dest}: {exc}") from exc
        points = self._client.resume_points
        with os.fdopen(fd, "r+b") as file:
            hasher, rehashed = self._resume_point(file, str(dest), expected_size, expected_sha256)
            offset = hasher.size
            if offset == expected_size:
                return FetchResult(hasher.digests(), 0, resumed=True, rehashed=rehashed)
            headers = {}
            if offset:
                headers = {"Range": f"bytes={offset}-", "If-Range": f'"{expected_sha256}"'}
            try:
                with self._exchange(target, headers) as response:
                    start = body_start(response, where, offset, expected_size, expected_sha256)
                    if start != offset:  # the unit sent the whole file: start over
                        hasher = ClipHasher()
                        _local(where, file.seek, 0)
                        _local(where, file.truncate)
                    transferred = self._stream(response, file, hasher, expected_size - start, where)
                _local(where, file.flush)
            except FetchError:
                # Cut short: keep the hash state where the file ends, for the next attempt.
                try:
                    file.flush()
                    if os.fstat(file.fileno()).st_size == hasher.size:
                        points.keep(str(dest), expected_sha256, hasher)
                except OSError:
                    pass  # the next attempt hashes the file again
                raise
        return FetchResult(hasher.digests(), transferred, resumed=start > 0, rehashed=rehashed)

    def fetch_signature(self, url: str) -> str:
        """The text of a clip's ``.minisig`` (small: read into memory, at most 16 KiB)."""
        target = self._target(url)
        where = f"unit {self.device_id}: GET {target.path}"
        with self._exchange(target, {}) as response:
            body = small_body(response, where, MAX_SIGNATURE_BYTES)
        try:
            return body.decode("ascii")
        except UnicodeDecodeError:
            raise FetchError(FetchErrorKind.PROTOCOL, f"{where}: signature is not ASCII") from None

    def list_clips(self, base_url: str) -> list[ListedClip]:
        """The clips the unit still holds (``GET <base_url>/v1/clips``)."""
        target = self._target(base_url.rstrip("/") + CLIPS_PATH)
        where = f"unit {self.device_id}: GET {target.path}"
        with self._exchange(target, {}) as response:
            body = small_body(response, where, _MAX_LISTING_BYTES)
        try:
            return parse_listing(json.loads(body), self.device_id)
        except (ValueError, TypeError, RecursionError) as exc:
            raise FetchError(
                FetchErrorKind.PROTOCOL, f"{where}: malformed clip list: {exc}"
            ) from None

    # --- the exchange -------------------------------------------------------------------------

    @contextmanager
    def _exchange(
        self, target: CheckedTarget, headers: Mapping[str, str]
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
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # ValueError: http.client's answer to a socket the deadline shut mid-request.
            conn.close()
            if (
                not isinstance(exc, OSError | http.client.HTTPException)
                and not self._deadline.expired
            ):
                raise
            deadline_s = self._deadline.seconds if self._deadline.expired else None
            error = network_error(exc, f"{where}: {phase}", self._client.timeout_s, deadline_s)
            raise error from exc
        except FetchError as exc:
            conn.close()
            if self._deadline.expired and exc.kind is not FetchErrorKind.LOCAL:
                # A body cut off by the deadline reads as truncated: say why it was.
                raise FetchError(
                    FetchErrorKind.TIMEOUT,
                    f"{where}: {phase}: not done in the {self._deadline.seconds:g} s allowed",
                ) from exc
            raise
        except BaseException:
            conn.close()
            raise

    # --- the body -----------------------------------------------------------------------------

    def _resume_point(
        self, file: IO[bytes], path: str, expected_size: int, sha256: str
    ) -> tuple[ClipHasher, int]:
        """The hash state over what *file* holds already (so the digests cover the whole
        file), and how many bytes were read back for it: none if the state was kept when the
        last attempt ended, else the whole file. A file longer than the clip cannot be a prefix
        of it and is emptied."""
        where = f"unit {self.device_id}: resuming {path}"
        try:
            size = os.fstat(file.fileno()).st_size
            if size > expected_size:
                file.truncate(0)
                return ClipHasher(), 0
            kept = self._client.resume_points.take(path, sha256, size)
            if kept is not None:
                file.seek(size)
                return kept, 0
            hasher = ClipHasher()
            while chunk := file.read(self._client.chunk_bytes):
                hasher.update(chunk)
        except OSError as exc:
            raise FetchError(
                FetchErrorKind.LOCAL, f"{where}: cannot read the spool file: {exc}"
            ) from exc
        return hasher, hasher.size

    def _stream(
        self,
        response: http.client.HTTPResponse,
        file: IO[bytes],
        hasher: ClipHasher,
        wanted: int,
        where: str,
    ) -> int:
        received = 0
        with BackgroundHashing(hasher, self._client.chunk_bytes) as hashing:
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


def _local(where: str, action: Callable[..., object], *args: object) -> None:
    """Run a spool-file operation: its OSError is the receiver's trouble, not the unit's."""
    try:
        action(*args)
    except OSError as exc:
        raise FetchError(
            FetchErrorKind.LOCAL, f"{where}: cannot write the spool file: {exc}"
        ) from exc
