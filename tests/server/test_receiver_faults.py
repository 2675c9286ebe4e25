"""Faults at the hospital receiver, with a real broker, real units and the real receiver: it is
killed mid-download, the broker goes away, announcements come twice and out of order, clips are
tampered with on the unit, hostile payloads arrive. Every clip ends stored exactly once with its
announced hash, or quarantined with a reason and left on the unit; nothing false is recorded.

Loopback moves a clip in milliseconds, too fast to interrupt, so where a download must be in
flight the unit advertises ``127.0.0.2`` (still loopback) and a :class:`ThrottledProxy` there
relays its clip server at a few hundred KB/s, as a ward's Wi-Fi might.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from daemon.clipserver import ClipServer
from daemon.outbox import Outbox
from protocol.messages import ClipAnnouncement, Status
from protocol.minisign import SigningKey
from protocol.signing import sign_clip
from protocol.topics import Kind, topic
from provisioning.broker import sync_revocation
from provisioning.receivers import add_receiver
from provisioning.site import Site
from server.audit import verify
from server.catalog import Catalog, ClipState
from server.catalog.records import ClipRecord
from tests.server.test_mqtt import HOSTILE
from tests.support.mosquitto import HOST, UNITS, Broker, Client, unit_identity
from tests.support.unit import (
    Receiver,
    Unit,
    announcement_of,
    clip_server_port,
    edit_config,
    make_h264,
    make_unit,
    receiver_process,
    seal_synthetic_clip,
    start_receiver,
    use_replay_camera,
)

T = TypeVar("T")
MakeClient = Callable[..., Client]

SLOW_HOST = "127.0.0.2"
"""Where a unit behind a :class:`ThrottledProxy` says it is: loopback, but not its own address."""
KILLS = 10
CHUNK = 64 * 1024 + 16
"""An age payload chunk on disk: 64 KiB of plaintext and its 16-byte tag."""


def wait_for(predicate: Callable[[], T | None], what: str, timeout_s: float = 30.0) -> T:
    """The first truthy value of *predicate*; fail after *timeout_s*."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class ThrottledProxy:
    """A TCP relay from *listen* to a unit's clip server passing the unit's bytes at *rate*
    bytes per second per connection (TLS stays end to end: the receiver still checks the unit's
    certificate). With :attr:`refuse` set, connections are closed at once, as an unreachable
    unit's would be. :attr:`relayed` counts the unit's bytes passed on."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], rate: float) -> None:
        self.upstream, self.rate, self.refuse = upstream, rate, False
        self.relayed = 0
        self.listener = socket.create_server(listen)
        self.listener.settimeout(0.1)  # so the accept loop sees close()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, name="proxy", daemon=True)
        self._accept.start()

    def __enter__(self) -> ThrottledProxy:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.refuse:
                conn.close()
                continue
            thread = threading.Thread(target=self._relay, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _relay(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError), socket.create_connection(self.upstream) as unit:
            up = threading.Thread(target=self._pump, args=(conn, unit), daemon=True)
            up.start()
            while not self._closing.is_set() and (data := unit.recv(16 * 1024)):
                conn.sendall(data)
                self.relayed += len(data)
                # Per piece, at the rate of the moment: a test may slow a download down or
                # speed it up while it runs.
                time.sleep(len(data) / self.rate)
            for sock in (conn, unit):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            up.join(10)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
            # Pass the receiver's close on: the clip server keeps an idle connection for its
            # next request (30 s) and serves only a few at once.
            sink.shutdown(socket.SHUT_WR)

    def flowing(self, window_s: float = 0.1) -> bool:
        """Whether the unit's bytes are passing through now (over *window_s*)."""
        before = self.relayed
        time.sleep(window_s)
        return self.relayed > before

    def close(self) -> None:
        self._closing.set()
        self._accept.join(10)
        self.listener.close()
        for thread in self._threads:
            thread.join(10)


