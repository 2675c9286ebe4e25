"""The clip server over real mutual TLS with a provisioned site: who may pull, what, and how."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from daemon.clipserver import ClipServer, byte_range
from daemon.outbox import Outbox
from provisioning import pki
from provisioning.devices import add_device
from provisioning.site import Site, init_site
from tests.daemon.test_outbox import open_outbox, record, sealed_clip

UNIT = "cart-01"


@dataclass(frozen=True)
class Credentials:
    cert: Path | None
    key: Path | None


@dataclass(frozen=True)
class Pki:
    site: Site
    unit_dir: Path
    receiver: Credentials
    other_unit: Credentials
    other_unit_leaf_only: Credentials
    foreign: Credentials

    @property
    def root_ca(self) -> Path:
        return self.site.paths.receiver_dir / "ca.pem"


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    site = init_site(base / "site", "ward7")
    unit = add_device(site, UNIT)
    other = add_device(site, "cart-02")
    leaf_only = base / "cart-02-leaf.crt"
    chain = (other.bundle_dir / "certs" / "tls.crt").read_text()
    leaf_only.write_text(chain[: chain.index("-----END CERTIFICATE-----") + 26])
    # A stranger's CA issuing a certificate that claims to be the receiver.
    foreign_root = pki.issue_ca("foreign root", "ward7", days=30, path_length=0)
    impostor = pki.issue_leaf(
        foreign_root, site.receiver_id, "ward7", days=30, server=False, client=True
    )
    pki.write_private_key(base / "impostor.key", impostor.key)
    pki.write_cert(base / "impostor.crt", impostor.cert)
    rdir = site.paths.receiver_dir
    other_key = other.bundle_dir / "keys" / "tls.key"
    return Pki(
        site=site,
        unit_dir=unit.bundle_dir,
        receiver=Credentials(rdir / "tls.crt", rdir / "tls.key"),
        other_unit=Credentials(other.bundle_dir / "certs" / "tls.crt", other_key),
        other_unit_leaf_only=Credentials(leaf_only, other_key),
        foreign=Credentials(base / "impostor.crt", base / "impostor.key"),
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with open_outbox(tmp_path / "outbox") as box:
        yield box


def make_server(outbox: Outbox, creds: Pki, **options: float) -> ClipServer:
    return ClipServer(
        outbox,
        host="127.0.0.1",
        port=0,
        cert_file=creds.unit_dir / "certs" / "tls.crt",
        key_file=creds.unit_dir / "keys" / "tls.key",
        ca_file=creds.unit_dir / "certs" / "ca-chain.pem",
        receiver_id=creds.site.receiver_id,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def server(outbox: Outbox, creds: Pki) -> Iterator[ClipServer]:
    with make_server(outbox, creds) as running:
        yield running


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def connect(port: int, creds: Pki, who: Credentials) -> http.client.HTTPConnection:
    """An HTTPS connection to the unit as *who*, checking the unit's certificate and name."""
    context = ssl.create_default_context(cafile=creds.root_ca)
    if who.cert is not None:
        context.load_cert_chain(who.cert, who.key)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = http.client.HTTPConnection(UNIT, port, timeout=10)
    conn.sock = context.wrap_socket(raw, server_hostname=UNIT)
    return conn


def fetch(
    port: int,
    creds: Pki,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    who: Credentials | None = None,
) -> Reply:
    conn = connect(port, creds, who or creds.receiver)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def test_receiver_fetches_a_clip_and_its_signature(
    server: ClipServer, outbox: Outbox, creds: Pki
) -> None:
    data = sealed_clip(outbox, "cart-03-20250301T093000Z-0001", 700_000)
    entry = outbox.get("cart-03-20250301T093000Z-0001")
    reply = fetch(server.port, creds, "/v1/clips/cart-03-20250301T093000Z-0001.age")
    assert reply.status == 200 and reply.body == data
    assert hashlib.sha256(reply.body).hexdigest() == entry.sha256
    assert reply.headers["ETag"] == f'"{entry.sha256}"'
    assert reply.headers["Accept-Ranges"] == "bytes"
    assert reply.headers["Content-Length"] == str(len(data))
    assert reply.headers["Cache-Control"] == "no-store"
    signature = fetch(server.port, creds, "/v1/clips/cart-03-20250301T093000Z-0001.age.minisig")
    assert signature.status == 200 and signature.body.decode() == entry.signature


