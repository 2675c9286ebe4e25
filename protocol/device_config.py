"""The unit's config file (``device.toml``): one typed model per section, unknown keys refused.

The only place for its keys, defaults and bounds: the daemon loads it (:mod:`daemon.config`),
its hardware backends take their sections as they are, and provisioning and the demo write it
by serialising these models (:func:`protocol.tomlconfig.dump_toml`). A bad file stops the daemon
at start-up with one line naming the file, the key and the problem, e.g. ``device.toml:
[recorder] max_seconds: must be at most 60``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .message_fields import DeviceId, ReceiverId, SiteId

__all__ = [
    "ButtonSection",
    "CameraSection",
    "ClipServerSection",
    "ControlSection",
    "DeviceConfig",
    "KeysSection",
    "LightSection",
    "MicrophoneSection",
    "MqttSection",
    "OutboxSection",
    "RecorderSection",
    "UnitSection",
]

Port = Annotated[int, Field(ge=1, le=65535)]
GpioPin = Annotated[int, Field(ge=0, le=27)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UnitSection(_Section):
    site_id: SiteId
    device_id: DeviceId


class MqttSection(_Section):
    host: str = Field(min_length=1)
    port: Port = 8883
    keepalive_s: int = Field(default=30, ge=5, le=600)
    # The broker keeps the unit's subscriptions and queued receipts this long while it is away.
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60, le=30 * 24 * 3600)
    telemetry_interval_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    reconnect_max_s: float = Field(default=30.0, ge=1.0, le=600.0)


class ClipServerSection(_Section):
    host: str = "0.0.0.0"
    port: Port = 8443
    receiver_id: ReceiverId = "receiver"
    # Anyone on the ward network can connect: a connection that has not passed the TLS
    # handshake and the receiver check within this many seconds is dropped.
    handshake_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # The address the hospital receiver uses to reach this unit; defaults to the address the
    # unit's MQTT connection leaves from, which is the one the hospital network routes.
    advertise_host: str | None = None


class KeysSection(_Section):
    signing_key: Path
    tls_key: Path
    tls_cert: Path
    ca_chain: Path
    recipients: Path
    # No longer read: receipts/1 were signed with one key every receiver shared. Receipts and
    # arm commands now carry their receiver's certificate, checked against ca_chain and the CRL.
    # Kept optional so that a device.toml of the previous version still loads.
    receipt_pub: Path | None = None
    # The site root's CRL from the bundle: the revoked receivers when the unit was provisioned.
    crl: Path | None = None
    # Where the unit keeps the newest root CRL it has (from the bundle or the hospital's
    # retained crl topic), replaced atomically; default: crl.pem beside the outbox folder.
    crl_state: Path | None = None


class OutboxSection(_Section):
    dir: Path
    quota_bytes: int = Field(default=8 << 30, ge=1 << 20)
    min_free_bytes: int = Field(default=512 << 20, ge=0)


class RecorderSection(_Section):
    max_seconds: float = Field(default=60.0, gt=0, le=60.0)
    require_clock_sync: bool = True
    # What tells the daemon that NTP has set the clock (daemon/clock.py): the file
    # systemd-timesyncd touches at every synchronisation. The sandbox (ProtectClock=) forbids
    # asking the kernel; a unit running chrony instead is asked through `chronyc`.
    clock_sync_file: Path = Path("/run/systemd/timesync/synchronized")
    # Expected clip size at the configured bitrates, for the free-space check at a press.
    reserve_bytes: int = Field(default=80 << 20, ge=0)
    # How long after the hospital issued it a "record again" verdict may still light the unit:
    # later, the participant has probably gone.
    record_again_s: float = Field(default=300.0, ge=0, le=3600)


class CameraSection(_Section):
    backend: Literal["picamera2", "simulated", "replay"] = Field(
        default="picamera2", description='"simulated" off a Pi (a moving test face)'
    )
    width: int = Field(default=1280, ge=64, le=4096, description="pixels, even")
    height: int = Field(default=720, ge=64, le=4096, description="pixels, even")
    frame_rate_hz: float = Field(default=30.0, gt=0, le=120)
    # The upper bound is part of the contract: protocol.clip_manifest.MAX_CLIP_BYTES, the
    # largest clip a unit may announce, is 60 s at this bitrate (and the microphone's), with
    # margin. Raise one only with the other.
    bitrate_bps: int = Field(default=4_000_000, ge=100_000, le=50_000_000)
    replay_file: Path | None = Field(
        default=None, description='an H.264 (Annex B) file, for backend "replay"'
    )

    @model_validator(mode="after")
    def _check(self) -> CameraSection:
        if self.width % 2 or self.height % 2:
            raise ValueError("width and height must be even")
        if self.backend == "replay" and self.replay_file is None:
            raise ValueError("replay_file: required when backend is 'replay'")
        return self


class MicrophoneSection(_Section):
    backend: Literal["pyaudio", "simulated"] = Field(
        default="pyaudio", description='"simulated" off a Pi (a voice-like test signal)'
    )
    device: str = Field(
        default="painav_mic",
        description="the ALSA capture device firmware_config/asound.conf defines",
    )
    sample_rate_hz: int = Field(default=48_000, ge=8_000, le=192_000)
    channels: int = Field(default=1, ge=1, le=2)
    wav_file: Path | None = Field(
        default=None, description="simulated backend: a WAV to play (default: a test signal)"
    )

    @model_validator(mode="after")
    def _check(self) -> MicrophoneSection:
        if self.backend == "pyaudio" and not self.device.strip():
            raise ValueError("device: empty; name the ALSA capture device")
        return self


class ButtonSection(_Section):
    backend: Literal["gpio", "simulated"] = Field(
        default="gpio", description='"simulated": pressed by `painav device press`'
    )
    pin: GpioPin = Field(default=17, description="BCM number; the button connects it to ground")
    bounce_s: float = Field(default=0.05, ge=0, lt=1)
    hold_s: float = Field(
        default=2.0, gt=0, le=10, description="a press this long discards the recording"
    )

    @model_validator(mode="after")
    def _check(self) -> ButtonSection:
        if self.hold_s <= self.bounce_s:
            raise ValueError("hold_s must be longer than bounce_s")
        return self


class LightSection(_Section):
    backend: Literal["gpio", "simulated"] = "gpio"
    led_pin: GpioPin = Field(default=27, description="BCM number of the status LED")
    buzzer_pin: GpioPin | None = Field(default=None, description="optional; BCM number")

    @model_validator(mode="after")
    def _check(self) -> LightSection:
        if self.buzzer_pin is not None and self.buzzer_pin == self.led_pin:
            raise ValueError("buzzer_pin equals led_pin")
        return self


class ControlSection(_Section):
    # The local socket `painav device press/status` talk to; in RuntimeDirectory (tmpfs).
    socket: Path = Path("/run/painav/control.sock")


class DeviceConfig(_Section):
    """The whole ``device.toml``."""

    unit: UnitSection
    mqtt: MqttSection
    clip_server: ClipServerSection = ClipServerSection()
    keys: KeysSection
    outbox: OutboxSection
    recorder: RecorderSection = RecorderSection()
    camera: CameraSection = CameraSection()
    microphone: MicrophoneSection = MicrophoneSection()
    button: ButtonSection = ButtonSection()
    light: LightSection = LightSection()
    control: ControlSection = ControlSection()
