"""Sanity limits that turn decompression bombs and absurd headers into clear refusals."""

from __future__ import annotations

import numbers
from pathlib import Path

from edge.errors import CorruptInput, UnsupportedInput

MAX_LEVEL_PIXELS = 2**38  # ~275 gigapixels: far beyond any real slide (a 40x 25x75 mm ~ 60 GP)
MAX_SIDE = 2**22  # 4,194,304 pixels on a side
MAX_TILE_SIDE = 8192
MIN_TILE_SIDE = 16
MAX_ASSOCIATED_PIXELS = 100_000_000  # label/macro/thumbnail are decoded whole
MAX_ASSOCIATED_SIDE = 65534  # one DICOM frame (16-bit Rows/Columns), padded to even sides


def check_level_geometry(
    path: Path, what: str, width: int, height: int, tile_w: int, tile_h: int
) -> None:
    _check_integers(path, what, width, height, tile_w, tile_h)
    if width <= 0 or height <= 0:
        raise CorruptInput(path, f"{what} has an empty size {width}x{height}")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_LEVEL_PIXELS:
        raise CorruptInput(
            path,
            f"{what} claims {width}x{height} pixels, beyond the {MAX_SIDE}-pixel side / "
            f"{MAX_LEVEL_PIXELS:,}-pixel limit (a damaged header or a decompression bomb)",
        )
    if not (MIN_TILE_SIDE <= tile_w <= MAX_TILE_SIDE and MIN_TILE_SIDE <= tile_h <= MAX_TILE_SIDE):
        raise UnsupportedInput(
            path,
            f"{what} has {tile_w}x{tile_h} tiles; expected {MIN_TILE_SIDE}..{MAX_TILE_SIDE} "
            "pixels per side",
        )


def check_associated(path: Path, what: str, width: int, height: int) -> None:
    _check_integers(path, f"{what} image", width, height)
    if (
        width <= 0
        or height <= 0
        or width * height > MAX_ASSOCIATED_PIXELS
        or max(width, height) > MAX_ASSOCIATED_SIDE
    ):
        raise CorruptInput(
            path,
            f"{what} image claims {width}x{height} pixels (limit {MAX_ASSOCIATED_PIXELS:,}, "
            f"{MAX_ASSOCIATED_SIDE} per side)",
        )


def _check_integers(path: Path, what: str, *sizes: object) -> None:
    """A size tag of the wrong type (a flipped type byte) can decode to a float or a tuple."""
    if not all(isinstance(v, numbers.Integral) for v in sizes):
        raise CorruptInput(
            path,
            f"{what} has non-integer sizes {sizes}; expected whole numbers of pixels "
            "(a damaged size tag)",
        )


def check_samples(path: Path, where: str, got: int, expected: int, header: str) -> None:
    """A decoded tile must have the samples per pixel its header promised."""
    if got != expected:
        raise CorruptInput(
            path, f"{where} decodes to {got} samples per pixel; {header} is {expected}"
        )
