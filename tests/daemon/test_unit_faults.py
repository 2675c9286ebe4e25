"""Faults on the bedside unit, with a real broker and real processes: every press ends in a
delivered clip or a reported failure."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.mosquitto import Broker, receiver_identity
from tests.support.unit import Hospital, Unit, make_unit

KILL_RUNS = 20


def collect(hospital: Hospital, seconds: float) -> tuple[dict[str, str], dict[str, str]]:
    """Clip announcements (clip id → sha256) and events with a clip (clip id → kind)."""
    from protocol.messages import ClipAnnouncement, Event

    clips: dict[str, str] = {}
    events: dict[str, str] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            message = hospital.client.messages.get(timeout=0.1)
        except Exception:
            continue
        if message.topic.endswith("/clips"):
            m = ClipAnnouncement.parse(message.payload).manifest
            clips[m.clip_id] = m.sha256
        elif message.topic.endswith("/events"):
            event = Event.parse(message.payload)
            if event.clip_id:
                events[event.clip_id] = event.kind
    return clips, events


def test_sigkill_during_recording_and_sealing_loses_no_press(
    broker_site, broker: Broker, make_client, tmp_path: Path
) -> None:
    site = broker_site
    unit = make_unit(site, broker, tmp_path / "unit")
    hospital = Hospital(site, make_client(receiver_identity(site)))
    hospital.subscribe_all()
    rng = random.Random(20261127)
    started: list[str] = []
    for run in range(KILL_RUNS):
        unit.start()
        unit.press()
        started.append(unit.wait_state("recording")["clip_id"])
        time.sleep(rng.uniform(0.1, 1.5))
        if run % 2:  # half the runs: stop first, and kill while sealing or just after
            unit.press()
            time.sleep(rng.uniform(0.0, 0.3))
        unit.kill()
    unit.start()  # the last restart recovers and replays what is left
    clips, events = collect(hospital, 8.0)
    try:
        for clip_id in started:
            delivered = clip_id in clips
            aborted = events.get(clip_id) == "aborted"
            assert delivered != aborted, f"{clip_id}: delivered={delivered} aborted={aborted}"
        # Every announced clip is whole: fetchable, its hash as announced.
        assert any(c in clips for c in started) and any(e == "aborted" for e in events.values())
        outbox = unit.work / "outbox"
        assert not list(outbox.rglob("*.part")), "a partial file survived recovery"
        status = unit.status()
        assert sorted(status["queue"]) == sorted(c for c in started if c in clips)
    finally:
        assert unit.stop() == 0, unit.log()


def test_broker_outage_delays_but_loses_nothing(
    broker_site, broker: Broker, make_client, tmp_path: Path
) -> None:
    site = broker_site
    unit = make_unit(site, broker, tmp_path / "unit").start()
    try:
        broker.stop()
        pressed = []
        for _ in range(2):  # recorded while the hospital cannot be told
            unit.press()
            pressed.append(unit.wait_state("recording")["clip_id"])
            time.sleep(0.8)
            unit.press()
            unit.wait_state("idle")
        assert unit.status()["connected"] is False
        time.sleep(1.0)
        broker.start()
        hospital = Hospital(site, make_client(receiver_identity(site)))
        hospital.subscribe_all()
        clips, _ = collect(hospital, 10.0)
        assert set(pressed) <= set(clips)
        assert unit.status()["connected"] is True
    finally:
        assert unit.stop() == 0, unit.log()


def test_forged_and_mismatched_receipts_delete_nothing(
    broker_site, broker: Broker, make_client, tmp_path: Path
) -> None:
    site = broker_site
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=1.0).start()
    hospital = Hospital(site, make_client(receiver_identity(site)))
    hospital.subscribe_all()
    try:
        unit.press()
        m = hospital.wait_clip().manifest
        forged = dataclasses.replace(hospital.signer, key=Ed25519PrivateKey.generate())
        hospital.send_receipt("cart-01", m.clip_id, m.sha256, signer=forged)
        assert "forged" in hospital.wait_event("refused").detail
        hospital.send_receipt("cart-01", m.clip_id, "0" * 64)
        assert "SHA-256" in hospital.wait_event("refused").detail
        hospital.send_receipt("cart-01", "cart-01-20990101T000000Z-beef", m.sha256)
        assert "cart-01-20990101T000000Z-beef" in hospital.wait_event("refused").detail
        assert unit.status()["queue"] == [m.clip_id]
        assert list((unit.work / "outbox").rglob(f"{m.clip_id}.age"))
        hospital.send_receipt("cart-01", m.clip_id, m.sha256)
        assert hospital.wait_event("deleted").clip_id == m.clip_id
    finally:
        assert unit.stop() == 0, unit.log()


def _tmpfs(path: Path, size: str) -> list[str]:
    """A small tmpfs at *path*: mounted here as root, else inside a user namespace."""
    path.mkdir(parents=True)
    if os.geteuid() == 0:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True
        )
        return []
    # As another user, the daemon runs in its own mount namespace with the tmpfs there.
    return [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        f'mount -t tmpfs -o size={size} tmpfs "{path}" && exec "$@"',
        "sh",
    ]


def test_disk_full_mid_recording_is_reported_and_leaves_no_partial(
    broker_site, broker: Broker, make_client, tmp_path: Path
) -> None:
    site = broker_site
    outbox = tmp_path / "small-disk"
    wrapper = _tmpfs(outbox, "2m")
    unit: Unit | None = None
    try:
        unit = make_unit(
            site,
            broker,
            tmp_path / "unit",
            outbox_dir=outbox,
            wrapper=wrapper,
            width=640,
            height=480,
            frame_rate_hz=30.0,
        ).start()
        hospital = Hospital(site, make_client(receiver_identity(site)))
        hospital.subscribe_all()
        unit.press()
        clip_id = unit.wait_state("recording")["clip_id"]
        event = hospital.wait_event("error", timeout_s=40)  # the disk fills within seconds
        assert event.clip_id == clip_id
        unit.wait_state("idle")
        assert unit.status()["queue"] == []
        assert not [p for p in outbox.rglob("*") if p.suffix in (".part", ".age")]
        # Removing the partial freed the disk: the unit recovers, and a short clip fits.
        unit.press()
        unit.wait_state("recording")
        time.sleep(0.3)
        unit.press()
        assert hospital.wait_clip().manifest.duration_s < 1.0
    finally:
        if unit is not None:
            assert unit.stop() == 0, unit.log()
        if not wrapper:
            subprocess.run(["umount", str(outbox)], check=False)
