"""Which arm commands the unit acts on: signed by a receiver its site root certifies and has not
revoked, for this unit, and not issued before the command in force.

Arm commands are retained on the broker, and the broker is not trusted with them: a forged or
relabelled command would tag a participant's clips with another pseudonym. The issue time of the
command in force is kept durably, so that even after a restart an older signed command that
someone put back on the broker cannot replace it. A cleared retained command (an empty payload)
is not checked: it disarms, which takes nothing from a participant's clips.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from protocol.atomic import write_atomic
from protocol.errors import ProtocolError
from protocol.hospital_signature import HospitalTrust, verify_signed
from protocol.messages import ArmCommand

__all__ = ["ArmGate", "ArmRefused"]


class ArmRefused(ProtocolError, ValueError):
    """An arm command the unit does not act on; the message says why, in one line."""


class ArmGate:
    """Checks arm commands for *device_id* against *trust*; keeps the issue time of the one in
    force in *state* (None: in memory only)."""

    def __init__(self, trust: HospitalTrust, device_id: str, state: Path | None = None) -> None:
        self._trust, self._device, self._state = trust, device_id, state
        self.issued_at = _read(state)

    def admit(self, command: ArmCommand, now: datetime) -> None:
        """Accept *command* as the one in force, or raise :class:`ArmRefused` (a bad or revoked
        signer, a forged signature, another unit, or older than the command in force)."""
        try:
            verify_signed(
                self._trust, command.signer, command.signature_bytes(), command.signed_bytes(), now
            )
        except ProtocolError as exc:
            raise ArmRefused(str(exc)) from None
        if command.device_id != self._device:
            raise ArmRefused(f"signed for unit {command.device_id!r}")
        if self.issued_at is not None and command.issued_at < self.issued_at:
            raise ArmRefused(
                f"issued {command.issued_at:%Y-%m-%d %H:%M:%S}, before the command in force"
            )
        if command.issued_at != self.issued_at and self._state is not None:
            # Durable before in force: a crash never lets an older command back in.
            text = command.issued_at.isoformat() + "\n"
            write_atomic(self._state, text.encode(), mode=0o600, overwrite=True)
        self.issued_at = command.issued_at


def _read(path: Path | None) -> datetime | None:
    """The issue time kept in *path*; None if there is none (a damaged file counts as none:
    the broker's retained command then decides, as before the first arm command)."""
    if path is None:
        return None
    try:
        when = datetime.fromisoformat(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return when if when.tzinfo is not None else None
