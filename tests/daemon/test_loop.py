"""The unit's loop in-process: press, seal, announce, acknowledgement, receipt, refusal, crash
recovery. Time and the MQTT link are fakes; the camera and microphone are painav's simulated
backends (real H.264, a voice-like signal), the outbox, clip writer and keys are real."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest

from daemon.capture import Capturer
from daemon.crlstore import CrlStore
from daemon.event_journal import EventJournal
from daemon.events import (
    ArmReceived,
    Connected,
    CrlReceived,
    EventAcked,
    Pressed,
    ReceiptReceived,
    VerdictReceived,
)
from daemon.hardware.base import Pattern
from daemon.hardware.sim_camera import SimulatedCamera
from daemon.hardware.sim_controls import SimulatedLight
from daemon.hardware.sim_mic import SimulatedMicrophone
from daemon.loop import LoopSettings, UnitLoop
from daemon.outbox import Outbox
from daemon.recorder import Recorder, RecorderSettings
from protocol.hospital_signature import HospitalSigner, HospitalTrust
from protocol.message_codec import MessageModel
from protocol.messages import ArmCommand, ClipAnnouncement, Event, EventAck, QcVerdict, Status
from protocol.minisign import SigningKey
from protocol.signing import sign_receipt
from protocol.x25519 import X25519Identity
from tests.support.hospital_pki import MiniSite

# Now, give or take: the receivers' certificates the tests make are valid from an hour ago.
T0 = datetime.now(UTC).replace(second=0, microsecond=0)
DEVICE = "cart-01"


class FakeClock:
    """Time that moves only when the test says."""

    def __init__(self) -> None:
        self.mono = 1000.0

    def monotonic(self) -> float:
        return self.mono

    def monotonic_ns(self) -> int:
        return int(self.mono * 1e9)

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.mono - 1000.0)


@dataclass
class FakeHandle:
    acknowledged: bool = False
    failed: bool = False


@dataclass
class FakeLink:
    """The MQTT link as the loop sees it: what was published, acknowledged when told."""

    connected: bool = True
    local_address: str | None = "10.0.0.7"
    sent: list[tuple[MessageModel, FakeHandle]] = field(default_factory=list)

    def publish(self, message: MessageModel) -> FakeHandle:
        handle = FakeHandle(failed=not self.connected)
        self.sent.append((message, handle))
        return handle

    def ack_all(self) -> None:
        for _, handle in self.sent:
            handle.acknowledged = not handle.failed

    def of(self, kind: type[MessageModel]) -> list[Any]:
        return [m for m, _ in self.sent if isinstance(m, kind)]


class InlineExecutor(Executor):
    """Seals on the caller's thread, so a test needs no waiting for the worker."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


@dataclass
class Unit:
    loop: UnitLoop
    link: FakeLink
    clock: FakeClock
    light: SimulatedLight
    outbox: Outbox
    site: MiniSite
    signer: HospitalSigner  # the first receiver's
    synced: list[bool]

    def settle(self, turns: int = 5) -> None:
        for _ in range(turns):
            self.loop.step()


