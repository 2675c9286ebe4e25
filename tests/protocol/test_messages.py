"""Tests of protocol.messages: round trips, one clear error per fault, and fuzzing every parser."""

from __future__ import annotations

import base64
import doctest
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol.messages
from protocol.errors import MessageError, TopicError
from protocol.message_codec import MAX_PAYLOAD_BYTES, schema_id
from protocol.messages import (
    ARM_SIGNING_CONTEXT,
    MESSAGE_TYPES,
    RECEIPT_SIGNING_CONTEXT,
    ArmCommand,
    ClipAnnouncement,
    Event,
    LegacyReceipt,
    Message,
    QcVerdict,
    Receipt,
    Status,
    Telemetry,
    parse,
    parse_message,
)
from protocol.topics import Kind, topic

from .message_examples import DEVICE, SIGNER, SITE, STRATEGIES, T0, examples, manifest

CLIPS_TOPIC = "painav/v1/ward7/cart-03/clips"


def payload_dict(kind: Kind) -> dict[str, Any]:
    """The JSON object of the example message of *kind*, to be broken by a test."""
    data: dict[str, Any] = json.loads(examples()[kind].to_payload())
    return data


def encode(data: object) -> bytes:
    return json.dumps(data).encode()


def refused(kind: Kind, payload: bytes, *, on: str | None = None) -> str:
    """The one-line error parsing *payload* as *kind* gives (the test fails if none)."""
    with pytest.raises(MessageError) as caught:
        parse(kind, payload, topic=on)
    text = str(caught.value)
    assert "\n" not in text
    return text


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
def test_example_round_trips(kind: Kind) -> None:
    message = examples()[kind]
    payload = message.to_payload()
    assert parse(kind, payload, topic=topic(SITE, DEVICE, kind)) == message
    assert type(message).parse(payload) == message
    assert json.loads(payload)["schema"] == schema_id(kind)


def test_payload_is_compact_sorted_utf8() -> None:
    payload = Event(event_id="e1", kind="error", at=T0, reason="disk", detail="défaut").to_payload()
    assert payload == (
        b'{"at":"2025-03-01T09:30:00Z","clip_id":null,"detail":"d\xc3\xa9faut","event_id":"e1",'
        b'"kind":"error","reason":"disk","schema":"painav.events/2"}'
    )


def test_timestamps_keep_microseconds_and_write_z() -> None:
    at = datetime(2025, 3, 1, 9, 30, 0, 250_000, tzinfo=UTC)
    payload = Event(event_id="e1", kind="error", at=at, reason="disk").to_payload()
    assert b'"at":"2025-03-01T09:30:00.25Z"' in payload
    assert Event.parse(payload).at == at


def test_last_will_is_minimal() -> None:
    will = Status.last_will()
    assert json.loads(will.to_payload()) == {
        "schema": "painav.status/1",
        "state": "offline",
        "since": None,
        "software_version": None,
        "armed": None,
        "reason": None,
    }
    assert Status.parse(b'{"schema":"painav.status/1","state":"offline"}') == will


def test_parse_message_takes_the_kind_from_the_topic() -> None:
    message = examples()[Kind.CLIPS]
    parsed_topic, parsed = parse_message(CLIPS_TOPIC, message.to_payload())
    assert parsed == message
    assert parsed_topic.kind is Kind.CLIPS
    with pytest.raises(TopicError):
        parse_message("painav/v1/ward7/+/clips", message.to_payload())


def test_module_examples_run() -> None:
    assert doctest.testmod(protocol.messages).failed == 0


def test_models_are_frozen() -> None:
    status = Status.last_will()
    with pytest.raises(ValueError, match="frozen"):
        status.state = "online"  # type: ignore[misc]


# --- receipts: the signed bytes --------------------------------------------------------------


