"""Streams encapsulated frames into a DICOM file without holding the pixel data in memory.

The header is written by pydicom; the pixel data element follows with a pre-sized offset table
(Basic Offset Table, or the Extended Offset Table for instances that may pass 4 GiB), frames
are appended as they arrive, and the table is filled in by seeking back at the end.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info

from edge.errors import OutputError

_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_DELIM = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_PIXEL_DATA_OB_UNDEFINED = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
# LossyImageCompressionRatio is only known once every frame is written: a 16-character
# placeholder (the DS maximum) is written first and overwritten in place at close().
_RATIO_PLACEHOLDER = "9999999999999999"
_RATIO_ELEMENT = b"\x28\x00\x12\x21DS\x10\x00" + _RATIO_PLACEHOLDER.encode()
BOT_LIMIT = 0xFFFFFFFF
WRITE_BUFFER = 4 << 20


def encode_header(dataset: Dataset, meta: FileMetaDataset) -> bytes:
    """Preamble, file meta and the dataset (explicit VR little endian, as every encapsulated
    syntax is). Written in two parts because pydicom 3.0 refuses transfer syntaxes it does not
    know yet (JPEG XL), although the dataset encoding is the same."""
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(DicomFileLike(out), meta, enforce_standard=True)
    dcmwrite(out, dataset, implicit_vr=False, little_endian=True, enforce_file_format=False)
    return out.getvalue()


class FrameWriter:
    """Write one multi-frame instance: `add()` every frame in order, then `close()`."""

    def __init__(
        self,
        path: Path,
        dataset: Dataset,
        meta: FileMetaDataset,
        frame_count: int,
        extended_offsets: bool = False,
    ) -> None:
        if frame_count < 1:
            raise ValueError("an instance needs at least one frame")
        self.path = path
        self.frame_count = frame_count
        self.extended = extended_offsets
        self._lengths = np.zeros(frame_count, dtype=np.uint64)
        self._offsets = np.zeros(frame_count, dtype=np.uint64)
        self._next = 0
        self._position = 0  # bytes of fragments written after the offset table item
        self._fh: BinaryIO = path.open("wb", buffering=WRITE_BUFFER)
        try:
            self._ratio_at = -1
            self._frame_size = (
                int(dataset.Rows) * int(dataset.Columns) * int(dataset.SamplesPerPixel)
            )
            if dataset.get("LossyImageCompression") == "01":
                dataset.LossyImageCompressionRatio = _RATIO_PLACEHOLDER
            try:
                head = encode_header(dataset, meta)
            except (ValueError, TypeError, OverflowError, struct.error) as exc:
                reason = " ".join(str(exc).split())[:200]
                raise OutputError(
                    f"{path.name}: the DICOM header cannot be encoded: {reason}"
                ) from exc
            if "LossyImageCompressionRatio" in dataset:
                self._ratio_at = head.index(_RATIO_ELEMENT) + 8
            self._fh.write(head)
            if self.extended:
                self._eot_at = self._fh.tell()
                table = b"\0" * (8 * frame_count)
                self._fh.write(b"\xe0\x7f\x01\x00OV\x00\x00" + struct.pack("<I", len(table)))
                self._fh.write(table)
                self._fh.write(b"\xe0\x7f\x02\x00OV\x00\x00" + struct.pack("<I", len(table)))
                self._fh.write(table)
                self._fh.write(_PIXEL_DATA_OB_UNDEFINED + _ITEM + b"\0\0\0\0")
            else:
                self._fh.write(_PIXEL_DATA_OB_UNDEFINED)
                self._fh.write(_ITEM + struct.pack("<I", 4 * frame_count))
                self._bot_at = self._fh.tell()
                self._fh.write(b"\0" * (4 * frame_count))
            self._fragments_at = self._fh.tell()  # the first frame's item starts here
        except OSError as exc:
            self._fh.close()
            raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
        except BaseException:
            self._fh.close()
            raise

    def add(self, frame: bytes | memoryview) -> None:
        if self._next >= self.frame_count:
            raise OutputError(f"{self.path}: more than the {self.frame_count} frames declared")
        length = len(frame)
        padded = length + (length & 1)
        if padded > 0xFFFFFFFE:
            raise OutputError(f"{self.path}: frame {self._next} is larger than 4 GiB")
        self._offsets[self._next] = self._position
        self._lengths[self._next] = length
        try:
            self._fh.write(_ITEM + struct.pack("<I", padded))
            self._fh.write(frame)
            if length & 1:
                self._fh.write(b"\0")
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write ({exc.strerror or exc})") from exc
        self._position += 8 + padded
        self._next += 1

    def frame_span(self, index: int) -> tuple[int, int]:
        """(file offset, length) of the bytes of frame `index`, one already added."""
        if not 0 <= index < self._next:
            raise IndexError(f"{self.path}: frame {index} not written")
        return self._fragments_at + int(self._offsets[index]) + 8, int(self._lengths[index])

    def close(self) -> None:
        if self._fh.closed:
            return
        try:
            if self._next != self.frame_count:
                raise OutputError(
                    f"{self.path}: {self._next} frames written, {self.frame_count} declared"
                )
            self._fh.write(_SEQ_DELIM)
            if self.extended:
                self._fh.seek(self._eot_at + 12)
                self._fh.write(self._offsets.astype("<u8").tobytes())
                self._fh.seek(12, 1)
                self._fh.write(self._lengths.astype("<u8").tobytes())
            else:
                if int(self._offsets[-1]) > BOT_LIMIT:
                    raise OutputError(
                        f"{self.path}: pixel data passed 4 GiB without an extended offset table"
                    )
                self._fh.seek(self._bot_at)
                self._fh.write(self._offsets.astype("<u4").tobytes())
            if self._ratio_at >= 0:
                stored = max(int(self._lengths.sum()), 1)
                ratio = self.frame_count * self._frame_size / stored
                self._fh.seek(self._ratio_at)
                self._fh.write(f"{ratio:.4f}"[:16].ljust(16).encode())
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write ({exc.strerror or exc})") from exc
        finally:
            self._fh.close()

    def abort(self) -> None:
        self._fh.close()

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class FrameCopy:
    """The frames of one written instance, read back by index from its file (local disk,
    just written, so from the page cache): the analysis takes from here the tiles it could
    not decode while they streamed by, so the conversion never waits for it and the
    scanner's file is still read once. Readable once the writer has closed, through a file
    descriptor opened then (`seal`), which outlives the output folder's atomic rename."""

    def __init__(self, writer: FrameWriter) -> None:
        self._writer = writer
        self._fd: int | None = None

    def seal(self) -> None:
        """Called when the writer has closed (before the folder is renamed)."""
        if self._fd is None:
            self._fd = os.open(self._writer.path, os.O_RDONLY)

    def read(self, index: int) -> bytes:
        if self._fd is None:
            raise OutputError(f"{self._writer.path}: frames read back before the file was closed")
        offset, length = self._writer.frame_span(index)
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise OutputError(
                f"{self._writer.path}: frame {index} read back short "
                f"({len(data)} of {length} bytes)"
            )
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
