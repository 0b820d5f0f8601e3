"""Tiled pyramidal TIFF sources: Aperio SVS, OME-TIFF and generic (libvips, bfconvert) TIFF.

Raw tiles are read with positioned reads, coalescing runs of adjacent tiles into one read, and
handed on as complete codestreams (JPEG tables merged, RGB marker added) without decoding.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile

from edge.errors import CorruptInput, UnsupportedInput
from edge.slide import aperio, j2k, jpeg
from edge.slide.limits import check_associated, check_level_geometry, check_samples
from edge.slide.model import (
    AssociatedImage,
    AssociatedKind,
    Codec,
    Level,
    OpticalPath,
    SlideMetadata,
)
from edge.slide.source import Frame, Pixels

READ_CHUNK = 8 << 20  # bytes per coalesced read: large enough to stream, small enough to bound RSS

_JPEG = 7
_JPEG2000 = {33003, 33004, 33005, 34712}
_J2K_COPYABLE = {33005, 34712}  # 33003/33004: YCbCr without MCT, must be converted
_TIFF_INCH, _TIFF_CM = 2, 3


def as_pixels(array: np.ndarray[Any, Any]) -> Pixels:
    """Normalise decoder output to (height, width, samples) uint8."""
    if array.dtype != np.uint8:
        raise UnsupportedInput("", f"{array.dtype} samples; only 8-bit images are supported")
    array = np.squeeze(array)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if array.ndim != 3:
        raise CorruptInput(
            "",
            f"image decodes to shape {array.shape}; expected height x width "
            "x samples (a damaged depth or size tag)",
        )
    return np.ascontiguousarray(array)


class TiffSlide:
    """A SlideSource over a TIFF-based whole-slide file."""

    def __init__(self, path: Path, tif: tifffile.TiffFile) -> None:
        self.path = path
        self._tif = tif
        self._fd = os.open(path, os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size
        self._pages: list[Any] = []
        self._prefix: dict[int, bytes] = {}
        self._fill: dict[int, bytes] = {}  # per level: the white frame for sparse tiles
        self._assoc_pages: dict[AssociatedKind, Any] = {}
        try:
            fmt, level_pages, assoc = self._classify()
            self.levels = tuple(
                self._make_level(i, p, level_pages[0]) for i, p in enumerate(level_pages)
            )
            self._pages = level_pages
            self._assoc_pages = dict(assoc)
            self.associated = tuple(self._make_associated(kind, page) for kind, page in assoc)
            self.metadata = self._metadata(fmt, level_pages[0])
        except Exception:
            self.close()
            raise

    # -- structure -------------------------------------------------------------------------

    def _classify(self) -> tuple[str, list[Any], list[tuple[AssociatedKind, Any]]]:
        tif = self._tif
        if tif.is_qpi:
            raise UnsupportedInput(
                self.path,
                "PerkinElmer/Akoya QPTIFF multiplexed fluorescence is not supported "
                "(untiled multi-channel pages); export it as OME-TIFF or DICOM",
            )
        assoc: list[tuple[AssociatedKind, Any]] = []
        if tif.is_svs:
            levels = [lvl.keyframe for lvl in tif.series[0].levels]
            for series in tif.series[1:]:
                kind = {
                    "Thumbnail": AssociatedKind.THUMBNAIL,
                    "Label": AssociatedKind.LABEL,
                    "Macro": AssociatedKind.OVERVIEW,
                }.get(series.name)
                if kind and not any(k is kind for k, _ in assoc):  # one file per kind
                    assoc.append((kind, series.keyframe))
            return "aperio-svs", levels, assoc
        if tif.is_ome:
            series = tif.series[0]
            levels = [lvl.keyframe for lvl in series.levels]
            if len(series.levels[0].pages) != 1:
                raise UnsupportedInput(
                    self.path,
                    f"OME-TIFF image with {len(series.levels[0].pages)} planes (channels, "
                    "z or time); only single-plane RGB or grey slides are supported",
                )
            for other in tif.series[1:]:
                kind = _kind_from_name(other.name)
                if kind and not any(k is kind for k, _ in assoc):
                    assoc.append((kind, other.keyframe))
            return "ome-tiff", levels, assoc
        return "generic-tiff", *self._generic_pages()

    def _generic_pages(self) -> tuple[list[Any], list[tuple[AssociatedKind, Any]]]:
        pages: list[Any] = list(self._tif.pages)
        base = pages[0]
        if not base.is_tiled:
            raise UnsupportedInput(
                self.path,
                f"not a whole-slide image: first page is an untiled {base.imagewidth}x"
                f"{base.imagelength} picture (expected a tiled pyramidal TIFF)",
            )
        levels = [base]
        if base.subifds:
            levels += [lvl.keyframe for lvl in self._tif.series[0].levels[1:]]
        assoc: list[tuple[AssociatedKind, Any]] = []
        ratio = base.imagewidth / base.imagelength
        for page in pages[1:]:
            same_shape = abs(page.imagewidth / page.imagelength - ratio) < 0.02 * ratio
            if (
                page.is_tiled
                and same_shape
                and page.samplesperpixel == base.samplesperpixel
                and page.imagewidth < levels[-1].imagewidth
            ):
                levels.append(page)
                continue
            kind = _kind_from_name(page.description)
            if (
                kind is None
                and not page.is_tiled
                and not any(k is AssociatedKind.THUMBNAIL for k, _ in assoc)
            ):
                kind = AssociatedKind.THUMBNAIL
            if kind is not None and not any(k is kind for k, _ in assoc):
                assoc.append((kind, page))
        return levels, assoc

    def _make_level(self, index: int, page: Any, base: Any) -> Level:
        what = f"level {index}"
        if not page.is_tiled:
            raise UnsupportedInput(self.path, f"{what} is stored in strips, not tiles")
        width, height = page.imagewidth, page.imagelength
        check_level_geometry(self.path, what, width, height, page.tilewidth, page.tilelength)
        if page.bitspersample != 8 or page.samplesperpixel not in (1, 3):
            raise UnsupportedInput(
                self.path,
                f"{what} has {page.samplesperpixel} samples of {page.bitspersample} bits; "
                "expected 8-bit grey or RGB",
            )
        if page.samplesperpixel == 3 and page.planarconfig != 1:
            raise UnsupportedInput(self.path, f"{what} stores colour planes separately")
        if page.imagedepth != 1:
            raise UnsupportedInput(self.path, f"{what} is a 3-D (tiled depth) image")
        self._check_offsets(what, page)
        codec, photometric = self._codec(what, index, page)
        return Level(
            index=index,
            width=width,
            height=height,
            tile_width=page.tilewidth,
            tile_height=page.tilelength,
            codec=codec,
            samples=page.samplesperpixel,
            photometric=photometric,
            downsample=base.imagewidth / width,
            stored_bytes=int(np.sum(page.databytecounts, dtype=np.int64))
            + len(self._prefix.get(index, b"")) * len(page.databytecounts),
        )

    def _check_offsets(self, what: str, page: Any) -> None:
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        expected = (-(-page.imagewidth // page.tilewidth)) * (
            -(-page.imagelength // page.tilelength)
        )
        if len(offsets) != expected or len(counts) != expected:
            raise CorruptInput(
                self.path,
                f"{what} lists {len(offsets)} tile offsets and {len(counts)} byte "
                f"counts; its size needs {expected}",
            )
        if len(offsets) and min(int(offsets.min()), int(counts.min())) < 0:
            raise CorruptInput(
                self.path,
                f"{what} lists negative tile offsets or byte counts; expected positions inside "
                "the file",
            )
        ends = offsets + counts
        if len(ends) and int(ends.max()) > self._size:
            bad = int(np.argmax(ends > self._size))
            raise CorruptInput(
                self.path,
                f"truncated: {what} tile {bad} ends at byte {int(ends[bad]):,} but the file "
                f"has {self._size:,} bytes",
            )

    def _codec(self, what: str, index: int, page: Any) -> tuple[Codec, str | None]:
        compression = int(page.compression)
        first = next((i for i, n in enumerate(page.databytecounts) if n > 0), None)
        if first is None:
            raise CorruptInput(self.path, f"{what} has no tile data at all")
        sample = os.pread(self._fd, page.databytecounts[first], page.dataoffsets[first])
        if compression == _JPEG:
            try:
                rgb = int(page.photometric) == 2
                info = jpeg.inspect(
                    (page.jpegtables or b"")[:-2] + sample[2:] if page.jpegtables else sample
                )
                if len(info.components) != page.samplesperpixel:
                    raise jpeg.JpegFormatError(
                        f"{len(info.components)} colour components, but the TIFF header says "
                        f"{page.samplesperpixel} samples per pixel"
                    )
                if not info.is_baseline:
                    return Codec.NONE, None
                self._prefix[index] = jpeg.frame_prefix(
                    page.jpegtables, jpeg.needs_rgb_marker(info, rgb)
                )
                photometric = jpeg.photometric(info, rgb)
            except jpeg.JpegFormatError as exc:
                raise CorruptInput(self.path, f"{what} tile {first}: {exc}") from exc
            return Codec.JPEG, photometric
        if compression in _JPEG2000:
            try:
                info2 = j2k.inspect(sample)
            except j2k.J2kFormatError as exc:
                raise CorruptInput(self.path, f"{what} tile {first}: {exc}") from exc
            if info2.components != page.samplesperpixel:
                raise CorruptInput(
                    self.path,
                    f"{what} tile {first}: {info2.components} colour components, but the TIFF "
                    f"header says {page.samplesperpixel} samples per pixel",
                )
            if compression in _J2K_COPYABLE and info2.precision == 8:
                return (
                    Codec.HTJ2K if info2.high_throughput else Codec.JPEG2000,
                    info2.photometric(),
                )
            return Codec.NONE, None
        self._check_decodable(what, page, first, sample, compression)
        return Codec.NONE, None

    def _check_decodable(
        self, what: str, page: Any, index: int, sample: bytes, compression: int
    ) -> None:
        """Levels that must be re-encoded: refuse up front a compression nothing here decodes."""
        try:
            page.decode(sample, index, jpegtables=page.jpegtables)
        except Exception as exc:
            try:
                name = tifffile.COMPRESSION(compression).name
            except ValueError:
                name = "unknown"
            raise UnsupportedInput(
                self.path,
                f"{what} uses TIFF compression {name} ({compression}), which cannot be decoded "
                f"here ({type(exc).__name__})",
            ) from exc

    def _make_associated(self, kind: AssociatedKind, page: Any) -> AssociatedImage:
        check_associated(self.path, kind.value.lower(), page.imagewidth, page.imagelength)
        ends = np.asarray(page.dataoffsets, np.int64) + np.asarray(page.databytecounts, np.int64)
        if len(ends) and int(ends.max()) > self._size:
            raise CorruptInput(
                self.path,
                f"truncated: the {kind.value.lower()} image ends at byte {int(ends.max()):,} "
                f"but the file has {self._size:,} bytes",
            )
        return AssociatedImage(
            kind, page.imagewidth, page.imagelength, min(page.samplesperpixel, 3)
        )

    def _metadata(self, fmt: str, base: Any) -> SlideMetadata:
        icc_tag = base.tags.get(34675)
        icc = bytes(icc_tag.value) if icc_tag is not None else None
        software = str(base.software or "")
        if fmt == "aperio-svs":
            props = aperio.parse_description(base.description)
            return SlideMetadata(
                format=fmt,
                vendor="Aperio",
                model=props.get("ScanScope ID", ""),
                software=props["header"].splitlines()[0].strip(),
                serial_number=props.get("ScanScope ID", ""),
                mpp=_sane_mpp(aperio.as_float(props.get("MPP"))),
                magnification=aperio.as_float(props.get("AppMag")),
                barcode=props.get("Barcode", ""),
                scan_datetime=aperio.scan_datetime(props),
                icc_profile=icc,
                optical_paths=(OpticalPath("1", "Brightfield", icc_profile=icc),),
                description=props.get("Filename", ""),
            )
        mpp = _ome_mpp(base.description) if fmt == "ome-tiff" else _resolution_mpp(base)
        return SlideMetadata(
            format=fmt,
            vendor=str(base.tags.get(271).value if 271 in base.tags else ""),
            model=str(base.tags.get(272).value if 272 in base.tags else ""),
            software=software,
            mpp=mpp,
            icc_profile=icc,
            optical_paths=(OpticalPath("1", "Brightfield", icc_profile=icc),),
        )

    # -- streaming -------------------------------------------------------------------------

    def frames(self, level: Level) -> Iterator[Frame]:
        page = self._pages[level.index]
        if level.codec is Codec.NONE:
            yield from self._decoded_frames(level, page)
            return
        prefix = self._prefix.get(level.index, b"")
        is_jpeg = level.codec is Codec.JPEG
        for index, raw in _read_coalesced(self._fd, page.dataoffsets, page.databytecounts):
            if not raw:
                if level.index not in self._fill:  # encoded once, however many tiles are empty
                    self._fill[level.index] = self._fill_frame(level)
                yield Frame(level, index, self._fill[level.index])
                continue
            if is_jpeg:
                if raw[:2] != jpeg.SOI or bytes(raw[-2:]) != jpeg.EOI:
                    raise CorruptInput(self.path, _tile_problem(level, index, "JPEG"))
                data = prefix + bytes(raw[2:]) if prefix else bytes(raw)
            else:
                if raw[:2] != j2k.SOC or bytes(raw[-2:]) != b"\xff\xd9":
                    raise CorruptInput(self.path, _tile_problem(level, index, "JPEG 2000"))
                data = bytes(raw)
            yield Frame(level, index, data)

    def _decoded_frames(self, level: Level, page: Any) -> Iterator[Frame]:
        for index, raw in _read_coalesced(self._fd, page.dataoffsets, page.databytecounts):
            if not raw:
                fill = np.full((level.tile_height, level.tile_width, level.samples), 255, np.uint8)
                yield Frame(level, index, None, fill)
                continue
            try:
                array, _, _ = page.decode(bytes(raw), index, jpegtables=page.jpegtables)
            except Exception as exc:
                raise CorruptInput(
                    self.path, f"level {level.index} tile {index} does not decode: {exc}"
                ) from exc
            if array is None:
                raise CorruptInput(self.path, f"level {level.index} tile {index} is empty")
            pixels = as_pixels(array)
            if int(page.compression) in (33003, 33004) and pixels.shape[2] == 3:
                pixels = _ycbcr_to_rgb(pixels)
            yield Frame(level, index, None, pixels)

    def _fill_frame(self, level: Level) -> bytes:
        """Sparse TIFF tiles (byte count 0) become white frames in the level's own codec."""
        white = np.full((level.tile_height, level.tile_width, level.samples), 255, np.uint8)
        if level.codec is Codec.JPEG:
            if level.photometric == "RGB":
                return bytes(
                    imagecodecs.jpeg8_encode(white, level=95, colorspace="RGB", outcolorspace="RGB")
                )
            return bytes(imagecodecs.jpeg8_encode(white, level=95))
        return bytes(imagecodecs.jpeg2k_encode(white, level=0))

    def decode(self, frame: Frame) -> Pixels:
        if frame.pixels is not None:
            return frame.pixels
        assert frame.data is not None
        try:
            if frame.level.codec is Codec.JPEG:
                pixels = as_pixels(imagecodecs.jpeg8_decode(frame.data))
            elif frame.level.codec is Codec.HTJ2K:
                pixels = as_pixels(imagecodecs.htj2k_decode(frame.data))
            else:
                pixels = as_pixels(imagecodecs.jpeg2k_decode(frame.data))
        except imagecodecs.DelayedImportError:
            raise
        except Exception as exc:
            raise CorruptInput(
                self.path, f"level {frame.level.index} tile {frame.index} does not decode: {exc}"
            ) from exc
        where = f"level {frame.level.index} tile {frame.index}"
        check_samples(
            self.path, where, pixels.shape[2], frame.level.samples, "the level's SamplesPerPixel"
        )
        return pixels

    def associated_pixels(self, kind: AssociatedKind) -> Pixels:
        page = self._assoc_pages[kind]
        try:
            array = page.asarray()
        except Exception as exc:
            raise CorruptInput(
                self.path, f"{kind.value.lower()} image does not decode: {exc}"
            ) from exc
        pixels = as_pixels(array)
        return pixels[:, :, :3] if pixels.shape[2] > 3 else pixels

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tif.close()


