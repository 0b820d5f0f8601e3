"""SyntheticSlide: the slide model (edge.synth.protocol.SlideModel) the writers stream from.

A region is rendered in chunks of about CHUNK x CHUNK pixels (memory stays bounded for a
whole-width tile row of a 100,000 px slide), each chunk as:

    texture (lattice.py)  -> stain -> fold       tissue texture, planar float32
    laid on glass with the tissue coverage (layout.py)
    blur                                         with context rendered around the chunk
    debris -> bubbles -> pen -> coverslip edge   on top
    x illumination falloff + sensor noise        -> uint8 RGB

Every step is a pure function of absolute pixel coordinates at the level, so a region is
bit-identical to the same crop of any larger region, in any order and in any process. The
model holds no mutable state but idempotent caches (the noise tiles; the last few BAND-row
bands, from which thin strips such as NDPI's 8-row MCU strips are cut), so writers may call
`region` from several threads at once.

Illumination is a 4% radial falloff to the corners; the noise is a fixed 256 x 256 tile of
Gaussian noise (sigma 1.5) per (seed, level), repeated.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge.synth import effects, lattice
from edge.synth.artifacts import TISSUE_ONLY, Artifact, plan_artifacts
from edge.synth.fields import centres
from edge.synth.label import label_image, macro_image
from edge.synth.layout import Layout, make_layout
from edge.synth.noise import rng
from edge.synth.protocol import ARTIFACT_KINDS, RGB, STAINS, Mask, SlideSpec, Truth
from edge.synth.shapes import coverage
from edge.synth.texture import GLASS, TextureBank, load_patches, resolve_texture_dir
from edge.synth.truth import make_truth, truth_downsample

F32 = npt.NDArray[np.float32]
CHUNK = 512
BAND = 64  # thin strips are cut from bands of this many rows, cached
BAND_PIXELS = 1 << 23  # at most this many pixels (24 MB) in a band, ...
BANDS_KEPT = 4  # ... and this many bands kept (a writer's threads work on nearby strips)
ILLUMINATION = 0.04
NOISE_SIGMA = 1.5
GLASS_U8 = np.array(GLASS + 0.5, np.uint8)
_GLASS = GLASS.astype(np.float32)[:, None, None]


def _check(spec: SlideSpec) -> None:
    if spec.width < 1 or spec.height < 1:
        raise ValueError(f"slide size {spec.width}x{spec.height}: both sides must be >= 1")
    if not spec.mpp > 0:
        raise ValueError(f"mpp {spec.mpp}: must be > 0")
    if spec.stain not in STAINS:
        raise ValueError(f"stain {spec.stain!r}: choose from {', '.join(STAINS)}")
    bad = [k for k in spec.artifacts if k not in ARTIFACT_KINDS]
    if bad:
        raise ValueError(f"artifact kinds {bad}: choose from {', '.join(ARTIFACT_KINDS)}")


def _check_downsample(d: int) -> None:
    if d < 1 or d & (d - 1):
        raise ValueError(f"downsample {d}: must be a power of two >= 1")


@dataclass
class SyntheticSlide:
    """Implements SlideModel; build with make_model."""

    spec: SlideSpec
    patches: TextureBank
    layout: Layout
    artifacts: tuple[Artifact, ...]
    _noise: dict[int, F32] = field(default_factory=dict, repr=False)
    _truth: Truth | None = field(default=None, repr=False)
    _bands: OrderedDict[tuple[int, int, int, int], RGB] = field(
        default_factory=OrderedDict, repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- the protocol -----------------------------------------------------------------------

    def region(self, x: int, y: int, width: int, height: int, downsample: int = 1) -> RGB:
        _check_downsample(downsample)
        if width < 0 or height < 0:
            raise ValueError(f"region size {width}x{height}: must be >= 0")
        top = y // BAND * BAND
        if height <= BAND // 4 and y + height <= top + BAND and width * BAND <= BAND_PIXELS:
            # A thin strip (NDPI writes 8-row strips): render its whole band once, then crop;
            # regions are exact crops of larger regions, so this changes no pixel.
            band = self._band(x, top, width, downsample)
            return band[y - top : y - top + height].copy()
        return self._region(x, y, width, height, downsample)

    def _band(self, x: int, top: int, width: int, d: int) -> RGB:
        key = (x, top, width, d)
        with self._lock:
            band = self._bands.get(key)
        if band is None:
            band = self._region(x, top, width, BAND, d)
            with self._lock:
                self._bands[key] = band
                while len(self._bands) > BANDS_KEPT:
                    self._bands.popitem(last=False)
        return band

    def _region(self, x: int, y: int, width: int, height: int, d: int) -> RGB:
        out = np.empty((height, width, 3), np.uint8)
        lw, lh = -(-self.spec.width // d), -(-self.spec.height // d)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, lw), min(y + height, lh)
        if (x0, y0, x1, y1) != (x, y, x + width, y + height):
            out[:] = np.tile(GLASS_U8, (width, 1))  # a row, broadcast: fast where (3,) is not
        # Chunks of about CHUNK^2 pixels; a short strip (NDPI writes 8-row strips) gets wide
        # chunks, so the per-chunk overhead stays small.
        ch = min(CHUNK, max(y1 - y0, 1))
        cw = max(CHUNK, CHUNK * CHUNK // ch)
        for cy in range(y0, y1, ch):
            for cx in range(x0, x1, cw):
                w, h = min(cw, x1 - cx), min(ch, y1 - cy)
                img = self._finish(self._render(cx, cy, w, h, d), cx, cy, d)
                dst = out[cy - y : cy - y + h, cx - x : cx - x + w]
                for c in range(3):
                    dst[..., c] = img[c]
        return out

    def masks(self, downsample: int) -> dict[str, Mask]:
        _check_downsample(downsample)
        d = downsample
        lw, lh = -(-self.spec.width // d), -(-self.spec.height // d)
        kinds = list(dict.fromkeys(a.kind for a in self.artifacts))
        out = {k: np.zeros((lh, lw), bool) for k in ["tissue", *kinds]}
        rows = max(1, (1 << 20) // max(lw, 1))  # bounded temporaries
        for y in range(0, lh, rows):
            h = min(rows, lh - y)
            alpha = self.layout.coverage(0, y, lw, h, d)
            alpha = np.full((h, lw), alpha, np.float32) if isinstance(alpha, float) else alpha
            out["tissue"][y : y + h] = alpha >= 0.5
            for a in self.artifacts:
                m = self._support(a, 0, y, lw, h, d)
                if a.kind in TISSUE_ONLY:
                    m &= alpha > 0
                out[a.kind][y : y + h] |= m
        return out

    def truth(self) -> Truth:
        if self._truth is None:
            self._truth = make_truth(self, truth_downsample(self.spec.width, self.spec.height))
        return self._truth

    def label(self) -> RGB:
        return label_image(self.spec)

    def macro(self) -> RGB:
        return macro_image(self)

    # -- rendering --------------------------------------------------------------------------

    def _support(self, art: Artifact, x: int, y: int, w: int, h: int, d: int) -> Mask:
        m = np.zeros((h, w), bool)
        for part in art.parts:
            got = coverage(part.shape, x, y, w, h, d)
            if got is not None:
                win, cov = got
                m[win.r0 : win.r1, win.c0 : win.c1] |= cov > 0
        return m

    def _texture(self, x: int, y: int, w: int, h: int, d: int) -> F32:
        """Stained tissue texture (before folds) of a level-d region, planar float32."""
        tex = lattice.render(self.spec.seed, self.patches, x, y, w, h, d).astype(np.float32)
        for a in self.artifacts:
            if a.kind == "stain":
                effects.stain(a, tex, x, y, d)
        return tex

    def _base(self, x: int, y: int, w: int, h: int, d: int) -> F32:
        """The slide before blur and the top layers: tissue (stained, folded) on glass."""
        img = np.empty((3, h, w), np.float32)
        alpha = self.layout.alpha(x, y, w, h, d)
        if isinstance(alpha, float):
            if alpha == 0.0:
                img[...] = _GLASS
                return img
            r0, r1, c0, c1 = 0, h, 0, w
        else:
            img[...] = _GLASS
            rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
            if rows.size == 0:
                return img
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        tex = self._texture(x + c0, y + r0, c1 - c0, r1 - r0, d)
        for a in self.artifacts:
            if a.kind == "fold":
                effects.fold(
                    a, tex, x + c0, y + r0, d, lambda u, v, ww, hh: self._texture(u, v, ww, hh, d)
                )
        if isinstance(alpha, float):
            return tex
        cover = alpha[None, r0:r1, c0:c1]
        img[:, r0:r1, c0:c1] += cover * (tex - _GLASS)
        return img

    def _render(self, x: int, y: int, w: int, h: int, d: int) -> F32:
        blurs = [a for a in self.artifacts if a.kind == "blur"]
        margin = max(
            [effects.blur_margin(a, d) for a in blurs if self._touches(a, x, y, w, h, d)] or [0]
        )
        ex, ey, ew, eh = x - margin, y - margin, w + 2 * margin, h + 2 * margin
        extended = self._base(ex, ey, ew, eh, d)

        def base(u: int, v: int, ww: int, hh: int) -> F32:
            if ex <= u and ey <= v and u + ww <= ex + ew and v + hh <= ey + eh:
                return extended[:, v - ey : v - ey + hh, u - ex : u - ex + ww]
            return self._base(u, v, ww, hh, d)

        img = np.ascontiguousarray(extended[:, margin : margin + h, margin : margin + w])
        for a in blurs:
            effects.blur(a, img, x, y, d, base)
        for kind, apply in (
            ("debris", effects.debris),
            ("bubble", effects.bubble),
            ("pen", effects.pen),
            ("edge", effects.edge),
        ):
            for a in self.artifacts:
                if a.kind == kind:
                    apply(a, img, x, y, d)
        return img

    def _touches(self, art: Artifact, x: int, y: int, w: int, h: int, d: int) -> bool:
        return any(coverage(p.shape, x, y, w, h, d) is not None for p in art.parts)

    def _finish(self, img: F32, x: int, y: int, d: int) -> npt.NDArray[np.uint8]:
        """Illumination falloff and sensor noise, then rounding to 8 bits (planar)."""
        h, w = img.shape[1:]
        fx = ((centres(x, w, d) / self.spec.width) * 2 - 1) ** 2
        fy = ((centres(y, h, d) / self.spec.height) * 2 - 1) ** 2
        light = (1 - ILLUMINATION / 2 * (fy[:, None] + fx[None, :])).astype(np.float32)
        tile = self._noise.get(d)
        if tile is None:
            noise = rng(self.spec.seed, 400, d).normal(0.0, NOISE_SIGMA, (256, 256))
            tile = self._noise[d] = (noise + 0.5).astype(np.float32)  # + 0.5: rounding
        noise = np.take(
            np.take(tile, np.arange(y, y + h) % 256, axis=0), np.arange(x, x + w) % 256, axis=1
        )
        img *= light[None]
        img += noise[None]
        np.clip(img, 0.0, 255.0, out=img)
        return img.astype(np.uint8)


def make_model(
    spec: SlideSpec, texture_dir: Path | None = None, procedural: bool = False
) -> SyntheticSlide:
    """A slide model for `spec`. texture_dir: the real-file kit (None: look in the usual
    places, else procedural texture); an explicit directory must exist and hold texture.
    procedural: procedural texture even where real texture is found (training variety)."""
    _check(spec)
    directory = None if procedural else resolve_texture_dir(texture_dir)
    patches = load_patches(directory, spec.stain)
    layout = make_layout(spec.seed, spec.width, spec.height)
    return SyntheticSlide(spec, patches, layout, plan_artifacts(spec, layout))
