"""The recorder: the unit's state machine, free of I/O.

It turns the nurse's presses, the researcher's arm commands and the passing of time into
actions — start, stop, discard a recording; show a light pattern; report an event — which the
service carries out with real hardware. Every press ends in a clip being sealed or in an event
saying why not: the machine has no path that does neither.

    idle ──arm──► armed ──press──► recording ──press/limit──► sealing ──sealed──► idle/armed
      └────────────────press──────────┘   └──long press: discarded──► idle/armed
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "Action",
    "Assignment",
    "Discard",
    "Pattern",
    "Readiness",
    "Recorder",
    "RecorderSettings",
    "Report",
    "Show",
    "Start",
    "State",
    "Stop",
]


class Pattern(enum.Enum):
    """What the status light (and optional buzzer) shows; see the README's table. The recorder
    decides it; the light backends (:mod:`daemon.hardware`) render it."""

    STARTING = "starting"  # slow blink: booting, connecting
    IDLE = "idle"  # dim steady: ready, no participant assigned
    ARMED = "armed"  # bright steady: ready for the assigned participant
    RECORDING = "recording"  # fast blink: recording
    SEALING = "sealing"  # very fast blink: finishing the clip
    REFUSED_STORAGE = "refused_storage"  # two blinks, pause: not enough free space
    REFUSED_CLOCK = "refused_clock"  # three blinks, pause: clock not synchronised
    REFUSED_HARDWARE = "refused_hardware"  # four blinks, pause: camera or microphone missing
    ERROR = "error"  # long on, short off: a clip failed, see the journal
    RECORD_AGAIN = "record_again"  # bursts of quick flashes: QC asks to repeat the last clip


class State(enum.StrEnum):
    IDLE = "idle"
    ARMED = "armed"
    RECORDING = "recording"
    SEALING = "sealing"


@dataclass(frozen=True)
class Assignment:
    """The participant the unit is armed for, from a retained arm command."""

    participant: str
    visit: str | None
    expires_at: datetime


@dataclass(frozen=True)
class Readiness:
    """What the service knows, at a press, about whether a recording can start."""

    storage_problem: str | None  # None, or a reason code such as "low_storage" or "quota"
    clock_synced: bool
    camera_present: bool
    microphone_present: bool


@dataclass(frozen=True)
class RecorderSettings:
    max_seconds: float = 60.0
    require_clock_sync: bool = True
    refusal_display_s: float = 4.0  # how long a refusal pattern shows before the normal one
    # How long "please record again" shows (from the verdict's issue) unless a press ends it;
    # a verdict older than this when it arrives changes no light: the participant has gone.
    record_again_display_s: float = 300.0


# --- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Start capturing a new clip."""

    clip_id: str
    participant: str | None
    visit: str | None
    started_at: datetime


@dataclass(frozen=True)
class Stop:
    """Stop capturing and seal the clip; the service answers with sealed() or seal_failed()."""

    clip_id: str
    reason: str  # "button", "limit", "shutdown"


@dataclass(frozen=True)
class Discard:
    """Stop capturing and throw the clip away, keeping nothing."""

    clip_id: str
    reason: str


@dataclass(frozen=True)
class Show:
    pattern: Pattern


@dataclass(frozen=True)
class Report:
    """An event for the hospital (and the journal)."""

    kind: str  # "refused", "discarded", "error", "armed", "disarmed"
    reason: str
    clip_id: str | None = None
    detail: str = ""


Action = Start | Stop | Discard | Show | Report


@dataclass
class _Recording:
    clip_id: str
    started_mono: float


