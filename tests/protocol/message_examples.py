"""Valid example messages and hypothesis strategies for them, shared by the protocol tests."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import get_args

from hypothesis import strategies as st

from protocol import bech32
from protocol.clip_manifest import MAX_CLIP_BYTES
from protocol.message_fields import (
    CLIP_ID_PATTERN,
    PSEUDONYM_PATTERN,
    REASON_PATTERN,
    SOFTWARE_VERSION_PATTERN,
    VISIT_PATTERN,
)
from protocol.messages import (
    EVENTS_V1,
    MAX_ACKED_EVENTS,
    MAX_ARM_DURATION,
    MAX_QC_REASONS,
    ArmCommand,
    AudioTrack,
    ClipAnnouncement,
    ClipManifest,
    CrlMessage,
    Event,
    EventAck,
    Message,
    QcVerdict,
    Receipt,
    Status,
    Telemetry,
    VideoTrack,
)
from protocol.topics import ID_PATTERN, Kind

EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SITE = "ward7"
DEVICE = "cart-03"
T0 = datetime(2025, 3, 1, 9, 30, 0, tzinfo=UTC)
RECIPIENT = bech32.encode("age", bytes(range(32)))
# Stands in for a receiver's signing certificate: the model checks its form, not its content
# (the unit checks the certificate itself: tests/protocol/test_hospital_signature.py).
SIGNER = base64.b64encode(bytes(range(256)) * 2).decode()
SIGNATURE = base64.b64encode(bytes(range(64))).decode()
CRL = base64.b64encode(b"0\x82" + bytes(300)).decode()
MINISIGN = (
    "untrusted comment: signature from painav unit cart-03\n"
    "RUQf0FZ1aW4uI2s5hQ==\n"
    "trusted comment: clip=cart-03-20250301T093000Z-a1b2 device=cart-03\n"
    "c2lnbmF0dXJl\n"
)


def clip_id_of(device: str = DEVICE, n: int = 1) -> str:
    """The *n*-th clip id of *device*, in the form a unit names its clips (and must)."""
    return f"{device}-20250301T093000Z-{n:04x}"


def manifest(**changes: object) -> ClipManifest:
    """A valid manifest for a 42 s clip from ward7/cart-03, with *changes* applied."""
    fields: dict[str, object] = {
        "clip_id": "cart-03-20250301T093000Z-a1b2",
        "site_id": SITE,
        "device_id": DEVICE,
        "participant": "PAIN-0042",
        "visit": "baseline",
        "started_at": T0,
        "duration_s": 42.0,
        "container": "matroska",
        "video": VideoTrack(
            codec="h264", width=1280, height=720, frame_rate_hz=30.0, frames=1260, dropped_frames=2
        ),
        "audio": AudioTrack(
            codec="opus", sample_rate_hz=48000, channels=1, frames=2_016_000, overruns=0
        ),
        "av_offset_ms": -12.5,
        "clock_synced": True,
        "stop_reason": "button",
        "software_version": "0.1.0",
        "size_bytes": 31_457_280,
        "sha256": "ab" * 32,
        "recipients": (RECIPIENT,),
    }
    fields.update(changes)
    return ClipManifest(**fields)  # type: ignore[arg-type]


def examples() -> dict[Kind, Message]:
    """One valid message of every kind."""
    return {
        Kind.STATUS: Status(state="online", since=T0, software_version="0.1.0", armed=True),
        Kind.CLIPS: ClipAnnouncement(
            manifest=manifest(),
            signature=MINISIGN,
            url="https://cart-03.ward7.example:8443/clips/cart-03-20250301T093000Z-a1b2",
        ),
        Kind.EVENTS: Event(
            event_id="5f0c3e9a1b2d4c6e8f0a1b2c3d4e5f60",
            kind="aborted",
            at=T0,
            reason="camera_timeout",
            detail="no frames",
        ),
        Kind.TELEMETRY: Telemetry(
            at=T0,
            uptime_s=3600.5,
            free_bytes=12_000_000_000,
            queue_depth=2,
            oldest_unreceipted_s=95.0,
            clock_synced=True,
            temperature_c=51.2,
            cpu_percent=23.0,
        ),
        Kind.ARM: ArmCommand(
            participant="PAIN-0042",
            visit="baseline",
            issued_at=T0,
            expires_at=T0 + timedelta(hours=4),
            issued_by="rn-0007",
            site_id=SITE,
            device_id=DEVICE,
            signer=SIGNER,
            signature=SIGNATURE,
        ),
        Kind.RECEIPTS: Receipt(
            site_id=SITE,
            device_id=DEVICE,
            clip_id="cart-03-20250301T093000Z-a1b2",
            sha256="ab" * 32,
            stored_at=T0 + timedelta(seconds=5),
            receiver_id="receiver-1",
            signer=SIGNER,
            signature=SIGNATURE,
        ),
        Kind.QC: QcVerdict(
            clip_id="cart-03-20250301T093000Z-a1b2",
            verdict="repeat",
            reasons=("no_face", "audio_clipping"),
            pass_="quick",
            issued_at=T0 + timedelta(seconds=20),
        ),
        Kind.EVENT_ACKS: EventAck(
            event_ids=("5f0c3e9a1b2d4c6e8f0a1b2c3d4e5f60",), recorded_at=T0 + timedelta(seconds=1)
        ),
        Kind.CRL: CrlMessage(crl=CRL),
    }


# --- hypothesis strategies for valid messages ------------------------------------------------

ids = st.from_regex(ID_PATTERN, fullmatch=True)
clip_ids = st.from_regex(CLIP_ID_PATTERN, fullmatch=True)
pseudonyms = st.from_regex(PSEUDONYM_PATTERN, fullmatch=True)
visits = st.from_regex(VISIT_PATTERN, fullmatch=True)
reasons = st.from_regex(REASON_PATTERN, fullmatch=True)
versions = st.from_regex(SOFTWARE_VERSION_PATTERN, fullmatch=True)
sha256s = st.binary(min_size=32, max_size=32).map(bytes.hex)
timestamps = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
counts = st.integers(min_value=0, max_value=2**63 - 1)
recipients = st.lists(
    st.binary(min_size=32, max_size=32).map(lambda key: bech32.encode("age", key)),
    min_size=1,
    max_size=4,
    unique=True,
).map(tuple)
one_line = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters=[*map(chr, range(32)), "\x7f"]),
    max_size=500,
)


def _floats(low: float, high: float, *, exclude_min: bool = False) -> st.SearchStrategy[float]:
    return st.floats(low, high, exclude_min=exclude_min, allow_nan=False, allow_infinity=False)


@st.composite
def statuses(draw: st.DrawFn) -> Status:
    state = draw(st.sampled_from(get_args(Status.model_fields["state"].annotation)))
    optional = state == "offline" and draw(st.booleans())
    return Status(
        state=state,
        since=None if optional else draw(timestamps),
        software_version=None if optional else draw(versions),
        armed=None if optional else draw(st.booleans()),
        reason=draw(reasons) if state == "error" else None,
    )


# A unit names its clips <device>-<yyyymmddThhmmssZ>-<hex>, and a manifest must.
owned_clip_ids = ids.flatmap(
    lambda device: st.tuples(
        st.just(device),
        st.from_regex(rf"{device}-[0-9]{{8}}T[0-9]{{6}}Z-[0-9a-f]{{4,16}}", fullmatch=True),
    )
)
_MANIFEST_FIELDS: dict[str, st.SearchStrategy[object]] = dict(
    site_id=ids,
    participant=st.none() | pseudonyms,
    visit=st.none() | visits,
    started_at=timestamps,
    duration_s=_floats(0, 60.5, exclude_min=True),
    container=st.sampled_from(["matroska", "mp4"]),
    video=st.builds(
        VideoTrack,
        codec=st.just("h264"),
        width=st.integers(16, 8192),
        height=st.integers(16, 8192),
        frame_rate_hz=_floats(0, 240, exclude_min=True),
        frames=counts,
        dropped_frames=counts,
    ),
    audio=st.builds(
        AudioTrack,
        codec=st.sampled_from(["opus", "aac", "flac", "pcm_s16le"]),
        sample_rate_hz=st.integers(8000, 192000),
        channels=st.integers(1, 8),
        frames=st.none() | counts,
        overruns=counts,
    ),
    av_offset_ms=_floats(-10_000, 10_000),
    clock_synced=st.booleans(),
    stop_reason=st.sampled_from(["button", "limit", "shutdown", "low_storage"]),
    software_version=versions,
    size_bytes=st.integers(1, MAX_CLIP_BYTES),
    sha256=sha256s,
    recipients=recipients,
)
manifests = owned_clip_ids.flatmap(
    lambda owner: st.builds(
        ClipManifest, clip_id=st.just(owner[1]), device_id=st.just(owner[0]), **_MANIFEST_FIELDS
    )
)

announcements = st.builds(
    ClipAnnouncement,
    manifest=manifests,
    signature=one_line.map(lambda comment: f"untrusted comment: {comment[:200]}\n{MINISIGN}"),
    url=st.tuples(ids, st.integers(1, 65535), clip_ids).map(
        lambda parts: f"https://{parts[0]}.example:{parts[1]}/clips/{parts[2]}"
    ),
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    kind = draw(st.sampled_from(get_args(Event.model_fields["kind"].annotation)))
    needs_clip = kind in {"discarded", "recovered", "deleted"}
    event = Event(
        event_id=draw(event_ids),
        kind=kind,
        at=draw(timestamps),
        clip_id=draw(clip_ids if needs_clip else st.none() | clip_ids),
        reason=draw(reasons),
        detail=draw(one_line),
    )
    if draw(st.booleans()):  # painav.events/1, from a unit of the previous version
        return event.model_copy(update={"schema_id": EVENTS_V1, "event_id": None})
    return event


@st.composite
def telemetries(draw: st.DrawFn) -> Telemetry:
    depth = draw(counts)
    return Telemetry(
        at=draw(timestamps),
        uptime_s=draw(_floats(0, 1e12)),
        free_bytes=draw(counts),
        queue_depth=depth,
        oldest_unreceipted_s=None if depth == 0 else draw(_floats(0, 1e12)),
        clock_synced=draw(st.booleans()),
        temperature_c=draw(st.none() | _floats(-50, 150)),
        cpu_percent=draw(st.none() | _floats(0, 100)),
    )


signatures = st.binary(min_size=64, max_size=64).map(lambda raw: base64.b64encode(raw).decode())
signers = st.binary(min_size=3, max_size=2040).map(lambda raw: base64.b64encode(raw).decode())


@st.composite
def arm_commands(draw: st.DrawFn) -> ArmCommand:
    issued_at = draw(timestamps)
    issued_by = draw(st.none() | ids)
    site_id, device_id = draw(ids), draw(ids)
    signer, signature = draw(signers), draw(signatures)
    if draw(st.booleans()):
        return ArmCommand(
            participant=None,
            issued_at=issued_at,
            issued_by=issued_by,
            site_id=site_id,
            device_id=device_id,
            signer=signer,
            signature=signature,
        )
    valid_for = draw(st.timedeltas(timedelta(microseconds=1), MAX_ARM_DURATION))
    return ArmCommand(
        participant=draw(pseudonyms),
        visit=draw(st.none() | visits),
        issued_at=issued_at,
        expires_at=issued_at + valid_for,
        issued_by=issued_by,
        site_id=site_id,
        device_id=device_id,
        signer=signer,
        signature=signature,
    )


receipts = st.builds(
    Receipt,
    site_id=ids,
    device_id=ids,
    clip_id=clip_ids,
    sha256=sha256s,
    stored_at=timestamps,
    receiver_id=ids,
    signer=signers,
    signature=signatures,
)

crl_messages = st.builds(
    CrlMessage, crl=st.binary(min_size=3, max_size=4000).map(lambda b: base64.b64encode(b).decode())
)


@st.composite
def qc_verdicts(draw: st.DrawFn) -> QcVerdict:
    verdict = draw(st.sampled_from(get_args(QcVerdict.model_fields["verdict"].annotation)))
    least = 0 if verdict == "usable" else 1
    return QcVerdict(
        clip_id=draw(clip_ids),
        verdict=verdict,
        reasons=tuple(
            draw(st.lists(reasons, min_size=least, max_size=MAX_QC_REASONS, unique=True))
        ),
        pass_=draw(st.sampled_from(["quick", "full"])),
        issued_at=draw(timestamps),
    )


event_ids = st.from_regex(EVENT_ID_PATTERN, fullmatch=True)


@st.composite
def event_acks(draw: st.DrawFn) -> EventAck:
    ids = draw(st.lists(event_ids, min_size=1, max_size=MAX_ACKED_EVENTS, unique=True))
    return EventAck(event_ids=tuple(ids), recorded_at=draw(timestamps))


STRATEGIES: dict[Kind, st.SearchStrategy[Message]] = {
    Kind.STATUS: statuses(),
    Kind.CLIPS: announcements,
    Kind.EVENTS: events(),
    Kind.TELEMETRY: telemetries(),
    Kind.ARM: arm_commands(),
    Kind.RECEIPTS: receipts,
    Kind.QC: qc_verdicts(),
    Kind.EVENT_ACKS: event_acks(),
    Kind.CRL: crl_messages,
}
"""A strategy of valid messages for every kind."""
