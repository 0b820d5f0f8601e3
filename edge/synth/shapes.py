"""Analytic shapes in level-0 space, evaluated at the pixel centres of any level.

A shape gives a signed distance (negative inside, level-0 px). Its coverage at downsample d
ramps from 1 to 0 over max(feather, d) px around the edge (fields.ramp), and its *support*,
where the coverage is > 0, is exactly where an artifact may change pixels: the masks are the
supports, so "outside the mask nothing changed" holds by construction.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge.synth.fields import centres, ramp

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (level-0 px)


class Shape(Protocol):
    @property
    def feather(self) -> float:
        """Edge width at level 0 (level-0 px); at downsample d the edge is max(feather, d)."""
        ...

    def box(self, width: float) -> Box:
        """Bounds of the support at edge width `width`: where sdf < width / 2."""
        ...

    def sdf(self, xs: F64, ys: F64) -> F64:
        """Signed distance on the grid ys (rows) x xs (columns)."""
        ...

    def contains(self, x0: float, y0: float, x1: float, y1: float, width: float) -> bool:
        """True if the whole rectangle has full coverage (a shortcut; False is always safe)."""
        ...


def _corners_inside(shape: Shape, x0: float, y0: float, x1: float, y1: float, w: float) -> bool:
    """For convex shapes: the rectangle is fully covered if its corners are."""
    v = shape.sdf(np.array([x0, x1]), np.array([y0, y1]))
    return bool(v.max() <= -w / 2)


@dataclass(frozen=True)
class Ellipse:
    cx: float
    cy: float
    rx: float
    ry: float
    angle: float  # radians
    feather: float

    def box(self, width: float) -> Box:
        grow = 1.0 + width / (2 * min(self.rx, self.ry))  # the support is a scaled ellipse
        c, s = math.cos(self.angle), math.sin(self.angle)
        hx = math.hypot(self.rx * c, self.ry * s) * grow
        hy = math.hypot(self.rx * s, self.ry * c) * grow
        return self.cx - hx, self.cy - hy, self.cx + hx, self.cy + hy

    def rho(self, xs: F64, ys: F64) -> F64:
        """Normalised radius: 1 on the ellipse."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = (xs - self.cx).astype(np.float32), (ys - self.cy).astype(np.float32)
        u = (dx * (c / self.rx))[None, :] + (dy * (s / self.rx))[:, None]
        v = (dy * (c / self.ry))[:, None] - (dx * (s / self.ry))[None, :]
        u *= u
        v *= v
        u += v
        out: F64 = np.sqrt(u, out=u).astype(np.float64, copy=False)
        return out

    def sdf(self, xs: F64, ys: F64) -> F64:
        out: F64 = (self.rho(xs, ys) - 1.0) * min(self.rx, self.ry)
        return out

    def contains(self, x0: float, y0: float, x1: float, y1: float, width: float) -> bool:
        return _corners_inside(self, x0, y0, x1, y1, width)


@dataclass(frozen=True)
class Capsules:
    """A thick polyline: points joined by segments, `radius` on each side, round ends."""

    points: tuple[tuple[float, float], ...]
    radius: float
    feather: float

    def box(self, width: float) -> Box:
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        r = self.radius + width / 2
        return min(xs) - r, min(ys) - r, max(xs) + r, max(ys) + r

    def sdf(self, xs: F64, ys: F64) -> F64:
        # Beyond `reach` of every segment the value only needs to be >= the support's edge.
        reach = self.radius + 2 * self.feather + 2 * max(_pitch(xs), _pitch(ys))
        best = np.full((ys.size, xs.size), reach)
        for (ax, ay), (bx, by) in itertools.pairwise(self.points):
            c0 = int(np.searchsorted(xs, min(ax, bx) - reach))
            c1 = int(np.searchsorted(xs, max(ax, bx) + reach))
            r0 = int(np.searchsorted(ys, min(ay, by) - reach))
            r1 = int(np.searchsorted(ys, max(ay, by) + reach))
            if c0 >= c1 or r0 >= r1:
                continue
            vx, vy = bx - ax, by - ay
            dx, dy = xs[None, c0:c1] - ax, ys[r0:r1, None] - ay
            t = np.clip((dx * vx + dy * vy) / max(vx * vx + vy * vy, 1e-12), 0.0, 1.0)
            sub = best[r0:r1, c0:c1]
            np.minimum(sub, np.hypot(dx - t * vx, dy - t * vy), out=sub)
        out: F64 = best - self.radius
        return out

    def contains(self, x0: float, y0: float, x1: float, y1: float, width: float) -> bool:
        return False


