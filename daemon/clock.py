"""Whether NTP has set the system clock, asked the way a sandboxed service is allowed to ask.

A Pi 4 has no real-time clock: until NTP has set the time, clip timestamps and certificate
checks are wrong, so the recorder can refuse a press (``[recorder] require_clock_sync``).

The kernel knows (``adjtimex``), but painav-device.service runs with ``ProtectClock=yes`` and a
system-call filter without ``@privileged``: both deny the whole ``@clock`` group, read-only
``adjtimex(modes=0)`` included, so there it fails with EPERM and would refuse every press. The
daemon asks the time service instead, with nothing but a ``stat`` or an unprivileged command:

1. systemd-timesyncd (Raspberry Pi OS's default) touches ``/run/systemd/timesync/synchronized``
   every time it synchronises the clock; ``systemd-time-wait-sync`` waits for the same file.
   It lives on the ``/run`` tmpfs, so it exists once the clock has been synchronised since
   boot. The path is ``[recorder] clock_sync_file``.
2. chrony writes no such file. It answers its monitoring commands (``chronyc tracking``) to
   any local user, over UDP on 127.0.0.1:323, which the unit's address filter allows; its
   privileged Unix socket is not needed. When the file is missing and ``chronyc`` is installed,
   the daemon runs ``chronyc -c tracking`` and trusts a leap status other than "Not
   synchronised".

Example::

    synced = ClockSignal(Path("/run/systemd/timesync/synchronized"))
    if not synced():
        ...  # refuse the press: the clock may be days off
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ClockSignal", "chrony_says_synchronised"]

# chronyc's leap status (the last field of CSV tracking) while chronyd is synchronised; the
# other value is "Not synchronised".
_CHRONY_SYNCHRONISED = frozenset({"Normal", "Insert second", "Delete second"})


def _installed_chronyc() -> tuple[str, ...] | None:
    program = shutil.which("chronyc")
    # -h: straight to chronyd's unprivileged UDP port (the Unix socket is root's and chrony's).
    return (program, "-n", "-c", "-h", "127.0.0.1,::1") if program else None


def chrony_says_synchronised(command: Sequence[str], *, timeout_s: float = 1.0) -> bool:
    """Whether ``COMMAND tracking`` (``chronyc -c`` and its options) reports a synchronised
    leap status. "Not synchronised", no daemon, an error or a timeout all count as no."""
    try:
        result = subprocess.run(
            [*command, "tracking"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return False
    return lines[-1].split(",")[-1] in _CHRONY_SYNCHRONISED


@dataclass
class ClockSignal:
    """A callable answering "has NTP set the clock?": timesyncd's file, else chrony.

    *chronyc* is the command before ``tracking`` (default: the installed ``chronyc`` with
    ``-n -c -h 127.0.0.1,::1``, or none); its answer is reused for *chrony_cache_s* seconds, so
    a burst of presses and status requests starts one process, not one each.
    """

    sync_file: Path
    chronyc: Sequence[str] | None = field(default_factory=_installed_chronyc)
    chrony_cache_s: float = 10.0
    _cached: tuple[float, bool] | None = field(default=None, init=False, repr=False)

    def __call__(self) -> bool:
        if self.sync_file.exists():
            return True
        if self.chronyc is None:
            return False
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self.chrony_cache_s:
            return self._cached[1]
        answer = chrony_says_synchronised(self.chronyc)
        self._cached = (now, answer)
        return answer
