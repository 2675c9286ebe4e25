"""The unit's clip server: read-only HTTPS with mutual TLS, from which the receiver pulls clips."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Final

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from link import issued_by_any
from protocol.clipserver import CLIPS_PATH, match_clip_path
from protocol.listing import ListedClip
from protocol.registry import names_a_receiver

from .byterange import byte_range
from .clipslots import Slots, State
from .outbox import Outbox, OutboxEntry, OutboxError, check_clip_id

__all__ = ["ClipServer", "byte_range"]

log = logging.getLogger(__name__)

_CHUNK: Final = 64 * 1024


class _Server(ThreadingHTTPServer):
    """The HTTP server, with TLS handshakes done in each connection's thread, not the accept loop
    (a client stalling its handshake would otherwise stop every other)."""

    daemon_threads = True
    block_on_close = False  # ClipServer.stop() ends and waits for connections itself
    # socketserver's default of 5 lets a burst of connections overflow the accept queue, and
    # the kernel then drops the next SYN, the receiver's too, for a second or more.
    request_queue_size = 128

    def __init__(self, owner: ClipServer, address: tuple[str, int]) -> None:
        self.owner = owner
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.owner._admit(request, str(client_address[0])):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def service_actions(self) -> None:
        # Called by serve_forever between polls (every 0.1 s): the whole-handshake deadline,
        # which the per-operation socket timeout alone is not (a byte every few seconds).
        self.owner._reap()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        tls = None
        try:
            request.settimeout(self.owner._slots.handshake_s)
            # Small answers (a signature, the listing) would otherwise wait ~40 ms for the
            # client's delayed ACK (Nagle): a quarter of a clip's whole pull on a LAN.
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Handshake after wrapping, so that the wrapped socket (the one holding the file
            # descriptor from here on) is what an eviction or stop() shuts down mid-handshake.
            tls = self.owner._context.wrap_socket(
                request, server_side=True, do_handshake_on_connect=False
            )
            if not self.owner._swap(request, tls):
                raise ConnectionAbortedError("dropped before its handshake began")
            tls.do_handshake()
        except (OSError, ssl.SSLError) as exc:
            conn = tls or request
            if not self.owner._dropped(conn):  # those we dropped are counted, not logged each
                reason = getattr(exc, "reason", None) or exc
                log.warning(
                    "clip server: TLS handshake with %s refused: %s", client_address[0], reason
                )
            conn.close()
            self.owner._leave(conn)
            return
        try:
            super().process_request_thread(tls, client_address)
        finally:
            self.owner._leave(tls)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client gone mid-download, a timeout: one line, not a traceback on stderr.
        exc = sys.exc_info()[1]
        log.info("clip server: connection from %s ended: %r", client_address[0], exc)


class _Handler(BaseHTTPRequestHandler):
    """One connection: checks the peer once, then serves GET and HEAD requests on it."""

    protocol_version = "HTTP/1.1"  # keep-alive, so a resumed download can reuse the connection
    server_version = "painav-clipserver/1"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()  # the socket keeps the (short) timeout set before the handshake
        self.peer, self.refusal = self.server.owner._check_peer(self.request)
        self.busy = False
        if self.refusal:
            # Stays unauthenticated: answered 403 if it asks before its deadline, and
            # evictable like a pending handshake meanwhile; it never takes a served slot.
            log.warning("clip server: %s refused: %s", self.client_address[0], self.refusal)
        else:
            self.busy = not self.server.owner._authenticated(self.request)

    def handle_one_request(self) -> None:
        self.status, self.sent = 0, 0
        try:
            super().handle_one_request()
        finally:
            if self.status:  # one line per request; ids only, never patient data
                log.info(
                    "clip server: %s %s %r %d %d",
                    self.peer,
                    self.command,
                    getattr(self, "path", "")[:200],
                    self.status,
                    self.sent,
                )

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.status = int(code)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("clip server: %s: %s", self.client_address[0], format % args)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # a body we never read must not become the next request
        if self.refusal:
            self._reply(403, {"error": "forbidden"}, close=True)
            return False
        if self.busy:  # every served slot is taken by other receivers' pulls: try again soon
            self._reply(503, {"error": "busy"}, {"Retry-After": "1"}, close=True)
            return False
        if self.command not in ("GET", "HEAD"):
            self._reply(405, {"error": "method not allowed"}, {"Allow": "GET, HEAD"}, close=True)
            return False
        return True

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def _reply(
        self,
        code: int,
        payload: object,
        headers: dict[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        if close:
            self.close_connection = True
            self.send_header("Connection", "close")
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            self.sent += len(body)

    def _route(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == CLIPS_PATH:
            self._reply(200, _listing(self.server.owner.outbox.pending()))
            return
        match = match_clip_path(path)
        try:
            if match is None:
                raise OutboxError("no such route")
            clip_id, signature = match
            check_clip_id(clip_id)
            entry, file = self.server.owner.outbox.open_pending(clip_id, signature=signature)
        except (OutboxError, OSError):
            self._reply(404, {"error": "not found"})
            return
        with file:
            self._send_file(entry, file, signature=signature)

    def _send_file(self, entry: OutboxEntry, file: BinaryIO, *, signature: bool) -> None:
        size = os.fstat(file.fileno()).st_size
        tag = entry.sha256 or ""
        if signature:  # the signature is a representation of its own
            tag = hashlib.sha256((entry.signature or "").encode()).hexdigest()
        etag = f'"{tag}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        wanted = byte_range(self.headers.get("Range"), size)
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range.strip() != etag:
            wanted = None  # changed since the first part was fetched: send it all afresh
        if wanted is False:
            self._reply(
                416, {"error": "range not satisfiable"}, {"Content-Range": f"bytes */{size}"}
            )
            return
        first, last = wanted if isinstance(wanted, tuple) else (0, size - 1)
        self.send_response(206 if isinstance(wanted, tuple) else 200)
        if isinstance(wanted, tuple):
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        headers |= {"Content-Type": "application/octet-stream", "Cache-Control": "no-store"}
        headers["Content-Length"] = str(last - first + 1)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        file.seek(first)
        remaining = last - first + 1
        while remaining > 0:
            chunk = file.read(min(_CHUNK, remaining))
            if not chunk:  # shorter than its size said: the client must not wait for the rest
                self.close_connection = True
                break
            self.wfile.write(chunk)
            self.sent += len(chunk)
            remaining -= len(chunk)


def _listing(entries: list[OutboxEntry]) -> list[object]:
    """The body of ``GET /v1/clips``: each clip with its manifest and signature, so that the
    receiver's reconciliation can catalogue a clip whose announcement was lost from it alone."""
    listing: list[object] = []
    for entry in entries:
        if entry.manifest_json is None or entry.signature is None:
            continue  # not sealed: nothing to offer yet
        assert entry.size_bytes is not None and entry.sha256 is not None
        clip = ListedClip.of(
            clip_id=entry.clip_id,
            size_bytes=entry.size_bytes,
            sha256=entry.sha256,
            state=str(entry.state),
            sealed_at=entry.sealed_at,
            manifest_json=entry.manifest_json,
            signature=entry.signature,
        )
        listing.append(clip.model_dump(mode="json"))
    return listing


