#!/usr/bin/env python3
"""Generate a large synthetic Aperio-style SVS for conversion benchmarks.

The image is an H&E-looking texture (pink stroma, purple nuclei, white glass) built from
libvips procedural noise, so it streams through pyvips with bounded memory and
JPEG-compresses to roughly 0.2 bytes/pixel like a real scan. libvips writes a dyadic
tiled-JPEG pyramid; its tiles are then copied verbatim into the Aperio page layout
(base, striped thumbnail, reduced levels, label, macro, all in the main IFD chain) with
Aperio ImageDescriptions, so tifffile reports ``is_svs`` and OpenSlide vendor ``aperio``.

Usage: make_big_svs.py OUT.svs [--size 40000] [--tile 256] [--quality 80] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyvips
import tifffile

MPP = 0.499
APP_MAG = 20
# Colours (sRGB) of glass, eosin-stained stroma and haematoxylin-stained nuclei.
GLASS = (242.0, 241.0, 244.0)
EOSIN = (232.0, 150.0, 190.0)
HAEMATOXYLIN = (95.0, 60.0, 150.0)
TEXTURE_TILE = 2048  # side of the pre-rendered nuclei texture that is repeated


def _blend(a: pyvips.Image, b: pyvips.Image, t: pyvips.Image) -> pyvips.Image:
    """a * (1 - t) + b * t for a one-band weight t."""
    return a + (b - a) * t


def _colour(rgb: tuple[float, float, float], like: pyvips.Image) -> pyvips.Image:
    return (like * 0 + list(rgb)).cast("float")


def tissue_image(size: int, seed: int) -> pyvips.Image:
    """Build the lazy RGB uchar image; nothing is computed until it is saved."""
    # Nuclei: thresholded Worley cells, rendered once on a small tile and repeated
    # (Worley is the expensive generator; the repeats are hidden by the modulation below).
    cells = pyvips.Image.worley(TEXTURE_TILE, TEXTURE_TILE, cell_size=14, seed=seed)
    nuclei = (1.0 - cells / 4.0).clamp(min=0.0, max=1.0).gaussblur(0.8).copy_memory()
    nuclei = nuclei.replicate(size // TEXTURE_TILE + 1, size // TEXTURE_TILE + 1)
    nuclei = nuclei.crop(0, 0, size, size)

    # Tissue mask: low-frequency Perlin rendered at 1/64 scale and upsampled.
    small = max(size // 64, 8)
    blob = pyvips.Image.perlin(small, small, cell_size=max(small // 6, 4), seed=seed + 1)
    blob = blob.resize(size / small, kernel="linear")
    mask = ((blob + 0.05) * 6.0).clamp(min=0.0, max=1.0)

    # Non-repeating mid-frequency density variation and per-pixel noise.
    density = pyvips.Image.perlin(size, size, cell_size=96, seed=seed + 2) * 0.8 + 0.5
    grain = pyvips.Image.perlin(size, size, cell_size=6, seed=seed + 3)
    noise = pyvips.Image.gaussnoise(size, size, sigma=4.0, mean=0.0, seed=seed + 4)

    weight = (nuclei * density).clamp(min=0.0, max=1.0)
    glass = _colour(GLASS, mask)
    eosin = _colour(EOSIN, mask)
    haem = _colour(HAEMATOXYLIN, mask)
    stained = _blend(eosin, haem, weight) + grain * 25.0
    rgb = _blend(glass, stained, mask) + noise
    return rgb.cast("uchar")  # libvips casts with clipping


def _raw_tiles(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> Iterator[bytes]:
    """Yield a page's compressed tiles as stored (no decode, no re-encode)."""
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
        tif.filehandle.seek(offset)
        yield tif.filehandle.read(count)


def _label(seed: int) -> np.ndarray:
    """A white slide label with a barcode-like pattern."""
    rng = np.random.default_rng(seed)
    label = np.full((422, 415, 3), 250, np.uint8)
    bars = rng.integers(0, 2, 60, dtype=np.uint8).repeat(5)
    label[40:180, 58:358] = np.where(bars, 20, 250)[None, :, None]
    return label