@dataclass
class Recorder:
    """The state machine. Each input method returns the actions to carry out, in order.

    Times: *mono* is seconds of a monotonic clock (limits, display timers); *wall* is an aware
    UTC datetime (clip start, arm expiry).
    """

    settings: RecorderSettings
    new_clip_id: Callable[[datetime], str]
    assignment: Assignment | None = None
    _recording: _Recording | None = None
    _sealing: str | None = None
    _refusal_until: float | None = field(default=None, repr=False)
    _last_clip: str | None = field(default=None, repr=False)  # the latest clip sealed
    _again_until: float | None = field(default=None, repr=False)

    @property
    def state(self) -> State:
        if self._sealing is not None:
            return State.SEALING
        if self._recording is not None:
            return State.RECORDING
        return State.ARMED if self.assignment is not None else State.IDLE

    @property
    def clip_id(self) -> str | None:
        """The clip being recorded or sealed, if any."""
        if self._recording is not None:
            return self._recording.clip_id
        return self._sealing

    @property
    def asking_to_record_again(self) -> bool:
        """Whether the light asks the nurse to record the latest clip again."""
        return self._again_until is not None

    def _resting(self) -> Show:
        if self._again_until is not None:
            return Show(Pattern.RECORD_AGAIN)
        return Show(Pattern.ARMED if self.assignment is not None else Pattern.IDLE)

    def _refuse(self, reason: str, pattern: Pattern, mono: float, detail: str) -> list[Action]:
        self._refusal_until = mono + self.settings.refusal_display_s
        return [Show(pattern), Report("refused", reason, detail=detail)]

    # --- inputs ------------------------------------------------------------------------------

    def start_up(self) -> list[Action]:
        return [self._resting()]

    def press(self, mono: float, wall: datetime, ready: Readiness) -> list[Action]:
        """A short press: start, or stop what is recording. Ignored while sealing (the press
        that stopped the clip already has its answer coming)."""
        if self._sealing is not None:
            return []
        if self._recording is not None:
            return self._stop("button")
        self._again_until = None  # the nurse answered: whatever follows shows its own pattern
        actions: list[Action] = self._expire(wall)
        if not ready.camera_present or not ready.microphone_present:
            missing = [
                n
                for n, ok in (
                    ("camera", ready.camera_present),
                    ("microphone", ready.microphone_present),
                )
                if not ok
            ]
            return actions + self._refuse(
                "hardware_missing",
                Pattern.REFUSED_HARDWARE,
                mono,
                " and ".join(missing) + " missing",
            )
        if ready.storage_problem is not None:
            return actions + self._refuse(
                ready.storage_problem, Pattern.REFUSED_STORAGE, mono, "not enough room for a clip"
            )
        if self.settings.require_clock_sync and not ready.clock_synced:
            return actions + self._refuse(
                "clock_unsynchronised", Pattern.REFUSED_CLOCK, mono, "clock not synchronised"
            )
        self._refusal_until = None
        self._last_clip = None  # a verdict on the clip before this one changes no light now
        clip_id = self.new_clip_id(wall)
        self._recording = _Recording(clip_id, mono)
        who = self.assignment
        start = Start(clip_id, who.participant if who else None, who.visit if who else None, wall)
        return [*actions, start, Show(Pattern.RECORDING)]

    def long_press(self) -> list[Action]:
        """A long press discards the recording in progress; otherwise it does nothing."""
        if self._recording is None:
            return []
        clip_id = self._recording.clip_id
        self._recording = None
        return [
            Discard(clip_id, "discarded by the nurse"),
            Report("discarded", "long_press", clip_id, "recording discarded; nothing kept"),
            self._resting(),
        ]

    def tick(self, mono: float, wall: datetime) -> list[Action]:
        """Time passing: the recording limit, arm expiry, the end of a refusal display."""
        actions = self._expire(wall)
        rec = self._recording
        if rec is not None and mono - rec.started_mono >= self.settings.max_seconds:
            actions += self._stop("limit")
        if self._refusal_until is not None and mono >= self._refusal_until:
            self._refusal_until = None
            if self.state in (State.IDLE, State.ARMED):
                actions.append(self._resting())
        if self._again_until is not None and mono >= self._again_until:
            self._again_until = None
            if self.state in (State.IDLE, State.ARMED) and self._refusal_until is None:
                actions.append(self._resting())
        return actions

    def shutdown(self) -> list[Action]:
        """The service is stopping: seal what is being recorded."""
        return self._stop("shutdown") if self._recording is not None else []

    def capture_failed(self, detail: str) -> list[Action]:
        """Camera or microphone failed mid-recording: the clip is aborted and reported."""
        if self._recording is None:
            return []
        clip_id = self._recording.clip_id
        self._recording = None
        return [
            Discard(clip_id, detail),
            Report("error", "capture_failed", clip_id, detail),
            Show(Pattern.ERROR),
        ]

    def sealed(self, clip_id: str) -> list[Action]:
        if self._sealing != clip_id:
            return []
        self._sealing = None
        self._last_clip = clip_id
        return [self._resting()]

    def verdict(
        self, clip_id: str, verdict: str, issued_at: datetime, mono: float, wall: datetime
    ) -> list[Action]:
        """The hospital's quality-control verdict on a clip (``usable``, ``check`` or
        ``repeat``). A ``repeat`` of the latest clip sealed, issued less than
        ``record_again_display_s`` ago, shows :attr:`Pattern.RECORD_AGAIN` until the next press
        or that time has passed; a later verdict on the same clip that is not ``repeat`` takes
        the request back. Verdicts on older clips change nothing: the nurse is not asked to
        repeat a clip that a newer one has followed."""
        if clip_id != self._last_clip:
            return []
        if verdict != "repeat":
            if self._again_until is None:
                return []
            self._again_until = None
            quiet = self.state in (State.IDLE, State.ARMED) and self._refusal_until is None
            return [self._resting()] if quiet else []
        left_s = self.settings.record_again_display_s - (wall - issued_at).total_seconds()
        if left_s <= 0:
            return []
        # Never longer than the display time, whatever the verdict's clock says.
        self._again_until = mono + min(left_s, self.settings.record_again_display_s)
        if self.state in (State.IDLE, State.ARMED) and self._refusal_until is None:
            return [Show(Pattern.RECORD_AGAIN)]
        return []

    def seal_failed(self, clip_id: str, detail: str) -> list[Action]:
        if self._sealing != clip_id:
            return []
        self._sealing = None
        return [Report("error", "seal_failed", clip_id, detail), Show(Pattern.ERROR)]

    def arm(self, assignment: Assignment | None, wall: datetime) -> list[Action]:
        """A (retained) arm command: assign a participant to the next clips, or disarm. A clip
        being recorded keeps the participant it started with."""
        if assignment is not None and assignment.expires_at <= wall:
            assignment = None  # a stale retained command: arrives expired, arms nothing
        before = self.assignment
        self.assignment = assignment
        if before == assignment:
            return []
        self._again_until = None  # the request was about the participant armed before
        actions: list[Action] = []
        if assignment is None:
            actions.append(Report("disarmed", "command"))
        else:
            actions.append(Report("armed", "command"))
        if self.state in (State.IDLE, State.ARMED) and self._refusal_until is None:
            actions.append(self._resting())
        return actions

    # --- internals ---------------------------------------------------------------------------

    def _stop(self, reason: str) -> list[Action]:
        assert self._recording is not None
        clip_id = self._recording.clip_id
        self._recording = None
        self._sealing = clip_id
        return [Stop(clip_id, reason), Show(Pattern.SEALING)]

    def _expire(self, wall: datetime) -> list[Action]:
        if self.assignment is None or wall < self.assignment.expires_at:
            return []
        self.assignment = None
        self._again_until = None
        actions: list[Action] = [Report("disarmed", "expired")]
        if self.state == State.IDLE and self._refusal_until is None:
            actions.append(self._resting())
        return actions