def slow_unit(
    site: Site, broker: Broker, work: Path, video: Path, *, max_seconds: float
) -> tuple[Unit, int]:
    """A not yet started unit replaying *video*, advertising :data:`SLOW_HOST`; and its clip
    server's port, for the proxy."""
    unit = make_unit(
        site, broker, work, max_seconds=max_seconds, width=640, height=360, frame_rate_hz=30.0
    )
    use_replay_camera(unit, video)
    edit_config(unit, f'advertise_host = "{HOST}"', f'advertise_host = "{SLOW_HOST}"')
    return unit, clip_server_port(unit)


def record(unit: Unit) -> str:
    """Press, let the recorder's time limit stop it, and return the clip id once sealed."""
    unit.press()
    clip_id: str = unit.wait_state("recording")["clip_id"]
    wait_for(lambda: clip_id in unit.status()["queue"], f"{clip_id} to be sealed")
    unit.wait_state("idle")
    return clip_id


def downloading(spool: Path, proxy: ThrottledProxy) -> bool:
    """Whether a clip is being downloaded now: a partial file in *spool* and bytes flowing.

    The partial file alone does not show it: the receiver writes it a MiB at a time.
    """
    return any(spool.glob("*.part")) and proxy.flowing()


def stored_files(store: Path) -> dict[str, str]:
    """Every clip file in a store folder: its name's hash → the SHA-256 of its bytes."""
    return {
        path.name.removesuffix(".age"): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in store.rglob("*.age")
    }


def unit_clip_server(site: Site, unit_id: str, outbox: Outbox) -> ClipServer:
    """The clip server of unit *unit_id* over *outbox*, with the unit's certificate, started:
    a unit whose MQTT side the test plays itself."""
    bundle = site.paths.devices_dir / unit_id
    server = ClipServer(
        outbox,
        host=HOST,
        port=0,
        cert_file=bundle / "certs" / "tls.crt",
        key_file=bundle / "keys" / "tls.key",
        ca_file=bundle / "certs" / "ca-chain.pem",
        receiver_id=site.receiver_id,
    )
    server.start()
    return server


def kick(make_client: MakeClient, site: Site, unit_id: str, *publish: ClipAnnouncement) -> None:
    """Log in with the unit's certificate, publish *publish*, leave.

    The broker makes a certificate's CN the client id, so this takes the running daemon's
    session over; it reconnects within a second or two and, as after any reconnect, announces
    every clip it still holds again.
    """
    client = make_client(unit_identity(site, unit_id)).connect()
    for announcement in publish:
        rc = client.publish(topic(site.name, unit_id, Kind.CLIPS), announcement.to_payload())
        assert not rc.is_failure, rc
    client.close()


# --- 1. SIGKILL mid-download ----------------------------------------------------------------


