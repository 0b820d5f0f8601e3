"""Deep-zoom tiles from the slide's own DICOM WSI levels (level-NN.dcm), one frame at a time.

A level's header is read by pydicom without the pixel data; the frames' byte positions come
from the Basic (or Extended) Offset Table the writer filled in, or from walking the fragment
items once when the table is empty. A tile request reads one frame (one fragment per frame,
as edge writes them). JPEG baseline frames go to the browser unchanged; other codecs
(JPEG 2000, HTJ2K, JPEG XL) are decoded and re-encoded as JPEG for the browser.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_PIXEL_DATA = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
_ITEM = b"\xfe\xff\x00\xe0"
MAX_LEVELS = 32


class TileError(Exception):
    """The level file is missing or not a tiled, encapsulated WSI level."""


@dataclass(frozen=True)
class Level:
    index: int
    path: Path
    width: int
    height: int
    tile_width: int
    tile_height: int
    columns: int
    rows: int
    transfer_syntax: str
    offsets: tuple[int, ...]  # file offset of each frame's item header

    def public(self) -> dict[str, int]:
        return {
            "index": self.index,
            "width": self.width,
            "height": self.height,
            "tile_width": self.tile_width,
            "tile_height": self.tile_height,
            "columns": self.columns,
            "rows": self.rows,
        }


def levels(folder: Path) -> list[Level]:
    """The pyramid levels in folder (level-00.dcm, level-01.dcm, ...), largest first."""
    found = []
    for index in range(MAX_LEVELS):
        path = folder / f"level-{index:02d}.dcm"
        if not path.is_file():
            break
        st = path.stat()
        found.append(_level(str(path), index, st.st_mtime_ns, st.st_size))
    return found


def levels_of_file(path: Path) -> Level:
    """One WSI instance (a label or an overview) as a level of its own."""
    st = path.stat()
    return _level(str(path), 0, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=128)
def _level(path: str, index: int, _mtime: int, _size: int) -> Level:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        width, height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
        tw, th = int(ds.Columns), int(ds.Rows)
        frames = int(ds.NumberOfFrames)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        organisation = str(ds.get("DimensionOrganizationType", "TILED_FULL"))
        eot = ds.get("ExtendedOffsetTable")
    except (OSError, AttributeError, ValueError, pydicom.errors.InvalidDicomError) as exc:
        raise TileError(f"{path}: not a readable WSI level: {exc}") from exc
    if organisation != "TILED_FULL":
        raise TileError(f"{path}: {organisation} tiles are not supported (TILED_FULL only)")
    columns, rows = -(-width // tw), -(-height // th)
    if frames < columns * rows:
        raise TileError(f"{path}: {frames} frames for a {columns} x {rows} tile grid")
    offsets = _frame_offsets(Path(path), frames, eot)
    return Level(index, Path(path), width, height, tw, th, columns, rows, syntax, offsets)


def _frame_offsets(path: Path, frames: int, eot: bytes | None) -> tuple[int, ...]:
    with path.open("rb") as fh:
        head = fh.read(1 << 20)
        at = head.rfind(_PIXEL_DATA)
        if at < 0:
            raise TileError(f"{path}: no encapsulated pixel data in the first MB")
        fh.seek(at + len(_PIXEL_DATA))
        tag, length = fh.read(4), struct.unpack("<I", fh.read(4))[0]
        if tag != _ITEM:
            raise TileError(f"{path}: pixel data does not start with an offset table item")
        table = fh.read(length)
        first = fh.tell()
        if eot:
            relative = np.frombuffer(eot, "<u8")[:frames]
        elif table:
            relative = np.frombuffer(table, "<u4")[:frames]
        else:  # no table: walk the items once
            found: list[int] = []
            position = first
            for _ in range(frames):
                fh.seek(position)
                item = fh.read(8)
                if len(item) < 8 or item[:4] != _ITEM:
                    raise TileError(f"{path}: fragment {len(found)} is damaged")
                found.append(position - first)
                position += 8 + struct.unpack("<I", item[4:])[0]
            relative = np.asarray(found, np.int64)
    if len(relative) < frames:
        raise TileError(f"{path}: offset table lists {len(relative)} of {frames} frames")
    return tuple(int(first + r) for r in relative)


_LOCK = threading.Lock()


def tile(level: Level, column: int, row: int) -> bytes:
    """The JPEG bytes of one tile (TILED_FULL: frames row by row)."""
    at = level.offsets[row * level.columns + column]
    with level.path.open("rb") as fh:
        fh.seek(at)
        item = fh.read(8)
        if len(item) < 8 or item[:4] != _ITEM:
            raise TileError(f"{level.path}: frame {row * level.columns + column} is damaged")
        data = fh.read(struct.unpack("<I", item[4:])[0])
    if level.transfer_syntax == JPEG_BASELINE:
        return data
    return _as_jpeg(data)


def _as_jpeg(data: bytes) -> bytes:
    import imagecodecs

    with _LOCK:  # decoders are thread-safe, but one big decode at a time bounds memory
        pixels = imagecodecs.imread(data)
    return bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(pixels), level=85))
