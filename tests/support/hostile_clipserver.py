"""A hostile unit for attack tests: its clip server, real TLS with a real provisioned unit's
certificate (so the receiver's identity check passes, as it would for a stolen cart), which then
misbehaves: dribbles a body one byte at a time, or serves fast but cuts every response short;
and its clips and announcements, published with the same unit's certificate.

Not the daemon's clip server: this one obeys no contract on purpose. It records what it was
asked (:attr:`HostileClipServer.requests`) and how many connections it accepted."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from daemon.outbox import Outbox, OutboxEntry
from protocol.messages import ClipAnnouncement, Status
from protocol.topics import Kind, topic
from provisioning.site import Site
from tests.protocol.message_examples import clip_id_of

from .mosquitto import Client, unit_identity
from .unit import announcement_of, seal_synthetic_clip

__all__ = ["AcceptRecorder", "Clip", "HostileClipServer", "Served", "as_unit", "sealed"]

_RANGE = re.compile(r"bytes=(\d+)-")


@dataclass
class Served:
    """What the server serves at one path: *body* (or *size* bytes of zeros), with *etag*."""

    size: int
    etag: str | None = None
    body: bytes | None = None


@dataclass
class HostileClipServer:
    """A TLS server on 127.0.0.1 holding unit *unit_id*'s certificate.

    ``mode``: ``"dribble"`` answers 200 with the full Content-Length, then sends one byte every
    *interval_s* seconds (the listing too); ``"cut"`` serves fast, honours ``Range``, and ends
    each response after *cut_bytes* bytes and never serves past *serve_limit* of a file.
    """

    site: Site
    unit_id: str
    mode: str
    interval_s: float = 1.0
    cut_bytes: int = 1 << 20
    serve_limit: int | None = None
    cut_responses: int | None = None  # after this many cut responses, serve whole ones
    files: dict[str, Served] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, range header)
    accepted: int = 0

    def __post_init__(self) -> None:
        bundle = self.site.paths.devices_dir / self.unit_id
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(bundle / "certs" / "tls.crt", bundle / "keys" / "tls.key")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hostile", daemon=True)
        self._thread.start()

    def __enter__(self) -> HostileClipServer:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._closing.set()
        self._thread.join(10)
        self._listener.close()

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        with contextlib.suppress(OSError), raw:
            raw.settimeout(10)
            tls = self._context.wrap_socket(raw, server_side=True)
            with tls, tls.makefile("rb") as reader:
                self._converse(tls, reader)

    def _converse(self, tls: ssl.SSLSocket, reader: BinaryIO) -> None:
        while not self._closing.is_set():
            line = reader.readline(4096)
            if not line:
                return
            path = line.split()[1].decode() if len(line.split()) > 1 else "/"
            headers: dict[str, str] = {}
            while (header := reader.readline(4096)) not in (b"\r\n", b"\n", b""):
                name, _, value = header.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            self.requests.append((path, headers.get("range", "")))
            if not self._answer(tls, path, headers):
                return

    def _answer(self, tls: ssl.SSLSocket, path: str, headers: dict[str, str]) -> bool:
        """Answer one request; False once the connection is to end."""
        served = self.files.get(path)
        if served is None:
            tls.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return True
        body = served.body if served.body is not None else bytes(served.size)
        etag = f'ETag: "{served.etag}"\r\n' if served.etag else ""
        if self.mode == "dribble":
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {served.size}\r\n{etag}\r\n"
            tls.sendall(head.encode())
            for n in range(served.size):
                if self._closing.wait(self.interval_s):
                    return False
                tls.sendall(body[n : n + 1])
            return True
        match = _RANGE.fullmatch(headers.get("range", ""))
        first = int(match.group(1)) if match else 0
        limit = served.size if self.serve_limit is None else min(served.size, self.serve_limit)
        end = min(limit, first + self.cut_bytes)
        if self.cut_responses is not None:
            if self.cut_responses <= 0:
                end = served.size
            self.cut_responses -= 1
        if match:
            status = f"206 Partial Content\r\nContent-Range: bytes {first}-{served.size - 1}/"
            head = f"HTTP/1.1 {status}{served.size}\r\nContent-Length: {served.size - first}\r\n"
        else:
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {served.size}\r\n"
        tls.sendall((head + etag + "\r\n").encode())
        tls.sendall(body[first:end])
        return False  # cut: the connection ends before the body does


class AcceptRecorder:
    """A plain TCP listener on *host* that records every connection made to it (and closes
    it): the proof that nothing connected."""

    def __init__(self, host: str) -> None:
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.1)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self.accepted: list[float] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="recorder", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(time.monotonic())
            conn.close()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(10)
        self._listener.close()


# --- the hostile unit's clips and announcements -------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """A clip sealed as a unit would seal it: its outbox entry, file and what is announced."""

    entry: OutboxEntry
    path: Path

    @property
    def clip_id(self) -> str:
        return self.entry.clip_id

    @property
    def size(self) -> int:
        assert self.entry.size_bytes is not None
        return self.entry.size_bytes

    @property
    def sha256(self) -> str:
        assert self.entry.sha256 is not None
        return self.entry.sha256

    def served(self, *, body: bool = False) -> Served:
        return Served(self.size, self.sha256, self.path.read_bytes() if body else None)

    def announcement(self, host: str, port: int) -> ClipAnnouncement:
        return announcement_of(self.entry, host, port)


def sealed(site: Site, work: Path, unit_id: str, count: int, plaintext: int) -> list[Clip]:
    """*count* clips sealed as *unit_id* would seal them (signed with its key)."""
    with Outbox(work / f"outbox-{unit_id}", quota_bytes=1 << 30, min_free_bytes=0) as outbox:
        clips = []
        for n in range(count):
            entry = seal_synthetic_clip(outbox, site, unit_id, clip_id_of(unit_id, n), plaintext)
            clips.append(Clip(entry, outbox.clip_path(entry.clip_id)))
        return clips


def as_unit(
    make_client: Callable[..., Client],
    site: Site,
    unit_id: str,
    *payloads: bytes,
    online: bool = True,
) -> None:
    """Log in with *unit_id*'s certificate, say it is online (retained), publish *payloads* as
    clip announcements, leave."""
    client = make_client(unit_identity(site, unit_id)).connect()
    if online:
        now = datetime.now(UTC)
        status = Status(state="online", since=now, software_version="0.1.0", armed=False)
        client.publish(topic(site.name, unit_id, Kind.STATUS), status.to_payload(), retain=True)
    for payload in payloads:
        rc = client.publish(topic(site.name, unit_id, Kind.CLIPS), payload)
        assert not rc.is_failure, rc
    client.close()
