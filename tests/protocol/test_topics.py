"""Tests of protocol.topics: building, parsing and filtering painav topics, and the route table."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol.topics
from protocol.errors import MessageError, TopicError
from protocol.topics import (
    ROUTES,
    Direction,
    Kind,
    Topic,
    any_site_filter,
    parse_topic,
    shared,
    site_filter,
    topic,
    unit_filter,
    validate_device_id,
    validate_site_id,
)

from .message_examples import ids


@pytest.mark.parametrize("kind", list(Kind))
def test_topic_builds_and_parses_back(kind: Kind) -> None:
    text = topic("ward7", "cart-03", kind)
    assert text == f"painav/v1/ward7/cart-03/{kind.value}"
    assert parse_topic(text) == Topic("ward7", "cart-03", kind)
    assert str(parse_topic(text)) == text


def test_module_examples_run() -> None:
    assert doctest.testmod(protocol.topics).failed == 0


def test_kind_values_and_slugs() -> None:
    assert [k.value for k in Kind] == [
        "status",
        "clips",
        "events",
        "telemetry",
        "cmd/arm",
        "receipts",
        "qc",
        "event-acks",
        "crl",
    ]
    assert Kind.ARM.slug == "cmd-arm"
    assert Kind.STATUS.slug == "status"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("painav/v1/ward7/cart-03", "not of the form"),
        ("other/v1/ward7/cart-03/status", "not of the form"),
        ("painav/v2/ward7/cart-03/status", "unsupported protocol version"),
        ("painav/v1/ward7/cart-03/status/extra", "unknown message kind"),
        ("painav/v1/ward7/cart-03/cmd", "unknown message kind"),
        ("painav/v1/ward7/cart-03/cmd/disarm", "unknown message kind"),
        ("painav/v1/ward7/cart-03/Status", "unknown message kind"),
        ("painav/v1/ward7/+/status", "wildcard"),
        ("painav/v1/ward7/cart-03/#", "wildcard"),
        ("painav/v1//cart-03/status", "empty topic level"),
        ("painav/v1/ward7/cart-03/cmd//arm", "empty topic level"),
        ("/painav/v1/ward7/cart-03/status", "not of the form"),
        ("painav/v1/Ward7/cart-03/status", "site id 'Ward7'"),
        ("painav/v1/ward7/-cart/status", "device id '-cart'"),
        ("painav/v1/ward7/cart-/status", "device id 'cart-'"),
        ("painav/v1/ward7/cart 03/status", "device id 'cart 03'"),
        (f"painav/v1/{'a' * 33}/cart-03/status", "site id"),
        ("", "not of the form"),
    ],
)
def test_parse_topic_refuses(value: str, expected: str) -> None:
    with pytest.raises(TopicError, match=expected) as caught:
        parse_topic(value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("value", [None, b"painav/v1/ward7/cart-03/status", 7, ["painav"]])
def test_parse_topic_refuses_non_strings(value: object) -> None:
    with pytest.raises(TopicError, match="topic must be a string"):
        parse_topic(value)


def test_topic_error_is_a_message_error_and_value_error() -> None:
    with pytest.raises(MessageError):
        parse_topic("nope")
    with pytest.raises(ValueError):
        parse_topic("nope")


def test_long_topic_is_cut_short_in_the_error() -> None:
    with pytest.raises(TopicError) as caught:
        parse_topic("x" * 10_000)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("good", ["a", "ward7", "cart-03", "0", "a" * 32, "a-b-c"])
def test_valid_ids(good: str) -> None:
    assert validate_site_id(good) == good
    assert validate_device_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "A", "-a", "a-", "a" * 33, "a b", "a/b", "a+b", "a#b", "ward7\n", "é", "a_b", "a.b"]
)
def test_invalid_ids(bad: str) -> None:
    with pytest.raises(TopicError, match="site id"):
        validate_site_id(bad)
    with pytest.raises(TopicError, match="device id"):
        validate_device_id(bad)


def test_builders_validate_their_ids() -> None:
    with pytest.raises(TopicError, match="device id"):
        topic("ward7", "Cart 3", Kind.STATUS)
    with pytest.raises(TopicError, match="site id"):
        unit_filter("+", "cart-03")
    with pytest.raises(TopicError, match="Kind"):
        topic("ward7", "cart-03", "status")  # type: ignore[arg-type]


def test_filters() -> None:
    assert unit_filter("ward7", "cart-03") == "painav/v1/ward7/cart-03/#"
    assert site_filter("ward7", Kind.CLIPS) == "painav/v1/ward7/+/clips"
    assert site_filter("ward7", Kind.ARM) == "painav/v1/ward7/+/cmd/arm"
    assert any_site_filter(Kind.EVENTS) == "painav/v1/+/+/events"


def test_shared_subscription() -> None:
    assert (
        shared("receivers", site_filter("ward7", Kind.CLIPS))
        == "$share/receivers/painav/v1/ward7/+/clips"
    )
    with pytest.raises(TopicError, match="subscription group"):
        shared("a/b", "painav/v1/+/+/clips")
    with pytest.raises(TopicError, match="does not start with"):
        shared("receivers", "$share/x/painav/v1/+/+/clips")


def test_routes_cover_every_kind() -> None:
    assert set(ROUTES) == set(Kind)
    assert {k for k, r in ROUTES.items() if r.retained} == {Kind.STATUS, Kind.ARM, Kind.CRL}
    assert {k for k, r in ROUTES.items() if r.direction is Direction.HOSPITAL_TO_UNIT} == {
        Kind.ARM,
        Kind.RECEIPTS,
        Kind.QC,
        Kind.EVENT_ACKS,
        Kind.CRL,
    }
    assert {k for k, r in ROUTES.items() if r.qos == 0} == {Kind.TELEMETRY}


@settings(max_examples=300, deadline=None)
@given(st.text() | st.builds(lambda rest: "painav/v1/" + rest, st.text()))
def test_parse_topic_only_raises_topic_error(value: str) -> None:
    try:
        parsed = parse_topic(value)
    except TopicError as exc:
        assert "\n" not in str(exc)
    else:
        assert str(parsed) == value


@settings(max_examples=100, deadline=None)
@given(st.none() | st.integers() | st.binary() | st.lists(st.text()))
def test_parse_topic_refuses_any_non_string(value: object) -> None:
    with pytest.raises(TopicError):
        parse_topic(value)


@settings(max_examples=200, deadline=None)
@given(ids, ids, st.sampled_from(list(Kind)))
def test_every_valid_topic_round_trips(site: str, device: str, kind: Kind) -> None:
    assert parse_topic(topic(site, device, kind)) == Topic(site, device, kind)
