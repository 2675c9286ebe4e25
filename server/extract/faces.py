"""Is there a face in this frame? OpenCV's bundled Haar cascade on a downscaled grey frame: fast
and good enough for the quick quality check (face present or not), not for features.

The cascade file ships inside the OpenCV wheel; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["FaceFinder"]

_CASCADE = "haarcascade_frontalface_default.xml"


class FaceFinder:
    """Finds frontal faces at least *min_face_px* wide (at the frame's own size), looking at the
    frame scaled to *width_px* wide.

    >>> finder = FaceFinder()
    >>> finder.present(grey_frame)
    True
    """

    def __init__(self, *, width_px: int = 640, min_face_px: int = 48) -> None:
        import cv2  # heavy: only the worker needs it

        self._cv2: Any = cv2
        path = Path(cv2.__file__).parent / "data" / _CASCADE
        self._detector = cv2.CascadeClassifier(str(path))
        if self._detector.empty():
            raise RuntimeError(f"face detector: cannot load {path}")
        self._width = width_px
        self._min_face = min_face_px

    def present(self, grey: npt.NDArray[np.uint8]) -> bool:
        """Whether *grey* (a 2-D luma frame) shows a face."""
        height, width = grey.shape
        scale = min(1.0, self._width / width)
        small = grey
        if scale < 1.0:
            size = (round(width * scale), round(height * scale))
            small = self._cv2.resize(grey, size, interpolation=self._cv2.INTER_AREA)
        smallest = max(round(self._min_face * scale), 24)
        faces = self._detector.detectMultiScale(
            small, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest)
        )
        return len(faces) > 0
