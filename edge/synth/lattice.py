"""Seamless texture synthesis on a lattice of cells in level-0 space.

Cell (i, j) covers [i*CELL, (i+1)*CELL) x [j*CELL, (j+1)*CELL) and shows one patch (PATCH =
CELL + 2*OVERLAP, so a patch overhangs its cell by OVERLAP on every side) in one of the 8
dihedral orientations. Which patch and orientation is a hash of (seed, i, j) (cells.py), never
a draw from a sequential generator, so any region can be rendered alone.

Across a boundary the two cells cross-fade over 2*OVERLAP px with a smoothstep weight, first
along x within each cell row, then along y. Weights are integers out of 256 and the blend is
integer arithmetic, so results are exact and independent of the region that was asked for.

At downsample d the patches come from their box-filtered pyramid (texture.patch_pyramid), so
a level-d pixel is the mean of its d x d level-0 pixels up to the blend; the cost per output
pixel is the same at every level. Two code paths give bit-identical results: at d <= 2 a cell
is large in the output and blocks are copied as slices of (flipped/transposed) patch views; at
d >= 4 cells are small, and one vectorised gather over the whole region replaces the loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge.synth.cells import CellTable, cell_table
from edge.synth.noise import smoothstep
from edge.synth.texture import CELL, OVERLAP, PATCH, TextureBank

GATHER_FROM = 4  # downsample from which the vectorised gather path is used

I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Axis:
    """Per output position along one axis: the cell pair (a, a+1), the weight of a+1 out of
    256, and the local coordinate in each cell's patch at this level (clamped)."""

    a: I64
    w: I64
    la: I64
    lb: I64


