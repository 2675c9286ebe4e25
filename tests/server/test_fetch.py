"""Pulling clips from a real unit clip server over mutual TLS: whole, resumed, refused."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import random
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.clipserver import ClipServer
from daemon.outbox import Outbox, OutboxEntry
from protocol.envelope import EnvelopeWriter
from protocol.registry import Registry
from protocol.signing import sign_clip
from provisioning import pki
from server.backoff import Backoff
from server.fetch import FetchClient, FetchError, FetchErrorKind, UnitAddressPolicy
from server.store import LocalStore
from server.verify import verify_clip_file
from tests.daemon.test_outbox import open_outbox
from tests.protocol.message_examples import manifest
from tests.server.test_verify import OTHER, UNIT, Ward, make_ward

HOST = "127.0.0.1"
LOOPBACK_UNITS = UnitAddressPolicy(["127.0.0.0/8"], ["1024-65535"])  # units on picked ports
T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory) -> Ward:
    return make_ward(tmp_path_factory.mktemp("ward"))


@dataclass(frozen=True)
class Tls:
    """A certificate chain and key for a server to present."""

    cert: Path
    key: Path


def unit_tls(ward: Ward, device_id: str) -> Tls:
    bundle = ward.site.paths.devices_dir / device_id
    return Tls(bundle / "certs" / "tls.crt", bundle / "keys" / "tls.key")


def issued_tls(folder: Path, authority: pki.Authority, name: str) -> Tls:
    issued = pki.issue_leaf(authority, name, "ward7", days=30, server=True, client=True)
    tls = Tls(folder / f"{name}.crt", folder / f"{name}.key")
    pki.write_cert(tls.cert, issued.cert)
    pki.write_private_key(tls.key, issued.key)
    return tls


def receiver_client(ward: Ward, **options: float) -> FetchClient:
    rdir = ward.site.paths.receiver_dir
    return FetchClient(
        cert_file=rdir / "tls.crt",
        key_file=rdir / "tls.key",
        ca_file=rdir / "ca.pem",
        policy=LOOPBACK_UNITS,
        **options,  # type: ignore[arg-type]
    )


def seal_clip(
    outbox: Outbox, ward: Ward, clip_id: str, plaintext_bytes: int, device_id: str = UNIT
) -> OutboxEntry:
    """Record a real clip on *device_id*: encrypted to the data key, signed, sealed."""
    part = outbox.begin(clip_id, participant="PAIN-0042", visit="baseline", started_at=T0)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file, EnvelopeWriter(file, [ward.data_key]) as writer:
        writer.write(os.urandom(plaintext_bytes))
    signature, binding = sign_clip(
        ward.signing_key(device_id),
        part,
        clip_id,
        device_id,
        participant="PAIN-0042",
        visit="baseline",
    )
    size = part.stat().st_size
    announced = manifest(
        clip_id=clip_id,
        site_id="ward7",
        device_id=device_id,
        sha256=binding.sha256,
        size_bytes=size,
        recipients=(ward.data_key,),
    )
    return outbox.seal(
        clip_id,
        manifest_json=announced.model_dump_json(),
        signature=signature.to_text(),
        sha256=binding.sha256,
        size_bytes=size,
    )


@contextlib.contextmanager
def clip_server(outbox: Outbox, ward: Ward, tls: Tls) -> Iterator[ClipServer]:
    bundle = ward.site.paths.devices_dir / UNIT
    server = ClipServer(
        outbox,
        host=HOST,
        port=0,
        cert_file=tls.cert,
        key_file=tls.key,
        ca_file=bundle / "certs" / "ca-chain.pem",
        receiver_id=ward.site.receiver_id,
    )
    with server:
        yield server


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with open_outbox(tmp_path / "outbox") as box:
        yield box


@pytest.fixture
def unit(outbox: Outbox, ward: Ward) -> Iterator[ClipServer]:
    with clip_server(outbox, ward, unit_tls(ward, UNIT)) as server:
        yield server


def clip_url(port: int, clip_id: str) -> str:
    return f"https://{HOST}:{port}/v1/clips/{clip_id}.age"


def pull(client: FetchClient, port: int, entry: OutboxEntry, dest: Path, **changes: object):
    arguments: dict[str, object] = {
        "device_id": UNIT,
        "expected_size": entry.size_bytes,
        "expected_sha256": entry.sha256,
    }
    arguments.update(changes)
    return client.fetch(clip_url(port, entry.clip_id), dest, **arguments)  # type: ignore[arg-type]


def test_a_whole_clip_is_pulled_verified_and_stored(
    unit: ClipServer, outbox: Outbox, ward: Ward, tmp_path: Path
) -> None:
    entry = seal_clip(outbox, ward, "cart-01-20250301T093000Z-0001", 700_000)
    assert entry.size_bytes is not None and entry.sha256 is not None
    client = receiver_client(ward, chunk_bytes=64 * 1024)
    dest = tmp_path / "spool.age"
    result = pull(client, unit.port, entry, dest)
    assert (result.size, result.sha256) == (entry.size_bytes, entry.sha256)
    assert (result.transferred, result.resumed) == (entry.size_bytes, False)
    assert dest.read_bytes() == outbox.clip_path("cart-01-20250301T093000Z-0001").read_bytes()

    signature = client.fetch_signature(
        clip_url(unit.port, "cart-01-20250301T093000Z-0001") + ".minisig", device_id=UNIT
    )
    assert signature == entry.signature
    verdict = verify_clip_file(
        Registry.load(ward.site.paths.registry),
        device_id=UNIT,
        clip_id="cart-01-20250301T093000Z-0001",
        announced_sha256=entry.sha256,
        signature_text=signature,
        clip_file=dest,
        data_key_recipient=ward.data_key,
        manifest_recipients=[ward.data_key],
        participant="PAIN-0042",
        visit="baseline",
    )
    assert verdict.ok, verdict.detail
    store = LocalStore(tmp_path / "store")
    assert store.put(result.sha256, dest, signature) == entry.sha256
    assert store.signature(entry.sha256) == entry.signature


def test_one_connection_serves_a_clip_its_signature_and_the_list(
    unit: ClipServer, outbox: Outbox, ward: Ward, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = seal_clip(outbox, ward, "cart-01-20250301T093000Z-0001", 300_000)
    assert entry.size_bytes is not None and entry.sha256 is not None
    admitted: list[socket.socket] = []
    admit = unit._admit

    def counted(conn: socket.socket, address: str) -> bool:
        admitted.append(conn)
        return admit(conn, address)

    monkeypatch.setattr(unit, "_admit", counted)
    url = clip_url(unit.port, "cart-01-20250301T093000Z-0001")
    dest = tmp_path / "spool.age"
    with receiver_client(ward, chunk_bytes=64 * 1024).connect(
        url, device_id=UNIT, deadline_s=60
    ) as conn:
        result = conn.fetch(url, dest, expected_size=entry.size_bytes, expected_sha256=entry.sha256)
        assert conn.fetch_signature(url + ".minisig") == entry.signature
        assert [c.clip_id for c in conn.list_clips(f"https://{HOST}:{unit.port}")] == [
            "cart-01-20250301T093000Z-0001"
        ]
        assert len(admitted) == 1
        # A refusal whose body is left unread ends the connection; the next request opens a
        # new one (and checks the unit again) rather than reading that body as its answer.
        with pytest.raises(FetchError, match="HTTP 404"):
            conn.fetch_signature(clip_url(unit.port, "cart-01-20250301T093000Z-9999") + ".minisig")
        assert conn.fetch_signature(url + ".minisig") == entry.signature
        with pytest.raises(ValueError, match="is not on"):  # a connection serves its own host
            conn.fetch_signature(
                f"https://{HOST}:{unit.port + 1}/v1/clips/cart-01-20250301T093000Z-0001.age.minisig"
            )
    assert len(admitted) == 2
    # Hashed on the way in: both digests are of the file as written.
    data = dest.read_bytes()
    assert result.digests.sha256 == hashlib.sha256(data).hexdigest() == entry.sha256
    assert result.digests.blake2b == hashlib.blake2b(data).digest()
    assert result.digests.size == len(data) == entry.size_bytes


def test_the_list_of_pending_clips(
    unit: ClipServer, outbox: Outbox, ward: Ward, tmp_path: Path
) -> None:
    first = seal_clip(outbox, ward, "cart-01-20250301T093000Z-0001", 1000)
    second = seal_clip(outbox, ward, "cart-01-20250301T093000Z-0002", 2000)
    listed = receiver_client(ward).list_clips(f"https://{HOST}:{unit.port}/", device_id=UNIT)
    assert [(c.clip_id, c.size_bytes, c.sha256) for c in listed] == [
        (e.clip_id, e.size_bytes, e.sha256) for e in (first, second)
    ]
    assert all(c.state == "sealed" and c.sealed_at is not None for c in listed)
    assert [(c.manifest.model_dump_json(), c.signature) for c in listed] == [
        (e.manifest_json, e.signature) for e in (first, second)
    ]


def range_get(port: int, ward: Ward, path: str, first: int, last: int) -> bytes:
    """The receiver asking for a byte range itself, outside the FetchClient."""
    rdir = ward.site.paths.receiver_dir
    context = ssl.create_default_context(cafile=rdir / "ca.pem")
    context.check_hostname = False
    context.load_cert_chain(rdir / "tls.crt", rdir / "tls.key")
    conn = http.client.HTTPSConnection(HOST, port, timeout=10, context=context)
    try:
        conn.request("GET", path, headers={"Range": f"bytes={first}-{last}"})
        response = conn.getresponse()
        assert response.status == 206
        return response.read()
    finally:
        conn.close()


def test_resume_from_a_prefix_already_on_disk(
    unit: ClipServer, outbox: Outbox, ward: Ward, tmp_path: Path
) -> None:
    entry = seal_clip(outbox, ward, "cart-01-20250301T093000Z-0001", 1_500_000)
    assert entry.size_bytes is not None
    half = entry.size_bytes // 2
    dest = tmp_path / "spool.age"
    dest.write_bytes(
        range_get(unit.port, ward, "/v1/clips/cart-01-20250301T093000Z-0001.age", 0, half - 1)
    )
    result = pull(receiver_client(ward), unit.port, entry, dest)
    assert (result.resumed, result.transferred) == (True, entry.size_bytes - half)
    assert (result.size, result.sha256) == (entry.size_bytes, entry.sha256)  # the whole file
    assert dest.read_bytes() == outbox.clip_path("cart-01-20250301T093000Z-0001").read_bytes()
    # Complete already: nothing more is asked of the unit.
    again = pull(receiver_client(ward), unit.port, entry, dest)
    assert (again.resumed, again.transferred, again.sha256) == (True, 0, entry.sha256)


class CuttingProxy:
    """A TCP relay to the unit that drops both connections after *limit* bytes from the unit:
    a real cut in the middle of the TLS stream, as a Wi-Fi roam or a pulled cable gives."""

    def __init__(self, upstream_port: int, limit: int) -> None:
        self.upstream_port, self.limit = upstream_port, limit
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.relayed = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, socket.create_connection((HOST, self.upstream_port)) as upstream:
            forward = threading.Thread(target=self._pump, args=(conn, upstream), daemon=True)
            forward.start()
            with contextlib.suppress(OSError):
                while self.relayed < self.limit:
                    data = upstream.recv(min(65536, self.limit - self.relayed))
                    if not data:
                        break
                    conn.sendall(data)
                    self.relayed += len(data)
            for sock in (conn, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            forward.join(10)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


def test_resume_after_the_connection_is_cut_mid_body(
    unit: ClipServer, outbox: Outbox, ward: Ward, tmp_path: Path
) -> None:
    entry = seal_clip(outbox, ward, "cart-01-20250301T093000Z-0001", 2_000_000)
    assert entry.size_bytes is not None
    proxy = CuttingProxy(unit.port, limit=800_000)
    client = receiver_client(ward, chunk_bytes=64 * 1024)
    dest = tmp_path / "spool.age"
    try:
        with pytest.raises(FetchError) as cut:
            pull(client, proxy.port, entry, dest)
    finally:
        proxy.close()
    assert cut.value.kind in (FetchErrorKind.RESET, FetchErrorKind.TRUNCATED), cut.value
    assert cut.value.retryable
    assert str(cut.value).startswith(
        f"unit {UNIT}: GET /v1/clips/cart-01-20250301T093000Z-0001.age: "
    )
    kept = dest.stat().st_size
    assert 0 < kept < entry.size_bytes

    result = pull(client, unit.port, entry, dest)
    assert (result.resumed, result.transferred) == (True, entry.size_bytes - kept)
    assert result.sha256 == entry.sha256
    assert result.digests.blake2b == hashlib.blake2b(dest.read_bytes()).digest()
    assert dest.read_bytes() == outbox.clip_path("cart-01-20250301T093000Z-0001").read_bytes()


def test_a_clip_the_unit_does_not_hold(unit: ClipServer, ward: Ward, tmp_path: Path) -> None:
    client = receiver_client(ward)
    with pytest.raises(FetchError) as missing:
        client.fetch(
            clip_url(unit.port, "cart-01-20250301T093000Z-9999"),
            tmp_path / "spool.age",
            device_id=UNIT,
            expected_size=1000,
            expected_sha256="ab" * 32,
        )
    assert missing.value.kind is FetchErrorKind.NOT_FOUND and not missing.value.retryable
    assert (
        str(missing.value)
        == f"unit {UNIT}: GET /v1/clips/cart-01-20250301T093000Z-9999.age: HTTP 404 Not Found"
    )
    with pytest.raises(FetchError) as no_signature:
        client.fetch_signature(
            clip_url(unit.port, "cart-01-20250301T093000Z-9999") + ".minisig", device_id=UNIT
        )
    assert no_signature.value.kind is FetchErrorKind.NOT_FOUND


def test_a_unit_presenting_another_units_certificate(
    outbox: Outbox, ward: Ward, tmp_path: Path
) -> None:
    entry = seal_clip(outbox, ward, "cart-01-20250301T093000Z-0001", 100_000)
    dest = tmp_path / "spool.age"
    with (
        clip_server(outbox, ward, unit_tls(ward, OTHER)) as impostor,
        pytest.raises(FetchError) as refused,
    ):
        pull(receiver_client(ward), impostor.port, entry, dest)
    assert refused.value.kind is FetchErrorKind.IDENTITY and not refused.value.retryable
    assert f"certificate of {OTHER!r}, not of unit {UNIT!r}" in str(refused.value)
    assert dest.stat().st_size == 0  # nothing was asked, nothing written


def test_certificates_named_like_the_unit_but_not_issued_to_it(
    outbox: Outbox, ward: Ward, tmp_path: Path
) -> None:
    entry = seal_clip(outbox, ward, "cart-01-20250301T093000Z-0001", 100_000)
    # Issued by the site root itself, as the receiver's and broker's are: not a unit's.
    by_root = issued_tls(tmp_path, ward.site.root(), UNIT)
    with clip_server(outbox, ward, by_root) as server, pytest.raises(FetchError) as refused:
        pull(receiver_client(ward), server.port, entry, tmp_path / "a.age")
    assert refused.value.kind is FetchErrorKind.IDENTITY
    assert "not by the device CA" in str(refused.value)
    # Issued by a stranger's CA: the handshake itself fails.
    foreign_root = pki.issue_ca("foreign root", "ward7", days=30, path_length=0)
    foreign = issued_tls(tmp_path / "foreign", foreign_root, UNIT)
    with clip_server(outbox, ward, foreign) as server, pytest.raises(FetchError) as refused:
        pull(receiver_client(ward), server.port, entry, tmp_path / "b.age")
    assert refused.value.kind is FetchErrorKind.TLS and not refused.value.retryable
    assert "certificate not trusted" in str(refused.value)


def test_the_unit_refuses_a_client_that_is_not_the_receiver(
    unit: ClipServer, ward: Ward, tmp_path: Path
) -> None:
    rdir = ward.site.paths.receiver_dir
    other = unit_tls(ward, OTHER)  # a unit's certificate: trusted by the site, not the receiver
    as_unit = FetchClient(
        cert_file=other.cert, key_file=other.key, ca_file=rdir / "ca.pem", policy=LOOPBACK_UNITS
    )
    with pytest.raises(FetchError) as refused:
        as_unit.list_clips(f"https://{HOST}:{unit.port}", device_id=UNIT)
    assert refused.value.kind is FetchErrorKind.FORBIDDEN and not refused.value.retryable
    foreign_root = pki.issue_ca("foreign root", "ward7", days=30, path_length=0)
    stranger = issued_tls(tmp_path, foreign_root, ward.site.receiver_id)
    as_stranger = FetchClient(
        cert_file=stranger.cert,
        key_file=stranger.key,
        ca_file=rdir / "ca.pem",
        policy=LOOPBACK_UNITS,
    )
    with pytest.raises(FetchError) as refused:
        as_stranger.list_clips(f"https://{HOST}:{unit.port}", device_id=UNIT)
    # TLS 1.3 refuses a client certificate after the client's handshake is done, with an alert
    # that the unit's reset (it closes with our request unread) can overtake: then the refusal
    # looks like a dropped connection, retried with backoff, and the unit's log names it.
    assert refused.value.kind in (FetchErrorKind.TLS, FetchErrorKind.RESET), refused.value


def test_a_file_other_than_announced_is_refused_before_writing(
    unit: ClipServer, outbox: Outbox, ward: Ward, tmp_path: Path
) -> None:
    entry = seal_clip(outbox, ward, "cart-01-20250301T093000Z-0001", 300_000)
    assert entry.size_bytes is not None
    client = receiver_client(ward)
    dest = tmp_path / "spool.age"
    cases: list[tuple[dict[str, object], FetchErrorKind]] = [
        ({"expected_size": entry.size_bytes - 1}, FetchErrorKind.TOO_LARGE),
        ({"expected_size": entry.size_bytes + 1}, FetchErrorKind.MISMATCH),
        ({"expected_sha256": "0" * 64}, FetchErrorKind.MISMATCH),
    ]
    for changes, kind in cases:
        with pytest.raises(FetchError) as refused:
            pull(client, unit.port, entry, dest, **changes)
        assert refused.value.kind is kind and not refused.value.retryable, changes
        assert dest.stat().st_size == 0
    # Resuming, the unit's Content-Range says the file is shorter than announced.
    prefix = outbox.clip_path("cart-01-20250301T093000Z-0001").read_bytes()[:1000]
    dest.write_bytes(prefix)
    with pytest.raises(FetchError) as refused:
        pull(client, unit.port, entry, dest, expected_size=entry.size_bytes + 1)
    assert refused.value.kind is FetchErrorKind.MISMATCH
    assert dest.read_bytes() == prefix


class FakeUnit:
    """NOT a clip server: a TLS endpoint with cart-01's real certificate that answers any
    request with canned bytes (or never), to produce what the real server never does."""

    def __init__(self, ward: Ward, reply: bytes | None) -> None:
        tls = unit_tls(ward, UNIT)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(tls.cert, tls.key)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(ward.site.paths.receiver_dir / "ca.pem")
        self.reply = reply
        self.done = threading.Event()
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            raw, _ = self.listener.accept()
            with raw, self.context.wrap_socket(raw, server_side=True) as conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                if self.reply is None:
                    self.done.wait(10)
                else:
                    conn.sendall(self.reply)

    def close(self) -> None:
        self.done.set()
        self.thread.join(10)
        self.listener.close()


@pytest.mark.parametrize(
    ("head", "body_bytes", "kind"),
    [
        ("200 OK\r\nConnection: close", 100_500, FetchErrorKind.TOO_LARGE),
        ("200 OK\r\nContent-Length: 100000", 50_000, FetchErrorKind.TRUNCATED),
        ("503 Service Unavailable\r\nContent-Length: 0", 0, FetchErrorKind.SERVER_ERROR),
        ("206 Partial Content\r\nContent-Range: bytes 5-9/100000", 5, FetchErrorKind.PROTOCOL),
    ],
    ids=["runs-on-without-length", "short-body", "503", "range-not-asked"],
)
def test_replies_the_real_server_never_gives(
    ward: Ward, tmp_path: Path, head: str, body_bytes: int, kind: FetchErrorKind
) -> None:
    unit = FakeUnit(ward, f"HTTP/1.1 {head}\r\n\r\n".encode() + os.urandom(body_bytes))
    dest = tmp_path / "spool.age"
    try:
        with pytest.raises(FetchError) as failed:
            receiver_client(ward, chunk_bytes=16 * 1024).fetch(
                clip_url(unit.port, "cart-01-20250301T093000Z-0001"),
                dest,
                device_id=UNIT,
                expected_size=100_000,
                expected_sha256="ab" * 32,
            )
    finally:
        unit.close()
    assert failed.value.kind is kind, failed.value
    retryable = kind in (FetchErrorKind.TRUNCATED, FetchErrorKind.SERVER_ERROR)
    assert failed.value.retryable is retryable
    assert dest.stat().st_size <= 100_000
    if kind is FetchErrorKind.TRUNCATED:
        assert dest.stat().st_size == 50_000  # kept, to resume from


def test_a_whole_file_instead_of_the_range_restarts_the_download(
    ward: Ward, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    sha256 = hashlib.sha256(data).hexdigest()
    head = f'HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\nETag: "{sha256}"\r\n\r\n'
    unit = FakeUnit(ward, head.encode() + data)
    dest = tmp_path / "spool.age"
    dest.write_bytes(b"stale bytes of an earlier attempt")
    try:
        result = receiver_client(ward).fetch(
            clip_url(unit.port, "cart-01-20250301T093000Z-0001"),
            dest,
            device_id=UNIT,
            expected_size=len(data),
            expected_sha256=sha256,
        )
    finally:
        unit.close()
    assert (result.resumed, result.transferred, result.sha256) == (False, len(data), sha256)
    assert dest.read_bytes() == data


def test_a_silent_unit_times_out_and_an_absent_one_is_unreachable(
    ward: Ward, tmp_path: Path
) -> None:
    silent = FakeUnit(ward, None)
    try:
        with pytest.raises(FetchError) as slow:
            receiver_client(ward, timeout_s=0.3).list_clips(
                f"https://{HOST}:{silent.port}", device_id=UNIT
            )
    finally:
        silent.close()
    assert slow.value.kind is FetchErrorKind.TIMEOUT and slow.value.retryable
    with socket.create_server((HOST, 0)) as closed:
        port = closed.getsockname()[1]
    with pytest.raises(FetchError) as absent:
        receiver_client(ward).fetch_signature(clip_url(port, "c") + ".minisig", device_id=UNIT)
    assert absent.value.kind is FetchErrorKind.UNREACHABLE and absent.value.retryable
    assert "connection refused" in str(absent.value)


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    backoff = Backoff(base_s=1.0, cap_s=30.0, rng=random.Random(7))
    assert [backoff.ceiling_s(n) for n in (0, 1, 2, 4, 5, 10_000)] == [1, 2, 4, 16, 30, 30]
    delays = [backoff.next_s() for _ in range(200)]
    assert backoff.attempts == 200
    assert all(0 <= d <= backoff.ceiling_s(n) for n, d in enumerate(delays))
    assert max(delays[10:]) > 15 and min(delays[10:]) < 5  # spread over the whole range
    backoff.reset()
    assert backoff.attempts == 0 and backoff.next_s() <= 1.0
    with pytest.raises(ValueError):
        Backoff(base_s=10, cap_s=1)