def test_receiver_killed_mid_download_ten_times_stores_each_clip_once(
    broker_site: Site, broker: Broker, tmp_path: Path
) -> None:
    site = broker_site
    video = make_h264(tmp_path / "camera.h264")
    # 0.5 s of the replayed stream seals ~2.3 MB; at 600 KB/s a fresh download takes ~4 s,
    # under the 5 s lease (the shortest allowed), so no lease lapses under a live worker.
    unit, port = slow_unit(site, broker, tmp_path / "unit", video, max_seconds=0.5)
    # A restarted receiver takes back the leases its killed run held, at once; lease_s=5 only
    # bounds the wait if that ever failed. Two workers, so a kill may cut two downloads. One
    # may also land between a clip's "stored" and its receipt's acknowledgement:
    # reconciliation sends that receipt again
    # (test_a_receipt_lost_in_a_broker_restart_is_sent_again), every 5 s here.
    receiver = receiver_process(
        site, broker, tmp_path / "receiver", lease_s=5, concurrency=2, reconcile_interval_s=5
    )
    spool = receiver.work / "spool"
    rng = random.Random(20261127)
    pressed: list[str] = []
    killed_at: list[dict[str, int]] = []
    with ThrottledProxy((SLOW_HOST, port), (HOST, port), rate=600_000) as proxy:
        unit.start()
        receiver.start()
        try:
            deadline = time.monotonic() + 150
            while len(killed_at) < KILLS:
                assert time.monotonic() < deadline, f"only {len(killed_at)} kills in time"
                if len(unit.status()["queue"]) < 3:  # keep downloads coming
                    pressed.append(record(unit))
                if not downloading(spool, proxy):
                    continue
                # Anywhere in the ~4 s download (the partial file gets a MiB at a time, so a
                # late kill leaves something to resume from)...
                time.sleep(rng.uniform(0.0, 3.5))
                if not downloading(spool, proxy):  # ...but not after it: it may have just ended
                    continue
                killed_at.append({p.name: p.stat().st_size for p in spool.glob("*.part")})
                receiver.kill()
                receiver.start()
            wait_for(lambda: unit.status()["queue"] == [], "the unit's outbox to empty", 60)
        finally:
            assert receiver.stop() == 0, receiver.log()[-4000:]
            assert unit.stop() == 0, unit.log()

    url = f"sqlite:///{receiver.work / 'catalog.db'}"
    with Catalog(url) as catalog:
        clips = catalog.clips()
    assert sorted(c.clip_id for c in clips) == sorted(pressed)  # each once: the primary key
    assert {c.state for c in clips} == {ClipState.RECEIPTED}, [(c.clip_id, c.state) for c in clips]
    assert all(c.store_key == c.sha256 for c in clips)
    # One file per clip, named by its hash, holding bytes with that hash.
    stored = stored_files(receiver.work / "store")
    assert stored == {c.sha256: c.sha256 for c in clips}
    assert not list(spool.glob("*.part")), "a partial download outlived its clip"
    report = verify(url)
    assert report.ok, report
    log = receiver.log()
    assert len(killed_at) == KILLS and log.count("--- start") == KILLS + 1
    # Resumed with a byte range after a kill: fewer bytes transferred than the clip has.
    resumed = [
        (int(size), int(moved))
        for size, moved in re.findall(r"\((\d+) bytes, (\d+) transferred, resumed\)", log)
    ]
    assert resumed and all(moved < size for size, moved in resumed), log[-4000:]
    assert any(c.attempts > 0 for c in clips)  # the cut fetches were counted
    # Taken back at start-up, not left to lapse: most kills cut a download under a lease.
    assert log.count("took back") >= KILLS // 2, log[-4000:]
    print(f"{len(pressed)} clips, {KILLS} kills, {resumed} resumed; at each kill: {killed_at}")


# --- 2. the broker restarts -------------------------------------------------------------------


def run_in_process(config: Path) -> Receiver:
    """The receiver service of *config* in a thread of this process, once connected."""
    from server.config import load_config
    from server.service import ReceiverService

    service = ReceiverService(load_config(config))
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), name="receiver", daemon=True)
    thread.start()
    wait_for(lambda: service.link.connected, "the receiver to connect", 15)
    return Receiver(service, stop, thread)


