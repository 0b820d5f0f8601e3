"""Cutting real slides into texture patches (see texture.py for what and why).

Each source is white-balanced so that its glass maps to our glass colour and cut into PATCH x
PATCH patches on a CELL-pitch grid; a grid position is kept when at least half of its 16 px
blocks are tissue (mean summed optical density > 0.2). Kinds: *fatty* (15% or more holes),
*stroma* (the least cellular third of the rest), *cellular*. Anchors: complete SUPER x SUPER
blocks whose outer 32 px are at least 85% tissue; an anchor's kind is its block's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import tifffile

LOGGER = logging.getLogger(__name__)

PATCH = 256  # patch side in level-0 pixels, a power of two so the patch pyramid is exact
CELL = 160  # lattice pitch: patches overhang by OVERLAP = 48 px a side, so neighbours cross-fade
# over 96 px; with the earlier 224 (32 px overlap) the cells showed as a mosaic when zoomed out
OVERLAP = (PATCH - CELL) // 2
SUPER = 2  # cells per side of a super-cell, which maps to a block of neighbouring patches
GLASS = np.array([240.0, 240.0, 242.0])
KINDS = ("cellular", "fatty", "stroma")
_KEEP = 0.5  # tissue share of a kept patch
_RING = 0.85  # tissue share of an anchor block's outer 32 px (glass there would show a seam)
_TISSUE_OD = 0.2  # mean summed optical density of a 16 px block that counts as tissue

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Cut:
    patches: U8  # (m, 3, PATCH, PATCH) white-balanced
    kind: I64
    pos: I64
    anchor: npt.NDArray[np.bool_]
    shape: tuple[int, int]
    od_mean: F32  # mean optical density per channel over tissue


def read_source(path: Path, level: int, factor: int) -> U8 | None:
    try:
        with tifffile.TiffFile(path) as tif:
            levels = tif.series[0].levels
            image = levels[min(level, len(levels) - 1)].asarray()
    except Exception as exc:  # a damaged source only costs texture variety
        LOGGER.warning("texture source %s unreadable: %s", path, exc)
        return None
    if image.ndim != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
        LOGGER.warning("texture source %s is not 8-bit RGB: %s", path, image.shape)
        return None
    image = image[..., :3]
    if factor > 1:
        h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
        blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor, 3)
        image = (blocks.mean(axis=(1, 3)) + 0.5).astype(np.uint8)
    return image


def _block_mean(a: F32, block: int) -> F32:
    h, w = a.shape[0] // block, a.shape[1] // block
    out: F32 = a[: h * block, : w * block].reshape(h, block, w, block).mean(axis=(1, 3))
    return out


def cut_patches(image: U8) -> Cut | None:
    """Tissue patches of one source on the CELL grid (white-balanced, planar), with kinds."""
    small = image[::4, ::4].astype(np.float32)  # statistics on a quarter-resolution copy
    bright = small.mean(axis=2)
    glass_src = np.median(small[bright >= np.percentile(bright, 95)], axis=0)
    gain = (GLASS / np.maximum(glass_src, 1.0)).astype(np.float32)
    od = -np.log((np.minimum(small * gain, 255.0) + 1.0) / (GLASS + 1.0).astype(np.float32))
    total = od.sum(axis=2)
    tissue_px = total > _TISSUE_OD
    tissue = _block_mean(total, 4) > _TISSUE_OD  # 16 px blocks
    dark = _block_mean((total > 1.6).astype(np.float32), 4)  # nuclei, roughly
    rows = (image.shape[0] - PATCH) // CELL + 1
    cols = (image.shape[1] - PATCH) // CELL + 1
    n, step = PATCH // 16, CELL // 16
    found: list[tuple[int, int, float, float]] = []
    for r in range(max(rows, 0)):
        for c in range(max(cols, 0)):
            frac = float(tissue[r * step : r * step + n, c * step : c * step + n].mean())
            if frac >= _KEEP:
                cells = float(dark[r * step : r * step + n, c * step : c * step + n].mean())
                found.append((r, c, frac, cells))
    if not found:
        return None
    have = {(f[0], f[1]) for f in found}
    span = step * SUPER + (n - step)  # blocks across a SUPER x SUPER block of patches

    def block(r: int, c: int) -> tuple[float, float] | None:
        """(tissue share, cellularity) of the block of patches at (r, c) if it is an anchor."""
        if any((r + i, c + j) not in have for i in range(SUPER) for j in range(SUPER)):
            return None
        b = tissue[r * step : r * step + span, c * step : c * step + span]
        inner = b[2:-2, 2:-2]
        if (b.sum() - inner.sum()) / (b.size - inner.size) < _RING:
            return None
        cells = dark[r * step : r * step + span, c * step : c * step + span]
        return float(b.mean()), float(cells.mean())

    # Kinds: of the block for anchors (what a super-cell shows), of the patch otherwise.
    blocks = [block(f[0], f[1]) for f in found]
    stats = [b or (f[2], f[3]) for b, f in zip(blocks, found, strict=True)]
    is_anchor = [b is not None for b in blocks]
    holes = [frac <= (0.9 if a else 0.85) for (frac, _), a in zip(stats, is_anchor, strict=True)]
    kinds = [1 if h else 0 for h in holes]
    for group in (True, False):  # the least cellular third of the rest is stroma
        rest = sorted(
            (i for i in range(len(found)) if is_anchor[i] == group and not holes[i]),
            key=lambda i: stats[i][1],
        )
        for i in rest[: len(rest) // 3]:
            kinds[i] = 2
    # White balance through a lookup table per channel (cheaper than float arithmetic).
    luts = [np.minimum(np.arange(256) * g + 0.5, 255).astype(np.uint8) for g in gain.tolist()]
    patches = np.empty((len(found), 3, PATCH, PATCH), np.uint8)
    for i, (r, c, _, _) in enumerate(found):
        window = image[r * CELL : r * CELL + PATCH, c * CELL : c * CELL + PATCH]
        for ch in range(3):
            patches[i, ch] = luts[ch][window[..., ch]]
    return Cut(
        patches,
        np.array(kinds, np.int64),
        np.array([f[:2] for f in found], np.int64),
        np.array(is_anchor, bool),
        (rows, cols),
        od[tissue_px].mean(axis=0).astype(np.float32),
    )


def recolour(cut: Cut, target: F32) -> None:
    """Pull the source's stain halfway to `target`: scale optical density per channel."""
    factor = np.clip(np.sqrt(target / np.maximum(cut.od_mean, 1e-3)), 0.75, 1.33)
    v = np.arange(256, dtype=np.float64)
    for ch in range(3):
        g = GLASS[ch]
        lut = np.where(v < g, g * (np.maximum(v, 1.0) / g) ** factor[ch], v)
        cut.patches[:, ch] = (np.clip(lut, 0, 255) + 0.5).astype(np.uint8)[cut.patches[:, ch]]
