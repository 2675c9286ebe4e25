"""The bedside daemon as a process, end to end: press → clip on the hospital side → receipt."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

from protocol.messages import ArmCommand
from protocol.signing import Signature, verify_clip
from protocol.topics import Kind, topic
from tests.support.mosquitto import Broker, receiver_identity
from tests.support.unit import Hospital, make_unit, probe_seconds

MEDIA_MAGIC = {
    b"\x1a\x45\xdf\xa3": "Matroska/WebM",
    b"ftyp": "MP4",
    b"RIFF": "WAV",
    b"\x00\x00\x00\x01\x67": "H.264 SPS",
    b"\x00\x00\x01\x67": "H.264 SPS",
}


def assert_no_plaintext_media(root: Path) -> None:
    """No file the daemon wrote holds a media signature: everything on disk is ciphertext."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_socket():
            data = path.read_bytes()
            for magic, what in MEDIA_MAGIC.items():
                assert magic not in data, f"{path} holds {what} data in the clear"


def test_a_press_becomes_a_verified_clip_and_a_receipt_deletes_it(
    broker_site, broker: Broker, make_client, tmp_path: Path
) -> None:
    site = broker_site
    unit = make_unit(site, broker, tmp_path / "unit").start()
    hospital = Hospital(site, make_client(receiver_identity(site)))
    hospital.subscribe_all()
    try:
        unit.press()
        time.sleep(2.0)
        unit.press()
        announcement = hospital.wait_clip()
        manifest = announcement.manifest
        assert manifest.device_id == "cart-01" and manifest.participant is None
        assert manifest.stop_reason == "button"
        assert 1.8 < manifest.duration_s < 2.6
        assert manifest.video.frames > 20 and manifest.audio.sample_rate_hz == 48_000

        ciphertext = hospital.fetch(announcement.url)
        signature = Signature.from_text(hospital.fetch(announcement.url + ".minisig"))
        assert signature.to_text() == announcement.signature
        key = site.registry().active_key("cart-01")
        assert key is not None
        verify_clip(
            key, signature, io.BytesIO(ciphertext), clip_id=manifest.clip_id, device_id="cart-01"
        )
        assert hashlib.sha256(ciphertext).hexdigest() == manifest.sha256
        assert len(ciphertext) == manifest.size_bytes

        clip_file = tmp_path / "fetched.age"
        clip_file.write_bytes(ciphertext)
        media = tmp_path / "clip.mkv"
        hospital.decrypt(clip_file, media)  # the reference age command, with the data key
        ends = probe_seconds(media)
        assert abs(ends["video"] - manifest.duration_s) < 0.2
        assert abs(ends["audio"] - manifest.duration_s) < 0.2

        status = unit.status()
        assert status["queue"] == [manifest.clip_id]
        assert status["press_to_first_frame_ms"] < 150
        assert status["stop_to_announced_ms"] < 500
        assert_no_plaintext_media(unit.work)

        hospital.send_receipt("cart-01", manifest.clip_id, manifest.sha256)
        deadline = time.monotonic() + 10
        while unit.status()["queue"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert unit.status()["queue"] == []
        assert not list((unit.work / "outbox").rglob("*.age"))
        assert hospital.wait_event("deleted").clip_id == manifest.clip_id
    finally:
        assert unit.stop() == 0, unit.log()


def test_arming_tags_clips_and_bad_commands_are_refused(
    broker_site, broker: Broker, make_client, tmp_path: Path
) -> None:
    site = broker_site
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=1.0).start()
    hospital = Hospital(site, make_client(receiver_identity(site)))
    hospital.subscribe_all()
    arm_topic = topic(site.name, "cart-01", Kind.ARM)
    try:
        for junk in (
            b"not json",
            b'{"schema": "painav.cmd-arm/9"}',
            b"\xff\xfe",
            b'{"schema":"painav.cmd-arm/1","participant":"John Smith",'
            b'"issued_at":"2026-11-27T10:00:00Z"}',
            b"[" * 10_000,  # over the arm limit, under the broker's packet limit
        ):
            hospital.client.publish(arm_topic, junk, retain=True)
            event = hospital.wait_event("refused")
            assert event.reason == "bad_message" and "John" not in event.detail
        from datetime import UTC, datetime, timedelta

        now = datetime.now(UTC)
        command = ArmCommand.signed(
            participant="PAIN-0042",
            visit="v1",
            issued_at=now,
            expires_at=now + timedelta(hours=1),
            site_id=site.name,
            device_id="cart-01",
            signer=hospital.signer.certificate,
            sign=hospital.signer.sign,
        )
        hospital.client.publish(arm_topic, command.to_payload(), retain=True)
        hospital.wait_event("armed")
        assert unit.status()["participant"] == "PAIN-0042"
        unit.press()  # stops itself at the 1 s limit
        announcement = hospital.wait_clip()
        assert announcement.manifest.participant == "PAIN-0042"
        assert announcement.manifest.visit == "v1"
        assert announcement.manifest.stop_reason == "limit"
    finally:
        hospital.client.publish(arm_topic, b"", retain=True)
        assert unit.stop() == 0, unit.log()


def test_long_press_discards_and_a_low_disk_refuses(
    broker_site, broker: Broker, make_client, tmp_path: Path
) -> None:
    site = broker_site
    unit = make_unit(site, broker, tmp_path / "unit").start()
    hospital = Hospital(site, make_client(receiver_identity(site)))
    hospital.subscribe_all()
    try:
        unit.press()
        clip_id = unit.wait_state("recording")["clip_id"]
        time.sleep(0.5)
        unit.press(long=True)
        event = hospital.wait_event("discarded")
        assert event.clip_id == clip_id
        assert unit.wait_state("idle")["queue"] == []
        assert not list((unit.work / "outbox").rglob(f"{clip_id}*"))
    finally:
        assert unit.stop() == 0, unit.log()
    # The same unit with a free-space floor above what the disk has: the press is refused.
    unit = make_unit(site, broker, tmp_path / "unit2", min_free_bytes=1 << 60).start()
    try:
        unit.press()
        event = hospital.wait_event("refused")
        assert event.reason == "low_storage"
        assert unit.status()["state"] == "idle"
    finally:
        assert unit.stop() == 0, unit.log()
