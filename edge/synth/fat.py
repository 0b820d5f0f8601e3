"""Fatty regions: adipose tissue, empty cells with thin membranes, inside the tissue.

Real texture alone rarely shows large fatty areas, yet fat (bright, almost textureless) is
the classic false positive for a focus check, so every slide gets some: where a smooth
field (value noise over 15% of the short side) is high, about a tenth of the slide, the
tissue coverage is multiplied by a membrane pattern, so the glass shows through the cells.

The pattern is a periodic Voronoi tessellation (F2 - F1 of an 8 x 8 lattice of 128 px cells
jittered within their middle half, 5 px membranes) on a 1024 px tile, with a box-filtered
pyramid so every level samples its own copy and levels agree. The tile is built once per
process (about 0.1 s).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge.synth.fields import GridField, grid_field
from edge.synth.noise import rng, value_noise

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
TILE = 1024
_CELLS = 8
_SALT_FAT = 231


@functools.lru_cache(maxsize=1)
def membranes() -> tuple[F32, ...]:
    """Membrane coverage (1 on a membrane, 0 inside a cell) on the tile, at every level."""
    g = rng(0, _SALT_FAT)
    cell = TILE / _CELLS
    # Jitter within the middle half of a cell: the 3 x 3 neighbourhood then holds the two
    # nearest features almost everywhere.
    jitter = g.uniform(0.25, 0.75, (_CELLS, _CELLS, 2))
    feat = np.empty((_CELLS, _CELLS, 2), np.float32)
    feat[..., 0] = (np.arange(_CELLS)[:, None] + jitter[..., 0]) * cell
    feat[..., 1] = (np.arange(_CELLS)[None, :] + jitter[..., 1]) * cell
    # Pixels as (cell row, y in cell, cell column, x in cell): each cell's 3 x 3 neighbour
    # features broadcast over its pixels.
    c = np.arange(_CELLS)
    yy = (c[:, None, None, None] * cell + np.arange(cell)[None, :, None, None] + 0.5).astype(
        np.float32
    )
    xx = (c[None, None, :, None] * cell + np.arange(cell)[None, None, None, :] + 0.5).astype(
        np.float32
    )
    shape = (_CELLS, int(cell), _CELLS, int(cell))
    first = np.full(shape, np.inf, np.float32)
    second = np.full(shape, np.inf, np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            cy, cx = c[:, None] + dy, c[None, :] + dx
            # Periodic: a neighbour beyond the tile is a wrapped feature, shifted by TILE.
            fy = feat[cy % _CELLS, cx % _CELLS, 0] + np.float32(TILE) * (cy // _CELLS)
            fx = feat[cy % _CELLS, cx % _CELLS, 1] + np.float32(TILE) * (cx // _CELLS)
            dist = np.hypot(yy - fy[:, None, :, None], xx - fx[:, None, :, None])
            np.minimum(second, np.maximum(first, dist), out=second)
            np.minimum(first, dist, out=first)
    gap = (second - first).reshape(TILE, TILE)  # distance to the nearest cell border, x2
    levels = [np.clip(1.0 - (gap - 5.0) / 3.0, 0.0, 1.0).astype(np.float32)]
    while levels[-1].shape[0] > 1:
        a = levels[-1]
        levels.append(
            (a[::2, ::2] + a[1::2, ::2] + a[::2, 1::2] + a[1::2, 1::2]) * np.float32(0.25)
        )
    return tuple(levels)


@dataclass(frozen=True)
class Fat:
    weight: GridField  # 0..1: how fatty, on the layout grid
    ox: int  # tile offset, level-0 px (a multiple of 64 keeps the levels aligned)
    oy: int

    def factor(self, x: int, y: int, w: int, h: int, d: int) -> F32 | None:
        """Multiplier for the tissue coverage of the region, or None where there is no fat."""
        if self.weight.window(x, y, w, h, d).max() <= 0.0:
            return None
        levels = membranes()
        tile = levels[min(int(math.log2(d)), len(levels) - 1)]
        s = tile.shape[0]
        rows = (np.arange(y, y + h) + self.oy // d) % s
        cols = (np.arange(x, x + w) + self.ox // d) % s
        membrane = np.take(np.take(tile, rows, axis=0), cols, axis=1)
        wgt = np.clip(self.weight.sample(x, y, w, h, d), 0.0, 1.0)
        out: F32 = 1.0 - wgt * (1.0 - membrane)
        return out


def make_fat(seed: int, width: int, height: int, step: int, xs: F64, ys: F64) -> Fat:
    scale = 0.15 * min(width, height)
    values = np.empty((ys.size, xs.size), np.float32)
    for r in range(0, ys.size, 128):  # bands of rows bound the temporaries
        v = value_noise(seed, _SALT_FAT, xs[None, :], ys[r : r + 128, None], scale)
        t = np.clip((v - 0.74) / 0.05, 0.0, 1.0)
        values[r : r + 128] = t * t * (3 - 2 * t)
    weight = grid_field(0.0, 0.0, step, values, 0.0)
    g = rng(seed, _SALT_FAT)
    return Fat(weight, int(g.integers(0, TILE // 64)) * 64, int(g.integers(0, TILE // 64)) * 64)
