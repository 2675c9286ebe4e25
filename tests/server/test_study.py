"""Participants, consent and visits in the catalog (SQLite and PostgreSQL): the study's rules
refuse bad input in one line and change nothing; every change is audited."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest

from protocol.messages import ClipAnnouncement
from server.catalog import Catalog, StudyError
from server.catalog.study_rules import pseudonym_problem
from tests.protocol.message_examples import MINISIGN, manifest

TODAY = date(2026, 11, 29)


def _clock() -> datetime:
    return datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


@pytest.fixture
def study(db_url: str) -> Iterator[Catalog]:
    with Catalog(db_url, actor="datamanager", clock=_clock) as opened:
        yield opened


def _enrol(study: Catalog, pseudonym: str = "PAIN-0042", group: str = "pain") -> None:
    study.enrol(
        pseudonym,
        group=group,
        language="nl",
        enrolled_on=TODAY,
        consented_on=TODAY,
        form_version="v2.1",
    )


@pytest.mark.parametrize(
    "pseudonym",
    [
        "Jan Jansen",  # a name
        "123456789",  # a hospital number or BSN
        "PAIN-140385",  # a birth date (ddmmyy)
        "PAIN-850314",  # yymmdd
        "pain-0042",
        "PAIN-42",
    ],
)
def test_pseudonyms_that_could_identify_someone_are_refused(pseudonym: str) -> None:
    assert pseudonym_problem(pseudonym) is not None
    assert pseudonym_problem("PAIN-0042") is None
    assert pseudonym_problem("CTRL-999999") is None  # six digits that are no date


def test_enrol_with_consent_and_open_visits(study: Catalog) -> None:
    _enrol(study)
    first = study.open_visit("PAIN-0042", on=TODAY)
    assert first.label == "V1"
    with pytest.raises(StudyError, match="V1 is still open"):
        study.open_visit("PAIN-0042", on=TODAY)
    study.close_visit("PAIN-0042", 1)
    second = study.open_visit("PAIN-0042", on=TODAY)
    participant = study.participant("PAIN-0042")
    assert participant.consented and participant.group == "pain"
    assert [v.number for v in participant.visits] == [1, 2]
    assert participant.open_visit == second
    assert study.armable_visit("PAIN-0042", 2) == second
    with pytest.raises(StudyError, match="visit 1 is closed"):
        study.armable_visit("PAIN-0042", 1)
    actions = [e.action for e in study.audit.entries()]
    assert actions == [
        "participant_enrolled",
        "visit_opened",
        "visit_closed",
        "visit_opened",
    ]
    assert all(e.actor == "datamanager" for e in study.audit.entries())
    assert study.audit.verify().ok


def test_a_control_has_one_visit(study: Catalog) -> None:
    _enrol(study, "CTRL-0007", group="control")
    study.open_visit("CTRL-0007", on=TODAY)
    study.close_visit("CTRL-0007", 1)
    before = study.audit.head()
    with pytest.raises(StudyError, match="control: one visit only"):
        study.open_visit("CTRL-0007", on=TODAY)
    assert [v.number for v in study.participant("CTRL-0007").visits] == [1]
    assert study.audit.head() == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pseudonym": "PAIN-140385"}, "reads as a date"),
        ({"group": "cases"}, "group 'cases'"),
        ({"language": "de"}, "nl \\(Dutch\\) or en"),
        ({"form_version": "v 2"}, "consent form version"),
        ({"consented_on": date(2027, 1, 1)}, "in the future"),
        ({"enrolled_on": date(2027, 1, 1)}, "in the future"),
    ],
)
def test_bad_enrolment_is_one_line_and_changes_nothing(
    study: Catalog, change: dict[str, object], message: str
) -> None:
    values: dict[str, object] = {
        "pseudonym": "PAIN-0001",
        "group": "pain",
        "language": "en",
        "enrolled_on": TODAY,
        "consented_on": TODAY,
        "form_version": "v1",
    } | change
    pseudonym = values.pop("pseudonym")
    with pytest.raises(StudyError, match=message) as raised:
        study.enrol(str(pseudonym), **values)  # type: ignore[arg-type]
    assert "\n" not in str(raised.value)
    assert study.participants() == []
    assert study.audit.head().seq == 0


def test_unknown_and_duplicate_participants_are_refused(study: Catalog) -> None:
    with pytest.raises(StudyError, match="'PAIN-0099' is not enrolled"):
        study.open_visit("PAIN-0099", on=TODAY)
    _enrol(study)
    with pytest.raises(StudyError, match="enrolled already"):
        _enrol(study)
    assert len(study.participants()) == 1


def test_a_newer_consent_form_replaces_the_one_in_force(study: Catalog) -> None:
    _enrol(study)
    study.record_consent("PAIN-0042", consented_on=TODAY, form_version="v3")
    consent = study.participant("PAIN-0042").consent
    assert consent is not None and consent.form_version == "v3"


def test_a_clip_recorded_unarmed_is_assigned_once_and_audited(study: Catalog) -> None:
    digest = hashlib.sha256(b"clip").hexdigest()
    unarmed = ClipAnnouncement(
        manifest=manifest(
            clip_id="cart-03-20261129T090000Z-ab12",
            device_id="cart-03",
            sha256=digest,
            size_bytes=1000,
            participant=None,
            visit=None,
        ),
        signature=MINISIGN,
        url="https://cart-03.ward7.example:8443/v1/clips/cart-03-20261129T090000Z-ab12.age",
    )
    clip, _ = study.record_announcement(unarmed, received_at=_clock())
    _enrol(study)
    with pytest.raises(StudyError, match="has no visit 1"):
        study.assign_clip(clip.clip_id, "PAIN-0042", 1)
    study.open_visit("PAIN-0042", on=TODAY)
    assigned = study.assign_clip(clip.clip_id, "PAIN-0042", 1)
    assert (assigned.participant, assigned.visit) == ("PAIN-0042", "V1")
    with pytest.raises(StudyError, match="PAIN-0042's already"):
        study.assign_clip(clip.clip_id, "PAIN-0042", 1)
    [entry] = study.audit.entries(clip_id=clip.clip_id)[-1:]
    assert entry.action == "clip_assigned" and entry.detail == {
        "pseudonym": "PAIN-0042",
        "visit": 1,
    }


def test_a_unit_is_armed_only_for_a_consented_participants_open_visit(study: Catalog) -> None:
    _enrol(study)
    with pytest.raises(StudyError, match="visit 1 is not opened: not armed"):
        study.request_arm("cart-01", "PAIN-0042", 1)
    study.open_visit("PAIN-0042", on=TODAY)
    with pytest.raises(StudyError, match="not a unit id"):
        study.request_arm("Cart 1", "PAIN-0042", 1)
    with pytest.raises(StudyError, match="at most"):
        study.request_arm("cart-01", "PAIN-0042", 1, hours=25)
    first = study.request_arm("cart-01", "PAIN-0042", 1, hours=2)
    assert (first.visit, first.expires_at) == ("V1", _clock() + timedelta(hours=2))
    study.request_arm("cart-02", "PAIN-0042", 1)
    assert study.armed_for("PAIN-0042") == ["cart-01", "cart-02"]
    study.request_disarm("cart-02")
    assert [(p.device_id, p.pseudonym) for p in study.pending_arms()] == [
        ("cart-01", "PAIN-0042"), ("cart-02", None)
    ]  # fmt: skip
    study.mark_arm_sent(first.id, at=_clock())
    assert [p.device_id for p in study.pending_arms()] == ["cart-02"]
    study.close_visit("PAIN-0042", 1)
    with pytest.raises(StudyError, match="visit 1 is closed"):
        study.request_arm("cart-01", "PAIN-0042", 1)
    actions = [e.action for e in study.audit.entries()]
    assert actions.count("arm_requested") == 2 and actions.count("disarm_requested") == 1
