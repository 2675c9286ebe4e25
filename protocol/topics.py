"""painav's MQTT topics: ``painav/v1/<site>/<device>/<kind>``, their builder, parser and filters.

A topic names one unit (site id and device id, both also TLS certificate common names) and one
message kind. :data:`ROUTES` says, per kind, which way it flows, whether the broker retains it and
at what QoS it is published; the broker ACL generator and both clients read it from here.

>>> topic("ward7", "cart-03", Kind.CLIPS)
'painav/v1/ward7/cart-03/clips'
>>> parse_topic("painav/v1/ward7/cart-03/cmd/arm")
Topic(site='ward7', device='cart-03', kind=<Kind.ARM: 'cmd/arm'>)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Literal

from .errors import TopicError

__all__ = [
    "ID_PATTERN",
    "PREFIX",
    "ROUTES",
    "Direction",
    "Kind",
    "Route",
    "Topic",
    "any_site_filter",
    "parse_topic",
    "shared",
    "site_filter",
    "topic",
    "unit_filter",
    "validate_device_id",
    "validate_site_id",
]

PREFIX: Final = "painav/v1"
"""The first two levels of every painav topic: the application and the contract's major version."""

ID_PATTERN: Final = r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$"
"""Site, device, receiver and subscription-group ids: 1-32 of ``a-z 0-9 -``, no ``-`` at either
end. They are MQTT topic levels and TLS certificate common names, so no ``+ # /``, no spaces and
no upper case (certificate CNs compare case-insensitively, topics do not)."""

_ID_RE: Final = re.compile(ID_PATTERN)
_ID_RULE: Final = "must be 1-32 of a-z, 0-9 and '-', not starting or ending with '-'"
_SHOW_CHARS: Final = 80


class Kind(StrEnum):
    """A message kind: the topic levels after ``<site>/<device>/``."""

    STATUS = "status"
    CLIPS = "clips"
    EVENTS = "events"
    TELEMETRY = "telemetry"
    ARM = "cmd/arm"
    RECEIPTS = "receipts"
    QC = "qc"
    EVENT_ACKS = "event-acks"
    CRL = "crl"

    @property
    def slug(self) -> str:
        """This kind as one path-safe word (``cmd/arm`` → ``cmd-arm``): schema ids, file names."""
        return self.value.replace("/", "-")


class Direction(StrEnum):
    """Which way a kind of message flows."""

    UNIT_TO_HOSPITAL = "unit_to_hospital"
    HOSPITAL_TO_UNIT = "hospital_to_unit"


@dataclass(frozen=True)
class Route:
    """How one kind of message travels: direction, broker retention and MQTT QoS."""

    direction: Direction
    retained: bool
    qos: Literal[0, 1]


ROUTES: Final = MappingProxyType(
    {
        # Retained so that a dashboard or receiver that connects later sees the current state.
        Kind.STATUS: Route(Direction.UNIT_TO_HOSPITAL, retained=True, qos=1),
        Kind.CLIPS: Route(Direction.UNIT_TO_HOSPITAL, retained=False, qos=1),
        Kind.EVENTS: Route(Direction.UNIT_TO_HOSPITAL, retained=False, qos=1),
        # Telemetry is superseded by the next sample a minute later; losing one costs nothing.
        Kind.TELEMETRY: Route(Direction.UNIT_TO_HOSPITAL, retained=False, qos=0),
        # Retained so that a unit that was off when the researcher armed it still gets it.
        Kind.ARM: Route(Direction.HOSPITAL_TO_UNIT, retained=True, qos=1),
        Kind.RECEIPTS: Route(Direction.HOSPITAL_TO_UNIT, retained=False, qos=1),
        # Not retained: a verdict is about one clip, not the unit's state. The unit's persistent
        # session queues every verdict sent while it is away (a retained one would keep only the
        # last, and hand a stale one to every later connection). A late verdict is still shown in
        # `painav device status`; the unit's light ignores one older than its display time.
        Kind.QC: Route(Direction.HOSPITAL_TO_UNIT, retained=False, qos=1),
        # The receiver recorded these events: the unit may forget them. Not retained (each ack
        # is about its own events); an ack the unit misses only makes it publish them again.
        Kind.EVENT_ACKS: Route(Direction.HOSPITAL_TO_UNIT, retained=False, qos=1),
        # Retained: a unit that connects later (or restarts) gets the site root's newest CRL.
        Kind.CRL: Route(Direction.HOSPITAL_TO_UNIT, retained=True, qos=1),
    }
)
"""Per kind: direction, retained or not, QoS. Every kind has exactly one route."""


