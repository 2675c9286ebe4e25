"""A clip's plots for its page: audio level, F0 contour, face found, blendshapes, the PSPI proxy
and OpenFace's action units over time, as SVG drawn by matplotlib from the per-frame tables.

>>> for plot in clip_plots(catalog.features(clip_id), config.features.dir):  # doctest: +SKIP
...     page.add(plot.title, plot.svg)

The SVG is text (``svg.fonttype = "none"``: the page's own font draws the labels), carries no
script and no date, and is the same bytes for the same tables (a fixed ``svg.hashsalt``), so a
page can cache it by the tables' SHA-256. A table the catalog does not list, or whose file is
gone (erased after a withdrawal), leaves its plots out; a table that is there but unreadable,
or whose bytes differ from the SHA-256 the worker recorded, is a :class:`PlotError` naming the
file. Long series are reduced to at most ``_MAX_POINTS`` points (the extreme of each bin kept,
so a peak stays visible) before drawing, and drawings are kept by their tables' SHA-256: a
60 s clip draws in about half a second on a busy core, and a page seen again costs the reading.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..catalog import FeatureRecord

__all__ = ["Plot", "PlotError", "clip_plots"]

LLD: Final = "egemaps_lld"
MEDIAPIPE: Final = "mediapipe_face_frames"
OPENFACE: Final = "openface_au_frames"

LOUDNESS: Final = "Loudness_sma3"
F0: Final = "F0semitoneFrom27.5Hz_sma3nz"
PSPI_MP: Final = "pspi_proxy_mp"
# Pain-relevant blendshapes, each the larger of its left and right (as the PSPI proxy takes
# them): brow lowering (AU4), eye and cheek squint (AU6/7), nose wrinkle (AU9), jaw drop (AU26),
# eye closure (AU43).
BLENDSHAPE_PAIRS: Final = (
    ("browDown", ("browDownLeft", "browDownRight")),
    ("eyeSquint", ("eyeSquintLeft", "eyeSquintRight")),
    ("cheekSquint", ("cheekSquintLeft", "cheekSquintRight")),
    ("noseSneer", ("noseSneerLeft", "noseSneerRight")),
    ("eyeBlink", ("eyeBlinkLeft", "eyeBlinkRight")),
    ("jawOpen", ("jawOpen",)),
)
BLENDSHAPE_TITLE: Final = "Blendshapes, the larger of left and right (MediaPipe, a proxy for AUs)"
# OpenFace's intensities in PSPI (AU45, blink, stands in for AU43, eyes closed).
OPENFACE_AUS: Final = ("AU04_r", "AU06_r", "AU07_r", "AU09_r", "AU10_r", "AU45_r")

_MAX_POINTS = 1200  # per line: more than a page's plot is wide in pixels
_SIZE_IN = (7.5, 2.2)
_RC: Final[dict[str, Any]] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "painav-plots",
    "font.size": 8.0,
    "axes.titlesize": 9.0,
    "path.simplify": True,
    "svg.image_inline": True,
}
# matplotlib's settings are global: one drawing at a time (the page's threads may ask at once).
_DRAWING = threading.Lock()


class PlotError(ValueError):
    """A clip's table cannot be read (corrupt, or not what the worker wrote); one line naming
    the file."""


@dataclass(frozen=True)
class Plot:
    """One plot: its title and its SVG document (text, no scripts)."""

    title: str
    svg: str


Table = dict[str, npt.NDArray[Any]]


def clip_plots(features: Sequence[FeatureRecord], features_dir: Path) -> list[Plot]:
    """The plots of one clip from its *features* (``Catalog.features(clip_id)``), whose per-frame
    tables are under *features_dir*: those whose tables exist, in page order.

    Every call reads and checks each table (an erased one is never drawn from memory); the
    drawing is kept for the last ``_CACHED`` tables by their SHA-256, so a page viewed again
    costs the reading only."""
    newest = _newest_tables(features)
    plots: list[Plot] = []
    for feature_set, draw in _DRAWERS:
        record = newest.get(feature_set)
        data = None if record is None else _read(record, features_dir)
        if record is None or data is None:
            continue
        key = (feature_set, hashlib.sha256(data).hexdigest())
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
            if cached is not None:
                _CACHE.move_to_end(key)
        if cached is None:
            cached = tuple(draw(data, features_dir / record.frames.path))  # type: ignore[union-attr]
            with _CACHE_LOCK:
                _CACHE[key] = cached
                while len(_CACHE) > _CACHED:
                    _CACHE.popitem(last=False)
        plots.extend(cached)
    return plots


def _voice(data: bytes, path: Path) -> list[Plot]:
    lld = _columns(data, path, ("frame_time_s", LOUDNESS, F0))
    if lld is None:
        return []
    time_s = lld["frame_time_s"]
    f0 = lld[F0].astype(np.float64)
    f0[f0 <= 0] = np.nan  # 0 where unvoiced: a gap, not a drop to the axis
    return [
        _line("Audio level", time_s, {"loudness": lld[LOUDNESS]}, "loudness (sone)"),
        _line("F0 contour", time_s, {"F0": f0}, "semitones from 27.5 Hz"),
    ]


def _mediapipe(data: bytes, path: Path) -> list[Plot]:
    blend_columns = [name for _, names in BLENDSHAPE_PAIRS for name in names]
    mp = _columns(data, path, ("frame_time_s", "success", "tracked", PSPI_MP, *blend_columns))
    if mp is None:
        return []
    time_s = mp["frame_time_s"]
    series = {}
    for label, names in BLENDSHAPE_PAIRS:
        stacked = np.vstack([mp[n] for n in names]).astype(np.float64)
        values = np.where(np.isnan(stacked), -np.inf, stacked).max(axis=0)
        values[np.isinf(values)] = np.nan  # no face in the frame
        series[label] = values
    return [
        _face_found(time_s, mp["success"], mp["tracked"]),
        _line(BLENDSHAPE_TITLE, time_s, series, "score", ylim=(0, 1)),
        _line("PSPI proxy (MediaPipe)", time_s, {"PSPI": mp[PSPI_MP]}, "score (0–4)", ylim=(0, 4)),
    ]


def _openface(data: bytes, path: Path) -> list[Plot]:
    of = _columns(data, path, ("timestamp", *OPENFACE_AUS))
    if of is None:
        return []
    series = {name.removesuffix("_r"): of[name] for name in OPENFACE_AUS}
    return [_line("Action units (OpenFace)", of["timestamp"], series, "intensity", ylim=(0, 5))]


_DRAWERS: Final[tuple[tuple[str, Callable[[bytes, Path], list[Plot]]], ...]] = (
    (LLD, _voice),
    (MEDIAPIPE, _mediapipe),
    (OPENFACE, _openface),
)
_CACHED = 96  # tables' drawings kept: a few dozen clip pages
_CACHE: OrderedDict[tuple[str, str], tuple[Plot, ...]] = OrderedDict()
_CACHE_LOCK = threading.Lock()


# --- the tables ------------------------------------------------------------------------------


def _newest_tables(features: Iterable[FeatureRecord]) -> dict[str, FeatureRecord]:
    """Per feature set, the newest record with a table (a re-extraction adds one)."""
    newest: dict[str, FeatureRecord] = {}
    for record in features:
        if record.frames is None:
            continue
        known = newest.get(record.feature_set)
        if known is None or record.created_at > known.created_at:
            newest[record.feature_set] = record
    return newest


def _read(record: FeatureRecord, features_dir: Path) -> bytes | None:
    """The bytes of *record*'s table, checked against the SHA-256 the worker recorded; None if
    the file is not there."""
    assert record.frames is not None
    relative = record.frames.path
    if posixpath.isabs(relative) or ".." in relative.split("/"):
        raise PlotError(f"{relative}: not a path inside the feature folder")
    path = features_dir / relative
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None  # erased (a withdrawal) or never copied here: nothing to draw
    except OSError as exc:
        raise PlotError(f"{path}: cannot read: {exc.strerror}") from exc
    if hashlib.sha256(data).hexdigest() != record.frames.sha256:
        raise PlotError(f"{path}: its SHA-256 is not the one the worker recorded (changed)")
    return data


def _columns(data: bytes, path: Path, columns: Sequence[str]) -> Table | None:
    """*columns* of the Parquet table *data* (from *path*); None if it lacks one of them (a
    table of another version: its plots are left out rather than drawn wrong)."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        schema = pq.read_schema(io.BytesIO(data))
        if any(name not in schema.names for name in columns):
            return None
        table = pq.read_table(io.BytesIO(data), columns=list(columns))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise PlotError(f"{path}: not a readable Parquet table: {exc}") from exc
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in columns}


