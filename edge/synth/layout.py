"""Where the tissue lies: a signed-distance grid over the slide, chosen by the seed.

Three layouts, as on real slides:

* "cores": 2-5 needle-biopsy cores, elongated rounded strips along the long axis of the
  slide, gently curved, sometimes broken in two;
* "resection": one large smooth blobby piece (a polar radius with a few low harmonics) with
  2-6 small fragments around it;
* "sections": 2-3 serial sections, the same blob shape repeated side by side.

Shapes are placed in fractions of the slide, so they scale with it. Edges get two octaves of
value-noise roughness. The coverage (tissue area / slide area) is drawn from [0.15, 0.3] for
cores and [0.2, 0.5] otherwise; pieces are sized for it, then the distance field is offset
(bisection on a coarse grid, by at most 30% of the thinnest core's radius or 10% of a blob's,
so pieces keep their shape, stay apart and clear of the border) to meet it. Tissue keeps 4%
of the slide's short side clear of its border.

Fatty regions (fat.py) empty the cells of adipose tissue within the pieces.

The grid pitch is the smallest power of two >= 16 level-0 px that keeps the grid within 2048
samples a side (64 px, 1563 x 1563 samples, 10 MB, for a 100,000 px slide).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge.synth.fat import Fat, make_fat
from edge.synth.fields import GridField, grid_field, ramp
from edge.synth.noise import rng, value_noise

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
LAYOUTS = ("cores", "resection", "sections")
_SALT_LAYOUT, _SALT_ROUGH = 201, 202
_ROWS = 128  # grid rows built at a time


@dataclass(frozen=True)
class Piece:
    """One piece of tissue: centre and extent (level-0 px) and its shape parameters."""

    kind: str  # "core", "blob" or "fragment"
    cx: float
    cy: float
    radius: float  # half the short extent: core half-width, blob mean radius
    extent: float  # distance from the centre that bounds the shape
    points: tuple[tuple[float, float], ...] = ()  # core centre line
    harmonics: tuple[tuple[float, float], ...] = ()  # blob: (amplitude, phase) for k = 2, 3..

    def bbox(self, margin: float) -> tuple[float, float, float, float]:
        r = self.extent + margin
        return self.cx - r, self.cy - r, self.cx + r, self.cy + r

    def sdf(self, xs: F64, ys: F64) -> F64:
        """Signed distance (approximate for blobs) on the grid xs (row) x ys (column)."""
        x, y = xs[None, :], ys[:, None]
        if self.kind == "core":
            best = np.full((ys.size, xs.size), np.inf)
            pts = self.points
            for (ax, ay), (bx, by) in itertools.pairwise(pts):
                vx, vy = bx - ax, by - ay
                t = np.clip(((x - ax) * vx + (y - ay) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
                best = np.minimum(best, np.hypot(x - ax - t * vx, y - ay - t * vy))
            out: F64 = best - self.radius
            return out
        theta = np.arctan2(y - self.cy, x - self.cx)
        r = np.ones_like(theta)
        for k, (amp, phase) in enumerate(self.harmonics, start=2):
            r += amp * np.cos(k * theta + phase)
        out = np.hypot(x - self.cx, y - self.cy) - self.radius * r
        return out


@dataclass(frozen=True)
class Layout:
    kind: str
    pieces: tuple[Piece, ...]
    sdf: GridField
    coverage_target: float
    fat: Fat

    def coverage(self, x: int, y: int, w: int, h: int, d: int) -> F32 | float:
        """Coverage of the tissue pieces (fat included) in the level-`d` region; a float when
        it is uniform. The tissue mask is where this is >= 0.5."""
        width = max(2.0, float(d))
        window = self.sdf.window(x, y, w, h, d)
        if window.max() <= -width / 2:
            return 1.0
        if window.min() >= width / 2:
            return 0.0
        return ramp(self.sdf.sample(x, y, w, h, d), width)

    def alpha(self, x: int, y: int, w: int, h: int, d: int) -> F32 | float:
        """What is drawn: the coverage with the fat cells emptied (glass shows through)."""
        cover = self.coverage(x, y, w, h, d)
        if isinstance(cover, float) and cover == 0.0:
            return cover
        fat = self.fat.factor(x, y, w, h, d)
        if fat is None:
            return cover
        out: F32 = (cover * fat).astype(np.float32, copy=False)
        return out


def grid_pitch(width: int, height: int) -> int:
    return max(16, 1 << max(0, math.ceil(math.log2(max(width, height) / 2048))))


def _blob(kind: str, cx: float, cy: float, radius: float, shape: F64) -> Piece:
    harmonics = tuple((float(a), float(p)) for a, p in shape)
    extent = radius * (1 + sum(abs(a) for a, _ in harmonics))
    return Piece(kind, cx, cy, radius, extent, harmonics=harmonics)


def _harmonics(g: np.random.Generator, n: int = 4) -> F64:
    amps = g.uniform(0.0, 0.22, n) / np.arange(1, n + 1) ** 0.8
    return np.stack([amps, g.uniform(0, 2 * np.pi, n)], axis=1)


def _pieces(
    kind: str, g: np.random.Generator, width: int, height: int, target: float
) -> list[Piece]:
    """Pieces in level-0 px sized for `target` coverage, laid out along the slide's long axis
    (x when width >= height), apart from each other and clear of the border."""
    long, short = max(width, height), min(width, height)
    area = target * width * height

    def put(u: float, v: float) -> tuple[float, float]:  # (along long, along short) -> (x, y)
        return (u, v) if width >= height else (v, u)

    pieces: list[Piece] = []
    if kind == "cores":
        n = int(g.integers(2, 6))
        lengths = long * g.uniform(0.45, 0.8, n)
        radius = min(area / (2 * lengths.sum()), 0.3 * 0.7 * short / n)
        for i in range(n):
            v = short * (0.15 + 0.7 * (i + 0.5) / n)
            length = float(lengths[i])
            u0 = g.uniform(0.08 * long, 0.92 * long - length)
            wobble, phase = 0.1 * short / n * g.random(), g.uniform(0, 2 * np.pi)
            r = radius * g.uniform(0.85, 1.15)
            cuts = [0.0, 1.0] if g.random() > 0.3 else [0.0, g.uniform(0.35, 0.6), 1.0]
            gap = 0.015 * long if len(cuts) > 2 else 0.0
            for a, b in itertools.pairwise(cuts):
                us = np.linspace(u0 + a * length + gap, u0 + b * length - gap, 5)
                vs = v + wobble * np.sin(us / length * 3.0 + phase)
                pts = tuple(put(float(uu), float(vv)) for uu, vv in zip(us, vs, strict=True))
                cx, cy = np.mean([p[0] for p in pts]), np.mean([p[1] for p in pts])
                ext = max(math.hypot(p[0] - cx, p[1] - cy) for p in pts) + r
                pieces.append(Piece("core", float(cx), float(cy), r, ext, points=pts))
        return pieces
    shape = _harmonics(g)
    bulge = 1 + float(np.abs(shape[:, 0]).sum())
    n = 1 if kind == "resection" else int(g.integers(2, 4))
    fit = min(0.4 * short, 0.4 * long / n) / bulge  # apart and clear of the border
    radius = min(math.sqrt(area / (n * math.pi)), fit)
    for i in range(n):
        turned = shape.copy()
        turned[:, 1] += np.arange(2, 2 + len(shape)) * g.uniform(-0.2, 0.2)
        room = 0.06 * short + radius * bulge  # from the centre to the slot's edge
        u = long * (i + 0.5) / n + g.uniform(-1, 1) * max(0.0, 0.5 * long / n - room)
        v = short / 2 + g.uniform(-1, 1) * max(0.0, 0.5 * short - room)
        pieces.append(_blob("blob", *put(u, v), radius, turned))
    if kind == "resection":
        cu, cv = (pieces[0].cx, pieces[0].cy) if width >= height else (pieces[0].cy, pieces[0].cx)
        for _ in range(int(g.integers(2, 7))):
            a, dist = g.uniform(0, 2 * np.pi), radius * bulge * g.uniform(1.15, 1.5)
            u = float(np.clip(cu + dist * np.cos(a), 0.08 * long, 0.92 * long))
            v = float(np.clip(cv + dist * np.sin(a), 0.08 * short, 0.92 * short))
            r = short * g.uniform(0.012, 0.03)
            pieces.append(_blob("fragment", *put(u, v), r, _harmonics(g, 3)))
    return pieces


def _field(
    pieces: list[Piece], seed: int, xs: F64, ys: F64, width: int, height: int, clip: float
) -> F32:
    """Union distance field plus roughness; values beyond `clip` (outside the pieces' boxes)
    are only known to be >= clip. Built in bands of rows to bound the temporaries."""
    out = np.empty((ys.size, xs.size), np.float32)
    for r in range(0, ys.size, _ROWS):
        out[r : r + _ROWS] = _field_rows(pieces, seed, xs, ys[r : r + _ROWS], width, height, clip)
    return out


def _field_rows(
    pieces: list[Piece], seed: int, xs: F64, ys: F64, width: int, height: int, clip: float
) -> F64:
    f = np.full((ys.size, xs.size), clip)
    for p in pieces:
        x0, y0, x1, y1 = p.bbox(clip)
        cs = slice(int(np.searchsorted(xs, x0)), int(np.searchsorted(xs, x1)))
        rs = slice(int(np.searchsorted(ys, y0)), int(np.searchsorted(ys, y1)))
        if cs.start < cs.stop and rs.start < rs.stop:
            f[rs, cs] = np.minimum(f[rs, cs], p.sdf(xs[cs], ys[rs]))
    short = min(width, height)
    scale = max(0.02 * short, 64.0)
    rough = value_noise(seed, _SALT_ROUGH, xs[None, :], ys[:, None], scale) - 0.5
    rough += 0.5 * (value_noise(seed, _SALT_ROUGH + 1, xs[None, :], ys[:, None], scale / 3) - 0.5)
    f += rough * (0.012 * short)
    return f


def _inside(f: F32, xs: F64, ys: F64, width: int, height: int) -> F32:
    """Keep the tissue 4% of the short side away from the slide's border (in place)."""
    inset = 0.04 * min(width, height)
    edge_x = (inset - np.minimum(xs, width - xs)).astype(np.float32)
    edge_y = (inset - np.minimum(ys, height - ys)).astype(np.float32)
    np.maximum(f, edge_x[None, :], out=f)
    np.maximum(f, edge_y[:, None], out=f)
    out: F32 = f
    return out


def make_layout(seed: int, width: int, height: int) -> Layout:
    g = rng(seed, _SALT_LAYOUT)
    kind = LAYOUTS[int(g.integers(0, len(LAYOUTS)))]
    target = float(g.uniform(0.15, 0.3) if kind == "cores" else g.uniform(0.2, 0.5))
    pieces = _pieces(kind, g, width, height, target)
    # Coverage: bisect the offset on a coarse grid (~200 samples a side), exact field.
    step_c = max(width, height) / 200
    xc = (np.arange(math.ceil(width / step_c), dtype=np.float64) + 0.5) * step_c
    yc = (np.arange(math.ceil(height / step_c), dtype=np.float64) + 0.5) * step_c
    coarse = _field(pieces, seed, xc, yc, width, height, float(max(width, height)))
    # Bounded, so pieces keep their shape and stay apart; the truth states what was reached.
    hi = 0.3 * min(p.radius for p in pieces) if kind == "cores" else 0.1 * pieces[0].radius
    lo = -hi
    for _ in range(40):
        mid = (lo + hi) / 2
        covered = float(np.mean(_inside(coarse - mid, xc, yc, width, height) < 0))
        lo, hi = (mid, hi) if covered < target else (lo, mid)
    offset = (lo + hi) / 2
    grown = tuple(
        Piece(p.kind, p.cx, p.cy, p.radius, p.extent + max(offset, 0.0), p.points, p.harmonics)
        for p in pieces
    )
    step = grid_pitch(width, height)
    xs = (np.arange(math.ceil(width / step), dtype=np.float64) + 0.5) * step
    ys = (np.arange(math.ceil(height / step), dtype=np.float64) + 0.5) * step
    clip = 8.0 * step + abs(offset) + 0.012 * min(width, height)
    fine = _field(list(grown), seed, xs, ys, width, height, clip)
    fine -= np.float32(offset)
    np.clip(_inside(fine, xs, ys, width, height), -clip, clip, out=fine)
    fat = make_fat(seed, width, height, step, xs, ys)
    return Layout(kind, grown, grid_field(0.0, 0.0, step, fine, clip), target, fat)