@dataclass(frozen=True)
class Topic:
    """A parsed painav topic; ``str(topic)`` gives the topic string back."""

    site: str
    device: str
    kind: Kind

    def __str__(self) -> str:
        return f"{PREFIX}/{self.site}/{self.device}/{self.kind.value}"


def _show(value: str) -> str:
    """*value* quoted for an error message, cut short so that a huge input stays one line."""
    if len(value) > _SHOW_CHARS:
        return repr(value[:_SHOW_CHARS]) + "…"
    return repr(value)


def _validate_id(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise TopicError(f"{what} must be a string, not {type(value).__name__}")
    if not _ID_RE.fullmatch(value):
        raise TopicError(f"{what} {_show(value)}: {_ID_RULE}")
    return value


def validate_site_id(value: object) -> str:
    """Return *value* if it is a valid site id (:data:`ID_PATTERN`), else raise TopicError."""
    return _validate_id("site id", value)


def validate_device_id(value: object) -> str:
    """Return *value* if it is a valid device id (:data:`ID_PATTERN`), else raise TopicError."""
    return _validate_id("device id", value)


def _kind(value: object) -> Kind:
    if isinstance(value, Kind):
        return value
    raise TopicError(f"message kind must be a Kind, not {type(value).__name__}")


def topic(site: str, device: str, kind: Kind) -> str:
    """The topic of *kind* messages for one unit: ``painav/v1/<site>/<device>/<kind>``."""
    return str(Topic(validate_site_id(site), validate_device_id(device), _kind(kind)))


def parse_topic(value: object) -> Topic:
    """Parse a painav topic string; raise TopicError, naming what is wrong, on anything else.

    Refused: a non-string, another prefix or version, wildcards (a filter is not a topic), empty
    or extra levels, invalid site or device ids, unknown kinds.
    """
    if not isinstance(value, str):
        raise TopicError(f"topic must be a string, not {type(value).__name__}")
    shown = _show(value)
    if "+" in value or "#" in value:
        raise TopicError(f"topic {shown}: contains a wildcard; a filter is not a topic")
    levels = value.split("/")
    if len(levels) < 5 or levels[0] != "painav":
        raise TopicError(f"topic {shown}: not of the form {PREFIX}/<site>/<device>/<kind>")
    if levels[1] != "v1":
        raise TopicError(f"topic {shown}: unsupported protocol version (this build reads v1)")
    if "" in levels:
        raise TopicError(f"topic {shown}: empty topic level")
    site, device, leaf = levels[2], levels[3], "/".join(levels[4:])
    try:
        kind = Kind(leaf)
    except ValueError:
        kinds = ", ".join(k.value for k in Kind)
        raise TopicError(f"topic {shown}: unknown message kind (known: {kinds})") from None
    try:
        return Topic(validate_site_id(site), validate_device_id(device), kind)
    except TopicError as exc:
        raise TopicError(f"topic {shown}: {exc}") from None


def unit_filter(site: str, device: str) -> str:
    """The filter for every kind of one unit: ``painav/v1/<site>/<device>/#``."""
    return f"{PREFIX}/{validate_site_id(site)}/{validate_device_id(device)}/#"


def site_filter(site: str, kind: Kind) -> str:
    """The filter for one kind from every unit of a site: ``painav/v1/<site>/+/<kind>``."""
    return f"{PREFIX}/{validate_site_id(site)}/+/{_kind(kind).value}"


def any_site_filter(kind: Kind) -> str:
    """The filter for one kind from every unit of every site: ``painav/v1/+/+/<kind>``."""
    return f"{PREFIX}/+/+/{_kind(kind).value}"


def shared(group: str, topic_filter: str) -> str:
    """An MQTT v5 shared subscription, ``$share/<group>/<filter>``: each message goes to one of
    the group's subscribers, so several receivers split the work.

    *group* follows :data:`ID_PATTERN`; *topic_filter* must be a painav filter or topic.
    """
    _validate_id("subscription group", group)
    if not isinstance(topic_filter, str):
        raise TopicError(f"topic filter must be a string, not {type(topic_filter).__name__}")
    if not topic_filter.startswith(PREFIX + "/"):
        raise TopicError(f"topic filter {_show(topic_filter)}: does not start with {PREFIX}/")
    return f"$share/{group}/{topic_filter}"