def axis_plan(start: int, n: int, d: int) -> Axis:
    u = (np.arange(start, start + n, dtype=np.float64) + 0.5) * d  # level-0 pixel centres
    c0 = np.floor(u / CELL).astype(np.int64)
    a = np.where(u - c0 * CELL < OVERLAP, c0 - 1, c0)
    t = (u - ((a + 1) * CELL - OVERLAP)) / (2 * OVERLAP)
    w = np.rint(smoothstep(t) * 256).astype(np.int64)
    last = max(PATCH // d, 1) - 1
    la = np.clip(np.floor((u - (a * CELL - OVERLAP)) / d), 0, last).astype(np.int64)
    lb = np.clip(np.floor((u - ((a + 1) * CELL - OVERLAP)) / d), 0, last).astype(np.int64)
    return Axis(a, w, la, lb)


def _blend(a: U8, b: U8, w: I64) -> U8:
    """(a*(256-w) + b*w + 128) >> 8, exact (it stays in 0..255); w broadcasts."""
    ww = w.astype(np.uint16)
    out = (a.astype(np.uint16) * (256 - ww) + b.astype(np.uint16) * ww + 128) >> 8
    return out.astype(np.uint8)


def _runs(ax: Axis) -> list[tuple[int, int, int]]:
    """[start, stop) runs of constant (cell pair, state); state 0: cell a only, 2: a+1 only,
    1: a blend of both."""
    state = np.where(ax.w == 0, 0, np.where(ax.w == 256, 2, 1))
    change = np.flatnonzero((np.diff(ax.a) != 0) | (np.diff(state) != 0)) + 1
    edges = [0, *change.tolist(), len(ax.a)]
    return [(s, e, int(state[s])) for s, e in itertools.pairwise(edges)]


def _one_axis(
    ax: Axis,
    start: int,
    stop: int,
    state: int,
    fetch: Callable[[int, I64], U8],
    where: tuple[slice | None, ...],
) -> U8:
    """The texture along one axis run: one cell's slice, or the blend of the pair's."""
    if state == 0:
        return fetch(int(ax.a[start]), ax.la[start:stop])
    if state == 2:
        return fetch(int(ax.a[start]) + 1, ax.lb[start:stop])
    a = fetch(int(ax.a[start]), ax.la[start:stop])
    b = fetch(int(ax.a[start]) + 1, ax.lb[start:stop])
    return _blend(a, b, ax.w[start:stop][where])


def _render_blocks(
    patches: TextureBank, level: int, table: CellTable, ya: Axis, xa: Axis, out: U8
) -> None:
    pyr, n = patches.pyramid[level], patches.count

    def view(cy: int, cx: int, ly: I64, lx: I64) -> U8:
        i, j = cy - table.y0, cx - table.x0
        p = int(table.patch[i, j])
        v = pyr[p % n].transpose(0, 2, 1) if p >= n else pyr[p]
        if table.flip_y[i]:
            v = v[:, ::-1]
        if table.flip_x[j]:
            v = v[:, :, ::-1]
        out: U8 = v[:, int(ly[0]) : int(ly[-1]) + 1, int(lx[0]) : int(lx[-1]) + 1]
        return out

    for ys, ye, ystate in _runs(ya):
        for xs, xe, xstate in _runs(xa):

            def row(cy: int, ly: I64, xs: int = xs, xe: int = xe, xstate: int = xstate) -> U8:
                return _one_axis(
                    xa,
                    xs,
                    xe,
                    xstate,
                    lambda cx, lx: view(cy, cx, ly, lx),
                    (None, None, slice(None)),
                )

            out[:, ys:ye, xs:xe] = _one_axis(ya, ys, ye, ystate, row, (None, slice(None), None))


def _local(flip: I64, local: I64, side: int) -> I64:
    out: I64 = np.where(flip == 1, side - 1 - local, local)
    return out


def _gather(
    flat: U8, side: int, table: CellTable, rows: tuple[I64, I64], cols: tuple[I64, I64], out: U8
) -> None:
    """Texture at the grid rows (cell, local) x columns (cell, local) into `out` (3, nr, nc):
    one index array, then one take per channel."""
    (cy, ly), (cx, lx) = rows, cols
    ry, rx = cy - table.y0, cx - table.x0
    idx = np.take(table.patch[ry], rx, axis=1) * (3 * side * side)
    idx += (_local(table.flip_y[ry], ly, side) * side)[:, None]
    idx += _local(table.flip_x[rx], lx, side)[None, :]
    plane = side * side
    for c in range(3):
        np.take(flat[c * plane :], idx, out=out[c])


def _col_runs(cols: I64) -> list[tuple[int, int]]:
    """Contiguous runs [start, stop) of sorted column indices."""
    cut = np.flatnonzero(np.diff(cols) != 1) + 1
    edges = [0, *cut.tolist(), len(cols)]
    return [(int(cols[s]), int(cols[e - 1]) + 1) for s, e in itertools.pairwise(edges)]


def _render_gather(
    patches: TextureBank, level: int, table: CellTable, ya: Axis, xa: Axis, out: U8
) -> None:
    doubled = patches.doubled[level]
    if doubled is None:  # a forced gather at a large level (tests): build it once here
        p = patches.pyramid[level]
        doubled = np.concatenate([p, p.transpose(0, 1, 3, 2)])
    side = doubled.shape[-1]
    flat = doubled.reshape(-1)
    bx, by = np.flatnonzero(xa.w > 0), np.flatnonzero(ya.w > 0)
    cols_a, cols_b = (xa.a, xa.la), (xa.a[bx] + 1, xa.lb[bx])
    runs = _col_runs(bx) if bx.size else []

    def rows(cells: tuple[I64, I64], dst: U8) -> None:
        _gather(flat, side, table, cells, cols_a, dst)
        if not bx.size:
            return
        b = np.empty((3, dst.shape[1], bx.size), np.uint8)
        _gather(flat, side, table, cells, cols_b, b)
        if len(runs) > 64:  # many one-pixel runs (high downsample): fancy indexing wins
            dst[:, :, bx] = _blend(dst[:, :, bx], b, xa.w[None, None, bx])
            return
        k = 0
        for s, e in runs:
            dst[:, :, s:e] = _blend(dst[:, :, s:e], b[:, :, k : k + e - s], xa.w[None, None, s:e])
            k += e - s

    rows((ya.a, ya.la), out)
    if by.size:
        bottom = np.empty((3, by.size, out.shape[2]), np.uint8)
        rows((ya.a[by] + 1, ya.lb[by]), bottom)
        out[:, by, :] = _blend(out[:, by, :], bottom, ya.w[None, by, None])


def render(
    seed: int,
    patches: TextureBank,
    x: int,
    y: int,
    width: int,
    height: int,
    d: int,
    method: str = "auto",
) -> U8:
    """Planar (3, height, width) uint8 texture of the level-`d` region at (x, y).

    method: "auto", or "blocks" / "gather" to force a path ("blocks" needs d <= 16, where
    local patch coordinates advance one per pixel; "gather" needs d >= 4).
    """
    ya, xa = axis_plan(y, height, d), axis_plan(x, width, d)
    out = np.empty((3, height, width), np.uint8)
    if width == 0 or height == 0:
        return out
    table = cell_table(
        seed, patches, int(ya.a.min()), int(ya.a.max()) + 1, int(xa.a.min()), int(xa.a.max()) + 1
    )
    level = min(d.bit_length() - 1, len(patches.pyramid) - 1)
    use_gather = method == "gather" or (method == "auto" and d >= GATHER_FROM)
    (_render_gather if use_gather else _render_blocks)(patches, level, table, ya, xa, out)
    return out
