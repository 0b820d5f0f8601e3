"""Scalar fields over level-0 space, sampled at the pixel centres of any level.

Shapes (tissue, pen strokes) are signed-distance grids at a coarse pitch, computed once: a
signed distance is smooth, so bilinear interpolation places the edge to a fraction of a
pixel even from a 16-64 px grid, and memory stays bounded (2048 samples a side at most).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def centres(start: int, n: int, d: int) -> F64:
    """Level-0 coordinates of the centres of level-`d` pixels start .. start+n-1."""
    out: F64 = (np.arange(start, start + n, dtype=np.float64) + 0.5) * d
    return out


def ramp(sdf: F32 | F64, width: float) -> F32:
    """Coverage from a signed distance (negative inside): 1 inside, 0 outside, linear over
    `width` level-0 px around the edge (width = the pixel size, so levels agree)."""
    out: F32 = np.clip(0.5 - sdf / width, 0.0, 1.0).astype(np.float32)
    return out


@dataclass(frozen=True)
class GridField:
    """A field sampled on a grid: sample (i, j) sits at (x0 + (j + 0.5) * step, y0 + (i + 0.5)
    * step); beyond the grid the field is `outside`. Build with `grid_field`."""

    x0: float
    y0: float
    step: float
    padded: F32  # the samples with a border of 2 `outside` values
    outside: float

    @property
    def values(self) -> F32:
        out: F32 = self.padded[2:-2, 2:-2]
        return out

    def _axis(self, start: int, n: int, d: int, origin: float, size: int) -> tuple[F64, F64]:
        q = (centres(start, n, d) - origin) / self.step - 0.5
        i0 = np.floor(q)
        return np.clip(i0, -2, size) + 2, q - i0  # index into the padded grid, fraction

    def window(self, x: int, y: int, w: int, h: int, d: int) -> F32:
        """The grid samples that the region's interpolation reads (for min/max fast paths)."""
        gh, gw = self.values.shape
        iy, _ = self._axis(y, h, d, self.y0, gh)
        ix, _ = self._axis(x, w, d, self.x0, gw)
        out: F32 = self.padded[int(iy[0]) : int(iy[-1]) + 2, int(ix[0]) : int(ix[-1]) + 2]
        return out

    def sample(self, x: int, y: int, w: int, h: int, d: int) -> F32:
        """Bilinear samples (h, w) at the centres of the level-`d` pixels of the region."""
        gh, gw = self.values.shape
        iy, fy = self._axis(y, h, d, self.y0, gh)
        ix, fx = self._axis(x, w, d, self.x0, gw)
        r0, c0 = int(iy[0]), int(ix[0])
        sub = self.padded[r0 : int(iy[-1]) + 2, c0 : int(ix[-1]) + 2]
        jx = (ix - c0).astype(np.intp)
        fxf = fx.astype(np.float32)
        # Along x on the few grid rows first, then along y by whole-row gathers.
        rows = np.take(sub, jx, axis=1) * (1 - fxf) + np.take(sub, jx + 1, axis=1) * fxf
        jy = (iy - r0).astype(np.intp)
        fyf = fy.astype(np.float32)[:, None]
        out = np.take(rows, jy, axis=0) * (1 - fyf) + np.take(rows, jy + 1, axis=0) * fyf
        return out.astype(np.float32, copy=False)


def grid_field(x0: float, y0: float, step: float, values: F32 | F64, outside: float) -> GridField:
    padded = np.pad(values.astype(np.float32), 2, constant_values=np.float32(outside))
    return GridField(x0, y0, step, padded, outside)
