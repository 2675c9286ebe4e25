"""Facial action units with OpenFace 2.x: the study's reference face features, from IT's build of
OpenFace's ``FeatureExtraction`` (it is on no registry), run on a clip held in memory.

The decrypted clip never touches a disk. It goes into a memory file (``memfd_create``, sealed
against writes) that the child inherits under the same number and opens as ``/proc/self/fd/N``;
OpenFace writes its CSV into a fresh 0700 folder on a tmpfs (``$RUNTIME_DIRECTORY``,
``$XDG_RUNTIME_DIR``, ``/dev/shm``, or *runtime_dir*; refused if not a memory filesystem) that
is removed afterwards whatever happens. The output flags are always explicit (``-aus -pose
-gaze``): without them OpenFace also writes aligned face images, HOG features and a tracked
video. A run that outlasts its timeout (proportional to the clip's
length) is killed with its whole process group::

    openface = OpenFaceExtractor.from_config(config.features)
    if isinstance(openface, OpenFaceNotConfigured):
        log.info("%s", openface.reason)             # once, at start; not an error per clip
    else:
        result = openface.extract(media.data, duration_s=facts.duration_s)
        result.summary["AU04_r_mean"], result.frames.kept
        parquet = result.frames.to_parquet()        # bytes, one row per kept frame

Frames count when OpenFace tracked the face (``success == 1``) with ``confidence`` at least
*min_confidence*. Per frame: the ``AUxx_r`` intensities (0–5), the ``AUxx_c`` presences, head
pose, gaze angles, and the PSPI (Prkachin and Solomon pain intensity)
AU4 + max(AU6, AU7) + max(AU9, AU10) + AU43, where OpenFace has no AU43 (eyes closed) and AU45
(blink) stands in for it: hence the column's name, ``pspi_au45_for_au43``.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from protocol.extract_config import FeaturesSection

__all__ = [
    "FEATURE_SET_FRAMES",
    "FEATURE_SET_SUMMARY",
    "FEATURE_SET_VERSION",
    "PSPI_COLUMN",
    "OpenFaceError",
    "OpenFaceExtractor",
    "OpenFaceFailed",
    "OpenFaceFeatures",
    "OpenFaceFrames",
    "OpenFaceNotConfigured",
    "OpenFaceOutputError",
    "OpenFaceProvenance",
    "OpenFaceTimeout",
]

TOOL: Final = "openface"
FEATURE_SET_SUMMARY: Final = "openface_au_summary"
FEATURE_SET_FRAMES: Final = "openface_au_frames"
FEATURE_SET_VERSION: Final = "1"
PSPI_COLUMN: Final = "pspi_au45_for_au43"
PSPI_FORMULA: Final = "AU04_r + max(AU06_r, AU07_r) + max(AU09_r, AU10_r) + AU45_r (AU45 for AU43)"

# Only these outputs: with no output flag at all FeatureExtraction writes everything, aligned face
# images and HOG included (RecorderOpenFaceParameters: "Output everything if nothing has been set").
OUTPUT_FLAGS: Final = ("-aus", "-pose", "-gaze")
_OUTPUT_NAME = "clip"  # -of: the CSV is <out_dir>/clip.csv whatever the input path is called
_PSPI_AUS = ("AU04_r", "AU06_r", "AU07_r", "AU09_r", "AU10_r", "AU45_r")
_POSE = ("pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz")
_GAZE = ("gaze_angle_x", "gaze_angle_y")
_AU_RE = re.compile(r"AU\d\d_[rc]")
_VERSION_RE = re.compile(r"OpenFace[^\n\d]{0,20}v?(\d+\.\d+(?:\.\d+)?)", re.IGNORECASE)
_MEMORY_FS = frozenset({"tmpfs", "ramfs"})
_OUTPUT_TAIL = 600  # characters of OpenFace's output kept in an error


class OpenFaceError(RuntimeError):
    """OpenFace ran on a clip and gave no usable result (the root of this module's errors)."""


class OpenFaceFailed(OpenFaceError):
    """``FeatureExtraction`` exited with a non-zero status, or could not be started."""


class OpenFaceTimeout(OpenFaceError, TimeoutError):
    """``FeatureExtraction`` outlasted its timeout; it was killed with its process group."""


class OpenFaceOutputError(OpenFaceError, ValueError):
    """``FeatureExtraction`` exited cleanly but its CSV is missing or not in its format."""


@dataclass(frozen=True)
class OpenFaceNotConfigured:
    """No OpenFace here: ``openface_bin`` is unset, or not an executable file. Not an error:
    the worker says so once and carries on with the other features."""

    reason: str


@dataclass(frozen=True)
class OpenFaceProvenance:
    """Where an OpenFace result came from.

    OpenFace prints no version, so *tool_version* is ``"unknown"`` unless the binary names one;
    *binary_sha256* (the SHA-256 of the ``FeatureExtraction`` file) identifies the build.
    *config_hash* covers the binary's hash, its version, the flags, the confidence threshold,
    the feature-set version and the PSPI formula.
    """

    tool: str  # "openface"
    tool_version: str
    binary_path: str
    binary_sha256: str
    flags: tuple[str, ...]
    min_confidence: float
    feature_set_version: str
    config_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "tool_version": self.tool_version,
            "binary_path": self.binary_path,
            "binary_sha256": self.binary_sha256,
            "flags": list(self.flags),
            "min_confidence": self.min_confidence,
            "feature_set_version": self.feature_set_version,
            "pspi": PSPI_FORMULA,
            "config_hash": self.config_hash,
        }


