"""What every synthetic-slide writer shares: level geometry, tile encoders, an ordered thread
pool that renders and encodes tiles ahead of the file writer, progress, atomic file output.

Memory stays bounded by the pool's look-ahead (a few tiles, or a few strips for NDPI), never by
the slide: nothing holds a whole level.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import imagecodecs

from edge.synth.protocol import RGB, SlideModel, SlideSpec

# A fixed scan time, so the same seed gives byte-identical files.
SCAN_TIME = datetime(2026, 11, 27, 9, 30, 0)
APERIO_BANNER = "Aperio Image Library v12.0.15"
THUMBNAIL_SIDE = 1024  # longest side of thumbnails, at most
WORKERS = max(1, min(4, os.cpu_count() or 1))

Progress = Callable[[int, int], None]  # (tiles done, tiles in all levels)
Encode = Callable[[RGB], bytes]
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Options:
    tile: int = 256
    quality: int = 80
    jpeg2000: bool = False
    name: str = "slide"  # the slide's name for headers (files are written under a temp name)


@dataclass(frozen=True)
class LevelGeometry:
    """One pyramid level as rendered from the model: level pixels = ceil(level-0 / downsample)."""

    downsample: int
    width: int
    height: int
    tile: int

    @property
    def across(self) -> int:
        return math.ceil(self.width / self.tile)

    @property
    def down(self) -> int:
        return math.ceil(self.height / self.tile)

    @property
    def count(self) -> int:
        return self.across * self.down


def level(spec: SlideSpec, downsample: int, tile: int) -> LevelGeometry:
    return LevelGeometry(
        downsample, -(-spec.width // downsample), -(-spec.height // downsample), tile
    )


def pyramid(spec: SlideSpec, tile: int, step: int, down_to_one_tile: bool) -> list[LevelGeometry]:
    """Levels 1, step, step^2, ... Either down to the first level that fits one tile, or (as
    Aperio does) only the levels still larger than a tile."""
    levels = [level(spec, 1, tile)]
    while max(levels[-1].width, levels[-1].height) > tile:
        nxt = level(spec, levels[-1].downsample * step, tile)
        if not down_to_one_tile and max(nxt.width, nxt.height) <= tile:
            break
        levels.append(nxt)
    return levels


def thumbnail_downsample(spec: SlideSpec, longest: int = THUMBNAIL_SIDE) -> int:
    ratio = max(spec.width, spec.height) / longest
    return 1 << max(0, math.ceil(math.log2(max(ratio, 1.0))))


def render_level(model: SlideModel, geometry: LevelGeometry) -> RGB:
    """A whole (small) level in one call: thumbnails only."""
    return model.region(0, 0, geometry.width, geometry.height, geometry.downsample)


def needs_bigtiff(spec: SlideSpec) -> bool:
    """Classic TIFF offsets stop at 4 GiB; the compressed size is unknown until written, so
    switch while even a poor 2:1 compression of level 0 (plus its pyramid) could pass it."""
    return spec.width * spec.height * 3 // 2 > (1 << 32) - (1 << 26)


# -- encoders ---------------------------------------------------------------------------------


def jpeg_rgb(quality: int) -> Encode:
    """JPEG with R, G, B coded directly (no YCbCr, no subsampling), as Aperio writes; the Adobe
    marker libjpeg adds tells every decoder so."""

    def encode(pixels: RGB) -> bytes:
        return bytes(
            imagecodecs.jpeg8_encode(
                pixels, level=quality, colorspace="RGB", outcolorspace="RGB", optimize=False
            )
        )

    return encode


def jpeg_ycbcr(quality: int, subsampling: str = "420") -> Encode:
    """JFIF YCbCr JPEG, the libvips/Bio-Formats/Hamamatsu way. Huffman tables stay the
    standard ones (no optimisation) so streams of equal geometry share their headers."""

    def encode(pixels: RGB) -> bytes:
        return bytes(
            imagecodecs.jpeg8_encode(pixels, level=quality, subsampling=subsampling, optimize=False)
        )

    return encode


def j2k(quality: int) -> Encode:
    """Irreversible J2K codestream with the colour transform on (Aperio 33005, DICOM YBR_ICT);
    quality maps to a target PSNR as edge's own encoder does."""

    def encode(pixels: RGB) -> bytes:
        return bytes(
            imagecodecs.jpeg2k_encode(
                pixels, level=25 + quality // 4, codecformat="J2K", reversible=False, mct=True
            )
        )

    return encode


# -- streaming --------------------------------------------------------------------------------


def ordered_map(
    func: Callable[[T], R], items: Iterable[T], workers: int = WORKERS, ahead: int = 0
) -> Iterator[R]:
    """`func` over `items` in a thread pool, results in input order, at most `ahead` items in
    flight. imagecodecs and most numpy work release the GIL, so threads do overlap."""
    ahead = ahead or 2 * workers + 2
    if workers < 2:
        yield from map(func, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(func, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an abandoned iterator (writer failed) must not leave work queued
            for future in pending:
                future.cancel()


class Ticker:
    """Counts written tiles towards one total and reports them to `progress`."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.done, self._progress = total, 0, progress

    def __call__(self, count: int = 1) -> None:
        self.done += count
        if self._progress is not None:
            self._progress(self.done, self.total)


def encoded_tiles(
    model: SlideModel, geometry: LevelGeometry, encode: Encode, tick: Ticker
) -> Iterator[bytes]:
    """Every tile of a level, row by row, rendered from the model and encoded in the pool.
    Tiles reaching past the level's edge come back full size, glass beyond the edge."""
    size, ds = geometry.tile, geometry.downsample

    def job(index: int) -> bytes:
        row, col = divmod(index, geometry.across)
        return encode(model.region(col * size, row * size, size, size, ds))

    for data in ordered_map(job, range(geometry.count)):
        tick()
        yield data


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary name beside `path`, renamed onto it only when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def clean_field(value: str) -> str:
    """A value safe inside Aperio's `key = value|key = value` description."""
    return " ".join(value.replace("|", " ").split())
