"""A clip page's plots from real extraction outputs: openSMILE's descriptors of spoken speech,
MediaPipe's frames of a face drifting in and out of view (through H.264), OpenFace's frames from
the stand-in's CSV (parsed by the real adapter). Every plot is there, deterministic SVG text
without scripts; a missing table leaves its plots out; a corrupt one is one line naming it; a
60 s clip draws quickly."""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from server.catalog import FeatureRecord, FrameFile, Provenance
from server.extract.face_mediapipe import MediaPipeFaces, default_model_path
from server.extract.face_openface import OpenFaceExtractor
from server.extract.voice import VoiceExtractor
from server.web import plots as plots_module
from server.web.plots import Plot, PlotError, clip_plots
from tests.server.extract import openface_standin as standin
from tests.server.extract.clips import speak, wav_samples
from tests.server.extract.test_face_mediapipe import scene, through_h264

CLIP = "cart-01-20261129T120000Z-0001"
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
PROVENANCE = Provenance(tool="t", tool_version="1", config_hash="0" * 64, painav_version="0")
TITLES = [
    "Audio level",
    "F0 contour",
    "Face found (MediaPipe)",
    "Blendshapes, the larger of left and right (MediaPipe, a proxy for AUs)",
    "PSPI proxy (MediaPipe)",
    "Action units (OpenFace)",
]


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The three per-frame tables, as the worker writes them, from the real tools."""
    folder = tmp_path_factory.mktemp("speech")
    samples = (wav_samples(speak(folder, 48_000)) / 32768).astype(np.float32)
    lld = VoiceExtractor(analysis_rate_hz=16_000).lld(samples, 48_000, start_s=0.1)
    if not default_model_path().is_file():
        pytest.fail(f"{default_model_path()} is missing: run scripts/setup.sh")
    shown = scene(40, absent={15, 16, 17, 18})
    with MediaPipeFaces() as faces:
        face = faces.analyse(through_h264([picture for picture, _ in shown]))
    runtime = Path(tempfile.mkdtemp(prefix="painav-test-plots-", dir="/dev/shm"))  # tmpfs
    try:
        openface = OpenFaceExtractor(Path(standin.__file__).resolve(), runtime_dir=runtime)
        parsed = openface.parse(standin.csv_text(standin.FRAMES))
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    return {
        "egemaps_lld": lld.to_parquet(),
        "mediapipe_face_frames": face.frames.to_parquet(),
        "openface_au_frames": parsed.frames.to_parquet(),
    }


def records(features_dir: Path, tables: dict[str, bytes]) -> list[FeatureRecord]:
    """The catalog's records of *tables*, each written under *features_dir* as the worker does."""
    out = []
    for n, (feature_set, data) in enumerate(tables.items()):
        relative = f"{CLIP}/{feature_set}-1-0123456789abcdef.parquet"
        path = features_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out.append(
            FeatureRecord(
                clip_id=CLIP,
                feature_set=feature_set,
                feature_set_version="1",
                provenance=PROVENANCE,
                worker="x1@test",
                created_at=T0 + timedelta(seconds=n),
                values=None,
                frames=FrameFile(relative, hashlib.sha256(data).hexdigest()),
            )
        )
    return out