def test_receipt_signed_bytes_are_fixed() -> None:
    receipt = examples()[Kind.RECEIPTS]
    assert isinstance(receipt, Receipt)
    assert RECEIPT_SIGNING_CONTEXT == b"painav-receipt/2\n"
    assert receipt.signed_bytes() == RECEIPT_SIGNING_CONTEXT + (
        b'{"clip_id":"cart-03-20250301T093000Z-a1b2","device_id":"cart-03",'
        b'"receiver_id":"receiver-1","schema":"painav.receipts/2","sha256":"' + b"ab" * 32 + b'",'
        b'"signer":"' + SIGNER.encode() + b'","site_id":"ward7","stored_at":"2025-03-01T09:30:05Z"}'
    )


def test_a_legacy_receipt_is_what_units_of_the_previous_version_verify() -> None:
    receipt = examples()[Kind.RECEIPTS]
    assert isinstance(receipt, Receipt)
    key = Ed25519PrivateKey.generate()  # the site's old shared receipt key
    legacy = LegacyReceipt.of(receipt, key.sign)
    # The bytes a receipts/1 signature covered (this vector is the previous version's own test).
    v1_body = (
        b'{"clip_id":"cart-03-20250301T093000Z-a1b2","device_id":"cart-03",'
        b'"receiver_id":"receiver-1","schema":"painav.receipts/1","sha256":"' + b"ab" * 32 + b'",'
        b'"site_id":"ward7","stored_at":"2025-03-01T09:30:05Z"}'
    )
    sent = json.loads(legacy.payload)
    key.public_key().verify(
        base64.b64decode(sent.pop("signature")), b"painav-receipt/1\n" + v1_body
    )
    assert json.dumps(sent, sort_keys=True, separators=(",", ":")).encode() == v1_body
    assert (legacy.site_id, legacy.device_id) == (SITE, DEVICE)
    # This version does not read it as a receipt.
    assert "unknown schema version 'painav.receipts/1'" in refused(Kind.RECEIPTS, legacy.payload)


def test_arm_command_signed_bytes_bind_the_unit_and_the_time() -> None:
    command = examples()[Kind.ARM]
    assert isinstance(command, ArmCommand)
    assert command.signed_bytes() == ARM_SIGNING_CONTEXT + (
        b'{"device_id":"cart-03","expires_at":"2025-03-01T13:30:00Z","issued_at":'
        b'"2025-03-01T09:30:00Z","issued_by":"rn-0007","participant":"PAIN-0042",'
        b'"schema":"painav.cmd-arm/2","signer":"' + SIGNER.encode() + b'","site_id":"ward7",'
        b'"visit":"baseline"}'
    )
    key = Ed25519PrivateKey.generate()
    fields = command.model_dump(exclude={"signature", "schema_id"})
    signed = ArmCommand.signed(sign=key.sign, **fields)
    received = ArmCommand.parse(signed.to_payload(), topic="painav/v1/ward7/cart-03/cmd/arm")
    key.public_key().verify(received.signature_bytes(), received.signed_bytes())
    # Signed for cart-03: on another unit's topic it is not even a valid message there.
    with pytest.raises(MessageError, match="field 'device_id': does not match"):
        ArmCommand.parse(signed.to_payload(), topic="painav/v1/ward7/cart-04/cmd/arm")
    # A version-1 arm command (unsigned) is refused by name.
    old = {**payload_dict(Kind.ARM), "schema": "painav.cmd-arm/1"}
    assert "unknown schema version 'painav.cmd-arm/1'" in refused(Kind.ARM, encode(old))


def test_receipt_signed_by_receiver_verifies_on_unit() -> None:
    key = Ed25519PrivateKey.generate()
    receipt = Receipt.signed(
        sign=key.sign,
        site_id=SITE,
        device_id=DEVICE,
        clip_id="clip-1",
        sha256="cd" * 32,
        stored_at=T0,
        receiver_id="receiver-1",
        signer=SIGNER,
    )
    received = Receipt.parse(receipt.to_payload(), topic="painav/v1/ward7/cart-03/receipts")
    key.public_key().verify(received.signature_bytes(), received.signed_bytes())
    with pytest.raises(MessageError, match="64-byte"):
        Receipt.signed(
            sign=lambda data: b"short", **receipt.model_dump(exclude={"signature", "schema_id"})
        )