def _reduce(
    time_s: npt.NDArray[Any], values: npt.NDArray[Any]
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """At most about ``_MAX_POINTS`` points: each bin's lowest and highest (so peaks stay), in
    time order; a bin with no value keeps one NaN (a gap stays a gap)."""
    n = len(values)
    if n <= _MAX_POINTS:
        return time_s, values
    size = -(-n // (_MAX_POINTS // 2))
    bins = -(-n // size)
    padded = np.full(bins * size, np.nan)
    padded[:n] = values
    grid = padded.reshape(bins, size)
    missing = np.isnan(grid)
    base = np.arange(bins) * size
    high = np.where(missing, -np.inf, grid).argmax(axis=1) + base
    low = np.where(missing, np.inf, grid).argmin(axis=1) + base
    index = np.unique(np.concatenate([low, high]))
    index = index[index < n]
    return time_s[index], values[index]


# --- drawing ---------------------------------------------------------------------------------


def _svg(title: str, draw: Callable[[Any], None]) -> Plot:
    """*draw* on a new figure's axes, rendered to SVG under the fixed settings."""
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    with _DRAWING, matplotlib.rc_context(_RC):  # type: ignore[arg-type]
        # Fixed margins: a layout engine would cost more than all the drawing.
        figure = Figure(figsize=_SIZE_IN)
        figure.subplots_adjust(left=0.1, right=0.98, bottom=0.19, top=0.88)
        FigureCanvasSVG(figure)
        axes = figure.add_subplot()
        axes.set_title(title, loc="left")
        axes.set_xlabel("time in the clip (s)")
        axes.grid(True, linewidth=0.4, alpha=0.5)
        draw(axes)
        out = io.StringIO()
        # No date, no tool version in the metadata: the same tables give the same bytes.
        figure.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    return Plot(title, out.getvalue())


def _line(
    title: str,
    time_s: npt.NDArray[Any],
    series: dict[str, npt.NDArray[Any]],
    ylabel: str,
    *,
    ylim: tuple[float, float] | None = None,
) -> Plot:
    def draw(axes: Any) -> None:
        for label, values in series.items():
            t, v = _reduce(time_s, np.asarray(values, dtype=np.float64))
            axes.plot(t, v, linewidth=0.9, label=label)
        axes.set_ylabel(ylabel)
        if ylim is not None:
            axes.set_ylim(*ylim)
        if len(series) > 1:
            axes.legend(loc="upper right", fontsize=7, ncols=min(len(series), 6), frameon=False)

    return _svg(title, draw)


def _face_found(
    time_s: npt.NDArray[Any], success: npt.NDArray[Any], tracked: npt.NDArray[Any]
) -> Plot:
    found = success.astype(bool)
    detected = found & ~tracked.astype(bool)
    followed = found & tracked.astype(bool)

    def draw(axes: Any) -> None:
        step = float(np.median(np.diff(time_s))) if len(time_s) > 1 else 0.1
        rows = (
            ("detected", detected, "#2e7d32"),
            ("tracked", followed, "#81c784"),
            ("no face", ~found, "#c62828"),
        )
        for row, (label, mask, colour) in enumerate(rows):
            axes.broken_barh(_runs(time_s, mask, step), (row - 0.4, 0.8), color=colour, label=label)
        axes.set_yticks([0, 1, 2], ["detected", "tracked", "no face"])
        axes.set_ylim(-0.6, 2.6)
        if len(time_s):
            axes.set_xlim(float(time_s[0]), float(time_s[-1]) + step)

    return _svg("Face found (MediaPipe)", draw)


def _runs(
    time_s: npt.NDArray[Any], mask: npt.NDArray[np.bool_], step: float
) -> list[tuple[float, float]]:
    """(start, width) of each run of frames where *mask* holds; a frame lasts *step*."""
    if not mask.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    starts, stops = edges[0::2], edges[1::2]
    return [
        (float(time_s[a]), float(time_s[b - 1]) - float(time_s[a]) + step)
        for a, b in zip(starts, stops, strict=True)
    ]
