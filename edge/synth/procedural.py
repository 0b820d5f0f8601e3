"""Procedural tissue patches, used when no real texture files are available.

A fresh clone or an appliance without the real-file kit still gets a usable, deterministic
texture: in optical-density space, a fibrous background (anisotropic value noise) plus nuclei
(one per jittered 22 px lattice cell, present with a kind-dependent probability), and for the
*fatty* kind large empty vacuoles with thin membranes. H&E uses eosin pink and haematoxylin
purple; IHC a pale blue counterstain with a quarter of the nuclei brown (DAB). The same patch
kinds as the real bank (cellular, fatty, stroma) are produced, 4 of each.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge.synth.noise import value_noise

F64 = npt.NDArray[np.float64]
_GLASS = np.array([240.0, 240.0, 242.0])


def _od(rgb: tuple[float, float, float]) -> F64:
    out: F64 = -np.log(np.array(rgb) / _GLASS)
    return out


_PALETTE = {
    "H&E": (_od((232, 150, 198)), _od((92, 70, 150)), _od((92, 70, 150))),
    "IHC": (_od((214, 222, 236)), _od((150, 170, 206)), _od((112, 76, 46))),
}
_PRESENCE = (0.85, 0.25, 0.15)  # nucleus probability per lattice cell: cellular, fatty, stroma


def _discs(
    rng: np.random.Generator, size: int, cell: float, radius: tuple[float, float], p: float
) -> tuple[F64, F64]:
    """Soft discs, one per present jittered lattice cell: (coverage, per-disc tag in [0, 1))."""
    cover = np.zeros((size, size))
    tags = np.zeros((size, size))
    n = int(np.ceil(size / cell)) + 1
    for gy in range(-1, n):
        for gx in range(-1, n):
            jy, jx = rng.uniform(0.2, 0.8, 2).tolist()
            r, draw, tag = rng.uniform(*radius), rng.random(), rng.random()
            if draw >= p:
                continue
            cy, cx = (gy + jy) * cell, (gx + jx) * cell
            y0, y1 = max(int(cy - r - 2), 0), min(int(cy + r + 3), size)
            x0, x1 = max(int(cx - r - 2), 0), min(int(cx + r + 3), size)
            if y0 >= y1 or x0 >= x1:
                continue
            yy, xx = np.ogrid[y0:y1, x0:x1]
            c = np.clip((r - np.hypot(yy - cy, xx - cx)) / 1.5, 0.0, 1.0)
            win = cover[y0:y1, x0:x1]
            tags[y0:y1, x0:x1] = np.where(c > win, tag, tags[y0:y1, x0:x1])
            np.maximum(win, c, out=win)
    return cover, tags


def procedural_patches(
    stain: str, size: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """12 patches (n, 3, size, size) and their kinds (0 cellular, 1 fatty, 2 stroma)."""
    background, nucleus, positive = _PALETTE.get(stain, _PALETTE["H&E"])
    rng = np.random.default_rng(7 + (stain == "IHC"))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    patches = []
    kinds = []
    for i in range(12):
        kind = i % 3
        angle = rng.uniform(0.0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        fibres = value_noise(11, i, u * 0.12, v, 5.0)
        grain = value_noise(12, i, xx, yy, 3.0)
        nuclei, tags = _discs(rng, size, 22.0, (5.0, 8.0), _PRESENCE[kind])
        holes = np.zeros((size, size))
        if kind == 1:
            holes, _ = _discs(rng, size, 70.0, (26.0, 33.0), 0.9)
        density = (0.45 + 0.8 * fibres) * (1.0 - holes)
        colour = np.where((tags < 0.25)[None], positive[:, None, None], nucleus[:, None, None])
        od = background[:, None, None] * density + colour * (nuclei * (0.75 + 0.5 * grain))
        rgb = _GLASS[:, None, None] * np.exp(-od) + rng.integers(-3, 4, (3, size, size))
        patches.append(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
        kinds.append(kind)
    return np.stack(patches), np.array(kinds, np.int64)