def test_receipt_signature_must_be_canonical_base64_of_64_bytes() -> None:
    data = payload_dict(Kind.RECEIPTS)
    for bad in [
        base64.b64encode(bytes(63)).decode(),
        base64.b64encode(bytes(65)).decode(),
        base64.b64encode(bytes(64)).decode()[:-3] + "B==",  # non-zero trailing bits
        "!" * 86 + "==",
    ]:
        text = refused(Kind.RECEIPTS, encode({**data, "signature": bad}))
        assert "field 'signature'" in text


# --- one clear error per fault ---------------------------------------------------------------


def test_wrong_type_names_the_nested_field() -> None:
    data = payload_dict(Kind.CLIPS)
    data["manifest"]["duration_s"] = "42"
    assert refused(Kind.CLIPS, encode(data), on=CLIPS_TOPIC) == (
        "clips message from painav/v1/ward7/cart-03/clips: "
        "field 'manifest.duration_s': Input should be a valid number"
    )


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("state",), 1, "state"),
        (("armed",), "true", "armed"),
        (("armed",), 1, "armed"),
    ],
)
def test_strict_types(path: tuple[str, ...], value: object, field: str) -> None:
    data = payload_dict(Kind.STATUS)
    data[path[0]] = value
    assert f"field '{field}'" in refused(Kind.STATUS, encode(data))


def test_int_fields_refuse_floats_and_bools() -> None:
    data = payload_dict(Kind.TELEMETRY)
    assert "field 'queue_depth'" in refused(Kind.TELEMETRY, encode({**data, "queue_depth": 2.0}))
    assert "field 'free_bytes'" in refused(Kind.TELEMETRY, encode({**data, "free_bytes": True}))


def test_missing_field() -> None:
    data = payload_dict(Kind.CLIPS)
    del data["manifest"]["sha256"]
    assert refused(Kind.CLIPS, encode(data)).endswith("field 'manifest.sha256': Field required")


def test_extra_field() -> None:
    data = payload_dict(Kind.CLIPS)
    data["manifest"]["video"]["bitrate"] = 1
    text = refused(Kind.CLIPS, encode(data))
    assert text.endswith("field 'manifest.video.bitrate': Extra inputs are not permitted")


def test_field_name_instead_of_wire_name_is_refused() -> None:
    data = payload_dict(Kind.STATUS)
    data["schema_id"] = data["schema"]
    assert "field 'schema_id'" in refused(Kind.STATUS, encode(data))


def test_odd_extra_key_is_quoted_in_one_line() -> None:
    data = {**payload_dict(Kind.STATUS), "a\nb": 1}
    assert "field 'a\\nb': Extra inputs" in refused(Kind.STATUS, encode(data))


def test_schema_version() -> None:
    data = payload_dict(Kind.STATUS)
    assert refused(Kind.STATUS, encode({**data, "schema": "painav.status/2"})).endswith(
        "unknown schema version 'painav.status/2' (this build reads 'painav.status/1')"
    )
    assert "is not a status message" in refused(
        Kind.STATUS, encode({**data, "schema": "painav.events/1"})
    )
    del data["schema"]
    assert "field 'schema': missing" in refused(Kind.STATUS, encode(data))
    assert "field 'schema': must be a string" in refused(Kind.STATUS, encode({**data, "schema": 1}))


@pytest.mark.parametrize("kind", list(Kind))
def test_oversized_payload(kind: Kind) -> None:
    limit = MAX_PAYLOAD_BYTES[kind]
    payload = b'{"pad":"' + b"x" * limit + b'"}'
    assert f"over the {limit} limit" in refused(kind, payload)


