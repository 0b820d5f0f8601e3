"""The tissue texture bank: square patches of real stained tissue, cut from real slides.

Sources (relative to the texture directory, the real-file kit of tests/conftest.py):

    H&E  aperio-svs/CMU-1-Small-Region.svs         level 0            (0.50 µm/px)
         aperio-svs/tcga-cr-7395-01a-01-ts1.svs    level 1            (~0.50 µm/px)
         ome-tiff/OS-1-detail.ome.tif              level 0, halved    (0.23 -> 0.45 µm/px)
    IHC  ome-tiff/OS-2-ndpi.ome.tif                level 0            (Ki67/DAB, 0.23 µm/px)

H&E sources are brought to about the same scale (OS-1 is box-halved) so that nuclei keep one
size across a slide; nothing is ever upsampled, since a clean slide must be sharp everywhere.
Each source is white-balanced so that its glass maps to our glass colour, its stain colour
is pulled halfway towards the mean of its stain's sources (in optical density), its local
tone is evened out by a gain field that varies slowly over the source (_even_tone: pale and
dense stretches are pulled towards the common tone, so neighbouring super-cells from different
places agree in colour at thumbnail zoom), and it is
cut into PATCH x PATCH patches on a CELL-pitch grid (neighbouring patches overlap by
2*OVERLAP, exactly as neighbouring lattice cells do, so a block of neighbouring patches shows
continuous tissue). A grid position is kept when at least half of its 16 px blocks are
tissue (mean optical density > 0.2). Each patch gets a kind: *fatty* (15% or more holes: fat,
lumina), *stroma* (the least cellular third of a source's remaining patches) or *cellular*,
so the layout can ask for hard negatives for blur (fat, smooth stroma) on purpose. A patch is
an *anchor* when the SUPER x SUPER block of grid positions starting at it is complete and the
block's outer 32 px are at least 85% tissue: the block's holes are then real holes with real
edges, while glass reaching a block's edge would be cut straight by the seam to the next.

`texture_dir=None` looks in $EDGE_TEST_DATA, then ../shared/data/real next to the repository;
when neither holds the files, patches come from `procedural.py` (the truth records which).
An explicit directory that does not exist or holds none of the files is a ValueError.
Banks are cached per (directory, stain) for the life of the process.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge.synth.procedural import procedural_patches
from edge.synth.sources import (
    CELL,
    GLASS,
    KINDS,
    OVERLAP,
    PATCH,
    SUPER,
    Cut,
    cut_patches,
    read_source,
    recolour,
)

__all__ = ["CELL", "GLASS", "KINDS", "OVERLAP", "PATCH", "SUPER", "TextureBank", "load_patches"]

# (file, pyramid level, stain, box-downsampling factor applied after reading)
SOURCES: tuple[tuple[str, int, str, int], ...] = (
    ("aperio-svs/CMU-1-Small-Region.svs", 0, "H&E", 1),
    ("aperio-svs/tcga-cr-7395-01a-01-ts1.svs", 1, "H&E", 1),
    ("ome-tiff/OS-1-detail.ome.tif", 0, "H&E", 2),
    ("ome-tiff/OS-2-ndpi.ome.tif", 0, "IHC", 1),
)
TEXTURE_MPP = {"H&E": 0.5, "IHC": 0.227}  # approximate scale of the real texture
_REPO = Path(__file__).resolve().parents[2]
_TONE = 0.9  # strength of the pull of local tissue tone towards the common tone (0: none)
_TONE_SIGMA = 1.0  # smoothing of the local tone, in grid positions
_TONE_CLIP = (0.5, 2.0)  # bounds of the optical-density gain
_TISSUE_OD = 0.2  # summed optical density of a tissue pixel

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)  # identity hash: banks are cached, compared by identity
class TextureBank:
    """The patches for one stain. pyramid[k] is (n, 3, PATCH >> k, PATCH >> k), planar.

    doubled[k] (k >= 2, None below) holds the n patches followed by their n transposes, so
    the vectorised sampler can address a transposed patch as one more patch. `grid` maps
    (source, grid row, grid column) to a patch id or -1: grid[grid_start[s] + r * cols + c].
    """

    stain: str
    origin: str  # "real" or "procedural"
    files: tuple[str, ...]  # source names (for the truth)
    pyramid: tuple[U8, ...]
    doubled: tuple[U8 | None, ...]
    kind: I64  # index into KINDS, per patch
    source: I64  # index into files, per patch
    pos: I64  # (n, 2) grid row and column in its source
    anchor: npt.NDArray[np.bool_]  # per patch
    grid: I64
    grid_start: I64  # per source
    grid_shape: I64  # (n_src, 2) rows, cols

    @property
    def count(self) -> int:
        return int(self.pyramid[0].shape[0])


def default_texture_dirs() -> list[Path]:
    env = os.environ.get("EDGE_TEST_DATA")
    dirs = [Path(env)] if env else []
    return [*dirs, _REPO.parent / "shared" / "data" / "real"]


def resolve_texture_dir(texture_dir: Path | None) -> Path | None:
    """The directory to load from, or None for procedural texture (see the module doc)."""
    names = [s[0] for s in SOURCES]
    if texture_dir is not None:
        if not texture_dir.is_dir():
            raise ValueError(f"texture directory {texture_dir} does not exist")
        if not any((texture_dir / n).is_file() for n in names):
            raise ValueError(
                f"texture directory {texture_dir} holds none of the texture files "
                f"({', '.join(names)})"
            )
        return texture_dir.resolve()
    for d in default_texture_dirs():
        if d.is_dir() and any((d / n).is_file() for n in names):
            return d.resolve()
    return None


def patch_pyramid(patches: U8) -> tuple[U8, ...]:
    """2x box-downsampled copies (rounded) down to 1x1, so any power-of-two level is a lookup."""
    levels = [patches]
    while levels[-1].shape[-1] > 1:
        a = levels[-1].astype(np.uint16)
        s = a[..., ::2, ::2] + a[..., 1::2, ::2] + a[..., ::2, 1::2] + a[..., 1::2, 1::2]
        levels.append(((s + 2) >> 2).astype(np.uint8))
    return tuple(levels)


def _tone_field(cut: Cut, target: F32) -> F32:
    """Per-channel OD gain at the centre of every grid position of `cut`'s source, padded by one
    position on each side: (target / local tissue OD) ** _TONE, the local OD a tissue-weighted
    Gaussian mean over neighbouring positions (sigma _TONE_SIGMA positions)."""
    rows, cols = cut.shape
    small = cut.patches[..., 2::4, 2::4].astype(np.float32)  # quarter resolution statistics
    glass = GLASS.astype(np.float32)[None, :, None, None]
    od = -np.log((small + 1.0) / (glass + 1.0))
    tissue = (od.sum(axis=1) > _TISSUE_OD).astype(np.float32)  # (m, h, w)
    weight = tissue.sum(axis=(1, 2))
    sums = (od * tissue[:, None]).sum(axis=(2, 3))  # (m, 3)
    w_grid = np.zeros((rows + 2, cols + 2), np.float64)
    s_grid = np.zeros((rows + 2, cols + 2, 3), np.float64)
    w_grid[cut.pos[:, 0] + 1, cut.pos[:, 1] + 1] = weight
    s_grid[cut.pos[:, 0] + 1, cut.pos[:, 1] + 1] = sums
    r = np.arange(rows + 2, dtype=np.float64)
    c = np.arange(cols + 2, dtype=np.float64)
    ky = np.exp(-0.5 * ((r[:, None] - r[None, :]) / _TONE_SIGMA) ** 2)
    kx = np.exp(-0.5 * ((c[:, None] - c[None, :]) / _TONE_SIGMA) ** 2)
    w_s = ky @ w_grid @ kx.T
    s_s = np.einsum("ab,bcz,dc->adz", ky, s_grid, kx)
    overall = sums.sum(axis=0) / max(float(weight.sum()), 1.0)
    local = np.where(w_s[..., None] > 1e-6, s_s / np.maximum(w_s, 1e-6)[..., None], overall)
    gain = (target.astype(np.float64) / np.maximum(local, 1e-3)) ** _TONE
    out: F32 = np.clip(gain, _TONE_CLIP[0], _TONE_CLIP[1]).astype(np.float32)
    return out


def _even_tone(cut: Cut, target: F32) -> None:
    """Even out the tissue's tone across a source: scale optical density per pixel by a gain
    field that varies slowly over the *source* (bilinear between grid-position centres), so
    neighbouring patches still agree exactly where they overlap and a block of neighbouring
    patches stays continuous, while pale and dense stretches of tissue are pulled towards the
    common tone. Without this, neighbouring super-cells from different places differ in tone,
    which reads as a mosaic of squares at thumbnail zoom."""
    gain = _tone_field(cut, target)  # (rows + 2, cols + 2, 3), centres at r * CELL + PATCH / 2
    u = (np.arange(PATCH, dtype=np.float64) + 0.5 - PATCH / 2) / CELL  # offset from own centre
    i0 = np.floor(u).astype(np.int64)
    t = (u - i0).astype(np.float32)
    glass = GLASS.astype(np.float32)
    logs = np.log((np.arange(256, dtype=np.float32)[None, :] + 1.0) / (glass[:, None] + 1.0))
    for k, (pr, pc) in enumerate(cut.pos.tolist()):
        ry, rx = pr + 1 + i0, pc + 1 + i0  # padded grid indices of the lower centres
        g00, g01 = gain[ry[:, None], rx[None, :]], gain[ry[:, None], rx[None, :] + 1]
        g10, g11 = gain[ry[:, None] + 1, rx[None, :]], gain[ry[:, None] + 1, rx[None, :] + 1]
        tx, ty = t[None, :, None], t[:, None, None]
        top = g00 + (g01 - g00) * tx
        g = top + (g10 + (g11 - g10) * tx - top) * ty  # (PATCH, PATCH, 3)
        for ch in range(3):
            v = np.exp(logs[ch][cut.patches[k, ch]] * g[..., ch]) * (glass[ch] + 1.0) - 0.5
            cut.patches[k, ch] = np.clip(v, 0.0, 255.0).astype(np.uint8)


def _assemble(stain: str, origin: str, files: tuple[str, ...], cuts: list[Cut]) -> TextureBank:
    patches = np.concatenate([c.patches for c in cuts])
    n_per = [len(c.kind) for c in cuts]
    source = np.repeat(np.arange(len(cuts)), n_per).astype(np.int64)
    pos = np.concatenate([c.pos for c in cuts])
    shapes = np.array([c.shape for c in cuts], np.int64)
    starts = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]]).astype(np.int64)
    grid = np.full(int((shapes[:, 0] * shapes[:, 1]).sum()), -1, np.int64)
    grid[starts[source] + pos[:, 0] * shapes[source, 1] + pos[:, 1]] = np.arange(len(source))
    anchor = np.concatenate([c.anchor for c in cuts])
    pyramid = patch_pyramid(patches)
    doubled = tuple(
        None if k < 2 else np.concatenate([p, p.transpose(0, 1, 3, 2)])
        for k, p in enumerate(pyramid)
    )
    kind = np.concatenate([c.kind for c in cuts])
    return TextureBank(
        stain, origin, files, pyramid, doubled, kind, source, pos, anchor, grid, starts, shapes
    )


@functools.lru_cache(maxsize=8)
def load_patches(directory: Path | None, stain: str) -> TextureBank:
    """The patch set for `stain` from `directory` (already resolved), procedural when None."""
    cuts: list[Cut] = []
    files: list[str] = []
    if directory is not None:
        for name, level, source_stain, factor in SOURCES:
            if source_stain != stain or not (directory / name).is_file():
                continue
            image = read_source(directory / name, level, factor)
            cut = None if image is None else cut_patches(image)
            if cut is not None:
                cuts.append(cut)
                files.append(name)
    if cuts:
        target = np.mean([c.od_mean for c in cuts], axis=0).astype(np.float32)
        for cut in cuts:
            recolour(cut, target)
            _even_tone(cut, target)
        return _assemble(stain, "real", tuple(files), cuts)
    proc, kinds = procedural_patches(stain, PATCH)
    # Procedural patches have no neighbours: a one-row grid with gaps, no anchors.
    pos = np.stack([np.zeros(len(kinds), np.int64), 2 * np.arange(len(kinds))], axis=1)
    none = np.zeros(len(kinds), bool)
    cut = Cut(proc, kinds, pos, none, (1, 2 * len(kinds)), np.ones(3, np.float32))
    return _assemble(stain, "procedural", ("procedural",), [cut])
