"""Which patch each lattice cell shows, as a pure function of (seed, cell).

Cells are grouped in super-cells of SUPER x SUPER. A super-cell draws an *anchor* patch (a
patch whose block of neighbouring patches in its source is complete, see texture.py) and an
orientation, and its cells show that block, so tissue is continuous inside a super-cell and
seams fall only between super-cells. The anchor's kind (cellular, fatty, stroma) and source
slide follow smooth value-noise fields over the super-cells, so neighbouring super-cells tend
to agree and a slide shows coherent regions; a source's share of the area follows its patch
count. Within a region of _REGION x _REGION super-cells, a super-cell continues its
neighbours' source tissue where the source has an anchor there (no seam at all); otherwise it
draws an anchor, avoiding ones whose blocks overlap those its left and upper neighbours drew.
Patches are never flipped or turned (mirrored neighbours read as a kaleidoscope).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge.synth.noise import hash_u64, value_noise
from edge.synth.texture import KINDS, SUPER, TextureBank

_SALT_PICK, _SALT_KIND, _SALT_SOURCE, _SALT_SPARE, _SALT_CONTINUE = range(101, 106)

_REGION = 3  # super-cells per side of a region that shows one window of a source

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class CellTable:
    """Cells [y0, y0+ny) x [x0, x0+nx): patch id (ids >= n are the transposed patch id - n)
    per cell; the y flip is shared by a row of cells, the x flip by a column, which keeps the
    sampler's index arithmetic separable."""

    y0: int
    x0: int
    patch: I64  # (ny, nx)
    flip_y: I64  # (ny,) 0 or 1
    flip_x: I64  # (nx,)


def _pool_table(
    patches: TextureBank, n_kind: int, member: npt.NDArray[np.bool_], least: int
) -> tuple[I64, I64, I64]:
    """Concatenated patch ids per (source, kind) among `member`, with start/length tables.
    A pool smaller than `least` widens: same kind from any source, then the source's members
    of any kind, then all members, then every patch."""
    n_src = len(patches.files)
    ids: list[int] = []
    start = np.zeros((n_src, n_kind), np.int64)
    length = np.zeros((n_src, n_kind), np.int64)
    every = np.ones(patches.count, bool)
    for s in range(n_src):
        mine = patches.source == s
        for k in range(n_kind):
            kind = patches.kind == k if n_kind > 1 else every
            for want in (member & mine & kind, member & kind, member & mine, member, every):
                pool = np.flatnonzero(want)
                if pool.size >= least:
                    break
            start[s, k], length[s, k] = len(ids), pool.size
            ids += pool.tolist()
    return np.array(ids, np.int64), start, length


@functools.lru_cache(maxsize=16)
def _pools(patches: TextureBank) -> tuple[tuple[I64, I64, I64], tuple[I64, I64, I64]]:
    """Anchor pools per (source, kind) and spare pools per source."""
    every = np.ones(patches.count, bool)
    return (
        _pool_table(patches, len(KINDS), patches.anchor, 4),
        _pool_table(patches, 1, every, 1),
    )


def _pick(pool: tuple[I64, I64, I64], src: I64, kind: I64, h: U64, bump: int = 0) -> I64:
    ids, start, length = pool
    n = length[src, kind]
    at = ((h % n.astype(np.uint64)).astype(np.int64) + bump) % n
    out: I64 = ids[start[src, kind] + at]
    return out


def _overlap(patches: TextureBank, a: I64, b: I64) -> npt.NDArray[np.bool_]:
    """Whether the blocks of anchors a and b share source tissue."""
    near = np.abs(patches.pos[a] - patches.pos[b]) < SUPER
    out: npt.NDArray[np.bool_] = (patches.source[a] == patches.source[b]) & near.all(axis=-1)
    return out