def check_svg(plot: Plot) -> ElementTree.Element:
    root = ElementTree.fromstring(plot.svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "<script" not in plot.svg and "onload" not in plot.svg and 'href="http' not in plot.svg
    assert plot.title in plot.svg  # drawn as text (svg.fonttype none), not as glyph paths
    assert "<dc:date>" not in plot.svg
    return root


def test_every_plot_is_drawn_from_the_real_tables(tmp_path: Path, tables) -> None:
    features = records(tmp_path, tables)
    plots = clip_plots(features, tmp_path)
    assert [p.title for p in plots] == TITLES
    for plot in plots:
        root = check_svg(plot)
        lines = root.findall(".//{http://www.w3.org/2000/svg}path")
        assert len(lines) > 10, plot.title  # axes, ticks and the data
    # The same tables, the same bytes (drawn again, not from the cache): cacheable by hash.
    plots_module._CACHE.clear()
    assert [p.svg for p in clip_plots(features, tmp_path)] == [p.svg for p in plots]
    face = plots[2].svg
    assert "detected" in face and "no face" in face


def test_a_missing_table_leaves_its_plots_out(tmp_path: Path, tables) -> None:
    features = records(tmp_path, tables)
    without_openface = [f for f in features if f.feature_set != "openface_au_frames"]
    assert [p.title for p in clip_plots(without_openface, tmp_path)] == TITLES[:5]
    # Erased files (a withdrawal): nothing to draw, no error, not even from the cache.
    (tmp_path / features[1].frames.path).unlink()  # type: ignore[union-attr]
    titles = [p.title for p in clip_plots(features, tmp_path)]
    assert titles == ["Audio level", "F0 contour", "Action units (OpenFace)"]
    assert clip_plots([], tmp_path) == []


def test_a_corrupt_table_is_one_line_naming_the_file(tmp_path: Path, tables) -> None:
    features = records(tmp_path, tables)
    path = tmp_path / features[0].frames.path  # type: ignore[union-attr]
    path.write_bytes(b"PAR1 not really" + bytes(64))
    with pytest.raises(PlotError) as changed:
        clip_plots(features, tmp_path)
    assert str(changed.value) == (
        f"{path}: its SHA-256 is not the one the worker recorded (changed)"
    )
    # Corrupt as recorded (the hash matches the bytes): Parquet itself refuses.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    frames = FrameFile(features[0].frames.path, digest)  # type: ignore[union-attr]
    broken = [FeatureRecord(**{**features[0].__dict__, "frames": frames}), *features[1:]]
    with pytest.raises(PlotError) as unreadable:
        clip_plots(broken, tmp_path)
    message = str(unreadable.value)
    assert message.startswith(f"{path}: not a readable Parquet table: ") and "\n" not in message


def test_a_60_second_clip_draws_quickly(tmp_path: Path, tables) -> None:
    long = {name: _stretched(data, 60.0) for name, data in tables.items()}
    features = records(tmp_path, long)
    clip_plots(features, tmp_path)  # matplotlib's first use imports and caches fonts
    runs = []
    for _ in range(3):
        plots_module._CACHE.clear()
        started = time.perf_counter()
        plots = clip_plots(features, tmp_path)
        runs.append(time.perf_counter() - started)
    started = time.perf_counter()
    assert [p.svg for p in clip_plots(features, tmp_path)] == [p.svg for p in plots]
    cached_ms = (time.perf_counter() - started) * 1000
    assert len(plots) == 6
    best_ms = min(runs) * 1000
    print(
        f"\nplots of a 60 s clip: drawn {best_ms:.0f} ms (best of 3), seen again {cached_ms:.0f} ms"
    )
    # The aim is < 300 ms on an idle core; the bound leaves room for a loaded test machine.
    assert best_ms < 1500
    assert cached_ms < best_ms / 3


def _stretched(data: bytes, seconds: float) -> bytes:
    """The table repeated until it covers *seconds*, times continuing: a long clip's table."""
    table = pq.read_table(io.BytesIO(data))
    time_column = "timestamp" if "timestamp" in table.schema.names else "frame_time_s"
    times = table.column(time_column).to_numpy()
    span = float(times[-1] - times[0]) + float(np.median(np.diff(times)))
    copies = int(np.ceil(seconds / span))
    columns = {}
    for name in table.schema.names:
        values = table.column(name).to_numpy(zero_copy_only=False)
        tiled = np.concatenate([values] * copies)
        if name == time_column:
            tiled = np.concatenate([values + k * span for k in range(copies)])
        columns[name] = pa.array(tiled)
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()