def _tile_problem(level: Level, index: int, codec: str) -> str:
    col, row = index % level.tiles_across, index // level.tiles_across
    return (
        f"level {level.index} tile {index} (column {col}, row {row}) is not a complete "
        f"{codec} stream: damaged or truncated tile data"
    )


def _read_coalesced(fd: int, offsets: Any, counts: Any) -> Iterator[tuple[int, memoryview]]:
    """(index, bytes) of every tile, merging adjacent tiles into reads of up to READ_CHUNK."""
    n = len(offsets)
    i = 0
    while i < n:
        start = int(offsets[i])
        end = start + int(counts[i])
        j = i + 1
        while j < n and int(offsets[j]) == end and end - start < READ_CHUNK:
            end += int(counts[j])
            j += 1
        buf = memoryview(os.pread(fd, end - start, start)) if end > start else memoryview(b"")
        if len(buf) != end - start:
            raise CorruptInput("", f"tile {i} lies past the end of the file")
        for k in range(i, j):
            a = int(offsets[k]) - start
            yield k, buf[a : a + int(counts[k])]
        i = j


def _kind_from_name(name: str | None) -> AssociatedKind | None:
    text = (name or "").lower()
    if "label" in text:
        return AssociatedKind.LABEL
    if "macro" in text or "overview" in text:
        return AssociatedKind.OVERVIEW
    if "thumbnail" in text:
        return AssociatedKind.THUMBNAIL
    return None


