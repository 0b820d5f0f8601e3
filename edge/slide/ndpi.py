"""Hamamatsu NDPI: each level is one huge JPEG with restart markers, exposed by tifffile as
full-width strips of a few pixel rows. Strips are decoded band by band (one output tile row at a
time, so memory is bounded by width x tile height) and re-tiled for the encoder.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from edge.errors import CorruptInput, UnsupportedInput
from edge.slide.limits import check_associated, check_level_geometry
from edge.slide.model import (
    AssociatedImage,
    AssociatedKind,
    Codec,
    Level,
    OpticalPath,
    SlideMetadata,
)
from edge.slide.source import Frame, Pixels
from edge.slide.tiff import as_pixels

OUTPUT_TILE = 512
MAX_STRIP_PIXELS = 64_000_000  # one restart segment decoded at once


class NdpiSlide:
    def __init__(self, path: Path, tif: tifffile.TiffFile) -> None:
        self.path = path
        self._tif = tif
        self._fd = os.open(path, os.O_RDONLY)
        try:
            series = tif.series[0]
            self._pages = [lvl.keyframe for lvl in series.levels]
            base = self._pages[0]
            size = os.fstat(self._fd).st_size
            levels = []
            for i, page in enumerate(self._pages):
                what = f"level {i}"
                tile = min(OUTPUT_TILE, max(16, 1 << (max(page.imagewidth, 16) - 1).bit_length()))
                check_level_geometry(path, what, page.imagewidth, page.imagelength, tile, tile)
                if page.samplesperpixel not in (1, 3) or page.bitspersample != 8:
                    raise UnsupportedInput(
                        path, f"{what}: {page.samplesperpixel} samples of {page.bitspersample} bits"
                    )
                strip_pixels = int(np.prod(page.chunks[:2])) if page.chunks else page.imagewidth
                if strip_pixels > MAX_STRIP_PIXELS:
                    raise UnsupportedInput(
                        path,
                        f"{what} is one {page.imagewidth}x"
                        f"{page.imagelength} JPEG without restart "
                        "markers; too large to decode in one piece",
                    )
                starts = np.asarray(page.dataoffsets, np.int64)
                counts = np.asarray(page.databytecounts, np.int64)
                if len(starts) and min(int(starts.min()), int(counts.min())) < 0:
                    raise CorruptInput(
                        path,
                        f"{what} lists negative strip offsets or byte counts; expected "
                        "positions inside the file",
                    )
                ends = starts + counts
                if len(ends) and int(ends.max()) > size:
                    raise CorruptInput(
                        path,
                        f"truncated: {what} data runs past the end of the file ({size:,} bytes)",
                    )
                levels.append(
                    Level(
                        index=i,
                        width=page.imagewidth,
                        height=page.imagelength,
                        tile_width=tile,
                        tile_height=tile,
                        codec=Codec.NONE,
                        samples=page.samplesperpixel,
                        downsample=base.imagewidth / page.imagewidth,
                    )
                )
            self.levels = tuple(levels)
            self._macro = next((s.keyframe for s in tif.series[1:] if s.name == "Macro"), None)
            self.associated: tuple[AssociatedImage, ...] = ()
            if self._macro is not None:
                check_associated(path, "macro", self._macro.imagewidth, self._macro.imagelength)
                self.associated = (
                    AssociatedImage(
                        AssociatedKind.OVERVIEW, self._macro.imagewidth, self._macro.imagelength
                    ),
                )
            self.metadata = _metadata(base)
        except BaseException:
            self.close()
            raise

    def frames(self, level: Level) -> Iterator[Frame]:
        page = self._pages[level.index]
        # tifffile exposes the restart segments as a grid of (rows x width) chunks: usually one
        # full-width segment per MCU row, but a scanner may set a shorter restart interval.
        seg_h, seg_w = int(page.chunks[0]), int(page.chunks[1])
        seg_across = math.ceil(page.imagewidth / seg_w)
        segments = len(page.dataoffsets)
        tw, th = level.tile_width, level.tile_height
        width = max(level.tiles_across * tw, seg_across * seg_w)
        band = np.full((th, width, level.samples), 255, dtype=np.uint8)
        index = 0
        for row in range(level.tiles_down):
            band.fill(255)
            y0 = row * th
            for seg_row in range(y0 // seg_h, math.ceil((y0 + th) / seg_h)):
                top = seg_row * seg_h - y0
                for seg_col in range(seg_across):
                    s = seg_row * seg_across + seg_col
                    if s >= segments:
                        break
                    strip = self._decode_strip(page, s, level)
                    lo, hi = max(0, top), min(th, top + strip.shape[0])
                    x = seg_col * seg_w
                    band[lo:hi, x : x + strip.shape[1]] = strip[lo - top : hi - top]
            for col in range(level.tiles_across):
                yield Frame(level, index, None, band[:, col * tw : (col + 1) * tw].copy())
                index += 1

    def _decode_strip(self, page: Any, s: int, level: Level) -> Pixels:
        raw = os.pread(self._fd, int(page.databytecounts[s]), int(page.dataoffsets[s]))
        try:
            array, _, _ = page.decode(raw, s, jpegheader=page.jpegheader)
        except Exception as exc:
            raise CorruptInput(
                self.path, f"level {level.index} strip {s} does not decode: {exc}"
            ) from exc
        if array is None:
            raise CorruptInput(self.path, f"level {level.index} strip {s} is empty")
        return as_pixels(array)

    def decode(self, frame: Frame) -> Pixels:
        assert frame.pixels is not None
        return frame.pixels

    def associated_pixels(self, kind: AssociatedKind) -> Pixels:
        if kind is not AssociatedKind.OVERVIEW or self._macro is None:
            raise KeyError(kind)
        try:
            return as_pixels(self._macro.asarray())
        except Exception as exc:
            raise CorruptInput(self.path, f"macro image does not decode: {exc}") from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tif.close()


def _metadata(page: Any) -> SlideMetadata:
    tags = page.ndpi_tags or {}
    mpp = None
    if 282 in page.tags and int(page.tags[296].value if 296 in page.tags else 0) == 3:
        num, den = page.tags[282].value
        if num and den:
            mpp = 10000.0 / (num / den)
    when = None
    if page.datetime:
        when = page.datetime if isinstance(page.datetime, datetime) else None
    fluorescence = str(tags.get("Fluorescence", "") or "")
    path = OpticalPath(
        "1",
        fluorescence or "Brightfield",
        illumination="fluorescence" if fluorescence else "brightfield",
        wavelength_nm=float(tags["Wavelength"])
        if fluorescence and tags.get("Wavelength")
        else None,
    )
    return SlideMetadata(
        format="hamamatsu-ndpi",
        vendor=str(tags.get("Make", "Hamamatsu")),
        model=str(tags.get("Model", "")),
        software=str(tags.get("Software", "")),
        serial_number=str(tags.get("ScannerSerialNumber", "")),
        mpp=mpp,
        magnification=float(tags["Magnification"]) if tags.get("Magnification") else None,
        scan_datetime=when,
        optical_paths=(path,),
    )