def _anchors(seed: int, patches: TextureBank, sy: I64, sx: I64) -> tuple[I64, I64]:
    """Anchor patch and transpose bit of the super-cells sy (rows) x sx (columns). A super-cell
    avoids anchors whose blocks overlap the blocks its left and upper neighbours drew first:
    a repeat next to itself, in mirror image, is the most visible thing a texture can do."""
    gy, gx = np.arange(sy[0] - 1, sy[-1] + 1)[:, None], np.arange(sx[0] - 1, sx[-1] + 1)[None, :]
    kind_v = value_noise(seed, _SALT_KIND, gx + 0.5, gy + 0.5, 5.0)
    # About a fifth of the area asks for fatty blocks and a fifth for stroma-rich ones (a pool
    # too small widens, see _pool_table; fat.py adds adipose regions of its own).
    kind = np.where(kind_v < 0.33, 1, np.where(kind_v > 0.67, 2, 0))
    # A source's share of the area follows its patch count, so small sources repeat less.
    share = np.cumsum(np.bincount(patches.source)) / patches.count
    src_v = np.clip(
        (value_noise(seed, _SALT_SOURCE, gx + 0.5, gy + 0.5, 8.0) - 0.5) * 1.6, -0.5, 0.5
    )
    src = np.minimum(np.searchsorted(share, src_v + 0.5, side="right"), len(share) - 1)
    pool, _ = _pools(patches)
    h = hash_u64(seed, _SALT_PICK, gx, gy)
    # Where the source allows, a super-cell continues its neighbours' tissue: the super-cells
    # are grouped in regions of _REGION x _REGION, and a region shows one window of its
    # source's grid (at an offset hashed from the region), so neighbours in a region with the
    # same source show neighbouring tissue and there is no seam between them. Regions differ,
    # so nothing repeats periodically; a source too small for a window is never continued.
    shape = patches.grid_shape[src]
    span = _REGION * SUPER
    ry, rx = shape[..., 0] - span + 1, shape[..., 1] - span + 1
    big = (ry > 0) & (rx > 0)
    ry, rx = np.maximum(ry, 1), np.maximum(rx, 1)
    off = hash_u64(seed, _SALT_CONTINUE, gx // _REGION, gy // _REGION)
    oy = ((off & np.uint64(0xFFFF)).astype(np.int64)) % ry
    ox = (((off >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.int64)) % rx
    row, col = oy + gy % _REGION * SUPER, ox + gx % _REGION * SUPER
    row, col = np.minimum(row, shape[..., 0] - 1), np.minimum(col, shape[..., 1] - 1)
    cont = np.where(big, patches.grid[patches.grid_start[src] + row * shape[..., 1] + col], -1)
    ok = cont >= 0
    ok &= patches.anchor[np.where(ok, cont, 0)]
    first = np.where(ok, cont, _pick(pool, src, kind, h))
    left, up = first[1:, :-1], first[:-1, 1:]
    inner = (slice(1, None), slice(1, None))
    anchor = first[inner]
    free = ~ok[inner]
    for bump in (1, 2, 3):
        clash = free & (_overlap(patches, anchor, left) | _overlap(patches, anchor, up))
        anchor = np.where(clash, _pick(pool, src[inner], kind[inner], h[inner], bump), anchor)
    return anchor, np.zeros_like(anchor)


def cell_table(seed: int, patches: TextureBank, y0: int, y1: int, x0: int, x1: int) -> CellTable:
    """Patches for the cells [y0, y1] x [x0, x1]. A super-cell (SUPER x SUPER cells) takes an
    anchor patch (by source and kind, following smooth fields) and one dihedral orientation,
    and its cells show the anchor's block of neighbouring patches in that orientation, so
    the tissue inside a super-cell is continuous; a missing neighbour takes a random patch."""
    cy = np.arange(y0, y1 + 1, dtype=np.int64)
    cx = np.arange(x0, x1 + 1, dtype=np.int64)
    sy, sx = cy // SUPER, cx // SUPER
    anchors, transposes = _anchors(seed, patches, np.unique(sy), np.unique(sx))
    iy, ix = (sy - sy[0])[:, None], (sx - sx[0])[None, :]
    anchor, transpose = anchors[iy, ix], transposes[iy, ix]
    src = patches.source[anchor]
    # No flips or transposes: a mirrored or turned neighbour is the most visible thing a
    # texture can do (a kaleidoscope of blocks at low zoom); the table keeps the bits at 0.
    flip_y, flip_x = np.zeros(cy.size, np.int64), np.zeros(cx.size, np.int64)
    my, mx = (cy % SUPER)[:, None], (cx % SUPER)[None, :]
    row = patches.pos[anchor, 0] + np.where(transpose == 1, mx, my)
    col = patches.pos[anchor, 1] + np.where(transpose == 1, my, mx)
    shape = patches.grid_shape[src]
    inside = (row < shape[..., 0]) & (col < shape[..., 1])
    at = patches.grid_start[src] + np.where(inside, row * shape[..., 1] + col, 0)
    found = np.where(inside, patches.grid[at], -1)
    _, spares = _pools(patches)
    h = hash_u64(seed, _SALT_SPARE, cx[None, :], cy[:, None])
    spare = _pick(spares, src, np.zeros_like(src), h)
    patch = np.where(found >= 0, found, spare) + transpose * patches.count
    return CellTable(y0, x0, patch, flip_y, flip_x)