def test_broker_restart_mid_download_every_clip_ends_receipted(
    broker_site: Site, broker: Broker, tmp_path: Path
) -> None:
    site = broker_site
    video = make_h264(tmp_path / "camera.h264")
    unit, port = slow_unit(site, broker, tmp_path / "unit", video, max_seconds=0.5)
    # Mosquitto (2.0.11) does not restore shared subscriptions from its persistence file, so
    # an announcement the unit makes after the restart but before the receiver has subscribed
    # again is acknowledged to the unit and delivered to no one; the listing of the units'
    # outboxes that follows every reconnect finds that clip. The periodic pass is set an hour
    # away so that it cannot be what finds it.
    config = receiver_process(site, broker, tmp_path / "receiver", reconcile_interval_s=3600).config
    receiver = run_in_process(config)
    spool = tmp_path / "receiver" / "spool"
    pressed: list[str] = []
    with ThrottledProxy((SLOW_HOST, port), (HOST, port), rate=300_000) as proxy:
        unit.start()
        try:
            pressed.append(record(unit))
            wait_for(lambda: downloading(spool, proxy), "the first download")
            # The broker goes in the middle of the download; the download stalls until the
            # receiver is back (so its receipt is sent on the new connection).
            proxy.rate = 20_000
            broker.stop()
            pressed.append(record(unit))  # recorded while the hospital cannot be told
            assert unit.status()["connected"] is False
            broker.start()
            wait_for(lambda: receiver.service.link.connected, "the receiver to reconnect")
            proxy.rate = 2_000_000
            wait_for(lambda: unit.status()["queue"] == [], "the unit's outbox to empty", 45)
            catalog = receiver.service.catalog
            clips = catalog.clips()
            assert sorted(c.clip_id for c in clips) == sorted(pressed)
            # The clip is marked receipted once the broker acknowledges the receipt, which may
            # come just after the unit has acted on it.
            wait_for(
                lambda: all(c.state is ClipState.RECEIPTED for c in catalog.clips()),
                "every clip receipted",
            )
            stored = stored_files(tmp_path / "receiver" / "store")
            assert stored == {c.sha256: c.sha256 for c in clips}
        finally:
            assert unit.stop() == 0, unit.log()
            receiver.stop()
    assert verify(f"sqlite:///{tmp_path / 'receiver' / 'catalog.db'}").ok


def test_a_receipt_lost_in_a_broker_restart_is_sent_again(
    broker_site: Site, broker: Broker, tmp_path: Path
) -> None:
    site = broker_site
    video = make_h264(tmp_path / "camera.h264")
    unit, port = slow_unit(site, broker, tmp_path / "unit", video, max_seconds=0.5)
    # The periodic pass an hour away: the pass after the reconnect must be what sends it.
    receiver = receiver_process(site, broker, tmp_path / "receiver", reconcile_interval_s=3600)
    spool = receiver.work / "spool"
    with ThrottledProxy((SLOW_HOST, port), (HOST, port), rate=300_000) as proxy:
        unit.start()
        receiver.start()
        assert receiver.process is not None
        try:
            clip_id = record(unit)
            wait_for(lambda: downloading(spool, proxy), "the download")
            # The broker goes mid-download and the clip is stored while it is away: its
            # receipt cannot be sent.
            broker.stop()
            proxy.rate = 2_000_000
            wait_for(lambda: "not acknowledged" in receiver.log(), "the receipt to fail")
            # The unit reconnects first (with the default back-offs, up to 30 s on both sides,
            # either may) and announces the clip again, into the shared subscription Mosquitto
            # lost in the restart: the receiver never gets that announcement.
            receiver.process.send_signal(signal.SIGSTOP)
            announced = unit.log().count(f"announced {clip_id}")
            broker.start()
            wait_for(lambda: unit.log().count(f"announced {clip_id}") > announced, "a replay")
            receiver.process.send_signal(signal.SIGCONT)
            # The pass after the receiver reconnects (its back-off may have reached 30 s)
            # finds the stored clip still on the unit and sends its receipt again.
            wait_for(lambda: unit.status()["queue"] == [], "the unit's outbox to empty", 60)
            assert "1 receipts to send again" in receiver.log()
        finally:
            assert unit.stop() == 0, unit.log()
            assert receiver.stop() == 0, receiver.log()[-4000:]


# --- 3. duplicate and out-of-order announcements -------------------------------------------------


