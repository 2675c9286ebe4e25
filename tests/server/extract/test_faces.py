"""The quick check's face finder on a real face (the public-domain astronaut portrait that ships
with scikit-image) and on frames without one."""

from __future__ import annotations

from fractions import Fraction

import av
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


def through_h264(picture: np.ndarray) -> av.VideoFrame:
    """*picture* (RGB) encoded with libx264 and decoded again: a frame as the worker gets it."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = picture.shape[1], picture.shape[0], "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, 30), Fraction(30)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
    frame.pts = 0
    packets = [*enc.encode(frame), *enc.encode(None)]
    dec = av.CodecContext.create("h264", "r")
    decoded = [f for p in packets for f in dec.decode(p)] + list(dec.decode(None))
    assert len(decoded) == 1
    return decoded[0]


def test_the_decoders_grey_frame_is_as_good_as_grey_from_rgb() -> None:
    """The worker's quick check takes grey frames from the decoder's luma plane, scaled to 640
    wide by swscale; the finder answers as it did on grey computed from the RGB frame."""
    finder = FaceFinder()
    portrait = data.astronaut()  # type: ignore[no-untyped-call]
    index = np.arange(700) * 512 // 700  # the face ~130 px wide in 1280x720
    scene = np.full((720, 1280, 3), 90, dtype=np.uint8)
    scene[10:710, 300:1000] = portrait[index[:, None], index[None, :]]
    for picture, face in ((scene, True), (np.full_like(scene, 90), False)):
        frame = through_h264(picture)
        from_decoder = np.asarray(frame.to_ndarray(format="gray", width=640, height=360), np.uint8)
        from_rgb = grey(frame.to_ndarray(format="rgb24", width=640, height=360))
        assert from_decoder.shape == from_rgb.shape == (360, 640)
        assert abs(float(from_decoder.mean()) - float(from_rgb.mean())) < 3.0
        assert finder.present(from_decoder) is face
        assert finder.present(from_rgb) is face
