"""What each artifact does to pixels, on planar float32 images (3, h, w) of one region.

Every effect is `img += coverage * (changed - img)` over the part of the region the shape
may touch, so a pixel with zero coverage keeps its value exactly. Stain and fold act on the
tissue texture before it is laid on glass (so they never touch glass); blur acts on the
composed slide; debris, bubbles, pen and the coverslip edge lie on top.

Blur is exact and region-independent: at level d the PSF sigma is sigma0 / d; for sigma >= 3
the image is box-reduced by k (a power of two, k <= sigma / 1.5) on a grid anchored at the
level's origin, blurred there with a short Gaussian (sigma_c = sqrt(sigma^2 - k^2 / 4) / k,
which accounts for the box and the bilinear return), and bilinearly enlarged back; each
output pixel depends only on fixed absolute neighbourhoods, summed in a fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from edge.synth.artifacts import Artifact
from edge.synth.placement import Part
from edge.synth.shapes import Ellipse, HalfPlane, Window, coverage
from edge.synth.texture import GLASS

F32 = npt.NDArray[np.float32]
RegionFn = Callable[[int, int, int, int], F32]  # (x, y, w, h) at the current level -> planar
_GLASS = GLASS.astype(np.float32)[:, None, None]


def _covered(art: Artifact, x: int, y: int, img: F32, d: int) -> Iterator[tuple[Part, Window, F32]]:
    """(part, window, coverage) for each part of `art` that touches the region of `img`."""
    for part in art.parts:
        got = coverage(part.shape, x, y, img.shape[2], img.shape[1], d)
        if got is not None:
            yield part, got[0], got[1]


def _view(img: F32, win: Window) -> F32:
    out: F32 = img[:, win.r0 : win.r1, win.c0 : win.c1]
    return out


def _mix(img: F32, win: Window, cov: F32, changed: F32) -> None:
    part = _view(img, win)
    part += cov[None] * (changed - part)


def stain(art: Artifact, tex: F32, x: int, y: int, d: int) -> None:
    """Scale optical density (relative to glass) by the per-channel factors, via a LUT."""
    v = np.arange(256, dtype=np.float64)
    luts = [
        np.where(v < g, g * (np.maximum(v, 1.0) / g) ** f, v).astype(np.float32)
        for g, f in zip(GLASS, art.params["factors"], strict=True)
    ]
    for _part, win, cov in _covered(art, x, y, tex, d):
        view = _view(tex, win)
        idx = np.clip(np.rint(view), 0, 255).astype(np.uint8)
        changed = np.stack([np.take(lut, idx[c]) for c, lut in enumerate(luts)])
        _mix(tex, win, cov, changed)


def fold(art: Artifact, tex: F32, x: int, y: int, d: int, texture: RegionFn) -> None:
    """Doubled tissue: this texture's transmission times a neighbouring strip's, darker rim."""
    sx, sy = art.params["shift"]
    strength, rim = art.params["strength"], art.params["rim"]
    for part, win, cov in _covered(art, x, y, tex, d):
        w, h = win.c1 - win.c0, win.r1 - win.r0
        flap = texture(x + win.c0 + round(sx / d), y + win.r0 + round(sy / d), w, h)
        view = _view(tex, win)
        changed = view * np.power(np.minimum(flap / _GLASS, 1.0), strength)
        depth = np.clip(1.0 + part.shape.sdf(win.xs, win.ys) / max(rim, d), 0.0, 1.0)
        changed *= (1.0 - 0.3 * depth).astype(np.float32)[None]
        _mix(tex, win, cov, changed)


def blur_margin(art: Artifact, d: int) -> int:
    """Level-d pixels of context the blur needs on each side of what it changes."""
    k, _, taps = _blur_plan(art.params["sigma"] / d)
    return 0 if k == 0 else (taps + 2) * k


def _blur_plan(sigma: float) -> tuple[int, float, int]:
    """(reduction k, coarse sigma, tap radius); k = 0 when the blur is invisible."""
    if sigma < 0.4:
        return 0, 0.0, 0
    k = 1 if sigma < 3 else 1 << math.floor(math.log2(sigma / 1.5))
    coarse = sigma if k == 1 else math.sqrt(max(sigma * sigma - k * k / 4, 0.25)) / k
    return k, coarse, math.ceil(3 * coarse)


def _gauss(a: F32, sigma: float, taps: int, axis: int) -> F32:
    """Valid separable convolution along `axis` (loses `taps` each side), fixed tap order."""
    t = np.arange(-taps, taps + 1)
    weights = np.exp(-(t * t) / (2 * sigma * sigma))
    weights = (weights / weights.sum()).astype(np.float32)
    n = a.shape[axis] - 2 * taps
    out = np.zeros((*a.shape[:axis], n, *a.shape[axis + 1 :]), np.float32)
    cut: list[slice] = [slice(None)] * a.ndim
    for i, wt in enumerate(weights):
        cut[axis] = slice(i, i + n)
        out += wt * a[tuple(cut)]
    return out


def blur(art: Artifact, img: F32, x: int, y: int, d: int, base: RegionFn) -> None:
    k, sc, taps = _blur_plan(art.params["sigma"] / d)
    if k == 0:
        return
    for _part, win, cov in _covered(art, x, y, img, d):
        x0, x1, y0, y1 = x + win.c0, x + win.c1, y + win.r0, y + win.r1
        if k == 1:
            src = base(x0 - taps, y0 - taps, x1 - x0 + 2 * taps, y1 - y0 + 2 * taps)
            _mix(img, win, cov, _gauss(_gauss(src, sc, taps, 2), sc, taps, 1))
            continue
        # Coarse cells i0 .. i1 (and one more) are read by the bilinear return.
        cx0, cx1 = math.floor((x0 + 0.5) / k - 0.5), math.floor((x1 - 0.5) / k - 0.5) + 1
        cy0, cy1 = math.floor((y0 + 0.5) / k - 0.5), math.floor((y1 - 0.5) / k - 0.5) + 1
        gx0, gy0 = (cx0 - taps) * k, (cy0 - taps) * k
        src = base(gx0, gy0, (cx1 - cx0 + 1 + 2 * taps) * k, (cy1 - cy0 + 1 + 2 * taps) * k)
        small = np.zeros((3, src.shape[1] // k, src.shape[2] // k), np.float32)
        for i in range(k):
            for j in range(k):
                small += src[:, i::k, j::k]
        small *= np.float32(1.0 / (k * k))
        sharp = _gauss(_gauss(small, sc, taps, 2), sc, taps, 1)  # coarse cells cx0 .. cx1
        changed = _enlarge(sharp, k, x0, x1, cx0, y0, y1, cy0)
        _mix(img, win, cov, changed)


def _enlarge(a: F32, k: int, x0: int, x1: int, cx0: int, y0: int, y1: int, cy0: int) -> F32:
    """Bilinear from coarse cells (first cell cx0, cy0) back to level pixels x0:x1, y0:y1."""
    qx = (np.arange(x0, x1) + 0.5) / k - 0.5
    qy = (np.arange(y0, y1) + 0.5) / k - 0.5
    ix, iy = np.floor(qx).astype(np.intp), np.floor(qy).astype(np.intp)
    fx = (qx - ix).astype(np.float32)
    fy = (qy - iy).astype(np.float32)[:, None]
    ix, iy = ix - cx0, iy - cy0
    rows = np.take(a, iy, axis=1) * (1 - fy) + np.take(a, iy + 1, axis=1) * fy
    out = np.take(rows, ix, axis=2) * (1 - fx) + np.take(rows, ix + 1, axis=2) * fx
    return out.astype(np.float32, copy=False)


def debris(art: Artifact, img: F32, x: int, y: int, d: int) -> None:
    for part, win, cov in _covered(art, x, y, img, d):
        colour = np.array(part.params["colour"], np.float32)[:, None, None]
        view = _view(img, win)
        view += (cov * part.params["opacity"])[None] * (colour - view)


def bubble(art: Artifact, img: F32, x: int, y: int, d: int) -> None:
    wash = art.params["wash"]
    for part, win, cov in _covered(art, x, y, img, d):
        shape = part.shape
        assert isinstance(shape, Ellipse)
        ring = part.params["ring"]
        rho = shape.rho(win.xs, win.ys)
        profile = np.clip(1.0 - np.abs(rho - (1.0 - ring / 2)) / (ring / 2), 0.0, 1.0)
        rim = (1.0 - part.params["rim"] * np.sqrt(profile)).astype(np.float32)
        view = _view(img, win)
        changed = (250.0 - (250.0 - view) * (1.0 - wash)) * rim[None]
        _mix(img, win, cov, changed)


def pen(art: Artifact, img: F32, x: int, y: int, d: int) -> None:
    """Ink filters the light: multiply by the ink's transmission, as strong as its opacity."""
    ink = np.array(art.params["ink"], np.float32) / 255.0
    absorb = (art.params["opacity"] * (1.0 - ink)).astype(np.float32)[:, None, None]
    for _part, win, cov in _covered(art, x, y, img, d):
        view = _view(img, win)
        view *= 1.0 - cov[None] * absorb


def edge(art: Artifact, img: F32, x: int, y: int, d: int) -> None:
    """A dark shadow band along the coverslip's edge, brighter glass beyond it."""
    band, depth, gain = art.params["band"], art.params["depth"], art.params["gain"]
    for part, win, cov in _covered(art, x, y, img, d):
        shape = part.shape
        assert isinstance(shape, HalfPlane)
        s = shape.signed(win.xs, win.ys)
        shadow = np.clip(1.0 - np.abs(s) / band, 0.0, 1.0) ** 2
        t = np.clip(s / band, 0.0, 1.0)
        beyond = t * t * (3 - 2 * t)
        factor = ((1.0 - depth * shadow) * (1.0 + (gain - 1.0) * beyond)).astype(np.float32)
        view = _view(img, win)
        view += cov[None] * (view * factor[None] - view)