def test_non_utf8_names_the_offset() -> None:
    assert refused(Kind.STATUS, b'{"state":"\xc3("}').endswith(
        "payload is not UTF-8: byte 0xc3 at offset 10"
    )


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", "payload is not JSON: Expecting value at line 1 column 1"),
        (b'{"schema":', "payload is not JSON"),
        (b'{"a":NaN}', "NaN is not allowed"),
        (b'{"a":Infinity}', "Infinity is not allowed"),
        (b'{"a":-Infinity}', "-Infinity is not allowed"),
        (b'{"state":"online","state":"offline"}', "duplicate key 'state'"),
        (b'{"a":{"b":1,"b":2}}', "duplicate key 'b'"),
        (b"[]", "must be a JSON object, not an array"),
        (b'"status"', "must be a JSON object, not a string"),
        (b"null", "must be a JSON object, not null"),
        (b"1", "must be a JSON object, not a number"),
        (b"[" * 4000 + b"]" * 4000, "nested too deeply"),
        (b'{"a":' + b"1" * 5000 + b"}", "not JSON this build reads"),
        (b'{"schema":"painav.events/1","at":"\\ud800"}', "not JSON this build reads"),
        (b'\xef\xbb\xbf{"schema":"painav.events/1"}', "payload is not JSON"),
    ],
)
def test_bad_json(payload: bytes, expected: str) -> None:
    assert expected in refused(Kind.EVENTS, payload)


def test_payload_must_be_bytes() -> None:
    with pytest.raises(MessageError, match="payload must be bytes, not str"):
        Status.parse('{"schema":"painav.status/1","state":"offline"}')  # type: ignore[arg-type]
    will = Status.last_will().to_payload()
    assert Status.parse(bytearray(will)) == Status.parse(memoryview(will))


@pytest.mark.parametrize(
    ("where", "value", "field"),
    [
        ("site_id", "Ward7", "manifest.site_id"),
        ("device_id", "cart_03", "manifest.device_id"),
        ("clip_id", "../etc/passwd", "manifest.clip_id"),
        ("clip_id", "..", "manifest.clip_id"),
        ("clip_id", "x" * 65, "manifest.clip_id"),
        ("sha256", "AB" * 32, "manifest.sha256"),
        ("visit", "visit one", "manifest.visit"),
        ("software_version", "", "manifest.software_version"),
        ("recipients", [], "manifest.recipients"),
        ("recipients", ["age1notakey"], "manifest.recipients[0]"),
        ("started_at", "2025-03-01T09:30:00+01:00", "manifest.started_at"),
        ("started_at", "2025-03-01 09:30:00Z", "manifest.started_at"),
        ("started_at", "2025-03-01T09:30:00", "manifest.started_at"),
        ("started_at", "2025-02-30T09:30:00Z", "manifest.started_at"),
        ("started_at", 1740821400, "manifest.started_at"),
        ("duration_s", 0, "manifest.duration_s"),
        ("duration_s", 61, "manifest.duration_s"),
        ("container", "avi", "manifest.container"),
    ],
)
def test_bad_manifest_fields(where: str, value: object, field: str) -> None:
    data = payload_dict(Kind.CLIPS)
    data["manifest"][where] = value
    assert f"field '{field}'" in refused(Kind.CLIPS, encode(data))


def test_recipient_checksum_and_duplicates() -> None:
    data = payload_dict(Kind.CLIPS)
    good = data["manifest"]["recipients"][0]
    broken = good[:-1] + ("q" if good[-1] != "q" else "p")
    data["manifest"]["recipients"] = [broken]
    assert "valid checksum" in refused(Kind.CLIPS, encode(data))
    data["manifest"]["recipients"] = [good, good]
    assert "twice" in refused(Kind.CLIPS, encode(data))