@dataclass(frozen=True)
class OpenFaceFrames:
    """The kept frames, as columns: OpenFace's ``frame`` (1-based) and ``timestamp`` (seconds),
    ``confidence``, head pose, gaze angles, each ``AUxx_r`` (float32, 0–5), each ``AUxx_c``
    (bool) and ``pspi_au45_for_au43``; *total* is every row OpenFace wrote."""

    provenance: OpenFaceProvenance
    total: int
    columns: Mapping[str, npt.NDArray[Any]] = field(repr=False)

    @property
    def kept(self) -> int:
        return len(self.columns["frame"])

    def to_parquet(self) -> bytes:
        """The table as Parquet bytes, one row per kept frame; the provenance is in the
        schema's metadata (key ``painav.openface``, JSON)."""
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        table = pa.table({name: pa.array(values) for name, values in self.columns.items()})
        table = table.replace_schema_metadata(
            {"painav.openface": json.dumps(self.provenance.as_dict(), sort_keys=True)}
        )
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue()


@dataclass(frozen=True)
class OpenFaceFeatures:
    """One clip's OpenFace result: the kept frames and the per-clip summary.

    *summary* holds ``frames_total``, ``frames_kept``, ``kept_share``; for each intensity
    ``AUxx_r_mean`` and ``AUxx_r_p90``; for each presence ``AUxx_c_share``; and
    ``pspi_au45_for_au43_mean`` / ``_p90``. Means and shares are None when no frame was kept.
    """

    provenance: OpenFaceProvenance
    frames: OpenFaceFrames
    summary: Mapping[str, float | int | None]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _filesystem_type(path: Path) -> str | None:
    """The type of the filesystem *path* is on, from the longest mount point above it."""
    target = os.path.realpath(path)
    best, fstype = "", None
    with contextlib.suppress(OSError), open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) < 3:
                continue
            point = parts[1].replace("\\040", " ")
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, fstype = point, parts[2]
    return fstype


