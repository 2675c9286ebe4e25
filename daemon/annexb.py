"""H.264 Annex B byte streams: NAL units, and access units (one coded frame each)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "NAL_IDR",
    "NAL_PPS",
    "NAL_SPS",
    "AccessUnit",
    "nal_types",
    "nal_units",
    "parameter_sets",
    "split_access_units",
]

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
_VCL = {NAL_SLICE, NAL_IDR}
# Non-VCL units that, after a coded picture, begin the next access unit (H.264 §7.4.1.2.3).
_STARTS_ACCESS_UNIT = {NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD, 14, 15, 16, 17, 18}


@dataclass(frozen=True)
class AccessUnit:
    """One coded picture with the parameter sets and SEI in front of it, start codes included."""

    data: bytes
    keyframe: bool  # contains an IDR slice


def _start_codes(data: bytes) -> Iterator[tuple[int, int]]:
    """(position of the start code, including a leading zero byte; position of the NAL header)."""
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        begin = i - 1 if i > 0 and data[i - 1] == 0 else i
        yield begin, i + 3
        i = data.find(b"\x00\x00\x01", i + 3)


def nal_units(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Each NAL unit of an Annex B stream as (start-code position, unit without start code)."""
    codes = list(_start_codes(data))
    for k, (begin, header) in enumerate(codes):
        end = codes[k + 1][0] if k + 1 < len(codes) else len(data)
        unit = data[header:end].rstrip(b"\x00") if k + 1 == len(codes) else data[header:end]
        if unit:
            yield begin, unit


def nal_types(data: bytes) -> list[int]:
    """The nal_unit_type of each NAL unit in *data*, in order."""
    return [unit[0] & 0x1F for _, unit in nal_units(data)]


def split_access_units(data: bytes) -> list[AccessUnit]:
    """Split an Annex B elementary stream into access units, keeping the bytes as they are.

    A new access unit begins at an access unit delimiter, SPS, PPS or SEI that follows a coded
    picture, or at a slice whose first_mb_in_slice is 0 (its first header bit is 1, the
    Exp-Golomb code of 0) when the current unit already has a picture.
    """
    units: list[AccessUnit] = []
    begin: int | None = None
    has_picture = False
    keyframe = False
    for position, unit in nal_units(data):
        kind = unit[0] & 0x1F
        first_slice = kind in _VCL and len(unit) > 1 and unit[1] & 0x80 != 0
        if has_picture and (kind in _STARTS_ACCESS_UNIT or first_slice):
            assert begin is not None
            units.append(AccessUnit(data[begin:position], keyframe))
            begin, has_picture, keyframe = None, False, False
        if begin is None:
            begin = position
        if kind in _VCL:
            has_picture = True
            keyframe = keyframe or kind == NAL_IDR
    if begin is not None and has_picture:
        units.append(AccessUnit(data[begin:].rstrip(b"\x00"), keyframe))
    return units


def parameter_sets(access_unit: bytes) -> bytes | None:
    """The SPS and PPS of a key frame as Annex B extradata, or None if it carries no SPS: what
    a muxer needs before it can write the stream's header."""
    units = [u for _, u in nal_units(access_unit) if u[0] & 0x1F in (NAL_SPS, NAL_PPS)]
    if not any(u[0] & 0x1F == NAL_SPS for u in units):
        return None
    return b"".join(b"\x00\x00\x00\x01" + u for u in units)