@pytest.fixture
def make_unit(tmp_path: Path) -> Iterator[Callable[..., Unit]]:
    made: list[Unit] = []

    def make(*, outbox_dir: Path | None = None, require_clock_sync: bool = True) -> Unit:
        clock, link, light = FakeClock(), FakeLink(), SimulatedLight()
        site = MiniSite()
        crls = CrlStore([site.root.cert], tmp_path / f"crl-{len(made)}.pem")
        outbox = Outbox(outbox_dir or tmp_path / "outbox", quota_bytes=1 << 30, min_free_bytes=0)
        camera = SimulatedCamera(width=160, height=120, frame_rate_hz=15, bitrate_bps=200_000)
        microphone = SimulatedMicrophone()
        synced = [True]
        loop = UnitLoop(
            settings=LoopSettings(
                device_id=DEVICE,
                require_clock_sync=require_clock_sync,
                reserve_bytes=0,
                telemetry_interval_s=60,
                software_version="0.1.0",
            ),
            recorder=Recorder(
                RecorderSettings(max_seconds=60, require_clock_sync=require_clock_sync),
                new_clip_id=lambda wall: f"{DEVICE}-{wall:%Y%m%dT%H%M%SZ}-ab12",
            ),
            outbox=outbox,
            capturer=Capturer(
                outbox=outbox,
                camera=camera,
                microphone=microphone,
                recipients=[X25519Identity.generate().recipient],
                signing_key=SigningKey.generate(),
                site_id="ward7",
                device_id=DEVICE,
                sample_rate_hz=48_000,
                channels=1,
                software_version="0.1.0",
                clock_synced=lambda: synced[0],
            ),
            link=link,
            light=light,
            trust=HospitalTrust(roots=(site.root.cert,), receiver_id="receiver", crl=crls.current),
            crls=crls,
            sealer=InlineExecutor(),
            clock_synced=lambda: synced[0],
            clip_url=lambda clip_id: f"https://10.0.0.7:8443/v1/clips/{clip_id}.age",
            clock=clock,
        )
        unit = Unit(loop, link, clock, light, outbox, site, site.signer("receiver"), synced)
        made.append(unit)
        loop.start_up()
        return unit

    yield make
    for unit in made:
        unit.loop.capturer.camera.close()
        unit.loop.capturer.microphone.close()
        unit.outbox.close()


def record(unit: Unit, seconds: float = 0.6) -> ClipAnnouncement:
    """Press, let the simulated camera run, press again; the announcement that follows."""
    unit.loop.post(Pressed())
    unit.settle()
    assert unit.loop.snapshot.state == "recording"
    time.sleep(seconds)  # the camera and microphone run on real time
    unit.clock.mono += seconds
    unit.loop.post(Pressed())
    unit.settle()
    (announcement,) = unit.link.of(ClipAnnouncement)
    assert isinstance(announcement, ClipAnnouncement)
    return announcement


def receipt_for(
    unit: Unit, announcement: ClipAnnouncement, signer: HospitalSigner | None = None
) -> Any:
    manifest = announcement.manifest
    return sign_receipt(
        signer or unit.signer,
        site_id="ward7",
        device_id=DEVICE,
        clip_id=manifest.clip_id,
        sha256=manifest.sha256,
        stored_at=unit.clock.now(),
    )


def arm(
    unit: Unit,
    *,
    participant: str | None = "PAIN-0042",
    issued_at: datetime | None = None,
    device_id: str = DEVICE,
    signer: HospitalSigner | None = None,
) -> ArmCommand:
    issued = issued_at or unit.clock.now()
    signer = signer or unit.signer
    return ArmCommand.signed(
        participant=participant,
        visit="v1" if participant else None,
        issued_at=issued,
        expires_at=issued + timedelta(hours=1) if participant else None,
        site_id="ward7",
        device_id=device_id,
        signer=signer.certificate,
        sign=signer.sign,
    )


def test_press_seal_announce_ack_receipt(make_unit: Callable[..., Unit]) -> None:
    unit = make_unit()
    announcement = record(unit)
    clip_id = announcement.manifest.clip_id
    assert announcement.url == f"https://10.0.0.7:8443/v1/clips/{clip_id}.age"
    assert announcement.manifest.stop_reason == "button" and announcement.manifest.clock_synced
    assert announcement.manifest.video.frames > 0
    assert (announcement.manifest.audio.frames or 0) > 0
    assert [s.state for s in unit.link.of(Status)] == ["recording", "online"]
    assert unit.outbox.get(clip_id).state == "sealed"
    assert unit.loop.snapshot.queue == (clip_id,) and unit.loop.snapshot.state == "idle"

    unit.link.ack_all()  # the broker acknowledged the announcement
    unit.settle(1)
    assert unit.outbox.get(clip_id).state == "announced"
    assert unit.loop.snapshot.stop_to_announced_ms is not None

    unit.loop.post(ReceiptReceived(receipt_for(unit, announcement)))
    unit.settle()
    assert unit.loop.snapshot.queue == ()
    (deleted,) = [e for e in unit.link.of(Event) if e.kind == "deleted"]
    assert deleted.clip_id == clip_id