@pytest.mark.parametrize("name", ["John Smith", "J. Smith", "smith", "1234567", "PAIN-42", ""])
def test_participant_must_be_a_pseudonym_and_is_never_echoed(name: str) -> None:
    data = payload_dict(Kind.ARM)
    text = refused(Kind.ARM, encode({**data, "participant": name}))
    assert "field 'participant': must be a pseudonymous study id" in text
    assert not name or name not in text
    with pytest.raises(ValueError, match="pseudonymous study id"):
        manifest(participant=name)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://cart-03.example/clips/x", "https://"),
        ("ftp://cart-03.example/clips/x", "https://"),
        ("https://user:pw@cart-03.example/clips/x", "credentials"),
        ("https:///clips/x", "host"),
        ("https://cart-03.example/clips/x#frag", "fragment"),
        ("https://cart-03.example:99999/clips/x", "well-formed"),
        ("https://cart 03.example/", "https://"),
        ("https://[::1/", "well-formed"),
    ],
)
def test_url_must_be_plain_https(url: str, expected: str) -> None:
    data = {**payload_dict(Kind.CLIPS), "url": url}
    text = refused(Kind.CLIPS, encode(data))
    assert "field 'url'" in text
    assert expected in text


def test_minisign_signature_text() -> None:
    data = payload_dict(Kind.CLIPS)
    assert "field 'signature'" in refused(Kind.CLIPS, encode({**data, "signature": "RWQ..."}))
    long = "untrusted comment: " + "x" * 1100
    assert "at most 1024 bytes" in refused(Kind.CLIPS, encode({**data, "signature": long}))


def test_announcement_must_name_the_topics_unit() -> None:
    payload = ClipAnnouncement(
        manifest=manifest(device_id="cart-04", clip_id="cart-04-20250301T093000Z-a1b2"),
        signature=examples()[Kind.CLIPS].signature,  # type: ignore[union-attr]
        url="https://cart-04.example/clips/x",
    ).to_payload()
    assert "field 'manifest.device_id': does not match" in refused(
        Kind.CLIPS, payload, on=CLIPS_TOPIC
    )
    assert "manifest.site_id" in refused(Kind.CLIPS, payload, on="painav/v1/ward8/cart-04/clips")
    assert parse(Kind.CLIPS, payload, topic="painav/v1/ward7/cart-04/clips")


def test_topic_of_wrong_kind_or_form() -> None:
    payload = examples()[Kind.CLIPS].to_payload()
    assert "topic is for events messages" in refused(
        Kind.CLIPS, payload, on="painav/v1/ward7/cart-03/events"
    )
    with pytest.raises(TopicError):
        parse(Kind.CLIPS, payload, topic="painav/v1/ward7/cart-03")
    with pytest.raises(MessageError, match="Kind"):
        parse("clips", payload)  # type: ignore[arg-type]


def test_status_rules() -> None:
    base = {"schema": "painav.status/1", "since": "2025-03-01T09:30:00Z"}
    online = {**base, "state": "online", "software_version": "1", "armed": False}
    assert "field 'reason': required when state is 'error'" in refused(
        Kind.STATUS, encode({**online, "state": "error"})
    )
    assert "field 'reason': must be null" in refused(Kind.STATUS, encode({**online, "reason": "x"}))
    assert "field 'armed': required unless state is 'offline'" in refused(
        Kind.STATUS, encode({**online, "armed": None})
    )
    with pytest.raises(ValueError, match="UTC"):
        Status(state="online", since=datetime(2025, 1, 1), software_version="1", armed=True)
    plus_one = timezone(timedelta(hours=1))
    with pytest.raises(ValueError, match="UTC"):
        Status(state="online", since=datetime(2025, 1, 1, tzinfo=plus_one), software_version="1")


def test_event_rules() -> None:
    data = payload_dict(Kind.EVENTS)
    assert "field 'clip_id': required" in refused(Kind.EVENTS, encode({**data, "kind": "deleted"}))
    assert "field 'detail'" in refused(Kind.EVENTS, encode({**data, "detail": "a\nb"}))
    assert "field 'detail'" in refused(Kind.EVENTS, encode({**data, "detail": "x" * 501}))
    assert "field 'reason'" in refused(Kind.EVENTS, encode({**data, "reason": "Bad Reason"}))


