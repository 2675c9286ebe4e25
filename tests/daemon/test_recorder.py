"""The recorder state machine, without hardware: every press ends in a clip or a report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.hardware.base import Pattern
from daemon.recorder import (
    Action,
    Assignment,
    Discard,
    Readiness,
    Recorder,
    RecorderSettings,
    Report,
    Show,
    Start,
    State,
    Stop,
)

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
READY = Readiness(None, True, True, True)


def recorder(**kw: object) -> Recorder:
    counter = iter(range(10_000))
    return Recorder(
        RecorderSettings(**kw),  # type: ignore[arg-type]
        new_clip_id=lambda wall: f"cart-01-{wall:%Y%m%dT%H%M%SZ}-{next(counter):04x}",
    )


def kinds(actions: list[Action]) -> list[type]:
    return [type(a) for a in actions]


def test_press_records_press_stops_and_seals() -> None:
    r = recorder()
    assert r.start_up() == [Show(Pattern.IDLE)]
    start = r.press(0.0, T0, READY)
    assert kinds(start) == [Start, Show] and r.state == State.RECORDING
    clip = start[0]
    assert isinstance(clip, Start) and clip.participant is None  # unassigned clip
    stop = r.press(5.0, T0, READY)
    assert stop == [Stop(clip.clip_id, "button"), Show(Pattern.SEALING)]
    assert r.state == State.SEALING
    assert r.press(5.5, T0, READY) == []  # presses while sealing are absorbed
    assert r.sealed(clip.clip_id) == [Show(Pattern.IDLE)] and r.state == State.IDLE


def test_recording_stops_itself_at_the_limit() -> None:
    r = recorder(max_seconds=60)
    clip = r.press(100.0, T0, READY)[0]
    assert isinstance(clip, Start)
    assert r.tick(159.9, T0) == []
    assert r.tick(160.0, T0) == [Stop(clip.clip_id, "limit"), Show(Pattern.SEALING)]


def test_long_press_discards_and_reports() -> None:
    r = recorder()
    clip = r.press(0.0, T0, READY)[0]
    actions = r.long_press()
    assert isinstance(clip, Start)
    assert actions[0] == Discard(clip.clip_id, "discarded by the nurse")
    assert isinstance(actions[1], Report) and actions[1].kind == "discarded"
    assert r.state == State.IDLE
    assert r.long_press() == []  # nothing to discard


@pytest.mark.parametrize(
    ("ready", "reason", "pattern"),
    [
        (Readiness("low_storage", True, True, True), "low_storage", Pattern.REFUSED_STORAGE),
        (Readiness("quota", True, True, True), "quota", Pattern.REFUSED_STORAGE),
        (Readiness(None, False, True, True), "clock_unsynchronised", Pattern.REFUSED_CLOCK),
        (Readiness(None, True, False, True), "hardware_missing", Pattern.REFUSED_HARDWARE),
        (Readiness(None, True, True, False), "hardware_missing", Pattern.REFUSED_HARDWARE),
    ],
)
def test_refusals_show_a_pattern_and_report(ready: Readiness, reason: str, pattern: Pattern):
    r = recorder()
    actions = r.press(0.0, T0, ready)
    assert actions[0] == Show(pattern)
    assert isinstance(actions[1], Report) and (actions[1].kind, actions[1].reason) == (
        "refused",
        reason,
    )
    assert r.state == State.IDLE
    assert r.tick(1.0, T0) == []
    assert r.tick(4.0, T0) == [Show(Pattern.IDLE)]  # back to the resting pattern


def test_clock_sync_can_be_waived() -> None:
    r = recorder(require_clock_sync=False)
    assert kinds(r.press(0.0, T0, Readiness(None, False, True, True))) == [Start, Show]


def test_arming_assigns_the_next_clips_until_expiry() -> None:
    r = recorder()
    who = Assignment("PAIN-0042", "v1", T0 + timedelta(hours=2))
    assert r.arm(who, T0)[-1] == Show(Pattern.ARMED) and r.state == State.ARMED
    start = r.press(0.0, T0, READY)[0]
    assert isinstance(start, Start) and (start.participant, start.visit) == ("PAIN-0042", "v1")
    # Disarming mid-recording does not change the clip in progress.
    r.arm(None, T0)
    r.press(1.0, T0, READY)
    r.sealed(start.clip_id)
    assert r.state == State.IDLE
    r.arm(who, T0)
    expired = r.tick(10.0, T0 + timedelta(hours=2))
    assert Report("disarmed", "expired") in expired and r.state == State.IDLE


def test_a_stale_retained_arm_command_arms_nothing() -> None:
    r = recorder()
    r.arm(Assignment("PAIN-0042", None, T0 - timedelta(seconds=1)), T0)
    assert r.state == State.IDLE


def test_capture_failure_and_seal_failure_are_reported() -> None:
    r = recorder()
    clip = r.press(0.0, T0, READY)[0]
    assert isinstance(clip, Start)
    failed = r.capture_failed("camera stopped delivering frames")
    assert kinds(failed) == [Discard, Report, Show] and r.state == State.IDLE
    clip = r.press(1.0, T0, READY)[0]
    assert isinstance(clip, Start)
    r.press(2.0, T0, READY)
    actions = r.seal_failed(clip.clip_id, "disk full")
    assert actions[0] == Report("error", "seal_failed", clip.clip_id, "disk full")


def test_shutdown_seals_what_is_recording() -> None:
    r = recorder()
    clip = r.press(0.0, T0, READY)[0]
    assert isinstance(clip, Start)
    assert r.shutdown() == [Stop(clip.clip_id, "shutdown"), Show(Pattern.SEALING)]
    assert r.shutdown() == []


def sealed_clip(r: Recorder, mono: float = 0.0) -> str:
    """Record and seal one clip; its id."""
    start = r.press(mono, T0, READY)[0]
    assert isinstance(start, Start)
    r.press(mono + 5.0, T0, READY)
    assert r.sealed(start.clip_id)[-1] in (Show(Pattern.IDLE), Show(Pattern.ARMED))
    return start.clip_id


def test_a_repeat_verdict_on_the_latest_clip_asks_to_record_again_until_a_press() -> None:
    r = recorder()
    clip_id = sealed_clip(r)
    issued = T0 + timedelta(seconds=20)
    assert r.verdict(clip_id, "repeat", issued, 30.0, issued) == [Show(Pattern.RECORD_AGAIN)]
    assert r.asking_to_record_again and r.state == State.IDLE
    assert r.tick(100.0, issued) == []  # still asking
    actions = r.press(110.0, issued, READY)  # the nurse records again
    assert kinds(actions) == [Start, Show] and actions[-1] == Show(Pattern.RECORDING)
    assert not r.asking_to_record_again


def test_the_request_ends_by_itself_after_the_display_time() -> None:
    r = recorder(record_again_display_s=300.0)
    clip_id = sealed_clip(r)
    assert r.verdict(clip_id, "repeat", T0, 10.0, T0 + timedelta(seconds=60)) == [
        Show(Pattern.RECORD_AGAIN)
    ]
    assert r.tick(249.0, T0) == []  # 300 s from the verdict's issue, 60 s of which had passed
    assert r.tick(250.0, T0) == [Show(Pattern.IDLE)]
    assert not r.asking_to_record_again


def test_verdicts_that_change_no_light() -> None:
    r = recorder()
    first = sealed_clip(r)
    second = sealed_clip(r, 20.0)
    late = T0 + timedelta(seconds=301)
    assert r.verdict(first, "repeat", T0, 30.0, T0) == []  # an older clip: a newer one followed
    assert r.verdict(second, "repeat", T0, 30.0, late) == []  # too old: the participant has gone
    assert r.verdict(second, "check", T0, 30.0, T0) == []
    assert r.verdict(second, "usable", T0, 30.0, T0) == []
    assert r.verdict("another", "repeat", T0, 30.0, T0) == []
    assert not r.asking_to_record_again


def test_a_later_verdict_on_the_same_clip_takes_the_request_back() -> None:
    r = recorder()
    clip_id = sealed_clip(r)
    assert r.verdict(clip_id, "repeat", T0, 30.0, T0) == [Show(Pattern.RECORD_AGAIN)]
    assert r.verdict(clip_id, "usable", T0, 40.0, T0) == [Show(Pattern.IDLE)]
    assert not r.asking_to_record_again


def test_no_request_while_recording_or_for_a_clip_before_a_new_recording() -> None:
    r = recorder()
    clip_id = sealed_clip(r)
    r.press(30.0, T0, READY)  # recording the next clip
    assert r.verdict(clip_id, "repeat", T0, 31.0, T0) == []
    assert r.state == State.RECORDING and not r.asking_to_record_again


def test_arming_for_another_participant_ends_the_request() -> None:
    r = recorder()
    clip_id = sealed_clip(r)
    r.verdict(clip_id, "repeat", T0, 30.0, T0)
    who = Assignment("PAIN-0002", None, T0 + timedelta(hours=1))
    assert r.arm(who, T0)[-1] == Show(Pattern.ARMED)
    assert not r.asking_to_record_again


def test_a_refusal_shows_over_the_request_and_the_request_is_over() -> None:
    r = recorder()
    clip_id = sealed_clip(r)
    r.verdict(clip_id, "repeat", T0, 30.0, T0)
    actions = r.press(40.0, T0, Readiness("low_storage", True, True, True))
    assert Show(Pattern.REFUSED_STORAGE) in actions
    assert r.tick(45.0, T0) == [Show(Pattern.IDLE)]


EVENTS = st.sampled_from(
    ["press", "long", "tick", "sealed", "fail", "arm", "disarm", "bad", "repeat", "usable"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENTS, max_size=40))
def test_every_press_ends_in_a_clip_or_a_report(events: list[str]) -> None:
    """Whatever happens, each press that starts a clip ends in Stop or Discard (then a seal
    result), and each press that does not start or stop one is reported or absorbed while
    sealing."""
    r = recorder()
    mono, started, ended = 0.0, set(), set()
    sealing: str | None = None
    last_sealed: str | None = None
    for event in events:
        mono += 7.0
        if event == "press":
            before = r.state
            actions = r.press(mono, T0, READY)
            if before in (State.IDLE, State.ARMED):
                assert any(isinstance(a, Start) for a in actions)
        elif event == "bad":
            actions = r.press(mono, T0, Readiness("low_storage", True, True, True))
            if r.state in (State.IDLE, State.ARMED):
                assert any(isinstance(a, Report) and a.kind == "refused" for a in actions)
        elif event == "long":
            actions = r.long_press()
        elif event == "tick":
            actions = r.tick(mono, T0)
        elif event == "sealed" and sealing:
            actions = r.sealed(sealing)
        elif event == "fail" and sealing:
            actions = r.seal_failed(sealing, "x")
        elif event == "arm":
            actions = r.arm(Assignment("PAIN-0001", None, T0 + timedelta(hours=1)), T0)
        elif event in ("repeat", "usable"):
            actions = r.verdict(last_sealed or "none", event, T0, mono, T0)
        else:
            actions = r.arm(None, T0)
        shown = [a.pattern for a in actions if isinstance(a, Show)]
        if r.state in (State.RECORDING, State.SEALING):
            # A verdict never hides that a recording is running or being finished.
            assert Pattern.RECORD_AGAIN not in shown
        for a in actions:
            if isinstance(a, Start):
                started.add(a.clip_id)
            elif isinstance(a, Stop):
                sealing = a.clip_id
            elif isinstance(a, Discard):
                ended.add(a.clip_id)
        if event in ("sealed", "fail") and sealing and r.state != State.SEALING:
            ended.add(sealing)
            last_sealed = sealing if event == "sealed" else last_sealed
            sealing = None
    if sealing:
        ended.add(sealing)  # its seal result is still to come
    if r.clip_id is not None and r.state == State.RECORDING:
        ended |= {a.clip_id for a in r.shutdown() if isinstance(a, Stop)}
    assert started == ended