def test_a_receipt_signed_by_another_key_deletes_nothing(make_unit: Callable[..., Unit]) -> None:
    unit = make_unit()
    announcement = record(unit)
    stranger = MiniSite().signer("receiver")  # a self-made root's certificate
    unit.loop.post(ReceiptReceived(receipt_for(unit, announcement, stranger)))
    unit.settle()
    (refused,) = [e for e in unit.link.of(Event) if e.kind == "refused"]
    assert refused.reason == "receipt_rejected"
    assert "not issued by the site root" in refused.detail
    assert unit.loop.snapshot.queue == (announcement.manifest.clip_id,)


def test_receipts_of_a_revoked_receiver_delete_nothing_once_the_crl_arrives(
    make_unit: Callable[..., Unit],
) -> None:
    unit = make_unit()
    first = record(unit)
    second_receiver = unit.site.signer("receiver-2")
    unit.loop.post(CrlReceived(der(unit.site.crl(second_receiver.cert))))
    unit.settle()
    unit.loop.post(ReceiptReceived(receipt_for(unit, first, second_receiver)))
    unit.settle()
    (refused,) = [e for e in unit.link.of(Event) if e.kind == "refused"]
    assert refused.reason == "receipt_rejected" and "revoked" in refused.detail
    assert unit.loop.snapshot.queue == (first.manifest.clip_id,)
    # The first receiver, not revoked, still deletes it.
    unit.loop.post(ReceiptReceived(receipt_for(unit, first)))
    unit.settle()
    assert unit.loop.snapshot.queue == ()