def test_duplicate_and_out_of_order_announcements_store_each_clip_once(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    site = broker_site
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=0.5).start()
    try:
        pressed = [record(unit) for _ in range(3)]  # announced to nobody: no receiver yet
    finally:
        assert unit.stop() == 0, unit.log()
    # The unit's own outbox and clip server, in this process, with the unit's certificate:
    # its MQTT side is ours, so the order and repetition of announcements are the test's.
    receiver = start_receiver(site, broker, tmp_path / "receiver")
    with Outbox(unit.work / "outbox", quota_bytes=1 << 30, min_free_bytes=0) as outbox:
        server = unit_clip_server(site, "cart-01", outbox)
        try:
            entries = {e.clip_id: e for e in outbox.pending()}
            assert sorted(entries) == sorted(pressed)

            def announced(clip_id: str) -> ClipAnnouncement:
                return announcement_of(entries[clip_id], HOST, server.port)

            first, second, third = pressed
            # Newest first, each repeated back to back (so the repeat lands mid-fetch), and the
            # oldest once more at the end, after it may already be stored.
            order = [third, third, second, first, first, second, first]
            kick(make_client, site, "cart-01", *(announced(c) for c in order))
            catalog = receiver.service.catalog
            wait_for(
                lambda: (
                    all(c.state is ClipState.RECEIPTED for c in catalog.clips())
                    and len(catalog.clips()) == 3
                ),
                "three receipted clips",
            )
        finally:
            server.stop()
    try:
        clips = receiver.service.catalog.clips()
        assert {c.clip_id: c.announce_count for c in clips} == {first: 3, second: 2, third: 2}
        stored = stored_files(tmp_path / "receiver" / "store")
        assert stored == {c.sha256: c.sha256 for c in clips}
        # The unit back: it announces all three again, gets their receipts again, deletes them.
        unit.start()
        wait_for(lambda: unit.status()["queue"] == [], "the unit's outbox to empty")
        assert len(stored_files(tmp_path / "receiver" / "store")) == 3
        assert verify(f"sqlite:///{tmp_path / 'receiver' / 'catalog.db'}").ok
    finally:
        assert unit.stop() == 0, unit.log()
        receiver.stop()


def test_two_receivers_split_the_clips_and_store_each_once(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path, postgres_url: str
) -> None:
    """The deployment the shared subscription is for: two receivers, each with its own
    certificate, one PostgreSQL catalog, one store."""
    site = broker_site
    second = add_receiver(site, "2")
    sync_revocation(site, broker.out)  # the broker's ACL gains the second receiver
    broker.reload()
    store = tmp_path / "store"
    # One unit's clips, fetched by both: the per-unit limit (one fetch at a time across the
    # catalog, tested in test_hostile_pull) is raised, or one receiver may well take them all.
    receivers = [
        start_receiver(
            site,
            broker,
            tmp_path / rid,
            postgres_url,
            receiver_id=rid,
            store_dir=store,
            per_unit_concurrency=8,
        )
        for rid in (site.receiver_id, second)
    ]
    with Outbox(tmp_path / "outbox", quota_bytes=1 << 30, min_free_bytes=0) as outbox:
        entries = [
            seal_synthetic_clip(
                outbox, site, "cart-01", f"cart-01-20250301T093000Z-{n:04x}", 300_000
            )
            for n in range(8)
        ]
        # The unit knows the first receiver's id only; the second is served by its name.
        server = unit_clip_server(site, "cart-01", outbox)
        # Slowed, so that no one receiver can drain the queue before the other starts.
        try:
            with ThrottledProxy((SLOW_HOST, server.port), (HOST, server.port), 2_000_000):
                announcements = [announcement_of(e, SLOW_HOST, server.port) for e in entries]
                kick(make_client, site, "cart-01", *announcements)
                catalog = receivers[0].service.catalog
                wait_for(
                    lambda: (
                        len(catalog.clips()) == 8
                        and all(c.state is ClipState.RECEIPTED for c in catalog.clips())
                    ),
                    "eight receipted clips",
                    60,
                )
        finally:
            server.stop()
            for receiver in receivers:
                receiver.stop()
    with Catalog(postgres_url) as catalog:
        clips = catalog.clips()
        fetched_by = {
            entry.actor.split("@")[0]
            for clip in clips
            for entry in catalog.audit.entries(clip_id=clip.clip_id)
            if entry.action == "stored"
        }
    assert sorted(c.clip_id for c in clips) == [e.clip_id for e in entries]
    assert stored_files(store) == {e.sha256: e.sha256 for e in entries}  # each once, intact
    assert fetched_by == {site.receiver_id, second}, fetched_by  # the work was shared
    assert verify(postgres_url).ok


