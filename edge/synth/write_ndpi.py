"""NDPI-like files: what tifffile reports as NDPI and Hamamatsu readers (edge, OpenSlide) read.

The Hamamatsu layout: each pyramid level is ONE baseline JPEG stored as a single strip, with a
restart marker after every MCU row, and the offsets of those rows in the McuStarts tag (65426)
so readers can decode any row band without scanning. Image directories follow the pixel data;
they carry NDPI's 8-byte next-directory offset and the 4-byte high-bits block after the
entries (all zero here: files stay under 4 GiB).

A level JPEG is streamed: every 8-row strip is encoded as its own small JPEG with the same
(standard) tables, and its entropy-coded data is appended after an RSTn marker. Restart
markers reset the DC predictors and byte-align the data, so the concatenation is exactly the
stream one encoder would have produced for the whole level.

tifffile and edge read any size. OpenSlide's hamamatsu driver counts tiles by integer division,
so it shows the whole level only when its sides are whole 8-pixel MCUs: level-0 sides that
are multiples of 8 (the smaller levels are written only while they stay so).
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edge.slide import jpeg
from edge.synth.protocol import SlideModel
from edge.synth.write_common import (
    SCAN_TIME,
    Encode,
    LevelGeometry,
    Options,
    Ticker,
    jpeg_ycbcr,
    level,
    ordered_map,
)

MCU = 8  # 4:4:4 YCbCr: an MCU is 8 x 8 pixels, and one restart interval is one MCU row
# libjpeg's limit: a taller level gets 0 as its SOF height (readers take the TIFF tags' size,
# OpenSlide patches 0 itself); a wider one cannot be encoded as one strip (writers.py refuses).
JPEG_MAX_SIDE = 65500
_CLASSIC_LIMIT = (1 << 32) - 1
_SOF0, _SOS = 0xC0, 0xDA
_SHORT, _LONG, _RATIONAL, _ASCII, _SLONG, _FLOAT = 3, 4, 5, 2, 9, 11
_Tag = tuple[int, int, tuple[int, ...] | tuple[float, ...] | bytes]  # code, type, values


@dataclass(frozen=True)
class _Stored:
    """Where one image's single strip lies, and its restart-segment offsets within it."""

    offset: int
    length: int
    width: int
    height: int
    mcu_starts: tuple[int, ...]
    downsample: int  # 0 for the macro


def ndpi_levels(model: SlideModel, options: Options) -> list[LevelGeometry]:
    """2x levels while larger than a tile and while both sides stay whole MCUs: OpenSlide
    counts tiles by integer division and would drop a partial MCU column or row."""
    levels = [level(model.spec, 1, options.tile)]
    while max(levels[-1].width, levels[-1].height) > options.tile:
        nxt = level(model.spec, levels[-1].downsample * 2, options.tile)
        if nxt.width % MCU or nxt.height % MCU:
            break
        levels.append(nxt)
    return levels


def strip_count(model: SlideModel, options: Options) -> int:
    return sum(math.ceil(g.height / MCU) for g in ndpi_levels(model, options))


def write_ndpi(model: SlideModel, path: Path, options: Options, tick: Ticker) -> None:
    encode = jpeg_ycbcr(options.quality, "444")
    with path.open("w+b") as fh:
        # First directory offset, filled in below; NDPI readers read it as 8 bytes.
        fh.write(b"II*\x00" + b"\x00" * 8)
        stored = [_write_level(fh, model, g, encode, tick) for g in ndpi_levels(model, options)]
        macro = model.macro()
        offset = fh.tell()
        fh.write(encode(macro))
        stored.append(_Stored(offset, fh.tell() - offset, macro.shape[1], macro.shape[0], (), 0))
        first = _write_directories(fh, model, stored)
        fh.seek(4)
        fh.write(struct.pack("<I", first))


def _write_level(
    fh: BinaryIO, model: SlideModel, geometry: LevelGeometry, encode: Encode, tick: Ticker
) -> _Stored:
    width, height, ds = geometry.width, geometry.height, geometry.downsample
    start = fh.tell()
    starts: list[int] = []

    def strip(row: int) -> bytes:
        # Always a full MCU row: below the level's edge the model returns glass, and the
        # level JPEG's own height tells decoders where the image stops.
        return encode(model.region(0, row * MCU, width, MCU, ds))

    for row, data in enumerate(ordered_map(strip, range(math.ceil(height / MCU)))):
        header, scan = _split(data)
        if row == 0:
            fh.write(_level_header(header, width, height))
        else:
            fh.write(bytes((0xFF, 0xD0 + (row - 1) % 8)))  # RST0..RST7, cycling
        starts.append(fh.tell() - start)
        fh.write(scan)
        if fh.tell() > _CLASSIC_LIMIT:  # 32-bit strip offsets; NDPI's >4 GiB scheme not done
            raise ValueError("NDPI-like files are limited to 4 GiB here; choose a smaller size")
        tick()
    fh.write(jpeg.EOI)
    return _Stored(start, fh.tell() - start, width, height, tuple(starts), ds)