def test_telemetry_queue_age_rule() -> None:
    data = payload_dict(Kind.TELEMETRY)
    assert "field 'oldest_unreceipted_s'" in refused(
        Kind.TELEMETRY, encode({**data, "oldest_unreceipted_s": None})
    )
    assert "must be null" in refused(Kind.TELEMETRY, encode({**data, "queue_depth": 0}))
    assert "field 'cpu_percent'" in refused(Kind.TELEMETRY, encode({**data, "cpu_percent": 101}))


def test_arm_command_rules() -> None:
    data = payload_dict(Kind.ARM)
    for expires in ["2025-03-01T09:30:00Z", "2025-03-01T09:00:00Z", "2025-03-02T09:30:00.5Z"]:
        text = refused(Kind.ARM, encode({**data, "expires_at": expires}))
        assert "field 'expires_at': must be after issued_at and at most 24 h later" in text
    assert "field 'expires_at': required" in refused(Kind.ARM, encode({**data, "expires_at": None}))
    end_of_time = {"issued_at": "9999-12-31T23:00:00Z", "expires_at": "9999-12-31T23:59:59Z"}
    assert parse(Kind.ARM, encode({**data, **end_of_time}))
    disarm = {**data, "participant": None}
    assert "field 'visit': must be null when disarming" in refused(Kind.ARM, encode(disarm))
    disarm["visit"] = None
    assert "field 'expires_at': must be null" in refused(Kind.ARM, encode(disarm))
    del disarm["participant"]
    assert "field 'participant': Field required" in refused(Kind.ARM, encode(disarm))


def test_arm_command_activity() -> None:
    command = examples()[Kind.ARM]
    assert isinstance(command, ArmCommand)
    assert command.active_at(T0 + timedelta(hours=1))
    assert not command.active_at(T0 + timedelta(hours=4))
    disarm = command.model_copy(update={"participant": None, "visit": None, "expires_at": None})
    assert not disarm.active_at(T0)


def test_more_errors_are_counted() -> None:
    text = refused(Kind.TELEMETRY, b'{"schema":"painav.telemetry/1"}')
    assert text.endswith("field 'at': Field required (and 4 more)")


# --- property tests --------------------------------------------------------------------------

kinds = st.sampled_from(list(Kind))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _only_message_errors(kind: Kind, payload: bytes, on: str | None = None) -> Message | None:
    try:
        return parse(kind, payload, topic=on)
    except MessageError as exc:  # TopicError included
        assert "\n" not in str(exc)
        return None


@settings(max_examples=300, deadline=None)
@given(kinds, st.binary(max_size=256))
def test_arbitrary_bytes_give_only_message_errors(kind: Kind, payload: bytes) -> None:
    assert _only_message_errors(kind, payload) is None


@settings(max_examples=200, deadline=None)
@given(kinds, json_values)
def test_arbitrary_json_gives_only_message_errors(kind: Kind, value: object) -> None:
    _only_message_errors(kind, json.dumps(value).encode())


@settings(max_examples=400, deadline=None)
@given(kinds, st.data())
def test_mutated_valid_payloads_give_only_message_errors(kind: Kind, data: st.DataObject) -> None:
    """Break one field of a valid payload, at any depth: a model-level error or a valid model."""
    payload = payload_dict(kind)
    target = payload
    while True:
        key = data.draw(st.sampled_from(sorted(target)))
        if isinstance(target[key], dict) and data.draw(st.booleans()):
            target = target[key]
            continue
        break
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        target[key] = data.draw(json_values)
    elif action == "delete":
        del target[key]
    else:
        target[data.draw(st.text(max_size=8))] = data.draw(json_values)
    on = data.draw(st.none() | st.just(topic(SITE, DEVICE, kind)) | st.text())
    _only_message_errors(kind, encode(payload), on)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_valid_message_round_trips(data: st.DataObject) -> None:
    for kind, strategy in STRATEGIES.items():
        message = data.draw(strategy)
        payload = message.to_payload()
        assert len(payload) <= MAX_PAYLOAD_BYTES[kind]
        again = MESSAGE_TYPES[kind].parse(payload)
        assert again == message
        assert again.to_payload() == payload