# --- 4. tampered clips ----------------------------------------------------------------------


def payload_start(clip: bytes) -> int:
    """Where an age file's first payload chunk starts: after the header and the 16-byte nonce."""
    return clip.index(b"\n---") + clip[clip.index(b"\n---") + 1 :].index(b"\n") + 2 + 16


def flip_bit(path: Path, _site: Site, _clip_id: str) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def cut_at_chunk(path: Path, _site: Site, _clip_id: str) -> None:
    data = path.read_bytes()
    cut = payload_start(data) + 2 * CHUNK  # exactly two whole chunks left
    assert cut < len(data) - CHUNK, "clip too short to cut at a chunk boundary"
    path.write_bytes(data[:cut])


def cut_off_chunk(path: Path, _site: Site, _clip_id: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: payload_start(data) + 2 * CHUNK + 1000])


def sign_as_other_unit(path: Path, site: Site, clip_id: str) -> None:
    key = SigningKey.from_file(site.paths.devices_dir / "cart-02" / "keys" / "signing.key")
    # The comment names cart-01 and this very clip and hash: only the key is wrong.
    signature, _ = sign_clip(key, path, clip_id, "cart-01")
    path.with_suffix(".age.minisig").write_text(signature.to_text())


TAMPER: dict[str, tuple[Callable[[Path, Site, str], None], str]] = {
    # What is done to the sealed clip on the unit, and the reason the receiver quarantines for.
    "flipped bit": (flip_bit, "bad_signature"),
    # The unit serves the shorter file (its real size) under the announced hash; the receiver
    # refuses it on the headers, before verifying anything.
    "cut at a chunk boundary": (cut_at_chunk, "fetch_mismatch"),
    "cut off a chunk boundary": (cut_off_chunk, "fetch_mismatch"),
    "signed by another unit": (sign_as_other_unit, "bad_signature"),
}


