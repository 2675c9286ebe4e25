"""Whether the system clock is synchronised, as the kernel's NTP state says (``adjtimex``).

A Pi 4 has no real-time clock: until NTP has set the time, clip timestamps and certificate
checks are wrong, so the recorder can refuse to start (``require_clock_sync``).
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["clock_synchronised"]

_TIME_ERROR = 5  # adjtimex's "clock not synchronised" state


class _Timex(ctypes.Structure):
    # struct timex is 208 bytes on 64-bit Linux; modes = 0 only reads it.
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 256)]


def clock_synchronised() -> bool:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    state = libc.adjtimex(ctypes.byref(_Timex()))
    return state not in (-1, _TIME_ERROR)