def test_list_shows_only_pending_clips(server: ClipServer, outbox: Outbox, creds: Pki) -> None:
    sealed_clip(outbox, "cart-03-20250301T093000Z-0001", 1000)
    sealed_clip(outbox, "cart-03-20250301T093000Z-0002", 2000)
    outbox.mark_announced("cart-03-20250301T093000Z-0002")
    gone = sealed_clip(outbox, "cart-03-20250301T093000Z-0003", 3000)
    outbox.delete_receipted("cart-03-20250301T093000Z-0003", hashlib.sha256(gone).hexdigest())
    record(outbox, "cart-03-20250301T093000Z-0004", b"recording")
    reply = fetch(server.port, creds, "/v1/clips")
    assert reply.status == 200 and reply.headers["Content-Type"] == "application/json"
    listing = json.loads(reply.body)
    assert [(c["clip_id"], c["state"], c["size_bytes"]) for c in listing] == [
        ("cart-03-20250301T093000Z-0001", "sealed", 1000),
        ("cart-03-20250301T093000Z-0002", "announced", 2000),
    ]
    for listed, clip_id in zip(
        listing, ("cart-03-20250301T093000Z-0001", "cart-03-20250301T093000Z-0002"), strict=True
    ):
        entry = outbox.get(clip_id)
        assert entry.manifest_json is not None and entry.sealed_at is not None
        # Exactly these keys: with the manifest and signature, all an announcement carries.
        assert listed == {
            "clip_id": clip_id,
            "size_bytes": entry.size_bytes,
            "sha256": entry.sha256,
            "state": str(entry.state),
            "sealed_at": listed["sealed_at"],
            "manifest": json.loads(entry.manifest_json),
            "signature": entry.signature,
        }
        assert datetime.fromisoformat(listed["sealed_at"]) == entry.sealed_at
        assert listed["sealed_at"].endswith("Z")
        assert listed["signature"].startswith("untrusted comment:")
        assert listed["manifest"]["sha256"] == entry.sha256
    head = fetch(server.port, creds, "/v1/clips", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Length"] == str(len(reply.body))


def test_byte_ranges_and_resume(server: ClipServer, outbox: Outbox, creds: Pki) -> None:
    data = sealed_clip(outbox, "cart-03-20250301T093000Z-4543", 500_001)
    size, half = len(data), len(data) // 2
    etag = f'"{outbox.get("cart-03-20250301T093000Z-4543").sha256}"'
    path = "/v1/clips/cart-03-20250301T093000Z-4543.age"

    first = fetch(server.port, creds, path, headers={"Range": f"bytes=0-{half - 1}"})
    assert first.status == 206 and first.body == data[:half]
    assert first.headers["Content-Range"] == f"bytes 0-{half - 1}/{size}"
    rest = fetch(server.port, creds, path, headers={"Range": f"bytes={half}-", "If-Range": etag})
    assert rest.status == 206 and rest.headers["Content-Range"] == f"bytes {half}-{size - 1}/{size}"
    assert first.body + rest.body == data

    tail = fetch(server.port, creds, path, headers={"Range": "bytes=-100"})
    assert tail.status == 206 and tail.body == data[-100:]
    clipped = fetch(server.port, creds, path, headers={"Range": f"bytes=10-{size * 2}"})
    assert clipped.status == 206 and clipped.body == data[10:]
    # A changed ETag, several ranges or nonsense: the whole file, as RFC 9110 allows.
    for headers in (
        {"Range": "bytes=0-9", "If-Range": '"' + "0" * 64 + '"'},
        {"Range": "bytes=0-9,20-29"},
        {"Range": "lines=0-9"},
        {"Range": "bytes=9-0"},
    ):
        whole = fetch(server.port, creds, path, headers=headers)
        assert (whole.status, whole.body) == (200, data), headers
    for unsatisfiable in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        refused = fetch(server.port, creds, path, headers={"Range": unsatisfiable})
        assert refused.status == 416 and refused.headers["Content-Range"] == f"bytes */{size}"


def test_head_sends_headers_only(server: ClipServer, outbox: Outbox, creds: Pki) -> None:
    data = sealed_clip(outbox, "cart-03-20250301T093000Z-aaa9", 123_456)
    reply = fetch(server.port, creds, "/v1/clips/cart-03-20250301T093000Z-aaa9.age", method="HEAD")
    assert reply.status == 200 and reply.body == b""
    assert reply.headers["Content-Length"] == str(len(data))
    assert reply.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    ranged = fetch(
        server.port,
        creds,
        "/v1/clips/cart-03-20250301T093000Z-aaa9.age",
        method="HEAD",
        headers={"Range": "bytes=5-9"},
    )
    assert ranged.status == 206 and ranged.headers["Content-Length"] == "5"


def test_curl_fetches_with_ranges(
    server: ClipServer, outbox: Outbox, creds: Pki, tmp_path: Path
) -> None:
    data = sealed_clip(outbox, "cart-03-20250301T093000Z-427e", 400_000)
    url = f"https://{UNIT}:{server.port}/v1/clips/cart-03-20250301T093000Z-427e.age"
    base = [
        "curl", "--silent", "--show-error", "--fail",
        "--cert", str(creds.receiver.cert), "--key", str(creds.receiver.key),
        "--cacert", str(creds.root_ca), "--resolve", f"{UNIT}:{server.port}:127.0.0.1",
    ]  # fmt: skip
    parts = []
    for n, span in enumerate(("0-149999", "150000-")):
        out = tmp_path / f"part{n}"
        subprocess.run([*base, "-r", span, "-o", str(out), url], check=True, timeout=30)
        parts.append(out.read_bytes())
    assert parts[0] == data[:150_000] and b"".join(parts) == data
    whole = subprocess.run([*base, url], check=True, capture_output=True, timeout=30).stdout
    assert whole == data
    # curl's own resume: continue a partial file where it ends.
    partial = tmp_path / "resumed"
    partial.write_bytes(data[:123_457])
    subprocess.run([*base, "-C", "-", "-o", str(partial), url], check=True, timeout=30)
    assert partial.read_bytes() == data
    nocert = [a for a in base if a not in (str(creds.receiver.cert), str(creds.receiver.key))]
    nocert = [a for a in nocert if a not in ("--cert", "--key")]
    refused = subprocess.run([*nocert, url], capture_output=True, timeout=30)
    assert refused.returncode != 0 and refused.stdout == b""


def assert_refused_at_handshake(port: int, creds: Pki, who: Credentials) -> None:
    """The TLS handshake fails: no HTTP status ever comes back."""
    with pytest.raises((ssl.SSLError, ConnectionError)):
        fetch(port, creds, "/v1/clips", who=who)


def test_a_client_without_a_certificate_is_refused(
    server: ClipServer, creds: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.clipserver")
    assert_refused_at_handshake(server.port, creds, Credentials(None, None))
    deadline = time.monotonic() + 5
    while "handshake" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "TLS handshake with 127.0.0.1 refused" in caplog.text


def test_a_foreign_ca_is_refused_even_naming_the_receiver(server: ClipServer, creds: Pki) -> None:
    assert_refused_at_handshake(server.port, creds, creds.foreign)


def test_a_unit_certificate_cannot_pose_as_the_receiver(
    server: ClipServer, outbox: Outbox, creds: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    sealed_clip(outbox, "cart-03-20250301T093000Z-0001", 1000)
    # Sent alone, the unit's leaf does not chain to the site root: refused in the handshake.
    assert_refused_at_handshake(server.port, creds, creds.other_unit_leaf_only)
    # Sent with its device CA (as a unit's tls.crt is), it chains to the root, so OpenSSL lets
    # the handshake through; the server then sees it was not issued by the root itself, and
    # not to the receiver, and refuses every request.
    caplog.set_level(logging.INFO, logger="daemon.clipserver")
    for path in ("/v1/clips", "/v1/clips/cart-03-20250301T093000Z-0001.age"):
        reply = fetch(server.port, creds, path, who=creds.other_unit)
        assert reply.status == 403 and b"clip" not in reply.body
    assert "'cart-02' is not issued directly by the site root" in caplog.text


def test_the_sites_other_receivers_are_served_other_root_certificates_are_not(
    server: ClipServer, outbox: Outbox, creds: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sealed_clip(outbox, "cart-03-20250301T093000Z-0001", 1000)
    root = creds.site.root()

    def issued(name: str, *, client: bool) -> Credentials:
        leaf = pki.issue_leaf(root, name, "ward7", days=30, server=not client, client=client)
        pki.write_private_key(tmp_path / f"{name}.key", leaf.key)
        pki.write_cert(tmp_path / f"{name}.crt", leaf.cert)
        return Credentials(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")

    # Named as provision receiver add names them: served, with no change on the unit.
    assert (
        fetch(server.port, creds, "/v1/clips", who=issued("receiver-2", client=True)).status == 200
    )
    caplog.set_level(logging.INFO, logger="daemon.clipserver")
    reply = fetch(server.port, creds, "/v1/clips", who=issued("nurse-pc", client=True))
    assert reply.status == 403
    assert "certificate names 'nurse-pc', not a receiver" in caplog.text
    # A server certificate (the broker's kind) named like a receiver: never a client.
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        reply = fetch(server.port, creds, "/v1/clips", who=issued("receiver-9", client=False))
        assert reply.status == 403 and "not for TLS clients" in caplog.text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/clips/../outbox.sqlite",
        "/v1/clips/..%2foutbox.sqlite",
        "/v1/clips/%2e%2e%2foutbox.sqlite",
        "/v1/clips/%2e%2e/outbox.sqlite.age",
        "/v1/clips/..%2Foutbox.sqlite.age",
        "/v1/clips/../../etc/passwd.age",
        "/v1/clips//etc/passwd.age",
        "/v1/clips/.age",
        "/v1/clips/cart-03-20250301T093000Z-0001.age.part",
        "/v1/clips/cart-03-20250301T093000Z-0001",
        "/v1/clips/cart-03-20250301T093000Z-0001.age/",
        "/v1/clips/",
        "/outbox.sqlite",
        "/",
        "/v2/clips",
        "https://cart-01/v1/clips/cart-03-20250301T093000Z-0001.age",
    ],
)
def test_only_listed_routes_are_served(
    server: ClipServer, outbox: Outbox, creds: Pki, path: str
) -> None:
    sealed_clip(outbox, "cart-03-20250301T093000Z-0001", 1000)
    reply = fetch(server.port, creds, path)
    assert reply.status == 404 and b"SQLite" not in reply.body


def test_a_clip_still_recording_or_deleted_is_not_served(
    server: ClipServer, outbox: Outbox, creds: Pki
) -> None:
    record(outbox, "cart-03-20250301T093000Z-cb41", os.urandom(5000))
    data = sealed_clip(outbox, "cart-03-20250301T093000Z-75e3", 5000)
    outbox.delete_receipted("cart-03-20250301T093000Z-75e3", hashlib.sha256(data).hexdigest())
    for clip_id in (
        "cart-03-20250301T093000Z-cb41",
        "cart-03-20250301T093000Z-75e3",
        "cart-03-20250301T093000Z-140b",
    ):
        for suffix in (".age", ".age.minisig"):
            assert fetch(server.port, creds, f"/v1/clips/{clip_id}{suffix}").status == 404


def test_other_methods_are_not_allowed(server: ClipServer, outbox: Outbox, creds: Pki) -> None:
    sealed_clip(outbox, "cart-03-20250301T093000Z-0001", 1000)
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"):
        reply = fetch(
            server.port, creds, "/v1/clips/cart-03-20250301T093000Z-0001.age", method=method
        )
        assert reply.status == 405 and reply.headers["Allow"] == "GET, HEAD", method
    assert outbox.get("cart-03-20250301T093000Z-0001").state == "sealed"


def test_one_log_line_per_request_without_patient_data(
    server: ClipServer, outbox: Outbox, creds: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.clipserver")
    sealed_clip(outbox, "cart-03-20250301T093000Z-0001", 1000)
    conn = connect(server.port, creds, creds.receiver)  # keep-alive: three requests, one socket
    for path in ("/v1/clips", "/v1/clips/cart-03-20250301T093000Z-0001.age", "/v1/clips/nope.age"):
        conn.request("GET", path)
        conn.getresponse().read()
    conn.close()

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "GET" in r.getMessage()]

    # The server logs a request after answering it: the last line may trail the response.
    deadline = time.monotonic() + 5
    while len(lines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(lines()) == 3
    assert "receiver GET '/v1/clips/cart-03-20250301T093000Z-0001.age' 200 1000" in lines()[1]
    assert "GET '/v1/clips/nope.age' 404" in lines()[2]
    assert "PAIN-" not in caplog.text and "baseline" not in caplog.text


def open_idle(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """*count* TCP connections from *source* that never say a word."""
    return [
        socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        for _ in range(count)
    ]


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_stalled_clients_are_dropped_oldest_first_and_never_block_the_receiver(
    outbox: Outbox, creds: Pki
) -> None:
    sealed_clip(outbox, "cart-03-20250301T093000Z-0001", 1000)
    path = "/v1/clips/cart-03-20250301T093000Z-0001.age"
    options = {"max_handshakes": 4, "max_handshakes_per_address": 4, "handshake_timeout_s": 1.0}
    with make_server(outbox, creds, max_connections=1, **options) as server:
        stalled = open_idle(server.port, 4)
        time.sleep(0.2)
        # The pool is full: a newcomer drops the oldest, not itself.
        newcomer = open_idle(server.port, 1)[0]
        assert closed_by_server(stalled[0], within_s=2)
        assert not closed_by_server(newcomer, within_s=0.2)
        # The receiver gets in however full the pool, and is served.
        assert fetch(server.port, creds, path).status == 200
        started = time.monotonic()
        for sock in [*stalled[1:], newcomer]:  # silent ones go at the handshake deadline
            assert closed_by_server(sock, within_s=3)
        assert time.monotonic() - started < 3
        for sock in [*stalled, newcomer]:
            sock.close()


def test_a_dribbling_handshake_is_cut_at_the_deadline_not_per_read(
    outbox: Outbox, creds: Pki
) -> None:
    with make_server(outbox, creds, handshake_timeout_s=1.0) as server:
        sock = open_idle(server.port, 1)[0]
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40)
        started = time.monotonic()
        sent = 0
        while sent < len(hello):  # a byte every 0.3 s: each read is quick, the whole is not
            try:
                sock.sendall(hello[sent : sent + 1])
            except OSError:
                break
            sent += 1
            if closed_by_server(sock, within_s=0.3):
                break
        assert time.monotonic() - started < 2.5
        sock.close()


def test_one_address_pushes_out_only_its_own_pending_connections(
    outbox: Outbox, creds: Pki
) -> None:
    options = {"max_handshakes": 8, "max_handshakes_per_address": 2, "handshake_timeout_s": 5.0}
    with make_server(outbox, creds, **options) as server:
        other = open_idle(server.port, 1, source="127.0.0.2")[0]
        flood = open_idle(server.port, 6, source="127.0.0.3")
        assert all(closed_by_server(sock, within_s=2) for sock in flood[:4])
        assert not closed_by_server(other, within_s=0.3)  # another address's: left alone
        for sock in [other, *flood]:
            sock.close()


def test_only_authenticated_receivers_take_served_slots(outbox: Outbox, creds: Pki) -> None:
    sealed_clip(outbox, "cart-03-20250301T093000Z-0001", 1000)
    with make_server(outbox, creds, max_connections=1) as server:
        # A unit's certificate passes the TLS handshake but is no receiver: it takes no slot.
        impostor = connect(server.port, creds, creds.other_unit)  # handshake done
        holder = connect(server.port, creds, creds.receiver)
        holder.request("GET", "/v1/clips")
        holder.getresponse().read()  # keep-alive: this receiver now holds the one served slot
        busy = fetch(server.port, creds, "/v1/clips")
        assert busy.status == 503 and busy.headers["Retry-After"] == "1"
        holder.close()
        time.sleep(0.2)
        assert fetch(server.port, creds, "/v1/clips").status == 200
        impostor.request("GET", "/v1/clips")
        assert impostor.getresponse().status == 403
        impostor.close()


def test_stop_ends_open_connections(outbox: Outbox, creds: Pki) -> None:
    server = make_server(outbox, creds, timeout_s=30)
    server.start()
    idle = connect(server.port, creds, creds.receiver)
    idle.request("GET", "/v1/clips")
    idle.getresponse().read()  # keep-alive: the server thread now waits for the next request
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    idle.close()


def test_byte_range_parser() -> None:
    assert byte_range(None, 10) is None
    assert byte_range("bytes=0-0", 10) == (0, 0)
    assert byte_range("bytes=3-", 10) == (3, 9)
    assert byte_range("bytes=-3", 10) == (7, 9)
    assert byte_range("bytes=-30", 10) == (0, 9)
    assert byte_range("bytes=5-50", 10) == (5, 9)
    assert byte_range("bytes=10-", 10) is False
    assert byte_range("bytes=-0", 10) is False
    assert byte_range("bytes=0-", 0) is False
    for ignored in (
        "bytes=-",
        "bytes=1-2,4-5",
        "bytes=5-1",
        "items=1-2",
        "bytes=" + "9" * 30 + "-",
    ):
        assert byte_range(ignored, 10) is None, ignored