@dataclass(frozen=True)
class HalfPlane:
    """Inside where (p - point) . normal > -offset; `bounds` is the slide."""

    px: float
    py: float
    nx: float
    ny: float
    offset: float
    bounds: Box
    feather: float

    def box(self, width: float) -> Box:
        x0, y0, x1, y1 = self.bounds
        off = self.offset + width / 2
        corners = [(x0, y0), (x1, y0), (x0, y1), (x1, y1)]
        inside = [(x, y) for x, y in corners if self._s(x, y) > -off]
        # Where the boundary line crosses the slide's sides.
        for (ax, ay), (bx, by) in [
            ((x0, y0), (x1, y0)),
            ((x1, y0), (x1, y1)),
            ((x1, y1), (x0, y1)),
            ((x0, y1), (x0, y0)),
        ]:
            sa, sb = self._s(ax, ay) + off, self._s(bx, by) + off
            if (sa > 0) != (sb > 0):
                t = sa / (sa - sb)
                inside.append((ax + t * (bx - ax), ay + t * (by - ay)))
        if not inside:
            return x0, y0, x0, y0
        return (
            min(p[0] for p in inside),
            min(p[1] for p in inside),
            max(p[0] for p in inside),
            max(p[1] for p in inside),
        )

    def _s(self, x: float, y: float) -> float:
        return (x - self.px) * self.nx + (y - self.py) * self.ny

    def signed(self, xs: F64, ys: F64) -> F64:
        """Distance beyond the line (positive on the far side)."""
        out: F64 = (xs[None, :] - self.px) * self.nx + (ys[:, None] - self.py) * self.ny
        return out

    def sdf(self, xs: F64, ys: F64) -> F64:
        out: F64 = -(self.signed(xs, ys) + self.offset)
        return out

    def contains(self, x0: float, y0: float, x1: float, y1: float, width: float) -> bool:
        return _corners_inside(self, x0, y0, x1, y1, width)


@dataclass(frozen=True)
class Everywhere:
    """The whole plane (whole-slide blur or stain); boxes are clipped to the slide later."""

    feather: float = 1.0

    def box(self, width: float) -> Box:
        return -1e15, -1e15, 1e15, 1e15

    def sdf(self, xs: F64, ys: F64) -> F64:
        return np.full((ys.size, xs.size), -1e9)

    def contains(self, x0: float, y0: float, x1: float, y1: float, width: float) -> bool:
        return True


def _pitch(a: F64) -> float:
    return float(a[1] - a[0]) if a.size > 1 else 1.0


@dataclass(frozen=True)
class Window:
    """The part of a level-`d` region (x, y, w, h) a shape may touch: rows r0:r1, columns
    c0:c1 of the region, with the level-0 centre coordinates of those pixels."""

    r0: int
    r1: int
    c0: int
    c1: int
    xs: F64
    ys: F64


def window(box: Box, margin: float, x: int, y: int, w: int, h: int, d: int) -> Window | None:
    """Region pixels whose centres fall in `box` grown by `margin`; None when there are none."""
    x0, y0, x1, y1 = box
    c0 = max(math.ceil((x0 - margin) / d - 0.5) - x, 0)
    c1 = min(math.floor((x1 + margin) / d - 0.5) - x + 1, w)
    r0 = max(math.ceil((y0 - margin) / d - 0.5) - y, 0)
    r1 = min(math.floor((y1 + margin) / d - 0.5) - y + 1, h)
    if c0 >= c1 or r0 >= r1:
        return None
    return Window(r0, r1, c0, c1, centres(x + c0, c1 - c0, d), centres(y + r0, r1 - r0, d))


def coverage(shape: Shape, x: int, y: int, w: int, h: int, d: int) -> tuple[Window, F32] | None:
    """The shape's coverage on the part of the region it may touch; (1, 1) when it is full
    there (it broadcasts)."""
    width = max(shape.feather, float(d))
    win = window(shape.box(width), 1e-6, x, y, w, h, d)
    if win is None:
        return None
    if shape.contains(win.xs[0], win.ys[0], win.xs[-1], win.ys[-1], width):
        return win, np.ones((1, 1), np.float32)  # broadcasts like the full array
    return win, ramp(shape.sdf(win.xs, win.ys), width)
