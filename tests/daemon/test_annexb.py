"""Splitting H.264 Annex B streams into NAL units and access units."""

from __future__ import annotations

from pathlib import Path

import av

from daemon.annexb import NAL_IDR, NAL_PPS, NAL_SPS, nal_types, split_access_units
from tests.daemon.hardware.conftest import encode_h264

SPS = b"\x00\x00\x00\x01\x67\x42\x00\x1e"
PPS = b"\x00\x00\x00\x01\x68\xce\x38\x80"
AUD = b"\x00\x00\x00\x01\x09\xf0"
SEI = b"\x00\x00\x01\x06\x05\x01\x80"


def slice_(kind: int, first: bool, payload: bytes = b"\x11\x22") -> bytes:
    # first_mb_in_slice is the first Exp-Golomb code: "1" (0) sets the top bit.
    return b"\x00\x00\x01" + bytes([0x60 | kind, 0x88 if first else 0x48]) + payload


def test_groups_parameter_sets_sei_and_slices_into_pictures():
    idr = SPS + PPS + SEI + slice_(NAL_IDR, True) + slice_(NAL_IDR, False)
    p1 = AUD + slice_(1, True)
    p2 = slice_(1, True, b"\x33") + slice_(1, False, b"\x44")
    units = split_access_units(idr + p1 + p2)
    assert [u.data for u in units] == [idr, p1, p2]
    assert [u.keyframe for u in units] == [True, False, False]
    assert nal_types(units[0].data) == [NAL_SPS, NAL_PPS, 6, NAL_IDR, NAL_IDR]


def test_trailing_zero_bytes_and_leading_garbage_are_not_a_picture():
    stream = b"\x00\x00" + SPS + PPS + slice_(NAL_IDR, True) + b"\x00\x00\x00"
    (unit,) = split_access_units(stream)
    assert unit.keyframe and unit.data == (SPS + PPS + slice_(NAL_IDR, True))
    assert split_access_units(SPS + PPS) == []  # parameter sets without a picture
    assert split_access_units(b"not h264 at all") == []


def test_libx264_stream_splits_into_one_unit_per_encoded_frame(tmp_path: Path):
    h264_file = encode_h264(tmp_path / "clip.h264", frames=45)
    with av.open(str(h264_file)) as container:
        packets = [bytes(p) for p in container.demux(video=0) if p.size]
    units = split_access_units(h264_file.read_bytes())
    assert len(units) == len(packets) == 45
    assert [u.data for u in units] == packets
    assert [i for i, u in enumerate(units) if u.keyframe] == [0, 15, 30]
    assert all(NAL_SPS in nal_types(units[i].data) for i in (0, 15, 30))
