"""A clip's manifest: what a researcher needs to trust a recording, announced with the clip.

The manifest describes the sealed clip (the age file): who and when, how long, what the media
tracks hold and how well they were captured, and the ciphertext's size and SHA-256, which the
receiver checks after pulling. It names no person: the participant is a pseudonymous study id.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from .message_codec import Part
from .message_fields import (
    MAX_COUNT,
    AgeRecipient,
    ClipId,
    DeviceId,
    Pseudonym,
    Sha256Hex,
    SiteId,
    SoftwareVersion,
    Timestamp,
    VisitLabel,
    clip_id_owner,
)

__all__ = [
    "MAX_CLIP_BYTES",
    "MAX_CLIP_DURATION_S",
    "MAX_RECIPIENTS",
    "AudioTrack",
    "ClipManifest",
    "VideoTrack",
]

MAX_CLIP_DURATION_S: Final = 60.5
"""A recording stops at 60 s; the half second covers the last frame and audio block."""

MAX_CLIP_BYTES: Final = 512 << 20
"""The largest ciphertext a unit may announce: 512 MiB. The most a unit can be configured to
record is 60.5 s (:data:`MAX_CLIP_DURATION_S`) of video at 50 Mbit/s (the device config's
``camera.bitrate_bps`` bound) and 16-bit PCM audio at 192 kHz on 2 channels (6.1 Mbit/s, the
``microphone`` bounds): 56.2 Mbit/s, 425 MB. The encoder may overshoot its target for a while,
and the container and the age envelope (16 bytes a 64 KiB chunk) add under 1 %: 512 MiB leaves
26 % over that. An honest unit never comes near it (the default 4 Mbit/s makes ~31 MB); a
larger announced size is refused when the announcement is parsed, so that no receiver reserves
spool for it."""

MAX_RECIPIENTS: Final = 4


def _distinct(recipients: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(recipients)) != len(recipients):
        raise PydanticCustomError("painav_duplicate", "must not list a recipient twice")
    return recipients


class VideoTrack(Part):
    """The clip's video track as recorded: codec, picture size, rate and frame counts."""

    codec: Literal["h264"] = Field(description="Video codec.")
    width: int = Field(ge=16, le=8192, description="Picture width in pixels.")
    height: int = Field(ge=16, le=8192, description="Picture height in pixels.")
    frame_rate_hz: float = Field(gt=0, le=240, description="Nominal frame rate in frames/s.")
    frames: int = Field(ge=0, le=MAX_COUNT, description="Frames written to the file.")
    dropped_frames: int = Field(
        ge=0, le=MAX_COUNT, description="Frames the camera delivered late or not at all."
    )


class AudioTrack(Part):
    """The clip's audio track as recorded: codec, rate, channels and capture overruns."""

    codec: Literal["opus", "aac", "flac", "pcm_s16le"] = Field(description="Audio codec.")
    sample_rate_hz: int = Field(ge=8000, le=192000, description="Sample rate in Hz.")
    channels: int = Field(ge=1, le=8, description="Number of audio channels.")
    frames: int | None = Field(
        default=None, ge=0, le=MAX_COUNT, description="Sample frames written, if counted."
    )
    overruns: int = Field(
        ge=0, le=MAX_COUNT, description="Capture buffer overruns (audio lost) while recording."
    )


class ClipManifest(Part):
    """The manifest of one sealed clip, as the unit announces it.

    ``size_bytes`` and ``sha256`` are of the ciphertext (the age file the receiver pulls), not
    of the media inside, which the unit never sees again once sealed.
    """

    clip_id: ClipId
    site_id: SiteId
    device_id: DeviceId
    participant: Pseudonym | None = Field(
        description="Pseudonymous study id of the participant; null if the unit was not armed."
    )
    visit: VisitLabel | None = Field(default=None, description="Visit label, if armed with one.")
    started_at: Timestamp = Field(description="When the first frame was captured.")
    duration_s: float = Field(gt=0, le=MAX_CLIP_DURATION_S, description="Duration in seconds.")
    container: Literal["matroska", "mp4"] = Field(
        description="Media container inside the envelope: Matroska or fragmented MP4."
    )
    video: VideoTrack
    audio: AudioTrack
    av_offset_ms: float = Field(
        ge=-10_000,
        le=10_000,
        description="Measured start of audio minus start of video, in ms (positive: audio late).",
    )
    clock_synced: bool = Field(description="Whether the unit's clock was NTP-synchronised.")
    stop_reason: Literal["button", "limit", "shutdown", "low_storage"] = Field(
        description="Why recording stopped: the nurse's button, the 60 s limit, a clean "
        "shutdown, or storage running out."
    )
    software_version: SoftwareVersion
    size_bytes: int = Field(
        gt=0, le=MAX_CLIP_BYTES, description="Size of the ciphertext in bytes (at most 512 MiB)."
    )
    sha256: Sha256Hex = Field(description="SHA-256 of the ciphertext.")
    recipients: Annotated[
        tuple[AgeRecipient, ...],
        Field(min_length=1, max_length=MAX_RECIPIENTS),
        AfterValidator(_distinct),
    ] = Field(description="age recipients the clip is encrypted to (data key, maybe escrow).")

    @model_validator(mode="after")
    def _clip_of_its_own_unit(self) -> ClipManifest:
        # A unit names only its own clips: otherwise one unit could announce another's clip id
        # first and take it (the catalog keys clips by id). The whole id is checked, not a
        # prefix: device 'cart' must not own 'cart-1-...'.
        if clip_id_owner(self.clip_id) != self.device_id:
            raise PydanticCustomError(
                "painav_clip_owner",
                "clip_id must be '{device_id}-<yyyymmddThhmmssZ>-<hex>': a unit announces "
                "only clips it named itself",
                {"device_id": self.device_id},
            )
        return self
