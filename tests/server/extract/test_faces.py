"""The quick check's face finder on a real face (the public-domain astronaut portrait that ships
with scikit-image) and on frames without one."""

from __future__ import annotations

import numpy as np
from skimage import data

from server.extract.faces import FaceFinder


def grey(image: np.ndarray) -> np.ndarray:
    luma: np.ndarray = (image[..., :3] @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    return luma


def test_a_face_is_found_and_an_empty_frame_is_not() -> None:
    finder = FaceFinder()
    portrait = grey(data.astronaut())  # type: ignore[no-untyped-call]  # 512x512
    assert finder.present(portrait)
    # The same face small in a 1280x720 frame, as a cart camera sees a patient across a bed.
    frame = np.full((720, 1280), 90, dtype=np.uint8)
    frame[200:456, 500:756] = portrait[::2, ::2]
    assert finder.present(frame)
    assert not finder.present(np.full((720, 1280), 90, dtype=np.uint8))
    rng = np.random.default_rng(3)
    assert not finder.present(rng.integers(0, 255, (720, 1280), dtype=np.uint8))
