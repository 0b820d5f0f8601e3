"""Small synthetic slides for the quick start, tests and site checks.

Procedural H&E-like tissue (stroma, nuclei, glass) written as Aperio SVS, generic pyramidal
TIFF or OME-TIFF with tifffile. The full test-slide kit (real texture, planted artifacts,
ground truth) builds on this; large benchmark slides come from tools/make_big_svs.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tifffile

from edge.dicom.pyramid import halve

FORMATS = ("svs", "tiff", "ome-tiff")
MAX_SIDE = 16384  # built in memory
Field = npt.NDArray[np.float64]


def _smooth_field(rng: np.random.Generator, height: int, width: int, cell: int) -> Field:
    """Value noise: a random grid every `cell` pixels, bilinearly interpolated."""
    gh, gw = height // cell + 2, width // cell + 2
    grid = rng.random((gh, gw))
    ys = np.arange(height) / cell
    xs = np.arange(width) / cell
    rows = np.stack([np.interp(xs, np.arange(gw), grid[r]) for r in range(gh)])
    out: Field = np.stack([np.interp(ys, np.arange(gh), rows[:, c]) for c in range(width)], 1)
    return out


def tissue(width: int, height: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    """An RGB image of pink stroma with purple nuclei on near-white glass."""
    rng = np.random.default_rng(seed)
    # Tissue shape and shading at 1/4 scale (smooth at any zoom a viewer shows), then upsized.
    sh, sw = -(-height // 4), -(-width // 4)
    field = _smooth_field(rng, sh, sw, 96) + 0.5 * _smooth_field(rng, sh, sw, 24)
    mask_small = field > np.quantile(field, 0.5)
    shade_small = 0.82 + 0.18 * _smooth_field(rng, sh, sw, 12)
    mask = np.repeat(np.repeat(mask_small, 4, 0), 4, 1)[:height, :width]
    shade = np.repeat(np.repeat(shade_small.astype(np.float32), 4, 0), 4, 1)[:height, :width]
    img = np.empty((height, width, 3), np.uint8)
    img[...] = (242, 240, 244)
    stroma = np.array([222, 150, 190], np.float32)
    texture = stroma[None, None, :] * shade[..., None]
    texture += rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    img[mask] = np.clip(texture, 0, 255).astype(np.uint8)[mask]
    n_nuclei = int(width * height / 900 * mask.mean())
    cy = rng.integers(0, height, n_nuclei)
    cx = rng.integers(0, width, n_nuclei)
    keep = mask[cy, cx]
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            if dy * dy + dx * dx <= 9:
                yy = np.clip(cy[keep] + dy, 0, height - 1)
                xx = np.clip(cx[keep] + dx, 0, width - 1)
                img[yy, xx] = (95, 60, 140)
    return img


def _levels(base: npt.NDArray[np.uint8], tile: int) -> list[npt.NDArray[np.uint8]]:
    levels = [base]
    while max(levels[-1].shape[:2]) > tile:
        cur = levels[-1]
        h, w = cur.shape[:2]
        padded = np.pad(cur, ((0, h & 1), (0, w & 1), (0, 0)), mode="edge")
        levels.append(halve(padded))
    return levels


def write_slide(
    path: Path,
    width: int = 4096,
    height: int = 3072,
    fmt: str = "svs",
    seed: int = 0,
    tile: int = 256,
    quality: int = 85,
    mpp: float = 0.25,
    barcode: str = "SYNTH-0001",
) -> Path:
    """Write a synthetic pyramidal slide and return its path."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not (16 <= width <= MAX_SIDE and 16 <= height <= MAX_SIDE):
        raise ValueError(f"size {width}x{height}: each side must be 16..{MAX_SIDE}")
    if fmt == "ome-tiff" and not path.name.lower().endswith((".ome.tif", ".ome.tiff")):
        raise ValueError(f"{path.name}: an OME-TIFF file name must end in .ome.tif")
    levels = _levels(tissue(width, height, seed), tile)
    # Aperio keeps every 4th level; the other writers keep the full 2x pyramid.
    if fmt == "svs":
        levels = levels[::2]
    path.parent.mkdir(parents=True, exist_ok=True)
    banner = "Aperio Image Library v12.0.15"
    with tifffile.TiffWriter(path, bigtiff=width * height > 2**31) as tif:

        def put(
            image: npt.NDArray[np.uint8],
            tiled: bool = True,
            metadata: dict[str, object] | None = None,
            **tags: Any,
        ) -> None:
            tif.write(
                image,
                tile=(tile, tile) if tiled else None,
                compression="jpeg",
                compressionargs={"level": quality},
                photometric="rgb",
                metadata=metadata,
                **tags,
            )

        if fmt == "svs":
            put(
                levels[0],
                description=(
                    f"{banner} \r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) "
                    f"JPEG/RGB Q={quality}|AppMag = {10 / mpp / 4:g}|MPP = {mpp:.4f}|"
                    f"Date = 11/27/26|Time = 09:30:00|Filename = {path.stem}|Barcode = {barcode}"
                ),
            )
            thumb = levels[-1]
            put(
                thumb,
                tiled=False,
                description=f"{banner} \r\n{width}x{height} -> "
                f"{thumb.shape[1]}x{thumb.shape[0]} - ",
            )
            for level in levels[1:]:
                put(
                    level,
                    description=f"{banner} \r\n{width}x{height} -> "
                    f"{level.shape[1]}x{level.shape[0]}",
                )
            label = np.full((400, 400, 3), 250, np.uint8)
            label[40:360:20, 40:360] = 20  # a barcode-like stripe pattern
            tif.write(
                label,
                compression="lzw",
                photometric="rgb",
                metadata=None,
                description=f"{banner}\nlabel 400x400",
                subfiletype=1,
            )
            put(
                thumb,
                tiled=False,
                subfiletype=9,
                description=f"{banner}\nmacro {thumb.shape[1]}x{thumb.shape[0]}",
            )
        elif fmt == "tiff":
            for i, level in enumerate(levels):
                res = 1e4 / mpp / 2**i
                put(
                    level,
                    resolution=(res, res),
                    resolutionunit="CENTIMETER",
                    subfiletype=0 if i == 0 else 1,
                )
        else:
            put(
                levels[0],
                subifds=len(levels) - 1,
                metadata={
                    "axes": "YXS",
                    "PhysicalSizeX": mpp,
                    "PhysicalSizeY": mpp,
                    "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeYUnit": "µm",
                },
            )
            for level in levels[1:]:
                put(level, subfiletype=1)
    return path
