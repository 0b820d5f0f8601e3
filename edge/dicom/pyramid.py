"""Pyramid planning (pure) and streaming 2x downsampling of tile rows.

Missing levels are built in 2x steps from the nearest finer level, never from level 0 when a
nearer level exists: the scanner's own lower levels are copied, and only what is below the
smallest one (or, with `dyadic`, between 4x-spaced levels) is computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edge.slide.model import Level
from edge.slide.source import Pixels


@dataclass(frozen=True)
class PlannedLevel:
    """An output level: copied/re-encoded from source level `source`, or made from `parent`."""

    width: int
    height: int
    tile_width: int
    tile_height: int
    source: int | None = None  # index into the source's levels
    parent: int | None = None  # index into the plan

    @property
    def tiles(self) -> int:
        return math.ceil(self.width / self.tile_width) * math.ceil(self.height / self.tile_height)


def _fits_one_tile(width: int, height: int, tile_w: int, tile_h: int) -> bool:
    return width <= tile_w and height <= tile_h


def plan_pyramid(levels: Sequence[Level], dyadic: bool = False) -> list[PlannedLevel]:
    """Output levels, largest first: every source level, plus generated 2x levels.

    Generation stops when a level fits in one tile. Multi-plane levels (several optical
    paths or focal planes) are copied but never used as a generation parent.
    """
    plan: list[PlannedLevel] = []
    kept = [level for level in levels if _keep(level, levels[0])]
    for i, level in enumerate(kept):
        nxt = kept[i + 1] if i + 1 < len(kept) else None
        plan.append(
            PlannedLevel(
                level.width, level.height, level.tile_width, level.tile_height, source=level.index
            )
        )
        parent = len(plan) - 1
        if level.optical_paths * level.focal_planes != 1:
            continue
        if level.tile_width % 2 or level.tile_height % 2:
            continue
        width, height = level.width, level.height
        while True:
            if nxt is not None and (not dyadic or width <= nxt.width * 2.5):
                break
            if nxt is None and _fits_one_tile(width, height, level.tile_width, level.tile_height):
                break
            width, height = math.ceil(width / 2), math.ceil(height / 2)
            plan.append(
                PlannedLevel(width, height, level.tile_width, level.tile_height, parent=parent)
            )
            parent = len(plan) - 1
    return plan


def _keep(level: Level, base: Level) -> bool:
    """Single-tile levels whose tile size differs from level 0's are rebuilt, not copied.

    Converters such as wsi2dcm shrink the tile to the image on small levels; wsidicom and
    several viewers need one tile size per series and would drop them.
    """
    same = (level.tile_width, level.tile_height) == (base.tile_width, base.tile_height)
    return same or level.tile_count > 1


def halve(tile: Pixels) -> Pixels:
    """2x2 box filter with rounding (tile sides must be even)."""
    a = tile.astype(np.uint16)
    total = a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2
    return (total >> 2).astype(np.uint8)


class Downsampler:
    """Turns the row-major tiles of one level into the row-major tiles of the level below.

    Only one output tile row is buffered (tile_height x output width), so memory does not grow
    with the slide: each parent tile is halved as it arrives and pasted into that row.
    """

    def __init__(
        self,
        parent: PlannedLevel,
        samples: int,
        emit: Callable[[int, int, Pixels], None],
    ) -> None:
        self.tw, self.th = parent.tile_width, parent.tile_height
        self.parent_cols = math.ceil(parent.width / self.tw)
        self.parent_rows = math.ceil(parent.height / self.th)
        out_w = math.ceil(parent.width / 2)
        self.out_cols = math.ceil(out_w / self.tw)
        width = max(self.out_cols * self.tw, self.parent_cols * self.tw // 2)
        self._row = np.full((self.th, width, samples), 255, dtype=np.uint8)
        self._emit = emit

    def add(self, col: int, row: int, tile: Pixels) -> None:
        h, w = self.th // 2, self.tw // 2
        y, x = (row % 2) * h, col * w
        self._row[y : y + h, x : x + w] = halve(tile[: self.th, : self.tw])
        if col == self.parent_cols - 1 and (row % 2 == 1 or row == self.parent_rows - 1):
            for out_col in range(self.out_cols):
                tile_out = self._row[:, out_col * self.tw : (out_col + 1) * self.tw].copy()
                self._emit(out_col, row // 2, tile_out)
            self._row.fill(255)
