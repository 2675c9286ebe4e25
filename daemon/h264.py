"""Just enough of H.264's Annex B byte stream to find a key frame's parameter sets."""

from __future__ import annotations

import re

__all__ = ["PPS", "SPS", "nal_units", "parameter_sets"]

SPS, PPS = 7, 8
_START = re.compile(b"\x00\x00\x01")


def nal_units(data: bytes) -> list[bytes]:
    """Split an Annex B access unit into NAL units (without start codes)."""
    starts = [m.end() for m in _START.finditer(data)]
    units = []
    for i, start in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        unit = data[start:end]
        if i + 1 < len(starts):
            unit = unit.rstrip(b"\x00")  # the zero byte of a following 4-byte start code
        if unit:
            units.append(unit)
    return units


def parameter_sets(access_unit: bytes) -> bytes | None:
    """The SPS and PPS of a key frame as Annex B extradata, or None if it carries neither."""
    units = [u for u in nal_units(access_unit) if u[0] & 0x1F in (SPS, PPS)]
    if not any(u[0] & 0x1F == SPS for u in units):
        return None
    return b"".join(b"\x00\x00\x00\x01" + u for u in units)