def default_runtime_dir() -> Path:
    """``$RUNTIME_DIRECTORY`` (a unit's ``RuntimeDirectory=`` under /run), else
    ``$XDG_RUNTIME_DIR``, else ``/dev/shm``: each a tmpfs on systemd hosts."""
    for name in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        value = os.environ.get(name, "").split(":")[0]  # systemd joins several with ":"
        if value:
            return Path(value)
    return Path("/dev/shm")


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[int]:
    """*data* in a sealed memory file; yields its descriptor, closed afterwards."""
    fd = os.memfd_create("painav-clip", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _private_folder(runtime_dir: Path) -> Iterator[Path]:
    """A fresh 0700 folder under *runtime_dir*, removed with its contents afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="painav-openface-", dir=runtime_dir))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's process group (it leads its own session), reap the child and close
    its pipe."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _tail(output: bytes | None) -> str:
    text = " ".join((output or b"").decode("utf-8", "replace").split())
    return text[-_OUTPUT_TAIL:] or "(no output)"


class OpenFaceExtractor:
    """OpenFace 2.x ``FeatureExtraction`` run on one clip at a time, from memory to memory.

    *binary* is IT's ``FeatureExtraction``; *min_confidence* the tracking confidence a frame
    needs (0–1); *runtime_dir* the tmpfs under which each run gets its private output folder
    (refused if it is not a memory filesystem). The timeout of a run is *timeout_base_s* plus
    *timeout_per_clip_s* seconds for every second of the clip (330 s for a 60 s clip by default:
    OpenFace tracks at a few to a few tens of frames a second on a CPU; keep it within the
    worker's lease). Use :meth:`from_config` to get
    :class:`OpenFaceNotConfigured` instead of an exception when there is no OpenFace.
    """

    def __init__(
        self,
        binary: Path,
        *,
        min_confidence: float = 0.8,
        runtime_dir: Path | None = None,
        timeout_base_s: float = 30.0,
        timeout_per_clip_s: float = 5.0,
    ) -> None:
        if not 0 <= min_confidence <= 1:
            raise ValueError(f"min_confidence must be in [0, 1], not {min_confidence}")
        if timeout_base_s <= 0 or timeout_per_clip_s < 0:
            raise ValueError("timeouts must be positive")
        self.binary = Path(binary).absolute()
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise ValueError(f"OpenFace: {self.binary} is not an executable file")
        self.runtime_dir = runtime_dir or default_runtime_dir()
        fstype = _filesystem_type(self.runtime_dir)
        if not self.runtime_dir.is_dir() or fstype not in _MEMORY_FS:
            raise ValueError(
                f"OpenFace: runtime dir {self.runtime_dir} is not a folder on a memory "
                f"filesystem (found {fstype or 'none'}); its output would reach a disk"
            )
        self.min_confidence = float(min_confidence)
        self.timeout_base_s = timeout_base_s
        self.timeout_per_clip_s = timeout_per_clip_s
        binary_sha256 = _sha256_file(self.binary)
        version = self._version()
        settings = {
            "tool": TOOL,
            "tool_version": version,
            "binary_sha256": binary_sha256,
            "flags": list(OUTPUT_FLAGS),
            "min_confidence": self.min_confidence,
            "feature_set_version": FEATURE_SET_VERSION,
            "pspi": PSPI_FORMULA,
        }
        encoded = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
        self.provenance = OpenFaceProvenance(
            tool=TOOL,
            tool_version=version,
            binary_path=str(self.binary),
            binary_sha256=binary_sha256,
            flags=OUTPUT_FLAGS,
            min_confidence=self.min_confidence,
            feature_set_version=FEATURE_SET_VERSION,
            config_hash=hashlib.sha256(encoded).hexdigest(),
        )

    @classmethod
    def from_config(
        cls, features: FeaturesSection, *, runtime_dir: Path | None = None
    ) -> OpenFaceExtractor | OpenFaceNotConfigured:
        """An extractor from ``[features]`` (``openface_bin``, ``openface_min_confidence``), or
        why there is none. A runtime dir that is not on tmpfs still raises ValueError: that is
        a configuration error, not an absent tool."""
        binary = features.openface_bin
        if binary is None:
            return OpenFaceNotConfigured(
                "OpenFace is not configured ([features] openface_bin is not set)"
            )
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            return OpenFaceNotConfigured(
                f"OpenFace is not available: [features] openface_bin {binary} "
                "is not an executable file"
            )
        return cls(binary, min_confidence=features.openface_min_confidence, runtime_dir=runtime_dir)

    def _version(self) -> str:
        """The version the binary prints when run without arguments, or ``"unknown"``.

        Without arguments ``FeatureExtraction`` prints where its arguments are documented and
        exits 0 (it names no version in OpenFace 2.2.0); it runs in a private tmpfs folder.
        """
        with _private_folder(self.runtime_dir) as cwd:
            try:
                process = subprocess.Popen(
                    [str(self.binary)],
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError:
                return "unknown"
            try:
                output, _ = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                return "unknown"
            finally:
                _kill_group(process)
        match = _VERSION_RE.search(output.decode("utf-8", "replace"))
        return match.group(1) if match else "unknown"

    def timeout_s(self, duration_s: float) -> float:
        """How long a run on a clip of *duration_s* seconds may take."""
        return self.timeout_base_s + self.timeout_per_clip_s * max(duration_s, 0.0)

    def command(self, input_path: str, out_dir: Path) -> list[str]:
        """The command line for one run (all flags explicit)."""
        return [
            str(self.binary),
            "-f",
            input_path,
            "-out_dir",
            str(out_dir),
            "-of",
            _OUTPUT_NAME,
            *OUTPUT_FLAGS,
        ]

    def extract(self, data: bytes, *, duration_s: float) -> OpenFaceFeatures:
        """Run OpenFace on a clip's plaintext *data* (e.g. ``ClipMedia.data``), *duration_s*
        seconds long (for the timeout); the kept frames and the clip's summary.

        Raises :class:`OpenFaceTimeout`, :class:`OpenFaceFailed` or
        :class:`OpenFaceOutputError` (all :class:`OpenFaceError`).
        """
        if not data:
            raise ValueError("OpenFace: the clip holds no data")
        timeout = self.timeout_s(duration_s)
        with _memory_file(data) as fd, _private_folder(self.runtime_dir) as out_dir:
            # pass_fds keeps the number: in the child, /proc/self/fd/<fd> is this memory file.
            command = self.command(f"/proc/self/fd/{fd}", out_dir)
            try:
                process = subprocess.Popen(
                    command,
                    cwd=out_dir,
                    pass_fds=(fd,),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise OpenFaceFailed(f"OpenFace: cannot start {self.binary}: {exc}") from exc
            try:
                output, _ = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise OpenFaceTimeout(
                    f"OpenFace: no result within {timeout:.0f} s for a {duration_s:.1f} s clip; "
                    "killed"
                ) from exc
            finally:
                _kill_group(process)  # also any child it left behind in its group
            if process.returncode != 0:
                raise OpenFaceFailed(
                    f"OpenFace: FeatureExtraction exited with status {process.returncode}: "
                    f"{_tail(output)}"
                )
            csv_path = out_dir / f"{_OUTPUT_NAME}.csv"
            try:
                text = csv_path.read_text(encoding="utf-8")
            except OSError as exc:
                raise OpenFaceOutputError(
                    f"OpenFace: no CSV from FeatureExtraction ({exc.strerror}): {_tail(output)}"
                ) from exc
        return self.parse(text)

    def parse(self, text: str) -> OpenFaceFeatures:
        """OpenFace's CSV (*text*, a space after each comma) as kept frames and a summary."""
        frames = parse_csv(text, min_confidence=self.min_confidence, provenance=self.provenance)
        return OpenFaceFeatures(self.provenance, frames, MappingProxyType(summarise(frames)))


def parse_csv(
    text: str, *, min_confidence: float, provenance: OpenFaceProvenance
) -> OpenFaceFrames:
    """The frames of OpenFace's CSV with ``success == 1`` and ``confidence >= min_confidence``."""
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    header = [name.strip() for name in next(reader, [])]
    index = {name: i for i, name in enumerate(header)}
    needed = ("frame", "timestamp", "confidence", "success", *_PSPI_AUS)
    missing = [name for name in needed if name not in index]
    if missing:
        raise OpenFaceOutputError(f"OpenFace: the CSV lacks the columns {', '.join(missing)}")
    intensities = [name for name in header if _AU_RE.fullmatch(name) and name.endswith("_r")]
    presences = [name for name in header if _AU_RE.fullmatch(name) and name.endswith("_c")]
    numeric = ["timestamp", "confidence", *(c for c in (*_POSE, *_GAZE) if c in index)]
    kept_rows: list[list[float]] = []
    wanted = ["frame", "face_id", *numeric, *intensities, *presences]
    wanted = [name for name in wanted if name in index]
    total = 0
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        total += 1
        if len(row) != len(header):
            raise OpenFaceOutputError(
                f"OpenFace: CSV line {line} has {len(row)} fields, the header {len(header)}"
            )
        try:
            success = float(row[index["success"]])
            confidence = float(row[index["confidence"]])
            values = [float(row[index[name]]) for name in wanted]
        except ValueError as exc:
            raise OpenFaceOutputError(f"OpenFace: CSV line {line}: {exc}") from exc
        if success == 1 and confidence >= min_confidence:
            kept_rows.append(values)
    table = np.asarray(kept_rows, dtype=np.float64).reshape(len(kept_rows), len(wanted))
    column = {name: table[:, i] for i, name in enumerate(wanted)}
    columns: dict[str, npt.NDArray[Any]] = {"frame": column["frame"].astype(np.int32)}
    if "face_id" in column:
        columns["face_id"] = column["face_id"].astype(np.int16)
    columns["timestamp"] = column["timestamp"]
    for name in numeric[1:]:
        columns[name] = column[name].astype(np.float32)
    for name in intensities:
        columns[name] = column[name].astype(np.float32)
    for name in presences:
        columns[name] = column[name] >= 0.5
    columns[PSPI_COLUMN] = pspi(column)
    return OpenFaceFrames(provenance, total, MappingProxyType(columns))


def pspi(columns: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
    """PSPI per frame from OpenFace intensities, AU45 (blink) standing in for AU43."""
    au = {name: np.asarray(columns[name], dtype=np.float32) for name in _PSPI_AUS}
    value = (
        au["AU04_r"]
        + np.maximum(au["AU06_r"], au["AU07_r"])
        + np.maximum(au["AU09_r"], au["AU10_r"])
        + au["AU45_r"]
    )
    return np.asarray(value, dtype=np.float32)


def summarise(frames: OpenFaceFrames) -> dict[str, float | int | None]:
    """The per-clip summary of *frames* (see :class:`OpenFaceFeatures`)."""
    kept = frames.kept
    summary: dict[str, float | int | None] = {
        "frames_total": frames.total,
        "frames_kept": kept,
        "kept_share": kept / frames.total if frames.total else None,
    }
    for name, values in frames.columns.items():
        if _AU_RE.fullmatch(name) and name.endswith("_c"):
            summary[f"{name}_share"] = float(np.mean(values)) if kept else None
        elif (_AU_RE.fullmatch(name) and name.endswith("_r")) or name == PSPI_COLUMN:
            summary[f"{name}_mean"] = float(np.mean(values, dtype=np.float64)) if kept else None
            summary[f"{name}_p90"] = float(np.percentile(values, 90)) if kept else None
    return summary