def _split(data: bytes) -> tuple[bytes, bytes]:
    """(header up to and including SOS, entropy-coded data without EOI) of one JPEG."""
    segments = jpeg.iter_segments(data)
    if not segments or segments[-1][0] != _SOS or data[-2:] != jpeg.EOI:
        raise ValueError("encoder produced a JPEG without a single scan")
    end = segments[-1][2]
    return data[:end], data[end:-2]


def _level_header(header: bytes, width: int, height: int) -> bytes:
    """The strip's header with the level's size in the SOF and a restart interval (DRI) of
    one MCU row inserted before the scan."""
    out = bytearray(jpeg.SOI)
    for marker, start, end in jpeg.iter_segments(header):
        if marker == 0xD8:
            continue
        segment = bytearray(header[start - 4 : end])
        if marker == _SOF0:
            sides = [0 if side > JPEG_MAX_SIDE else side for side in (height, width)]
            segment[5:9] = struct.pack(">HH", *sides)
        if marker == _SOS:
            out += b"\xff\xdd" + struct.pack(">HH", 4, math.ceil(width / MCU))
        out += segment
    return bytes(out)


def _write_directories(fh: BinaryIO, model: SlideModel, stored: list[_Stored]) -> int:
    """Write every image directory after the data, chained; return the first one's offset."""
    offsets = []
    for image in stored:
        fh.seek(0, 2)
        if fh.tell() % 2:
            fh.write(b"\0")
        offsets.append(fh.tell())
        _write_ifd(fh, _tags(model, image))
    for at, nxt in itertools.pairwise(offsets):
        _patch_next(fh, at, nxt)
    return offsets[0]


def _tags(model: SlideModel, image: _Stored) -> list[_Tag]:
    spec = model.spec
    magnification = 10 / spec.mpp / image.downsample if image.downsample else -1.0
    # Pixels per cm of this image; the macro's is nominal (76 mm across the slide photo).
    per_cm = 1e4 / (spec.mpp * image.downsample) if image.downsample else image.width / 7.6
    resolution = (round(per_cm * 100), 100)
    props = f"Product=edge synth\r\nSerialNumber=SYNTH\r\nBarcode={spec.barcode}\r\n"
    tags: list[_Tag] = [
        (256, _LONG, (image.width,)),
        (257, _LONG, (image.height,)),
        (258, _SHORT, (8, 8, 8)),
        (259, _SHORT, (7,)),
        (262, _SHORT, (6,)),
        (271, _ASCII, b"Hamamatsu\0"),
        (272, _ASCII, b"edge synth\0"),
        (273, _LONG, (image.offset,)),
        (277, _SHORT, (3,)),
        (278, _LONG, (image.height,)),
        (279, _LONG, (image.length,)),
        (282, _RATIONAL, resolution),
        (283, _RATIONAL, resolution),
        (296, _SHORT, (3,)),  # centimetre
        (305, _ASCII, b"NDP.scan (edge synth)\0"),
        (306, _ASCII, f"{SCAN_TIME:%Y:%m:%d %H:%M:%S}\0".encode()),
        (530, _SHORT, (1, 1)),  # YCbCr 4:4:4
        (65420, _SHORT, (1,)),  # NDPI FileFormat
        (65421, _FLOAT, (magnification,)),  # SourceLens; -1 marks the macro
        (65422, _SLONG, (0,)),  # X offset from slide centre, nm
        (65423, _SLONG, (0,)),
        (65424, _SLONG, (0,)),  # focal plane
    ]
    if image.mcu_starts:
        tags.append((65426, _LONG, image.mcu_starts))
    tags += [(65442, _ASCII, b"SYNTH\0"), (65449, _ASCII, props.encode("ascii", "replace") + b"\0")]
    return tags


def _pack(kind: int, values: tuple[int, ...] | tuple[float, ...] | bytes) -> tuple[int, bytes]:
    if isinstance(values, bytes):
        return len(values), values
    fmt = {_SHORT: "H", _LONG: "I", _RATIONAL: "I", _SLONG: "i", _FLOAT: "f"}[kind]
    count = len(values) // 2 if kind == _RATIONAL else len(values)
    return count, struct.pack(f"<{len(values)}{fmt}", *values)


def _write_ifd(fh: BinaryIO, tags: list[_Tag]) -> None:
    """Entries, the 8-byte next offset (0 for now), the zero high-bits block, then values."""
    at = fh.tell()
    n = len(tags)
    values_at = at + 2 + 12 * n + 8 + 4 * n
    entries, values = bytearray(struct.pack("<H", n)), bytearray()
    for code, kind, raw in sorted(tags):
        count, data = _pack(kind, raw)
        if len(data) <= 4:
            field = data.ljust(4, b"\0")
        else:
            field = struct.pack("<I", values_at + len(values))
            values += data + b"\0" * (len(data) % 2)
        entries += struct.pack("<HHI", code, kind, count) + field
    fh.write(entries + b"\0" * 8 + b"\0" * (4 * n) + values)


def _patch_next(fh: BinaryIO, ifd_at: int, nxt: int) -> None:
    fh.seek(ifd_at)
    (n,) = struct.unpack("<H", fh.read(2))
    fh.seek(ifd_at + 2 + 12 * n)
    fh.write(struct.pack("<Q", nxt))
