"""Pyramid planning and the streaming 2x downsampler."""

from __future__ import annotations

import math

import numpy as np

from edge.dicom.pyramid import Downsampler, PlannedLevel, halve, plan_pyramid
from edge.slide.model import Codec, Level


def _level(index: int, width: int, height: int, tile: int = 256, **kw: object) -> Level:
    return Level(index, width, height, tile, tile, Codec.JPEG, **kw)  # type: ignore[arg-type]


def test_plan_copies_source_levels_and_generates_below_the_smallest() -> None:
    levels = [_level(0, 40000, 30000), _level(1, 10000, 7500), _level(2, 2500, 1875)]
    plan = plan_pyramid(levels)
    assert [p.source for p in plan[:3]] == [0, 1, 2]
    generated = plan[3:]
    assert all(p.source is None for p in generated)
    # Each generated level comes from the one just above it, never from level 0.
    assert [p.parent for p in generated] == list(range(2, 2 + len(generated)))
    assert (generated[-1].width, generated[-1].height) == (157, 118)
    assert generated[-1].width <= 256 and generated[-2].width > 256


def test_dyadic_fills_gaps_from_the_nearest_finer_level() -> None:
    levels = [_level(0, 40000, 40000), _level(1, 10000, 10000)]
    plan = plan_pyramid(levels, dyadic=True)
    widths = [p.width for p in plan]
    assert widths[:3] == [40000, 20000, 10000]
    assert plan[1].parent == 0 and plan[2].source == 1
    assert all(plan[i].parent == i - 1 for i in range(3, len(plan)))


def test_single_tile_levels_with_another_tile_size_are_rebuilt() -> None:
    levels = [
        _level(0, 2220, 2967, 500),
        _level(1, 1110, 1483, 500),
        Level(2, 277, 370, 277, 370, Codec.JPEG),
    ]
    plan = plan_pyramid(levels)
    assert [p.source for p in plan] == [0, 1, None, None]
    assert (plan[2].width, plan[2].height, plan[2].tile_width) == (555, 742, 500)
    assert (plan[3].width, plan[3].height) == (278, 371)  # the first to fit one tile


def test_multi_plane_levels_are_never_generation_parents() -> None:
    plan = plan_pyramid([_level(0, 3000, 3000, optical_paths=3)])
    assert len(plan) == 1


def test_halve_rounds_the_mean() -> None:
    tile = np.array([[[0], [1]], [[1], [1]]], dtype=np.uint8)
    assert halve(tile)[0, 0, 0] == 1  # (0+1+1+1+2)>>2


def test_downsampler_matches_whole_image_halving() -> None:
    rng = np.random.default_rng(0)
    width, height, tile = 1000, 700, 128
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    parent = PlannedLevel(width, height, tile, tile, source=0)
    out_w, out_h = math.ceil(width / 2), math.ceil(height / 2)
    got = np.zeros((math.ceil(out_h / tile) * tile, math.ceil(out_w / tile) * tile, 3), np.uint8)
    order: list[tuple[int, int]] = []

    def emit(col: int, row: int, pixels: np.ndarray) -> None:
        order.append((row, col))
        got[row * tile : (row + 1) * tile, col * tile : (col + 1) * tile] = pixels

    ds = Downsampler(parent, 3, emit)
    padded = np.full(
        (math.ceil(height / tile) * tile, math.ceil(width / tile) * tile, 3), 255, np.uint8
    )
    padded[:height, :width] = image
    for row in range(padded.shape[0] // tile):
        for col in range(padded.shape[1] // tile):
            ds.add(col, row, padded[row * tile : (row + 1) * tile, col * tile : (col + 1) * tile])
    assert order == sorted(order), "tiles must come out in row-major (TILED_FULL) order"
    assert len(order) == math.ceil(out_w / tile) * math.ceil(out_h / tile)
    expected = halve(padded)[:out_h, :out_w]
    assert np.array_equal(got[:out_h, :out_w], expected)