def _ome_mpp(xml: str) -> float | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("}Pixels") or element.tag == "Pixels":
            value = element.get("PhysicalSizeX")
            unit = element.get("PhysicalSizeXUnit", "µm")
            scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}.get(unit)
            if value and scale:
                mpp = float(value) * scale
                return mpp if 0.01 < mpp < 1000 else None
    return None


def _sane_mpp(mpp: float | None) -> float | None:
    """None for a pixel size no microscope produces (inf, 1e-30 from a damaged header)."""
    return mpp if mpp is not None and 0.01 < mpp < 1000 else None


def _resolution_mpp(page: Any) -> float | None:
    unit = int(page.tags[296].value) if 296 in page.tags else 0
    if unit not in (_TIFF_INCH, _TIFF_CM) or 282 not in page.tags:
        return None
    num, den = page.tags[282].value
    if not num or not den:
        return None
    per_unit = num / den
    mpp = (25400.0 if unit == _TIFF_INCH else 10000.0) / per_unit
    return mpp if 0.01 < mpp < 1000 else None


def _ycbcr_to_rgb(pixels: Pixels) -> Pixels:
    """Full-range (JFIF) YCbCr to RGB, for Aperio 33003 JPEG 2000 tiles stored without MCT."""
    ycc = pixels.astype(np.float32)
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128.0, ycc[..., 2] - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    out: Pixels = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return out