class ClipServer:
    """The unit's clip server: pending clips over HTTPS, to the receiver's certificate only.

    The TLS handshake asks for a client certificate chaining to *ca_file* (the site root only);
    then the certificate must be issued directly by that root, be for TLS clients, and name a
    receiver of the site as its CN (*receiver_id*, or ``<receiver_id>-<name>`` for the receivers
    added to it), so a unit's certificate (issued by the device CA) and the broker's (a server
    certificate) never pass as a receiver's. Read-only:
    ``GET``/``HEAD`` of ``/v1/clips`` (the pending list, each clip with its manifest and
    signature) and ``/v1/clips/<id>.age[.minisig]`` with byte ranges.

    Anyone on the ward network can open a TCP connection, so what a connection may hold before
    it has authenticated is bounded apart from what the receiver's pulls use: at most
    *max_handshakes* connections are pending (TLS handshake and certificate check), at most
    *max_handshakes_per_address* from one address, each for at most *handshake_timeout_s*
    seconds in all; a newcomer beyond these drops the oldest pending connection (its own
    address's first) rather than being refused (:mod:`.clipslots`), so idle sockets cannot
    lock the receiver out. Only an authenticated receiver takes one of the *max_connections*
    served slots (one beyond them is answered 503); on a served connection each socket
    operation times out after *timeout_s* seconds::

        server = ClipServer(outbox, port=0, cert_file=..., key_file=..., ca_file=...,
                            receiver_id="receiver")
        server.start()
        print(server.port)
        server.stop()
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        host: str = "0.0.0.0",
        port: int = 8443,
        cert_file: Path,
        key_file: Path,
        ca_file: Path,
        receiver_id: str,
        max_connections: int = 8,
        timeout_s: float = 30.0,
        max_handshakes: int = 32,
        max_handshakes_per_address: int = 8,
        handshake_timeout_s: float = 5.0,
        revoked: Callable[[x509.Certificate], bool] = lambda _: False,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        self._slots: Slots[socket.socket] = Slots(
            max_pending=max_handshakes,
            max_pending_per_address=max_handshakes_per_address,
            max_served=max_connections,
            handshake_s=handshake_timeout_s,
        )
        self.outbox = outbox
        self.receiver_id = receiver_id
        self._revoked = revoked  # the site root's CRL as the unit holds it (daemon.crlstore)
        self.timeout_s = timeout_s
        self._address = (host, port)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(cert_file, key_file)
        context.load_verify_locations(cafile=ca_file)
        self._context = context
        self._roots = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()  # guards _slots and _stopping
        self._stopping = False
        self._dropped_logged = (0, -60.0)  # (slots.dropped, monotonic time) at the last warning

    @property
    def port(self) -> int:
        """The port listened on (the one picked, if constructed with port 0)."""
        if self._server is None:
            raise RuntimeError("clip server not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen and serve in a background thread."""
        self._stopping = False
        self._server = _Server(self, self._address)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="clipserver", daemon=True
        )
        self._thread.start()
        log.info("clip server: listening on %s:%d", self._address[0], self.port)

    def stop(self) -> None:
        """Stop accepting, end open connections, and wait (up to ``timeout_s``) for them."""
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        with self._cond:
            self._stopping = True
            for conn in self._slots:
                _shut(conn)
            self._cond.wait_for(lambda: not self._slots, timeout=self.timeout_s)
        self._server = None

    def __enter__(self) -> ClipServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- connection bookkeeping, called from _Server and _Handler -------------------------------

    def _admit(self, conn: socket.socket, address: str) -> bool:
        """Take a new connection as pending; the oldest pending one goes if they are all taken
        (see :class:`Slots`)."""
        with self._cond:
            if self._stopping:
                return False
            for victim in self._slots.admit(conn, address, now=time.monotonic()):
                _shut(victim)
            return True

    def _swap(self, raw: socket.socket, tls: socket.socket) -> bool:
        """Track *tls* in place of the *raw* socket it wraps; False if it was dropped meanwhile
        (then it is shut down here: shutting down *raw* does nothing once it is wrapped)."""
        with self._cond:
            if self._slots.replace(raw, tls, now=time.monotonic()):
                return True
            _shut(tls)
            return False

    def _authenticated(self, tls: socket.socket) -> bool:
        """Move a connection whose peer passed :meth:`_check_peer` to a served slot, with the
        served timeout; False if every served slot is taken (or it was dropped meanwhile)."""
        with self._cond:
            if not self._slots.authenticated(tls):
                return False
        tls.settimeout(self.timeout_s)
        return True

    def _dropped(self, conn: socket.socket) -> bool:
        """Whether *conn* was dropped by the server (pool full, or past its deadline)."""
        with self._cond:
            return self._slots.state(conn) is State.DROPPED

    def _leave(self, conn: socket.socket) -> None:
        with self._cond:
            self._slots.leave(conn)
            self._cond.notify_all()

    def _reap(self) -> None:
        """Drop the pending connections past their handshake deadline; say how many went."""
        now = time.monotonic()
        with self._cond:
            for late in self._slots.expired(now=now):
                _shut(late)
            count, logged_at = self._dropped_logged
            if self._slots.dropped > count and now - logged_at >= 10:
                # One line per 10 s at most: a flood of sockets must not flood the journal.
                log.warning(
                    "clip server: dropped %d unauthenticated connections (the pending pool of "
                    "%d, %d per address, full, or past the %.1f s handshake deadline)",
                    self._slots.dropped - count,
                    self._slots.max_pending,
                    self._slots.max_pending_per_address,
                    self._slots.handshake_s,
                )
                self._dropped_logged = (self._slots.dropped, now)

    def _check_peer(self, conn: ssl.SSLSocket) -> tuple[str, str | None]:
        """The peer's CN, and why it is refused (None: it is the receiver)."""
        der = conn.getpeercert(binary_form=True)
        if der is None:  # cannot happen with CERT_REQUIRED; refuse rather than assume
            return "?", "no client certificate"
        cert = x509.load_der_x509_certificate(der)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(names[0].value) if len(names) == 1 else "?"
        if not issued_by_any(cert, self._roots):
            return cn, f"certificate of {cn!r} is not issued directly by the site root"
        if not names_a_receiver(cn, self.receiver_id):
            return cn, f"certificate names {cn!r}, not a receiver ({self.receiver_id!r})"
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            return cn, f"certificate of {cn!r} is not for TLS clients"
        if self._revoked(cert):
            return cn, f"certificate {cert.serial_number:x} of {cn!r} is revoked"
        return cn, None


def _shut(conn: socket.socket) -> None:
    """End *conn* under whichever thread is blocked on it (its reads return EOF)."""
    # socket.shutdown, not SSLSocket's, which drops the TLS state under a reader.
    with suppress(OSError):
        socket.socket.shutdown(conn, socket.SHUT_RDWR)