def test_tampered_clips_are_quarantined_never_receipted_never_stored(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    site = broker_site
    video = make_h264(tmp_path / "camera.h264")
    unit = make_unit(
        site, broker, tmp_path / "unit", max_seconds=0.3, width=640, height=360, frame_rate_hz=30
    )
    use_replay_camera(unit, video)
    unit.start()
    receiver: Receiver | None = None
    try:
        # Recorded with no receiver listening, then altered while the unit runs: at a restart
        # the unit's own recovery would notice a cut file (it aborts the clip) or a replaced
        # signature (it rewrites it from its database) and the receiver would never see them.
        clips = {kind: record(unit) for kind in [*TAMPER, "untouched"]}
        for kind, (tamper, _) in TAMPER.items():
            tamper(unit.work / "outbox" / "clips" / f"{clips[kind]}.age", site, clips[kind])
        receiver = start_receiver(site, broker, tmp_path / "receiver")
        kick(make_client, site, "cart-01")  # the unit reconnects and announces them all
        catalog = receiver.service.catalog
        wait_for(
            lambda: (
                {c.state for c in catalog.clips()} == {ClipState.QUARANTINED, ClipState.RECEIPTED}
                and len(catalog.clips()) == len(clips)
            ),
            "every clip settled",
        )
        # Receipts do flow: the untouched clip leaves the unit; the others stay.
        control = clips.pop("untouched")
        wait_for(lambda: control not in unit.status()["queue"], "the untouched clip's deletion")
        got = {kind: catalog.clip(clip_id) for kind, clip_id in clips.items()}
        reasons = {kind: clip.quarantine_reason for kind, clip in got.items()}
        assert reasons == {kind: reason for kind, (_, reason) in TAMPER.items()}
        assert all(
            c.state is ClipState.QUARANTINED and c.receipted_at is None for c in got.values()
        )
        assert sorted(unit.status()["queue"]) == sorted(clips.values())
        assert list(stored_files(tmp_path / "receiver" / "store")) == [catalog.clip(control).sha256]
        assert not list((tmp_path / "receiver" / "spool").iterdir())  # nothing kept of them
        # The ingest service holds no data key: nothing was decrypted, and the log says so.
        entries = catalog.audit.entries()
        assert not [e for e in entries if "decrypt" in e.action]
        quarantined = {e.clip_id: e.detail["reason"] for e in entries if e.action == "quarantine"}
        assert quarantined == {c.clip_id: c.quarantine_reason for c in got.values()}
        assert catalog.audit.verify().ok
    finally:
        assert unit.stop() == 0, unit.log()
        if receiver is not None:
            receiver.stop()


def other_hash(site: Site, clip: ClipAnnouncement, work: Path) -> ClipAnnouncement:
    """*clip* announced again by its unit with another file's hash and size, signed by the unit
    itself over that other file: consistent in itself, it differs from the first only in what
    the clip is."""
    other = work / "other.age"
    other.write_bytes(os.urandom(clip.manifest.size_bytes + 1))
    key = SigningKey.from_file(site.paths.devices_dir / "cart-01" / "keys" / "signing.key")
    signature, binding = sign_clip(key, other, clip.manifest.clip_id, "cart-01")
    manifest = clip.manifest.model_copy(
        update={"sha256": binding.sha256, "size_bytes": other.stat().st_size}
    )
    return clip.model_copy(update={"manifest": manifest, "signature": signature.to_text()})


def test_a_clip_reannounced_with_another_hash_is_quarantined(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    site = broker_site
    video = make_h264(tmp_path / "camera.h264")
    unit, port = slow_unit(site, broker, tmp_path / "unit", video, max_seconds=0.5)
    receiver = start_receiver(site, broker, tmp_path / "receiver")
    catalog = receiver.service.catalog
    with ThrottledProxy((SLOW_HOST, port), (HOST, port), rate=1e6) as proxy:
        unit.start()
        try:
            # Re-announced while it waits for a retry: the unit cannot be reached.
            proxy.refuse = True
            clip_id = record(unit)
            first = wait_for(lambda: failed_once(catalog, clip_id), "a failed fetch")
            reannounce_with_other_hash(make_client, site, first, tmp_path)
            assert quarantined(catalog, clip_id).sha256 == first.sha256  # the first is kept
            # The unit can be reached again, and announces the clip again (the genuine one)
            # when it reconnects after the kick: quarantine is final all the same.
            proxy.refuse = False
            time.sleep(3.0)
            assert catalog.clip(clip_id).state is ClipState.QUARANTINED
            assert catalog.clip(clip_id).announce_count >= 3
            assert unit.status()["queue"] == [clip_id]
            assert stored_files(tmp_path / "receiver" / "store") == {}
            assert catalog.clip(clip_id).receipted_at is None
            assert catalog.audit.verify().ok
        finally:
            assert unit.stop() == 0, unit.log()
            receiver.stop()


def test_a_clip_reannounced_with_another_hash_mid_download_is_not_stored(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    site = broker_site
    video = make_h264(tmp_path / "camera.h264")
    unit, port = slow_unit(site, broker, tmp_path / "unit", video, max_seconds=0.5)
    receiver = start_receiver(site, broker, tmp_path / "receiver")
    catalog = receiver.service.catalog
    spool = tmp_path / "receiver" / "spool"
    with ThrottledProxy((SLOW_HOST, port), (HOST, port), rate=500_000) as proxy:
        unit.start()
        try:
            clip_id = record(unit)
            wait_for(lambda: downloading(spool, proxy), "the download")
            clip = catalog.clip(clip_id)
            assert clip.state is ClipState.FETCHING
            reannounce_with_other_hash(make_client, site, clip, tmp_path)
            assert quarantined(catalog, clip_id).sha256 == clip.sha256
            # The download goes on to its end (or is abandoned): then nothing of it is kept.
            wait_for(lambda: not proxy.flowing(0.5), "the download to end")
            time.sleep(0.5)  # verify and store, had they gone on
            assert catalog.clip(clip_id).state is ClipState.QUARANTINED
            assert unit.status()["queue"] == [clip_id]
            assert stored_files(tmp_path / "receiver" / "store") == {}
            assert not list(spool.glob("*.part"))
        finally:
            assert unit.stop() == 0, unit.log()
            receiver.stop()


def failed_once(catalog: Catalog, clip_id: str) -> ClipRecord | None:
    """The clip once a fetch of it has failed and it waits for a retry."""
    found = [c for c in catalog.clips() if c.clip_id == clip_id]
    ok = found and found[0].attempts > 0 and found[0].state is ClipState.ANNOUNCED
    return found[0] if ok else None


def reannounce_with_other_hash(
    make_client: MakeClient, site: Site, clip: ClipRecord, work: Path
) -> None:
    genuine = ClipAnnouncement(manifest=clip.manifest, signature=clip.signature, url=clip.url)
    kick(make_client, site, clip.device_id, other_hash(site, genuine, work))


def quarantined(catalog: Catalog, clip_id: str) -> ClipRecord:
    """The clip once quarantined for a re-announcement with another hash."""

    def settled() -> ClipRecord | None:
        clip = catalog.clip(clip_id)
        return clip if clip.state is ClipState.QUARANTINED else None

    clip = wait_for(settled, f"{clip_id} quarantined")
    assert clip.quarantine_reason == "reannounced_with_different_hash"
    return clip


# --- 5. hostile payloads ----------------------------------------------------------------------

HOSTILE_COUNT = 340


def test_hostile_payloads_leave_the_receiver_running_and_record_nothing(
    broker_site: Site, broker: Broker, make_client: MakeClient, tmp_path: Path
) -> None:
    # The link-level flood (tests/server/test_mqtt.py) sends 5,000; here a few hundred of the
    # same kinds go through the whole receiver, to see that none reaches the catalog.
    site = broker_site
    receiver = start_receiver(site, broker, tmp_path / "receiver")
    clients = {u: make_client(unit_identity(site, u)).connect() for u in UNITS}
    rng = random.Random(20261127)
    try:
        for n in range(HOSTILE_COUNT):
            make, _ = HOSTILE[n % len(HOSTILE)]
            unit_id, other = UNITS[n % len(UNITS)], UNITS[(n + 1) % len(UNITS)]
            kind, payload = make(unit_id, other, rng)
            rc = clients[unit_id].publish(topic(site.name, unit_id, kind), payload)
            assert not rc.is_failure, rc
        link = receiver.service.link
        wait_for(lambda: link.bad_messages == HOSTILE_COUNT, "every payload refused")
        catalog = receiver.service.catalog
        assert catalog.clips() == [] and catalog.units() == [] and catalog.events() == []
        assert catalog.audit.entries() == []
        # Still running: a valid status after the flood is recorded.
        online = Status(
            state="online",
            since=datetime.now(UTC).replace(microsecond=0),
            software_version="0.1.0",
            armed=False,
        )
        clients["cart-02"].publish(topic(site.name, "cart-02", Kind.STATUS), online.to_payload())
        wait_for(lambda: [u.device_id for u in catalog.units()] == ["cart-02"], "the valid status")
        assert receiver.thread.is_alive() and link.connected
    finally:
        receiver.stop()