@pytest.mark.parametrize("model", [Status, Telemetry, Event, ArmCommand, Receipt, QcVerdict])
def test_models_refuse_python_values_of_wrong_type(model: type[Message]) -> None:
    with pytest.raises(ValueError):
        model()  # type: ignore[call-arg]


# --- the QC verdict ---------------------------------------------------------------------------


def test_qc_verdict_wire_form() -> None:
    verdict = examples()[Kind.QC]
    assert isinstance(verdict, QcVerdict)
    assert verdict.to_payload() == (
        b'{"clip_id":"cart-03-20250301T093000Z-a1b2","issued_at":"2025-03-01T09:30:20Z",'
        b'"pass":"quick","reasons":["no_face","audio_clipping"],"schema":"painav.qc/1",'
        b'"verdict":"repeat"}'
    )
    on = topic(SITE, DEVICE, Kind.QC)
    assert on == "painav/v1/ward7/cart-03/qc"
    parsed_topic, message = parse_message(on, verdict.to_payload())
    assert parsed_topic.kind is Kind.QC and parsed_topic.device == DEVICE and message == verdict


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"verdict": "repeat", "reasons": []}, "field 'reasons': at least one for check"),
        ({"verdict": "check", "reasons": []}, "field 'reasons': at least one for check"),
        ({"reasons": ["no_face", "no_face"]}, "field 'reasons': must not repeat a reason"),
        ({"reasons": ["No face"]}, "field 'reasons[0]': must be a reason code"),
        ({"reasons": [f"r{i}" for i in range(9)]}, "field 'reasons': Tuple should have at most 8"),
        ({"reasons": "no_face"}, "field 'reasons'"),
        ({"verdict": "bad"}, "field 'verdict'"),
        ({"pass": "slow"}, "field 'pass'"),
        ({"clip_id": "../etc"}, "field 'clip_id'"),
        ({"issued_at": "2025-03-01T10:30:00+01:00"}, "field 'issued_at'"),
    ],
)
def test_qc_verdict_refuses(change: dict[str, Any], expected: str) -> None:
    data = {**payload_dict(Kind.QC), **change}
    assert expected in refused(Kind.QC, encode(data), on=topic(SITE, DEVICE, Kind.QC))


def test_qc_verdict_needs_every_field_on_the_wire() -> None:
    for key in ("clip_id", "verdict", "reasons", "pass", "issued_at"):
        data = payload_dict(Kind.QC)
        del data[key]
        assert refused(Kind.QC, encode(data)).endswith(f"field '{key}': Field required")
    data = payload_dict(Kind.QC)
    data["pass_"] = data.pop("pass")  # the Python name is not the wire name
    assert "field 'pass'" in refused(Kind.QC, encode(data))


def test_a_usable_verdict_may_have_no_reasons() -> None:
    usable = QcVerdict(clip_id="c1", verdict="usable", reasons=(), pass_="full", issued_at=T0)
    assert QcVerdict.parse(usable.to_payload()) == usable
    assert json.loads(usable.to_payload())["reasons"] == []


def test_a_verdict_is_not_a_receipt_or_an_arm_command() -> None:
    payload = examples()[Kind.QC].to_payload()
    assert "is not a cmd/arm message" in refused(Kind.ARM, payload)
    assert "topic is for qc messages" in refused(Kind.RECEIPTS, payload, on="painav/v1/w/u/qc")