def der(crl: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    data: bytes = crl.public_bytes(Encoding.DER)
    return data


def test_a_crl_is_kept_only_if_the_site_root_signed_it_and_it_is_newer(
    make_unit: Callable[..., Unit], tmp_path: Path
) -> None:
    unit = make_unit()
    revoked = unit.site.signer("receiver-2")
    older, newer = unit.site.crl(), unit.site.crl(revoked.cert)
    unit.loop.post(CrlReceived(der(newer)))
    unit.loop.post(CrlReceived(der(older)))  # a stale retained copy from another receiver
    unit.loop.post(CrlReceived(der(MiniSite().crl())))  # not the site's root
    unit.loop.post(CrlReceived(b"not a crl"))
    unit.settle(8)
    assert unit.loop.crls.current() == newer
    assert [e.reason for e in unit.link.of(Event) if e.kind == "refused"] == [
        "crl_rejected",
        "crl_rejected",
    ]
    # Kept durably: a restarted unit starts from it.
    again = CrlStore([unit.site.root.cert], tmp_path / "crl-0.pem")
    assert again.current() == newer
    assert newer.get_revoked_certificate_by_serial_number(revoked.cert.serial_number)


def test_a_press_without_clock_sync_is_refused_and_shown(make_unit: Callable[..., Unit]) -> None:
    unit = make_unit()
    unit.synced[0] = False
    unit.loop.post(Pressed())
    unit.settle()
    (refused,) = unit.link.of(Event)
    assert refused.kind == "refused" and refused.reason == "clock_unsynchronised"
    assert unit.light.pattern is Pattern.REFUSED_CLOCK
    snapshot = unit.loop.snapshot
    assert snapshot.state == "idle" and snapshot.last_refusal == refused
    assert not snapshot.readiness.clock_synced
    assert unit.outbox.pending() == []


def test_offline_clips_and_events_wait_for_the_next_connection(
    make_unit: Callable[..., Unit],
) -> None:
    unit = make_unit()
    unit.link.connected = False
    unit.synced[0] = False
    unit.loop.post(Pressed())  # refused while offline: kept for later
    unit.settle()
    unit.synced[0] = True
    unit.loop.post(Pressed())
    unit.settle()
    time.sleep(0.5)
    unit.loop.post(Pressed())
    unit.settle()
    assert unit.link.of(ClipAnnouncement) == [] and unit.link.of(Event) == []
    (clip_id,) = unit.loop.snapshot.queue

    unit.link.connected = True
    unit.loop.post(Connected())
    unit.settle()
    (announcement,) = unit.link.of(ClipAnnouncement)
    assert announcement.manifest.clip_id == clip_id
    assert [e.reason for e in unit.link.of(Event)] == ["clock_unsynchronised"]
    assert unit.link.of(Status)[-1].state == "online"


def test_a_recording_cut_off_by_a_crash_is_reported_once_acknowledged(
    make_unit: Callable[..., Unit], tmp_path: Path
) -> None:
    crashed = Outbox(tmp_path / "outbox", quota_bytes=1 << 30, min_free_bytes=0)
    crashed.begin(f"{DEVICE}-20261127T095900Z-dead", participant=None, visit=None, started_at=T0)
    crashed.close()  # the process died while recording

    unit = make_unit(outbox_dir=tmp_path / "outbox")  # start-up recovers the outbox
    unit.loop.post(Connected())
    unit.settle()
    (aborted,) = unit.link.of(Event)
    assert aborted.kind == "aborted" and aborted.clip_id == f"{DEVICE}-20261127T095900Z-dead"
    # The event journal keeps it from now on, until the receiver acknowledges it.
    assert unit.outbox.unreported_aborts() == []
    assert [e.event_id for e in unit.loop.uplink.journal.unacked()] == [aborted.event_id]
    unit.link.ack_all()  # the broker's PUBACK: not enough to forget it
    unit.loop.post(Connected())
    unit.settle()
    assert [e.event_id for e in unit.link.of(Event)] == [aborted.event_id] * 2
    unit.loop.post(EventAcked(EventAck(event_ids=(aborted.event_id,), recorded_at=T0)))
    unit.settle()
    assert unit.loop.uplink.journal.unacked() == []
    unit.loop.post(Connected())
    unit.settle()
    assert len(unit.link.of(Event)) == 2


def test_events_are_kept_across_restarts_and_sent_until_acknowledged(
    make_unit: Callable[..., Unit], tmp_path: Path
) -> None:
    outbox_dir = tmp_path / "outbox"
    outbox_dir.mkdir()
    earlier = Event(event_id="from-the-last-run", kind="refused", at=T0, reason="busy")
    journal = EventJournal(outbox_dir / "events.sqlite", now=lambda: T0)
    journal.add(earlier)  # the unit died, or the receiver was away, before it was acknowledged
    journal.close()

    unit = make_unit(outbox_dir=outbox_dir)
    unit.link.connected = False
    unit.synced[0] = False
    unit.loop.post(Pressed())  # refused, while offline
    unit.settle()
    assert unit.link.of(Event) == []
    unit.link.connected = True
    unit.loop.post(Connected())
    unit.settle()
    sent = unit.link.of(Event)
    assert sent[0].event_id == "from-the-last-run"
    assert [e.reason for e in sent] == ["busy", "clock_unsynchronised"]
    unit.link.ack_all()

    unit.clock.mono += 59  # no acknowledgement from the receiver: published again each minute
    unit.settle()
    assert len(unit.link.of(Event)) == 2
    unit.clock.mono += 2
    unit.settle()
    assert [e.event_id for e in unit.link.of(Event)[2:]] == [e.event_id for e in sent]

    ids = tuple(e.event_id for e in sent)
    unit.loop.post(EventAcked(EventAck(event_ids=ids, recorded_at=T0)))
    unit.settle()
    unit.clock.mono += 120
    unit.settle()
    assert len(unit.link.of(Event)) == 4
    assert unit.loop.uplink.journal.unacked() == []


def test_arm_commands_the_unit_refuses(make_unit: Callable[..., Unit]) -> None:
    unit = make_unit()
    good = arm(unit)
    unsigned = good.model_copy(update={"participant": "PAIN-6666"})  # relabelled by the broker
    for command in (
        unsigned,
        arm(unit, signer=MiniSite().signer("receiver")),  # a self-made certificate
        arm(unit, device_id="cart-02"),  # signed for another unit
        arm(unit, signer=unit.site.signer("cart-01")),  # certified, but not a receiver
    ):
        unit.loop.post(ArmReceived(command))
        unit.settle()
        assert unit.loop.snapshot.participant is None
    reasons = [e.reason for e in unit.link.of(Event) if e.kind == "refused"]
    assert reasons == ["arm_rejected"] * 4
    unit.loop.post(ArmReceived(good))
    unit.settle()
    assert unit.loop.snapshot.participant == "PAIN-0042"
    # An older signed command (replayed by whoever controls the broker) does not replace it.
    older = arm(unit, participant="PAIN-0001", issued_at=unit.clock.now() - timedelta(minutes=5))
    unit.loop.post(ArmReceived(older))
    unit.settle()
    assert unit.loop.snapshot.participant == "PAIN-0042"
    # The same command again (retained, re-sent at each connect) is fine; a newer one replaces.
    unit.loop.post(ArmReceived(good))
    unit.clock.mono += 1
    unit.loop.post(ArmReceived(arm(unit, participant=None)))
    unit.settle()
    assert unit.loop.snapshot.participant is None
    assert [e.reason for e in unit.link.of(Event) if e.kind == "refused"][4:] == ["arm_rejected"]


def test_arming_tags_the_next_clip(make_unit: Callable[..., Unit]) -> None:
    unit = make_unit()
    command = arm(unit)
    unit.loop.post(ArmReceived(command))
    unit.settle()
    assert unit.loop.snapshot.participant == "PAIN-0042"
    assert unit.link.of(Status)[-1].armed is True
    announcement = record(unit)
    assert announcement.manifest.participant == "PAIN-0042"
    assert announcement.manifest.visit == "v1"


def verdict_on(
    clip_id: str, verdict: Literal["usable", "check", "repeat"], at: datetime, *reasons: str
) -> VerdictReceived:
    return VerdictReceived(
        QcVerdict(clip_id=clip_id, verdict=verdict, reasons=reasons, pass_="quick", issued_at=at)
    )


def test_a_repeat_verdict_on_the_last_clip_asks_to_record_again_until_the_next_press(
    make_unit: Callable[..., Unit],
) -> None:
    unit = make_unit()
    clip_id = record(unit).manifest.clip_id
    unit.link.ack_all()
    assert unit.light.pattern is Pattern.IDLE
    sent_before = len(unit.link.sent)

    unit.clock.mono += 25.0  # the quick pass answers within the 30 s target
    unit.loop.post(verdict_on(clip_id, "repeat", unit.clock.now(), "no_face", "audio_clipping"))
    unit.settle()
    assert unit.light.pattern is Pattern.RECORD_AGAIN
    snapshot = unit.loop.snapshot
    assert snapshot.record_again and snapshot.state == "idle"
    assert snapshot.last_verdict is not None
    assert (snapshot.last_verdict.clip_id, snapshot.last_verdict.verdict) == (clip_id, "repeat")
    assert snapshot.last_verdict.reasons == ("no_face", "audio_clipping")
    # The Event model has no kind for "verdict shown": the unit publishes nothing about it.
    assert len(unit.link.sent) == sent_before

    unit.loop.post(Pressed())  # the nurse records again
    unit.settle()
    assert unit.light.pattern is Pattern.RECORDING and not unit.loop.snapshot.record_again
    assert unit.loop.snapshot.last_verdict is not None  # still shown in device status


def test_the_request_to_record_again_times_out(make_unit: Callable[..., Unit]) -> None:
    unit = make_unit()
    clip_id = record(unit).manifest.clip_id
    unit.loop.post(verdict_on(clip_id, "repeat", unit.clock.now(), "too_dark"))
    unit.settle()
    assert unit.light.pattern is Pattern.RECORD_AGAIN
    unit.clock.mono += 299.0
    unit.settle(1)
    assert unit.light.pattern is Pattern.RECORD_AGAIN
    unit.clock.mono += 1.0
    unit.settle(1)
    assert unit.light.pattern is Pattern.IDLE and not unit.loop.snapshot.record_again


def test_verdicts_that_leave_the_light_alone(make_unit: Callable[..., Unit]) -> None:
    unit = make_unit()
    clip_id = record(unit).manifest.clip_id
    now = unit.clock.now()
    for event in (
        verdict_on(clip_id, "usable", now),
        verdict_on(clip_id, "check", now, "low_speech"),
        verdict_on("cart-01-20261127T090000Z-0000", "repeat", now, "no_face"),  # an older clip
        verdict_on(clip_id, "repeat", now - timedelta(minutes=10), "no_face"),  # arrived late
    ):
        unit.loop.post(event)
        unit.settle()
        assert unit.light.pattern is Pattern.IDLE
        assert unit.loop.snapshot.last_verdict == event.verdict
    assert not unit.loop.snapshot.record_again
