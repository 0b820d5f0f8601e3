"""The analysis side of the single read pass: reduced pixels from each level-0 tile.

Every level-0 tile is decoded once, at a reduced scale: for JPEG tiles the decoder's own DCT
scaling (libjpeg's 1/2, 1/4, 1/8 IDCT through Pillow's draft mode) so no full-size image is
ever built; other codecs are decoded and block-averaged. From that reduced tile come

  * focus crops at about 1 µm/px (the focus model's input), only where the tile holds tissue;
  * the slide's "mosaic" at about 4 µm/px (block means, accumulated across tile borders), the
    input of the tissue, artifact and stain steps.

Glass is not decoded at level 0: when the source has a lower level that fits the mosaic grid
(the scanner's own pyramid), that level is read first (`low_mosaic`, a few megapixels), and
level-0 tiles whose footprint holds nothing but clean glass there are skipped; the mosaic takes
the lower level's pixels where no level-0 tile was decoded. On a typical slide most tiles are
glass, and the Huffman decoding of level 0 is most of the analysis's CPU.

The conversion does not wait for the analysis. Decoding level 0 takes several times longer
than copying its compressed tiles into DICOM, so when the decoders fall behind by
READ_BACK_AFTER_BYTES of compressed tiles, the rest of the level is taken after the pass from
the conversion's own copy of those tiles (edge.dicom.writer.FrameCopy: the same bytes, read
back from local disk) while the pyramid is already on its way to the PACS; the scanner's file
is still read once. Results are applied in read order either way, so they are the same.

Memory: the mosaic (bounded by MAX_MOSAIC_PIXELS through the choice of its downsample), one
batch of focus crops and at most READ_BACK_AFTER_BYTES of tiles waiting; never a full level.
"""

from __future__ import annotations

import array
import io
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

import numpy as np
import numpy.typing as npt
import simplejpeg
from PIL import Image
from scipy import ndimage

from edge.slide.model import Codec, Level
from edge.slide.source import Frame, SlideSource
from edge.slide.stream import CopiedFrames, StreamTile

FOCUS_UM = 1.0  # µm per pixel of the focus model's input
MOSAIC_UM = 4.0  # µm per pixel of the mosaic (artifact, tissue, stain)
FOCUS_TILE = 64  # focus crop side in reduced pixels
MAX_MOSAIC_PIXELS = 16 << 20
# A crop is scored for focus when this fraction of its pixels looks like tissue: glass has no
# focus to lose, and skipping it is most of the CPU saving on a typical slide.
FOCUS_MIN_TISSUE = 0.25
TISSUE_SPREAD = 18  # max-min over RGB above this: stained (not grey glass)
TISSUE_DARK = 200  # or mean below this: dark enough to be tissue
GLASS_SPREAD = 10  # the gate's "anything stained at all" (the artifact model's superset)
GATE_MARGIN = 2  # mosaic px around anything stained whose level-0 tiles are still decoded
# Compressed tiles the decoders may fall behind the pass before the rest of the level is read
# back from the conversion's copy (module docstring): ~300 JPEG tiles at quality 90.
READ_BACK_AFTER_BYTES = 16 << 20
_T = TypeVar("_T")
_R = TypeVar("_R")
# Tiles read back per hand-off to a decoding thread: one Future per tile cost ~0.05 ms of
# thread switching and locking on a 2-core box, a sixth of the tile's ~0.3 ms decoding.
READ_BACK_CHUNK = 8


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
_Block = tuple[int, int, npt.NDArray[np.uint32], npt.NDArray[np.uint32]]
_Reduced = tuple["_Block | None", list[tuple[FocusCrop, Crop]]]