def _macro(pyramid: Path) -> np.ndarray:
    """A low-magnification photo of the whole glass slide: label end plus tissue."""
    tissue = pyvips.Image.thumbnail(str(pyramid), 400, height=400)
    slide = pyvips.Image.black(1280, 431).new_from_image([205, 210, 215])
    slide = slide.insert(tissue, 520, (431 - tissue.height) // 2)
    return np.asarray(slide.cast("uchar").numpy())


def _write_aperio_layout(pyramid: Path, out: Path, tile: int, quality: int, seed: int) -> None:
    """Lay the libvips pyramid out the way Aperio does, copying the JPEG tiles verbatim.

    Page order: base level, striped thumbnail, reduced levels, label, macro. Readers
    (tifffile, OpenSlide, opentile) treat page 1 of an SVS as the thumbnail, so it must
    be a small striped image rather than the first reduced level.
    """
    with tifffile.TiffFile(pyramid) as src:
        levels = [page for page in src.pages if isinstance(page, tifffile.TiffPage)]
        height, width = levels[0].shape[:2]
        head = f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}]"
        meta = f"|AppMag = {APP_MAG}|MPP = {MPP:.4f}|Date = 01/02/26|Time = 10:00:00"
        thumbnail = pyvips.Image.thumbnail(str(pyramid), 1024, height=1024)
        bigtiff = pyramid.stat().st_size > 3_500_000_000
        with tifffile.TiffWriter(out, bigtiff=bigtiff) as dst:
            for index, page in enumerate(levels):
                h, w = page.shape[:2]
                # Aperio puts the metadata fields on the base level only.
                tail = f"{meta}|Filename = synthetic" if index == 0 else f" -> {w}x{h}"
                dst.write(
                    _raw_tiles(src, page),
                    shape=page.shape,
                    dtype=page.dtype,
                    photometric="rgb",
                    compression="jpeg",
                    subsampling=page.subsampling,
                    jpegtables=page.jpegtables,
                    tile=(tile, tile),
                    description=f"{head} ({tile}x{tile}) JPEG/RGB Q={quality}{tail}",
                    metadata=None,
                )
                if index == 0:
                    dst.write(
                        thumbnail.numpy(),
                        photometric="rgb",
                        compression="jpeg",
                        compressionargs={"level": 90},
                        rowsperstrip=16,
                        description=f"{head} -> {thumbnail.width}x{thumbnail.height} - {meta}",
                        metadata=None,
                    )
            dst.write(
                _label(seed),
                photometric="rgb",
                compression="lzw",
                subfiletype=1,
                description="Aperio Image Library v12.0.15\r\nlabel 415x422",
                metadata=None,
            )
            dst.write(
                _macro(pyramid),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 90},
                subfiletype=9,
                rowsperstrip=16,
                description="Aperio Image Library v12.0.15\r\nmacro 1280x431",
                metadata=None,
            )


def make_svs(out: Path, size: int, tile: int, quality: int, seed: int) -> None:
    """Render the pyramid with libvips into a temporary TIFF, then re-lay it out as SVS.

    `out` only appears once complete, so an interrupted run never leaves a truncated
    slide behind for the benchmark's cache to pick up.
    """
    pyramid = out.with_name(f".{out.name}.pyramid.tif")
    partial = out.with_name(f".{out.name}.partial")
    try:
        tissue_image(size, seed).copy(interpretation="srgb").tiffsave(
            str(pyramid),
            tile=True,
            tile_width=tile,
            tile_height=tile,
            pyramid=True,
            compression="jpeg",
            Q=quality,
            subifd=False,
            bigtiff=True,
        )
        _write_aperio_layout(pyramid, partial, tile, quality, seed)
        partial.replace(out)
    finally:
        pyramid.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=40000, help="width = height in pixels")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--quality", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.monotonic()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    make_svs(args.out, args.size, args.tile, args.quality, args.seed)
    nbytes = args.out.stat().st_size
    print(
        f"{args.out}: {args.size}x{args.size}, {nbytes / 1e6:.1f} MB, "
        f"{nbytes / args.size**2:.3f} bytes/pixel, {time.monotonic() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
