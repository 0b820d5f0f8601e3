"""A small stand-in SlideModel: procedural H&E- or IHC-like tissue, no planted artifacts.

Used by the writers and `edge synth` when the textured model (edge.synth.model) is not
available. Every pixel is a function of its own level coordinates only (a coarse random
lattice for the tissue outline, a periodic texture tile for stroma and nuclei), so any region at
any power-of-two downsample renders identically whichever tiles were rendered before it.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from edge.dicom.pyramid import halve
from edge.synth.protocol import RGB, Mask, SlideSpec, Truth

GLASS = (242, 240, 244)
PERIOD = 1024  # level-0 pixels after which the stroma/nuclei texture repeats
THRESHOLD = 0.56  # of the outline field: roughly half of the slide is tissue
EDGE_PX = 3.0  # level-0 pixels over which tissue fades into glass
_PALETTES = {  # stain -> (stroma, nucleus, second nucleus colour)
    "H&E": ((222, 150, 190), (95, 60, 140), (120, 70, 150)),
    "IHC": ((215, 210, 225), (80, 90, 155), (140, 90, 50)),  # haematoxylin + DAB brown
}
Field = npt.NDArray[np.float32]


class SimpleModel:
    """SlideModel over procedural pixels; see the module docstring."""

    def __init__(self, spec: SlideSpec) -> None:
        if spec.stain not in _PALETTES:
            raise ValueError(f"stain {spec.stain!r}: choose one of {', '.join(_PALETTES)}")
        self.spec = spec
        rng = np.random.default_rng([spec.seed, 0x5EED])
        big = max(spec.width, spec.height)
        # Two octaves of lattice noise: slide-sized blobs, then lobes a quarter that size.
        self._cells = (big / 2.5, big / 10.0)
        self._grids = [
            rng.random((math.ceil(spec.height / c) + 2, math.ceil(spec.width / c) + 2))
            for c in self._cells
        ]
        self._texture = _texture_pyramid(rng, _PALETTES[spec.stain])

    # -- the protocol ---------------------------------------------------------------------

    def region(self, x: int, y: int, width: int, height: int, downsample: int = 1) -> RGB:
        level_w, level_h = self._level_size(downsample)
        mask = self._coverage(x, y, width, height, downsample)
        mask[:, max(0, min(width, level_w - x)) :] = 0  # glass past the level's edge
        mask[max(0, min(height, level_h - y)) :, :] = 0
        texture = self._texture_at(x, y, width, height, downsample)
        alpha = (mask * 256).astype(np.uint16)[..., None]
        glass = np.array(GLASS, np.uint16)
        out = (texture.astype(np.uint16) * alpha + glass * (256 - alpha)) >> 8
        return out.astype(np.uint8)

    def masks(self, downsample: int) -> dict[str, Mask]:
        width, height = self._level_size(downsample)
        return {"tissue": self._coverage(0, 0, width, height, downsample) >= 0.5}

    def truth(self) -> Truth:
        downsample = _power_of_two_at_least(max(self.spec.width, self.spec.height) / 512)
        tissue = self.masks(downsample)["tissue"]
        return Truth(
            spec=self.spec,
            artifacts=(),
            tissue_fraction=round(float(tissue.mean()), 4),
            affected_fraction={},
            needs_rescan=False,
            reasons=(),
            extra={"model": "simple"},
        )

    def label(self) -> RGB:
        return _label(self.spec.barcode, _PALETTES[self.spec.stain][1])

    def macro(self) -> RGB:
        """A 76 x 26 mm slide photographed at about 17 px/mm: label left, tissue right."""
        out = np.full((431, 1280, 3), (205, 205, 210), np.uint8)
        out[:, :421] = _resize(self.label(), 421, 431)
        scale = 1280 / 76_000  # macro pixels per micrometre
        tw = max(8, min(820, round(self.spec.width * self.spec.mpp * scale)))
        th = max(8, min(400, round(self.spec.height * self.spec.mpp * scale)))
        downsample = _power_of_two_at_least(max(self.spec.width / tw, self.spec.height / th))
        w, h = self._level_size(downsample)
        x0, y0 = 421 + (859 - tw) // 2, (431 - th) // 2
        out[y0 : y0 + th, x0 : x0 + tw] = _resize(self.region(0, 0, w, h, downsample), tw, th)
        return out

    # -- pixels ---------------------------------------------------------------------------

    def _level_size(self, downsample: int) -> tuple[int, int]:
        if downsample < 1 or downsample & (downsample - 1):
            raise ValueError(f"downsample {downsample}: must be a power of two >= 1")
        return -(-self.spec.width // downsample), -(-self.spec.height // downsample)

    def _coverage(self, x: int, y: int, width: int, height: int, downsample: int) -> Field:
        """Tissue coverage 0..1 per pixel from the outline field at the pixel centres."""
        field = np.zeros((height, width), np.float32)
        for weight, cell, grid in zip((0.7, 0.3), self._cells, self._grids, strict=True):
            field += weight * _lattice(grid, cell, x, y, width, height, downsample)
        soft = EDGE_PX / self._cells[1]  # field units across the fade, fixed in level-0 px
        out: Field = np.clip((field - THRESHOLD) / soft + 0.5, 0.0, 1.0)
        return out

    def _texture_at(self, x: int, y: int, width: int, height: int, downsample: int) -> RGB:
        level = min(int(math.log2(downsample)), len(self._texture) - 1)
        tile = self._texture[level]
        n = tile.shape[0]
        rows = np.arange(y, y + height) % n
        cols = np.arange(x, x + width) % n
        out: RGB = tile.take(rows, axis=0).take(cols, axis=1)
        return out


def _lattice(
    grid: npt.NDArray[np.float64], cell: float, x: int, y: int, w: int, h: int, ds: int
) -> Field:
    """Value noise: `grid` (one value per `cell` level-0 px) smoothly interpolated.

    Interpolated along x for the few lattice rows the region touches, then along y; every
    step is elementwise on the pixel's own coordinate, so the result is region-independent.
    """

    def axis(start: int, count: int, limit: int) -> tuple[npt.NDArray[np.intp], Field]:
        u = (np.arange(start, start + count, dtype=np.float64) + 0.5) * ds / cell
        u = np.minimum(u, limit - 1.001)  # regions past the slide edge reuse the last cell
        i = np.floor(u).astype(np.intp)
        f = (u - i).astype(np.float32)
        return i, f * f * (3 - 2 * f)  # smoothstep: no creases along lattice lines

    ix, fx = axis(x, w, grid.shape[1])
    iy, fy = axis(y, h, grid.shape[0])
    r0 = int(iy.min())
    rows = grid[r0 : int(iy.max()) + 2].astype(np.float32)
    across = rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx
    upper, lower = across[iy - r0], across[iy - r0 + 1]
    out: Field = upper + (lower - upper) * fy[:, None]
    return out


def _texture_pyramid(
    rng: np.random.Generator, palette: tuple[tuple[int, int, int], ...]
) -> list[RGB]:
    """A seamless PERIOD x PERIOD tile of stroma with nuclei, and its 2x box-filtered halvings."""
    n = PERIOD
    noise = rng.standard_normal((n, n))
    freq = np.fft.fftfreq(n)
    blur = np.exp(-(freq[:, None] ** 2 + freq[None, :] ** 2) * (2 * math.pi * 12) ** 2 / 2)
    shade = np.real(np.fft.ifft2(np.fft.fft2(noise) * blur))  # periodic, smooth
    shade = (shade - shade.min()) / (np.ptp(shade) or 1.0)
    stroma = np.array(palette[0], np.float32)
    image = stroma * (0.8 + 0.2 * shade[..., None]).astype(np.float32)
    image += rng.normal(0, 5, (n, n, 1)).astype(np.float32)
    img = np.clip(image, 0, 255).astype(np.uint8)
    count = n * n // 700
    cy, cx = rng.integers(0, n, count), rng.integers(0, n, count)
    second = rng.random(count) < 0.25
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            if dy * dy + dx * dx <= 10:
                yy, xx = (cy + dy) % n, (cx + dx) % n  # wrap: nuclei cross the seam
                img[yy, xx] = palette[1]
                img[yy[second], xx[second]] = palette[2]
    levels = [img]
    while levels[-1].shape[0] > 1:
        levels.append(halve(levels[-1]))
    return levels


def _label(barcode: str, ink: tuple[int, int, int]) -> RGB:
    """A 400 x 400 paper label: a bar pattern from the barcode's bits, and a coloured band."""
    out = np.full((400, 400, 3), 250, np.uint8)
    out[:40] = ink  # stain-coloured band at the top, as printed labels have
    bits = "".join(f"{b:08b}" for b in (barcode or "-").encode()[:40])
    bar = max(1, 320 // (len(bits) * 2 + 2))
    for i, bit in enumerate(bits):
        left = 40 + i * 2 * bar
        out[80:200, left : left + bar * (1 + int(bit))] = 20  # wide bar = 1, narrow = 0
    for row in range(240, 360, 30):  # text-like lines
        out[row : row + 12, 40 : 40 + 200 + (row * 7) % 120] = 60
    return out


def _resize(image: RGB, width: int, height: int) -> RGB:
    """Nearest-neighbour resize (the macro is a photograph; smoothing buys nothing here)."""
    rows = (np.arange(height) * image.shape[0] // height).clip(0, image.shape[0] - 1)
    cols = (np.arange(width) * image.shape[1] // width).clip(0, image.shape[1] - 1)
    out: RGB = image.take(rows, axis=0).take(cols, axis=1)
    return out


def _power_of_two_at_least(value: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(value, 1.0))))
