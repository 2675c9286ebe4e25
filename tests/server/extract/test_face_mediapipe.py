"""The MediaPipe face backend on a real face: the public-domain astronaut portrait (scikit-image)
moving over a 1280x720 backdrop with its face about 100 px wide, through H.264 and back, as a
clip's frames reach the worker. Needs the model that scripts/setup.sh installs."""

from __future__ import annotations

import gc
import io
import json
import math
from fractions import Fraction

import av
import numpy as np
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from skimage import data

from server.extract.face_mediapipe import (
    BLENDSHAPES,
    MODEL_FILE,
    MODEL_SHA256,
    FaceModelError,
    MediaPipeFaces,
    default_model_path,
    head_pose_deg,
    pspi_proxy,
)
from server.extract.media import VideoSample

WIDTH, HEIGHT = 1280, 720
PORTRAIT_PX = 560  # the astronaut's face is about 100 px wide at this size
FPS = 10


def scene(frames: int, *, absent: set[int]) -> list[tuple[np.ndarray, bool]]:
    """*frames* pictures of the portrait drifting over a backdrop (out of view in *absent*),
    each with whether a face is in it."""
    portrait = data.astronaut()  # type: ignore[no-untyped-call]
    index = np.arange(PORTRAIT_PX) * portrait.shape[0] // PORTRAIT_PX
    face = portrait[index[:, None], index[None, :]]
    rows = np.linspace(60, 160, HEIGHT, dtype=np.float32)[:, None]
    backdrop = np.repeat(
        (rows + np.zeros((1, WIDTH), np.float32)).astype(np.uint8)[..., None], 3, 2
    )
    out = []
    for i in range(frames):
        picture = backdrop.copy()
        if i not in absent:
            t = i / FPS
            x = int((WIDTH - PORTRAIT_PX) * (0.5 + 0.5 * math.sin(2 * math.pi * t / 5.0)))
            y = int((HEIGHT - PORTRAIT_PX) * (0.5 + 0.5 * math.sin(2 * math.pi * t / 3.0)))
            picture[y : y + PORTRAIT_PX, x : x + PORTRAIT_PX] = face
        out.append((picture, i not in absent))
    return out


def through_h264(pictures: list[np.ndarray]) -> list[VideoSample]:
    """The pictures encoded with libx264 and decoded again, as :class:`VideoSample` frames."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, FPS), Fraction(FPS)
    enc.bit_rate = 2_000_000
    enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    packets = []
    for i, picture in enumerate(pictures):
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets += enc.encode(frame)
    packets += enc.encode(None)
    dec = av.CodecContext.create("h264", "r")
    decoded = [f for p in packets for f in dec.decode(p)] + list(dec.decode(None))
    return [
        VideoSample(
            index=i, time_s=i / FPS, image=np.asarray(f.to_ndarray(format="rgb24"), np.uint8)
        )
        for i, f in enumerate(decoded)
    ]


@pytest.fixture(scope="module")
def faces():
    if not default_model_path().is_file():
        pytest.fail(f"{default_model_path()} is missing: run scripts/setup.sh")
    with MediaPipeFaces() as extractor:
        yield extractor


@pytest.fixture(scope="module")
def clip():
    shown = scene(50, absent={20, 21, 22, 23, 24})
    return through_h264([picture for picture, _ in shown]), [present for _, present in shown]


def test_finds_the_face_in_most_frames_with_52_blendshapes(faces, clip):
    samples, present = clip
    result = faces.analyse(samples)
    success = result.frames.columns["success"]
    assert len(success) == len(samples)
    with_face = [s for s, p in zip(success, present, strict=True) if p]
    assert sum(with_face) / len(with_face) >= 0.85
    assert not any(s for s, p in zip(success, present, strict=True) if not p)
    row = next(i for i, s in enumerate(success) if s)
    assert all(not np.isnan(result.frames.columns[name][row]) for name in BLENDSHAPES)
    assert len(BLENDSHAPES) == 52
    width = result.frames.columns["face_w_px"][row]
    assert 70 < width < 140, width
    summary = result.summary
    assert summary["face_share"] == pytest.approx(sum(success) / len(samples))
    assert summary["pspi_proxy_mp_mean"] is not None
    assert {f"{name}_p90" for name in BLENDSHAPES} <= set(summary)


def test_a_frame_without_a_face_is_a_row_without_success(faces):
    blank = np.full((HEIGHT, WIDTH, 3), 120, np.uint8)
    frame = faces.frame(blank, index=3, time_s=0.3)
    assert not frame.success and frame.blendshapes is None and frame.box_px is None
    result = faces.analyse([VideoSample(0, 0.0, blank)])
    assert result.summary["face_share"] == 0.0
    assert result.summary["pspi_proxy_mp_mean"] is None
    assert np.isnan(result.frames.columns["browDownLeft"][0])


def test_parquet_and_provenance_carry_the_model(faces, clip):
    samples, _ = clip
    result = faces.analyse(samples[:5])
    prov = result.provenance
    assert prov.tool == "mediapipe" and prov.tool_version
    assert prov.model_file == MODEL_FILE
    assert prov.model_sha256 == MODEL_SHA256
    assert len(prov.config_hash) == 64
    record = prov.catalog("0.1.0")
    assert record.model_sha256 == MODEL_SHA256 and record.config_hash == prov.config_hash
    table = pq.read_table(io.BytesIO(result.frames.to_parquet()))
    assert table.num_rows == 5
    assert {"frame_time_s", "success", "yaw_deg", "pspi_proxy_mp", *BLENDSHAPES} <= set(
        table.column_names
    )
    meta = json.loads(table.schema.metadata[b"painav.face"])
    assert meta["model_sha256"] == MODEL_SHA256


def test_the_landmarker_is_closed():
    with MediaPipeFaces() as extractor:
        assert not extractor.closed
    assert extractor.closed
    extractor.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        extractor.frame(np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    del extractor
    gc.collect()


def test_a_missing_model_is_one_clear_line(tmp_path):
    with pytest.raises(FaceModelError, match=r"face model .*missing\.task: cannot read"):
        MediaPipeFaces(model_path=tmp_path / "missing.task")


def test_the_proxy_and_the_pose():
    scores = dict.fromkeys(BLENDSHAPES, 0.0)
    scores |= {"browDownLeft": 0.2, "browDownRight": 0.4, "eyeSquintLeft": 0.3}
    scores |= {"cheekSquintRight": 0.1, "mouthUpperUpRight": 0.25, "eyeBlinkLeft": 0.5}
    assert pspi_proxy(scores) == pytest.approx(0.4 + 0.3 + 0.25 + 0.5)
    yaw = math.radians(30)
    turned = np.array(
        [[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]]
    )
    assert head_pose_deg(turned) == pytest.approx((30.0, 0.0, 0.0))
