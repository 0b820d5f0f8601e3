"""The analysis side of the single read pass: reduced pixels from each level-0 tile.

Every level-0 tile is decoded once, at a reduced scale: for JPEG tiles the decoder's own DCT
scaling (libjpeg's 1/2, 1/4, 1/8 IDCT through Pillow's draft mode) so no full-size image is
ever built; other codecs are decoded and block-averaged. From that reduced tile come

  * focus crops at about 1 µm/px (the focus model's input), only where the tile holds tissue;
  * the slide's "mosaic" at about 4 µm/px (block means, accumulated across tile borders), the
    input of the tissue, artifact and stain steps.

Memory: the mosaic (bounded by MAX_MOSAIC_PIXELS through the choice of its downsample) and one
batch of focus crops; never a full level.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from edge.slide.model import Codec, Level
from edge.slide.stream import StreamTile

FOCUS_UM = 1.0  # µm per pixel of the focus model's input
MOSAIC_UM = 4.0  # µm per pixel of the mosaic (artifact, tissue, stain)
FOCUS_TILE = 64  # focus crop side in reduced pixels
MAX_MOSAIC_PIXELS = 16 << 20
# A crop is scored for focus when this fraction of its pixels looks like tissue: glass has no
# focus to lose, and skipping it is most of the CPU saving on a typical slide.
FOCUS_MIN_TISSUE = 0.25
TISSUE_SPREAD = 18  # max-min over RGB above this: stained (not grey glass)
TISSUE_DARK = 200  # or mean below this: dark enough to be tissue


def pow2_near(value: float, lo: int, hi: int) -> int:
    """The power of two nearest to value (in log scale), clamped to [lo, hi]."""
    if value <= 0 or not math.isfinite(value):
        return lo
    return int(min(hi, max(lo, 2 ** round(math.log2(value)))))


@dataclass(frozen=True)
class Geometry:
    """How the analysis samples a slide: decode scale and mosaic downsample, from level 0."""

    width: int  # level 0
    height: int
    mpp: float  # µm per level-0 pixel (assumed when the file does not say)
    decode_scale: int  # level-0 px per reduced (focus) px: 1, 2, 4 or 8
    mosaic_downsample: int  # level-0 px per mosaic px

    @property
    def mosaic_shape(self) -> tuple[int, int]:
        d = self.mosaic_downsample
        return math.ceil(self.height / d), math.ceil(self.width / d)

    @property
    def mosaic_mpp(self) -> float:
        return self.mpp * self.mosaic_downsample

    @classmethod
    def plan(cls, width: int, height: int, mpp: float) -> Geometry:
        scale = pow2_near(FOCUS_UM / mpp, 1, 8)
        mosaic = max(scale, pow2_near(MOSAIC_UM / mpp, 1, 1 << 12))
        while math.ceil(width / mosaic) * math.ceil(height / mosaic) > MAX_MOSAIC_PIXELS:
            mosaic *= 2
        return cls(width, height, mpp, scale, mosaic)


@dataclass(frozen=True)
class FocusCrop:
    x: int  # level-0 origin
    y: int
    size: int  # level-0 side it covers


Crop = npt.NDArray[np.uint8]  # (FOCUS_TILE, FOCUS_TILE) grey


def reduced_tile(tile: StreamTile, scale: int) -> npt.NDArray[np.uint8]:
    """The tile's pixels at 1/scale (H/scale x W/scale x 3), by DCT scaling where possible."""
    level = tile.frame.level
    th, tw = level.tile_height // scale, level.tile_width // scale
    data = tile.frame.data
    if level.codec is Codec.JPEG and data is not None and level.samples == 3:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (tw, th))
        array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
        if array.shape[0] == th and array.shape[1] == tw:
            return array
        pixels = array  # the decoder could not scale this one: reduce below
    else:
        pixels = tile.pixels()
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    elif pixels.shape[2] != 3:
        pixels = np.repeat(pixels[:, :, :1], 3, axis=2)
    f = pixels.shape[0] // th if th else 1
    if f <= 1:
        return np.ascontiguousarray(pixels[:th, :tw, :3])
    block = pixels[: th * f, : tw * f, :3].reshape(th, f, tw, f, 3)
    n = f * f
    sums = block.sum(axis=(1, 3), dtype=np.uint32)
    out: npt.NDArray[np.uint8] = ((sums + n // 2) // n).astype(np.uint8)  # rounded, as mosaics
    return out


def tissue_like(rgb: npt.NDArray[np.uint8], spread: int = TISSUE_SPREAD) -> npt.NDArray[np.bool_]:
    """Cheap per-pixel tissue guess (stained or dark), for gating and fallbacks."""
    chroma = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)
    found: npt.NDArray[np.bool_] = (chroma > spread) | (rgb.mean(axis=2) < TISSUE_DARK)
    return found


class MosaicAccumulator:
    """Block means of reduced tiles onto the mosaic grid, correct across any tile size."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        h, w = geometry.mosaic_shape
        # uint32: a mosaic pixel sums at most (mosaic/scale)^2 reduced pixels of 255.
        self._sum = np.zeros((h, w, 3), np.uint32)
        self._count = np.zeros((h, w), np.uint32)

    def add(self, x0: int, y0: int, reduced: npt.NDArray[np.uint8]) -> None:
        g = self.geometry
        step = g.mosaic_downsample // g.decode_scale  # reduced px per mosaic px
        rx, ry = x0 // g.decode_scale, y0 // g.decode_scale  # reduced-grid origin
        h = min(reduced.shape[0], math.ceil(g.height / g.decode_scale) - ry)
        w = min(reduced.shape[1], math.ceil(g.width / g.decode_scale) - rx)
        if h <= 0 or w <= 0:
            return
        part = reduced[:h, :w]
        rows = _cuts(ry, h, step)
        cols = _cuts(rx, w, step)
        sums = np.add.reduceat(np.add.reduceat(part.astype(np.uint32), rows, 0), cols, 1)
        counts = np.outer(np.diff([*rows, h]), np.diff([*cols, w])).astype(np.uint32)
        my, mx = (ry + rows[0]) // step, (rx + cols[0]) // step
        self._sum[my : my + len(rows), mx : mx + len(cols)] += sums
        self._count[my : my + len(rows), mx : mx + len(cols)] += counts

    def image(self, fill: int = 255) -> npt.NDArray[np.uint8]:
        """The mosaic (uncovered pixels: `fill`, i.e. glass)."""
        count = np.maximum(self._count, 1)[:, :, None]
        out = (self._sum + count // 2) // count
        out[self._count == 0] = fill
        image: npt.NDArray[np.uint8] = out.astype(np.uint8)
        return image

    def covered(self) -> npt.NDArray[np.bool_]:
        return self._count > 0


def _cuts(origin: int, length: int, step: int) -> list[int]:
    """Start offsets (within [0, length)) of the mosaic cells a run of reduced px falls in."""
    first = (-origin) % step
    cuts = [0, *range(first if first else step, length, step)]
    return sorted(set(cuts))


class FocusGrid:
    """Focus probabilities per crop, spread onto the mosaic grid (mean where crops overlap)."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        h, w = geometry.mosaic_shape
        self._sum = np.zeros((h, w), np.float32)
        self._count = np.zeros((h, w), np.uint16)
        self.scores: list[tuple[FocusCrop, float]] = []

    def add(self, crop: FocusCrop, probability: float) -> None:
        d = self.geometry.mosaic_downsample
        y0, x0 = crop.y // d, crop.x // d
        y1, x1 = max(y0 + 1, (crop.y + crop.size) // d), max(x0 + 1, (crop.x + crop.size) // d)
        self._sum[y0:y1, x0:x1] += probability
        self._count[y0:y1, x0:x1] += 1
        self.scores.append((crop, probability))

    def probability(self) -> npt.NDArray[np.float32]:
        """Mean probability of blur per mosaic pixel; 0 where no crop was scored."""
        out = self._sum / np.maximum(self._count, 1)
        return out.astype(np.float32)

    def scored(self) -> npt.NDArray[np.bool_]:
        return self._count > 0


class AnalysisSampler:
    """A TileConsumer: level-0 tiles in, mosaic and focus crops out (batched to `on_batch`)."""

    def __init__(
        self,
        geometry: Geometry,
        on_batch: Callable[[list[FocusCrop], npt.NDArray[np.uint8]], None],
        batch_size: int = 64,
    ) -> None:
        self.geometry = geometry
        self.mosaic = MosaicAccumulator(geometry)
        self._on_batch = on_batch
        self._batch_size = batch_size
        self._crops: list[FocusCrop] = []
        self._pixels: list[Crop] = []
        self._active = False
        self.tiles_seen = 0
        self.crops_scored = 0

    def start_level(self, level: Level) -> None:
        self._active = level.index == 0

    def end_level(self, level: Level) -> None:
        if self._active:
            self.flush()
        self._active = False

    def consume(self, tile: StreamTile) -> None:
        frame = tile.frame
        if not self._active or frame.plane != 0:
            return
        level = frame.level
        scale = self.geometry.decode_scale
        x0, y0 = frame.col * level.tile_width, frame.row * level.tile_height
        reduced = reduced_tile(tile, scale)
        self.tiles_seen += 1
        self.mosaic.add(x0, y0, reduced)
        self._take_crops(x0, y0, reduced)

    def _take_crops(self, x0: int, y0: int, reduced: npt.NDArray[np.uint8]) -> None:
        g = self.geometry
        h = min(reduced.shape[0], (g.height - y0) // g.decode_scale)
        w = min(reduced.shape[1], (g.width - x0) // g.decode_scale)
        if h < FOCUS_TILE // 2 or w < FOCUS_TILE // 2:
            return  # a sliver at the slide's edge: too little to judge focus
        n = FOCUS_TILE
        for cy in range(0, max(h - n // 2, 1), n):
            for cx in range(0, max(w - n // 2, 1), n):
                rgb = reduced[cy : cy + n, cx : cx + n]
                # Every 4th pixel each way is plenty to tell tissue from glass, 16x cheaper.
                if tissue_like(rgb[::4, ::4]).mean() < FOCUS_MIN_TISSUE:
                    continue
                grey = _grey(rgb)
                if grey.shape != (n, n):  # 240 px tiles give 60 px crops: mirror to 64
                    grey = np.pad(
                        grey, ((0, n - grey.shape[0]), (0, n - grey.shape[1])), mode="reflect"
                    )
                size = n * g.decode_scale
                self._crops.append(
                    FocusCrop(x0 + cx * g.decode_scale, y0 + cy * g.decode_scale, size)
                )
                self._pixels.append(grey)
                if len(self._crops) >= self._batch_size:
                    self.flush()

    def flush(self) -> None:
        if not self._crops:
            return
        crops, pixels = self._crops, np.stack(self._pixels)
        self._crops, self._pixels = [], []
        self.crops_scored += len(crops)
        self._on_batch(crops, pixels)


def _grey(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """ITU-R 601 luma, integer arithmetic (what the focus model was trained on)."""
    r, g, b = rgb[:, :, 0].astype(np.uint16), rgb[:, :, 1], rgb[:, :, 2]
    return ((77 * r + 150 * g + 29 * b) >> 8).astype(np.uint8)