def reduced_tile(tile: StreamTile, scale: int) -> npt.NDArray[np.uint8]:
    """The tile's pixels at 1/scale (H/scale x W/scale x 3), by DCT scaling where possible."""
    level = tile.frame.level
    th, tw = level.tile_height // scale, level.tile_width // scale
    data = tile.frame.data
    if level.codec is Codec.JPEG and data is not None and level.samples == 3:
        try:  # libjpeg-turbo's scaled decode with the GIL released; Pillow when it refuses
            fast: npt.NDArray[np.uint8] = simplejpeg.decode_jpeg(
                data, min_height=th, min_width=tw, min_factor=scale
            )
            if fast.shape[0] == th and fast.shape[1] == tw:
                return fast
        except ValueError:
            pass
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
    # Channel by channel: numpy's reductions over a last axis of 3 run ~14x slower than
    # these element-wise passes, and this runs over whole mosaics several times a slide.
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # The sum, not the mean: no float64 copy of a whole mosaic (78 MB at 9.8 MP).
    total = r.astype(np.uint16)
    total += g
    total += b
    found: npt.NDArray[np.bool_] = (chroma(rgb) > spread) | (total < 3 * TISSUE_DARK)
    return found


def chroma(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """max - min over R, G, B per pixel: 0 for grey (glass, a bubble's rim), more for stain."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    out: npt.NDArray[np.uint8] = np.maximum(np.maximum(r, g), b)
    out -= np.minimum(np.minimum(r, g), b)  # max >= min: no uint8 wrap-around
    return out


class MosaicAccumulator:
    """Block means of reduced tiles onto the mosaic grid, correct across any tile size."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        h, w = geometry.mosaic_shape
        # A mosaic pixel sums at most step^2 reduced pixels of 255: uint16 holds that up to
        # step 16 (half the memory of uint32: 96 MB less on a 16 MP mosaic).
        step = geometry.mosaic_downsample // geometry.decode_scale
        wide = step * step * 255 + step * step > np.iinfo(np.uint16).max
        self._sum = np.zeros((h, w, 3), np.uint32 if wide else np.uint16)
        self._count = np.zeros((h, w), np.uint32 if wide else np.uint16)

    def add(self, x0: int, y0: int, reduced: npt.NDArray[np.uint8]) -> None:
        block = self.block(x0, y0, reduced)
        if block is not None:
            self.put(block)

    def block(self, x0: int, y0: int, reduced: npt.NDArray[np.uint8]) -> _Block | None:
        """The tile's contribution (pure: safe on a worker thread); None if off the slide."""
        g = self.geometry
        step = g.mosaic_downsample // g.decode_scale  # reduced px per mosaic px
        rx, ry = x0 // g.decode_scale, y0 // g.decode_scale  # reduced-grid origin
        h = min(reduced.shape[0], math.ceil(g.height / g.decode_scale) - ry)
        w = min(reduced.shape[1], math.ceil(g.width / g.decode_scale) - rx)
        if h <= 0 or w <= 0:
            return None
        part = reduced[:h, :w]
        if rx % step == 0 and ry % step == 0 and h % step == 0 and w % step == 0:
            # The usual case (tile sides a multiple of the cell): a reshape, no index lists.
            # Rows first over a flat (x, channel) axis, then columns: ~4x faster than one
            # sum over axes (1, 3) of a 5-d view, the same integers.
            rows = part.reshape(h // step, step, w * 3).sum(axis=1, dtype=np.uint32)
            sums = rows.reshape(h // step, w // step, step, 3).sum(axis=2, dtype=np.uint32)
            counts = np.full(sums.shape[:2], step * step, np.uint32)
            return ry // step, rx // step, sums, counts
        rows = _cuts(ry, h, step)
        cols = _cuts(rx, w, step)
        sums = np.add.reduceat(np.add.reduceat(part.astype(np.uint32), rows, 0), cols, 1)
        counts = np.outer(np.diff([*rows, h]), np.diff([*cols, w])).astype(np.uint32)
        return (ry + rows[0]) // step, (rx + cols[0]) // step, sums, counts

    def put(self, block: _Block) -> None:
        my, mx, sums, counts = block
        self._sum[my : my + sums.shape[0], mx : mx + sums.shape[1]] += sums
        self._count[my : my + sums.shape[0], mx : mx + sums.shape[1]] += counts

    def image(
        self, fill: int = 255, under: npt.NDArray[np.uint8] | None = None
    ) -> npt.NDArray[np.uint8]:
        """The mosaic; pixels no tile covered come from `under` (same shape) or are `fill`
        (glass)."""
        return self.rows(0, self._count.shape[0], fill, under)

    def rows(
        self, top: int, bottom: int, fill: int = 255, under: npt.NDArray[np.uint8] | None = None
    ) -> npt.NDArray[np.uint8]:
        """Mosaic rows [top, bottom) as `image` makes them (`under`: the whole mosaic's)."""
        counts = self._count[top:bottom]
        count = np.maximum(counts, 1)[:, :, None]
        means = self._sum[top:bottom] + count // 2  # rounded, in place from here on
        means //= count
        image: npt.NDArray[np.uint8] = means.astype(np.uint8)
        empty = (counts == 0)[:, :, None]
        np.copyto(image, np.uint8(fill) if under is None else under[top:bottom], where=empty)
        return image

    def release(self) -> None:
        """Free the sums once the image is taken (about 100 MB for a 40k slide)."""
        self._sum = np.zeros((0, 0, 3), np.uint32)
        self._count = np.zeros((0, 0), np.uint32)

    def covered(self) -> npt.NDArray[np.bool_]:
        return self._count > 0


def low_level(levels: tuple[Level, ...], geometry: Geometry) -> tuple[Level, int] | None:
    """The cheapest lower level (largest downsample) whose pixels fall on whole mosaic cells:
    an integer downsample d dividing the mosaic's, tiles a multiple of the cell (mosaic/d px).
    Returns (level, d), or None when the source has no such level. Pure."""
    best: tuple[Level, int] | None = None
    for level in levels[1:]:
        d = _usable_downsample(level, geometry)
        if d is None or geometry.mosaic_downsample % d:
            continue
        f = geometry.mosaic_downsample // d
        if level.tile_width % f or level.tile_height % f:
            continue
        if best is None or d > best[1]:
            best = level, d
    return best


def focus_level(levels: tuple[Level, ...], geometry: Geometry) -> tuple[Level, int] | None:
    """The source's own level at the focus model's resolution (downsample = decode_scale,
    the same extent, RGB), or None. Decoding it instead of level 0 is 1/d^2 of the entropy
    decoding, the analysis's largest cost; its pixels are the scanner's own reduction
    (re-compressed), not a DCT-scaled decode of level 0. Pure."""
    for level in levels[1:]:
        d = _usable_downsample(level, geometry)
        if d == geometry.decode_scale:
            return level, d
    return None


def _usable_downsample(level: Level, geometry: Geometry) -> int | None:
    """A lower level's whole-number downsample when it is RGB and covers level 0's extent
    (a cropped or padded level is not trusted), else None."""
    d = round(level.downsample)
    if d < 2 or abs(level.downsample - d) > 0.01 * d or level.samples != 3:
        return None
    if abs(level.width - geometry.width / d) > 2 or abs(level.height - geometry.height / d) > 2:
        return None
    return d


def low_mosaic(source: SlideSource, geometry: Geometry) -> npt.NDArray[np.uint8] | None:
    """The mosaic made from the source's own lower level (`low_level`), block means per cell,
    or None when there is none. Reads and decodes that level once (a few MP at most)."""
    found = low_level(source.levels, geometry)
    if found is None:
        return None
    level, d = found
    f = geometry.mosaic_downsample // d
    mh, mw = geometry.mosaic_shape
    out = np.full((mh, mw, 3), 255, np.uint8)
    for frame in source.frames(level):
        if frame.plane != 0:
            continue
        pixels = frame.pixels if frame.pixels is not None else source.decode(frame)
        ly, lx = frame.row * level.tile_height, frame.col * level.tile_width
        h = min(pixels.shape[0], level.height - ly)
        w = min(pixels.shape[1], level.width - lx)
        if h <= 0 or w <= 0:
            continue
        part = pixels[:h, :w, :3]
        ph, pw = -h % f, -w % f  # pad a partial cell at the level's edge with its own pixels
        if ph or pw:
            part = np.pad(part, ((0, ph), (0, pw), (0, 0)), mode="edge")
        cells = part.reshape(part.shape[0] // f, f, part.shape[1] // f, f, 3).mean(axis=(1, 3))
        my, mx = ly // f, lx // f
        ch, cw = min(cells.shape[0], mh - my), min(cells.shape[1], mw - mx)
        if ch > 0 and cw > 0:
            out[my : my + ch, mx : mx + cw] = np.rint(cells[:ch, :cw]).astype(np.uint8)
    return out


def glass_gate(low: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Mosaic cells near anything stained (what must be decoded at level 0)."""
    stained = tissue_like(low, spread=GLASS_SPREAD)
    square = np.ones((3, 3), bool)  # diagonal neighbours too: a tile corner may touch stain
    busy: npt.NDArray[np.bool_] = ndimage.binary_dilation(stained, square, GATE_MARGIN)
    return busy


def _cuts(origin: int, length: int, step: int) -> list[int]:
    """Start offsets (within [0, length)) of the mosaic cells a run of reduced px falls in."""
    first = (-origin) % step
    cuts = [0, *range(first if first else step, length, step)]
    return sorted(set(cuts))


@dataclass(frozen=True)
class FocusScores:
    """Every scored focus crop, compactly (a 100k slide scores hundreds of thousands: a list
    of objects would cost ~300 bytes each). Iterates as (FocusCrop, probability) pairs."""

    x: npt.NDArray[np.int64]
    y: npt.NDArray[np.int64]
    size: npt.NDArray[np.int64]
    probability: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.probability)

    def __iter__(self) -> Iterator[tuple[FocusCrop, float]]:
        for x, y, size, p in zip(self.x, self.y, self.size, self.probability, strict=True):
            yield FocusCrop(int(x), int(y), int(size)), float(p)

    @classmethod
    def empty(cls) -> FocusScores:
        none = np.zeros(0, np.int64)
        return cls(none, none, none, np.zeros(0, np.float32))


class FocusGrid:
    """Focus probabilities per crop, spread onto the mosaic grid (mean where crops overlap)."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        h, w = geometry.mosaic_shape
        self._sum = np.zeros((h, w), np.float32)
        self._count = np.zeros((h, w), np.uint16)
        self._crops = array.array("q")  # x, y, size per crop
        self._probabilities = array.array("f")

    def add(self, crop: FocusCrop, probability: float) -> None:
        d = self.geometry.mosaic_downsample
        y0, x0 = crop.y // d, crop.x // d
        y1, x1 = max(y0 + 1, (crop.y + crop.size) // d), max(x0 + 1, (crop.x + crop.size) // d)
        self._sum[y0:y1, x0:x1] += probability
        self._count[y0:y1, x0:x1] += 1
        self._crops.extend((crop.x, crop.y, crop.size))
        self._probabilities.append(probability)

    @property
    def scores(self) -> FocusScores:
        crops = np.frombuffer(self._crops, np.int64).reshape(-1, 3)
        probabilities = np.frombuffer(self._probabilities, np.float32)
        return FocusScores(crops[:, 0], crops[:, 1], crops[:, 2], probabilities)

    def probability(self) -> npt.NDArray[np.float32]:
        """Mean probability of blur per mosaic pixel; 0 where no crop was scored."""
        out = self._sum / np.maximum(self._count, 1)
        return out.astype(np.float32)

    def scored(self) -> npt.NDArray[np.bool_]:
        return self._count > 0

    def release(self) -> None:
        """Free the grid once its map is taken (the scores stay)."""
        self._sum = np.zeros((0, 0), np.float32)
        self._count = np.zeros((0, 0), np.uint16)


class AnalysisSampler:
    """A TileConsumer: level-0 tiles in, mosaic and focus crops out (batched to `on_batch`)."""

    def __init__(
        self,
        geometry: Geometry,
        on_batch: Callable[[list[FocusCrop], npt.NDArray[np.uint8]], None],
        batch_size: int = 64,
        workers: int | None = None,
        low: npt.NDArray[np.uint8] | None = None,
        on_rows: Callable[[int], None] | None = None,
        level: tuple[int, int] = (0, 1),
    ) -> None:
        self.geometry = geometry
        # The level whose tiles are analysed, and its downsample (level 0, or `focus_level`).
        self.level_index, self._d = level
        # Told how many mosaic rows are final (every tile above them applied or skipped), so
        # the artifact model can start on them during the pass.
        self._on_rows = on_rows
        self._row = -1  # the tile row being applied (of the analysed level)
        self._tile_height = 0  # its tiles' height in level-0 px
        self.rows_in_order = True
        # Final mosaic rows are rounded once, into the image `image` returns: the model's
        # strips overlap (window margins) and the image is needed whole after the pass.
        self._final = 0  # rows [0, _final) are final
        self._image: npt.NDArray[np.uint8] | None = None
        self._kept = 0  # rows [0, _kept) of _image are filled
        self.mosaic = MosaicAccumulator(geometry)
        # With the lower level's mosaic, glass tiles are not decoded (module docstring).
        self.low = low
        self._busy = glass_gate(low) if low is not None else None
        self.tiles_skipped = 0
        self._on_batch = on_batch
        self._batch_size = batch_size
        self._crops: list[FocusCrop] = []
        self._pixels: list[Crop] = []
        self._active = False
        self.tiles_seen = 0
        self.crops_scored = 0
        # Decoding releases the GIL: tiles are reduced on worker threads while the read
        # loop goes on; results are applied in order, at most _ahead tiles behind (or, with
        # the conversion's copy to read back from, READ_BACK_AFTER_BYTES).
        self._workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        # (tile row, the tile's work or None for a skipped tile, its compressed bytes): applied
        # in read order
        self._pending: deque[tuple[int, _Work | None, int]] = deque()
        self._pending_bytes = 0
        self._ahead = 4 * max(self._workers, 1)
        # Reading back (module docstring): the copies offered by the conversion, the analysed
        # level's copy, and once the decoders fell behind, the rest of the level as (tile row,
        # frame index or -1 for glass) to read back after the pass.
        self._copies: Callable[[Level], CopiedFrames | None] | None = None
        self._copy: CopiedFrames | None = None
        self._level: Level | None = None
        self._deferred: list[tuple[int, int]] | None = None
        self._level_open = False  # the level's pass ended, its tiles not all applied yet
        self.tiles_read_back = 0

    def read_back_from(self, copies: Callable[[Level], CopiedFrames | None]) -> None:
        """ReadsBack: the conversion offers its copy of the frames it writes."""
        self._copies = copies

    def start_level(self, level: Level) -> None:
        self._active = level.index == self.level_index
        if self._active:
            self._tile_height = level.tile_height * self._d
            self._level = level
            if self._copies is not None and level.codec is Codec.JPEG:
                self._copy = self._copies(level)
        if self._active and self._workers > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="edge-analysis")
        if self._active and self._copy is not None and self._pool is None:
            self._deferred = []  # no decoding thread: the whole level after the pass

    def end_level(self, level: Level) -> None:
        if self._active and self._copy is not None:
            self._level_open = True  # finished by drain(), after the conversion
        elif self._active:
            self._finish_level()
        self._active = False

    def drain(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Apply the analysed level's remaining tiles: those still decoding, then those read
        back from the conversion's copy, in read order (the analysis calls this after the
        pass; a no-op when the pass applied everything). `progress(done, total)` counts the
        tiles read back; it may raise to abandon the slide."""
        if not self._level_open:
            return
        self._level_open = False
        try:
            while self._pending:
                self._settle_head()
            deferred = self._deferred or []
            total = sum(1 for _, index in deferred if index >= 0)
            ahead = max(self._ahead, READ_BACK_CHUNK * (self._workers + 1))  # every worker busy
            for chunk in _chunks(deferred, READ_BACK_CHUNK):
                indices = [index for _, index in chunk if index >= 0]
                work = self._start(self._reduce_copied, indices) if indices else None
                part = 0
                for row, index in chunk:
                    if index < 0:
                        self.tiles_skipped += 1
                        self._pending.append((row, None, 0))
                        continue
                    assert work is not None
                    self._pending.append((row, _Part(work, part), 0))
                    part += 1
                    self.tiles_read_back += 1
                    if progress is not None:
                        progress(self.tiles_read_back, total)
                self._settle_ready(ahead)
            self._deferred = None
            self._finish_level()
        finally:
            self.close()

    def close(self) -> None:
        """Release the decoding threads and the copy (idempotent; also after a failed pass)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        if self._copy is not None:
            self._copy.close()
            self._copy = None

    def _finish_level(self) -> None:
        while self._pending:
            self._settle_head()
        self.flush()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._rows_final(self.geometry.mosaic_shape[0])

    def consume(self, tile: StreamTile) -> None:
        frame = tile.frame
        if not self._active or frame.plane != 0:
            return
        glass = self._busy is not None and not self._needs_decode(tile)
        if self._deferred is not None:  # behind: the rest of the level comes from the copy
            self._deferred.append((frame.row, -1 if glass else frame.index))
            return
        work: _Work | None = None
        size = 0
        if glass:
            self.tiles_skipped += 1
        else:
            work = self._start(self._reduce, tile)
            size = len(frame.data or b"")
        self._pending.append((frame.row, work, size))
        self._pending_bytes += size
        if self._copy is None:
            self._settle_ready(self._ahead)
        elif self._pending_bytes > READ_BACK_AFTER_BYTES:
            # The conversion does not wait (module docstring); nor does it apply results,
            # whose focus batches would hold up the pass: drain() does, in order.
            self._deferred = []

    def _start(self, reduce: Callable[[_T], _R], item: _T) -> Future[_R]:
        """Work on a decoding thread, or done at once when there is none."""
        if self._pool is not None:
            return self._pool.submit(reduce, item)
        work: Future[_R] = Future()
        work.set_result(reduce(item))
        return work

    def _settle_ready(self, ahead: int | None) -> None:
        """Apply the finished tiles at the head of the queue, and wait for more while over
        `ahead` tiles are pending (None: never wait)."""
        while self._pending and (
            (ahead is not None and len(self._pending) > ahead)
            or self._pending[0][1] is None
            or self._pending[0][1].done()
        ):
            self._settle_head()

    def _settle_head(self) -> None:
        row, work, size = self._pending.popleft()
        self._pending_bytes -= size
        self._settle(row, work)

    def _settle(self, row: int, work: _Work | None) -> None:
        """One tile, in read order: its work applied; the rows above it reported final."""
        if row != self._row:
            if row < self._row:  # not row by row: nothing is final before the pass ends
                self.rows_in_order = False
            self._row = row
            d = self.geometry.mosaic_downsample
            self._rows_final(row * self._tile_height // d)
        if work is not None:
            self._apply(work.result())

    def _rows_final(self, rows: int) -> None:
        if self.rows_in_order:
            self._final = max(self._final, rows)
            if self._on_rows is not None:
                self._on_rows(rows)

    def _needs_decode(self, tile: StreamTile) -> bool:
        assert self._busy is not None
        level, frame = tile.frame.level, tile.frame
        d = self.geometry.mosaic_downsample
        th, tw = level.tile_height * self._d, level.tile_width * self._d  # level-0 px
        y0, x0 = frame.row * th, frame.col * tw
        y1, x1 = -(-(y0 + th) // d), -(-(x0 + tw) // d)
        return bool(self._busy[y0 // d : y1, x0 // d : x1].any())

    def image(self) -> npt.NDArray[np.uint8]:
        """The mosaic: decoded level-0 tiles, the lower level's pixels where none was (call
        once the pass has ended: every row is then final, and kept rows are reused)."""
        return self.rows(0, self.geometry.mosaic_shape[0])

    def rows(self, top: int, bottom: int) -> npt.NDArray[np.uint8]:
        """Mosaic rows [top, bottom) as `image` has them (final once reported so)."""
        if self.rows_in_order and bottom <= self._final:
            if self._image is None:
                self._image = np.empty((*self.geometry.mosaic_shape, 3), np.uint8)
            if bottom > self._kept:
                self._image[self._kept : bottom] = self.mosaic.rows(
                    self._kept, bottom, under=self.low
                )
                self._kept = bottom
            return self._image[top:bottom]
        return self.mosaic.rows(top, bottom, under=self.low)

    def _reduce(self, tile: StreamTile) -> _Reduced:
        """Worker side: decode, reduce, cut the focus crops (no shared state touched)."""
        level, frame = tile.frame.level, tile.frame
        x0, y0 = frame.col * level.tile_width * self._d, frame.row * level.tile_height * self._d
        reduced = reduced_tile(tile, self.geometry.decode_scale // self._d)
        return self.mosaic.block(x0, y0, reduced), self._crops_of(x0, y0, reduced)

    def _reduce_copied(self, indices: list[int]) -> list[_Reduced]:
        """Worker side, after the pass: tiles read back from the conversion's copy. Copies are
        JPEG only, whose frames decode from their own bytes: no source is needed."""
        assert self._copy is not None and self._level is not None
        level, copy, none = self._level, self._copy, cast(SlideSource, None)
        return [self._reduce(StreamTile(Frame(level, i, copy.read(i)), none)) for i in indices]

    def _apply(self, work: _Reduced) -> None:
        block, crops = work
        self.tiles_seen += 1
        if block is not None:
            self.mosaic.put(block)
        for crop, grey in crops:
            self._crops.append(crop)
            self._pixels.append(grey)
            if len(self._crops) >= self._batch_size:
                self.flush()

    def _crops_of(
        self, x0: int, y0: int, reduced: npt.NDArray[np.uint8]
    ) -> list[tuple[FocusCrop, Crop]]:
        g = self.geometry
        s = g.decode_scale
        h = min(reduced.shape[0], (g.height - y0) // s)
        w = min(reduced.shape[1], (g.width - x0) // s)
        if h < FOCUS_TILE // 2 or w < FOCUS_TILE // 2:
            return []  # a sliver at the slide's edge: too little to judge focus
        n = FOCUS_TILE
        # Every 4th pixel each way is plenty to tell tissue from glass, 16x cheaper.
        coarse = tissue_like(reduced[:h:4, :w:4])
        out = []
        for cy in range(0, max(h - n // 2, 1), n):
            for cx in range(0, max(w - n // 2, 1), n):
                if (
                    coarse[cy // 4 : (cy + n) // 4, cx // 4 : (cx + n) // 4].mean()
                    < FOCUS_MIN_TISSUE
                ):
                    continue
                grey = _grey(reduced[cy : min(cy + n, h), cx : min(cx + n, w)])
                if grey.shape != (n, n):  # 240 px tiles give 60 px crops: mirror to 64
                    grey = np.pad(
                        grey, ((0, n - grey.shape[0]), (0, n - grey.shape[1])), mode="reflect"
                    )
                out.append((FocusCrop(x0 + cx * s, y0 + cy * s, n * s), grey))
        return out

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


class _Work(Protocol):
    """A tile's work: a Future of it, or its share of a chunk's Future."""

    def done(self) -> bool: ...

    def result(self) -> _Reduced: ...


class _Part:
    """One tile's share of the work on a chunk of tiles."""

    __slots__ = ("chunk", "index")

    def __init__(self, chunk: Future[list[_Reduced]], index: int) -> None:
        self.chunk = chunk
        self.index = index

    def done(self) -> bool:
        return self.chunk.done()

    def result(self) -> _Reduced:
        return self.chunk.result()[self.index]


def _chunks(items: list[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
