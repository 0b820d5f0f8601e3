"""Stream a SlideModel to every format the appliance reads: `write(model, path, fmt)`.

Each writer renders and encodes one tile (or one NDPI strip) at a time from `model.region` at
the level's downsample and streams it to the file, so peak memory does not grow with the
slide. Files are written under a temporary name and renamed; the DICOM folder goes through
edge's own conversion pipeline (edge.convert.convert_source), also atomically.

Tiles are rendered and encoded in a small thread pool (write_common.WORKERS) and written in
order, so `model.region` must be safe to call from several threads at once (read-only state,
as the protocol's "same pixels in any order" already implies for a well-behaved model).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edge.synth.protocol import SlideModel, SlideSpec
from edge.synth.write_common import Options, Progress, Ticker, atomic_file
from edge.synth.write_dicom import dicom_levels, write_dicom
from edge.synth.write_ndpi import JPEG_MAX_SIDE as NDPI_MAX_WIDTH
from edge.synth.write_ndpi import strip_count, write_ndpi
from edge.synth.write_tiff import (
    plain_levels,
    svs_levels,
    write_generic_tiff,
    write_ome_tiff,
    write_svs,
)

FORMATS = ("svs", "tiff", "ome-tiff", "ndpi", "dicom")
MIN_SIDE, MAX_SIDE = 16, 200_000
MIN_TILE, MAX_TILE = 16, 4096

_FileWriter = Callable[[SlideModel, Path, Options, Ticker], None]
_FILE_WRITERS: dict[str, _FileWriter] = {
    "svs": write_svs,
    "tiff": write_generic_tiff,
    "ome-tiff": write_ome_tiff,
    "ndpi": write_ndpi,
}
_LEVELS = {
    "svs": svs_levels,
    "tiff": plain_levels,
    "ome-tiff": plain_levels,
    "dicom": dicom_levels,
}


def check_request(spec: SlideSpec, fmt: str, tile: int, quality: int, jpeg2000: bool) -> None:
    """Raise ValueError, saying what is allowed, for a request no writer can honour."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    for side, value in (("width", spec.width), ("height", spec.height)):
        if not MIN_SIDE <= value <= MAX_SIDE:
            raise ValueError(f"{side} {value}: each side must be {MIN_SIDE}..{MAX_SIDE} pixels")
    if not MIN_TILE <= tile <= MAX_TILE or tile % 16:
        raise ValueError(f"tile {tile}: must be a multiple of 16 in {MIN_TILE}..{MAX_TILE}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality {quality}: must be 1..100")
    if not 0.01 <= spec.mpp <= 1000:
        raise ValueError(f"mpp {spec.mpp}: must be 0.01..1000 µm per pixel")
    if jpeg2000 and fmt == "ndpi":
        raise ValueError("NDPI holds JPEG only; JPEG 2000 is for svs, tiff, ome-tiff and dicom")
    if fmt == "ndpi" and spec.width > NDPI_MAX_WIDTH:
        # One restart interval per MCU row (what edge's NDPI reader expects) means one JPEG
        # strip as wide as the level, and libjpeg encodes at most 65500 pixels across.
        raise ValueError(
            f"width {spec.width}: NDPI-like files are at most {NDPI_MAX_WIDTH} pixels wide"
        )


def write(
    model: SlideModel,
    path: Path,
    fmt: str,
    *,
    tile: int = 256,
    quality: int = 80,
    jpeg2000: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write `model` as `fmt` at `path` (a folder for "dicom") and return the path.

    `progress(done, total)` is called per tile (per strip for NDPI) written.
    """
    check_request(model.spec, fmt, tile, quality, jpeg2000)
    name = path.name.split(".")[0] or path.name
    options = Options(tile=tile, quality=quality, jpeg2000=jpeg2000, name=name)
    tick = Ticker(count_units(model, fmt, options), progress)
    if fmt == "dicom":
        write_dicom(model, path, options, tick)
        return path
    with atomic_file(path) as temp:
        _FILE_WRITERS[fmt](model, temp, options, tick)
    return path


def count_units(model: SlideModel, fmt: str, options: Options) -> int:
    """Tiles (NDPI: strips) that `write` will report through `progress`."""
    if fmt == "ndpi":
        return strip_count(model, options)
    return sum(geometry.count for geometry in _LEVELS[fmt](model, options))
