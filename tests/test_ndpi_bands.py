"""NDPI band assembly when a scanner's restart interval is shorter than an MCU row."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from edge.slide.model import Codec, Level
from edge.slide.ndpi import NdpiSlide


def test_segments_shorter_than_a_row_land_in_their_columns() -> None:
    width, height, seg_h, seg_w = 200, 40, 8, 64
    across = math.ceil(width / seg_w)
    count = across * math.ceil(height / seg_h)
    page = SimpleNamespace(
        chunks=(seg_h, seg_w, 3),
        imagewidth=width,
        imagelength=height,
        dataoffsets=list(range(count)),
    )
    # Each segment decodes to pixels equal to its own index, so positions can be checked.
    expected = np.zeros((height, width), np.uint8)
    for s in range(count):
        r, c = divmod(s, across)
        expected[r * seg_h : (r + 1) * seg_h, c * seg_w : (c + 1) * seg_w] = s

    slide = object.__new__(NdpiSlide)
    slide._pages = [page]

    def decode(_page: object, s: int, _level: Level) -> np.ndarray:
        w = min(seg_w, width - (s % across) * seg_w)
        return np.full((seg_h, w, 1), s, np.uint8)

    slide._decode_strip = decode  # type: ignore[method-assign]
    level = Level(0, width, height, 32, 32, Codec.NONE, samples=1)
    mosaic = np.zeros((level.tiles_down * 32, level.tiles_across * 32), np.uint8)
    for frame in slide.frames(level):
        assert frame.pixels is not None
        mosaic[frame.row * 32 : (frame.row + 1) * 32, frame.col * 32 : (frame.col + 1) * 32] = (
            frame.pixels[..., 0]
        )
    assert np.array_equal(mosaic[:height, :width], expected)
