"""Split one large multi-frame WSI instance into a DICOM concatenation of bounded-size parts.

Why: over a link that drops every minute, a 2 GB level 0 sent as one instance never arrives
(every drop restarts it). Parts of a few MB lose at most one part per drop. PS3.3 C.7.6.16
(Multi-frame Functional Groups, concatenation) lets one multi-frame image travel as several
instances that a reader joins again: each part is a valid instance with its own SOP Instance
UID and NumberOfFrames, and carries ConcatenationUID, SOPInstanceUIDOfConcatenationSource,
InConcatenationNumber, InConcatenationTotalNumber and ConcatenationFrameOffsetNumber. The
parts keep the source's Instance Number (all instances of a concatenation share it).

Only TILED_FULL instances are split (frame position follows from the frame number across
the concatenation); encapsulated pixel data with one fragment per frame is required. The
frames are copied byte for byte by streaming from the source: only item headers are read to
find the frames, never the whole pixel data. Part UIDs derive from the source's SOP Instance
UID and the part number, so splitting again gives the same instances (the outbox and the
peer see a re-send, not a second copy).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset

from edge.dicom.uids import make_uid
from edge.dicom.writer import encode_header
from edge.errors import InputError, OutputError

LOGGER = logging.getLogger(__name__)

_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_DELIM = b"\xfe\xff\xdd\xe0"
_PIXEL_TAG = b"\xe0\x7f\x10\x00"
_PIXEL_DATA_OB_UNDEFINED = _PIXEL_TAG + b"OB\x00\x00\xff\xff\xff\xff"
_COPY = 1 << 20
HEADER_SLACK = 512  # bytes kept free in a part besides the measured header (UIDs may grow)
MANIFEST_SUFFIX = ".parts.json"


@dataclass(frozen=True)
class Frames:
    """Where the frames of an encapsulated instance lie in its file."""

    header: Dataset  # everything before the pixel data (file meta in header.file_meta)
    offsets: tuple[int, ...]  # file offset of each frame's bytes (after its item header)
    lengths: tuple[int, ...]  # each frame's stored length (even, as in the item header)


def scan(path: Path) -> Frames:
    """Read the header and locate each frame (item headers only). Raises InputError."""
    try:
        with path.open("rb") as fh:
            header = pydicom.dcmread(fh, stop_before_pixels=True)
            if fh.read(4) != _PIXEL_TAG:
                raise InputError(path, "no Pixel Data (7FE0,0010) after the header")
            vr_len = fh.read(8)
            if vr_len[4:] != b"\xff\xff\xff\xff":
                raise InputError(path, "pixel data is not encapsulated (undefined length)")
            offsets, lengths = _items(fh, path)
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from exc
    except pydicom.errors.InvalidDicomError as exc:
        raise InputError(path, f"not a DICOM file ({exc})") from exc
    frames = int(header.get("NumberOfFrames", 1))
    if len(offsets) != frames:
        raise InputError(
            path,
            f"{len(offsets)} fragments for {frames} frames: only one fragment per frame "
            "can be split into parts",
        )
    return Frames(header, tuple(offsets), tuple(lengths))


def _items(fh: BinaryIO, path: Path) -> tuple[list[int], list[int]]:
    """Skip the offset table item, then record (offset, length) of each fragment."""
    offsets: list[int] = []
    lengths: list[int] = []
    first = True
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise InputError(path, "pixel data ends without a sequence delimiter (truncated?)")
        tag, (length,) = head[:4], struct.unpack("<I", head[4:])
        if tag == _SEQ_DELIM:
            return offsets, lengths
        if tag != _ITEM:
            raise InputError(path, f"unexpected tag {tag.hex()} in the encapsulated pixel data")
        if not first:
            offsets.append(fh.tell())
            lengths.append(length)
        first = False
        fh.seek(length, os.SEEK_CUR)


def part_uid(source_uid: str, max_bytes: int, number: int) -> str:
    """The SOP Instance UID of part `number` (1-based) of `source_uid` split at max_bytes.

    The cap is in the key: two destinations with different caps get different parts, and
    the outbox keys instances by SOP Instance UID."""
    return make_uid("2.25", "concatenation-part", source_uid, str(max_bytes), str(number))


def concatenation_uid(source_uid: str, max_bytes: int) -> str:
    return make_uid("2.25", "concatenation", source_uid, str(max_bytes))


def plan(lengths: tuple[int, ...], header_bytes: int, max_bytes: int) -> list[tuple[int, int]]:
    """Frame ranges [start, stop) so that each part (header, offset table, items, delimiter)
    stays within max_bytes. Pure. Raises ValueError when one frame alone does not fit."""
    ranges: list[tuple[int, int]] = []
    fixed = header_bytes + HEADER_SLACK + len(_PIXEL_DATA_OB_UNDEFINED) + 8 + 8
    start, size = 0, fixed
    for index, length in enumerate(lengths):
        need = 8 + length + 4  # item header, frame, its offset table entry
        if fixed + need > max_bytes:
            raise ValueError(
                f"frame {index} ({length} bytes) does not fit a part of {max_bytes} bytes"
            )
        if index > start and size + need > max_bytes:
            ranges.append((start, index))
            start, size = index, fixed
        size += need
    ranges.append((start, len(lengths)))
    return ranges


def _part_dataset(
    header: Dataset, max_bytes: int, number: int, total: int, offset: int, frames: int
) -> Dataset:
    source_uid = str(header.SOPInstanceUID)
    # a plain Dataset (not the FileDataset read, which would write its preamble again);
    # deep: the header's own elements stay untouched. Small: no pixel data.
    ds = Dataset(copy.deepcopy(dict(header)))
    for tag in [element.tag for element in ds if element.tag.group == 0x7FE0]:
        del ds[tag]  # (Extended) offset tables belong to the source
    uid = part_uid(source_uid, max_bytes, number)
    ds.SOPInstanceUID = uid
    ds.NumberOfFrames = str(frames)
    ds.ConcatenationUID = concatenation_uid(source_uid, max_bytes)
    ds.SOPInstanceUIDOfConcatenationSource = source_uid
    ds.InConcatenationNumber = number
    ds.InConcatenationTotalNumber = total
    ds.ConcatenationFrameOffsetNumber = offset
    return ds


def _meta(header: Dataset, uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    for element in header.file_meta:
        if element.tag != 0x00020000:  # group length: recomputed by the writer
            meta.add(element)
    meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(uid)
    return meta


def _header_bytes(header: Dataset, max_bytes: int, total: int) -> int:
    """Encoded size of the largest part header (the last part's numbers are the largest)."""
    frames = int(header.get("NumberOfFrames", 1))
    ds = _part_dataset(header, max_bytes, total, total, frames, frames)
    return len(encode_header(ds, _meta(header, str(ds.SOPInstanceUID))))


def split(source: Path, out_dir: Path, max_bytes: int) -> list[Path]:
    """Write the parts of `source` into out_dir as `<stem>.part-NNN.dcm` and return them
    (in order). Reuses parts a previous call completed (the manifest is written last).
    Raises InputError for an instance that cannot be split, OutputError when writing fails."""
    source = Path(source)
    manifest = out_dir / f"{source.stem}{MANIFEST_SUFFIX}"
    done = _reuse(manifest, source, max_bytes)
    if done is not None:
        return done
    frames = scan(source)
    header = frames.header
    organisation = str(header.get("DimensionOrganizationType", ""))
    if organisation != "TILED_FULL":
        raise InputError(
            source,
            f"DimensionOrganizationType {organisation or 'missing'}: only TILED_FULL "
            "instances can be split into a concatenation",
        )
    if "ConcatenationUID" in header:
        raise InputError(source, "already a concatenation part")
    ranges: list[tuple[int, int]] = []
    estimate = 1
    for _ in range(3):  # the header size depends (a little) on the number of parts
        try:
            ranges = plan(frames.lengths, _header_bytes(header, max_bytes, estimate), max_bytes)
        except ValueError as exc:
            raise InputError(
                source, f"cannot split into parts of {max_bytes} bytes: {exc}"
            ) from exc
        if len(ranges) == estimate:
            break
        estimate = len(ranges)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    with source.open("rb") as src:
        for number, (start, stop) in enumerate(ranges, 1):
            ds = _part_dataset(header, max_bytes, number, len(ranges), start, stop - start)
            path = out_dir / f"{source.stem}.part-{number:03d}.dcm"
            _write_part(src, path, ds, _meta(header, str(ds.SOPInstanceUID)), frames, start, stop)
            paths.append(path)
    record = {
        "source": str(source),
        "source_size": source.stat().st_size,
        "max_bytes": max_bytes,
        "parts": [p.name for p in paths],
        "sizes": [p.stat().st_size for p in paths],
    }
    _atomic_text(manifest, json.dumps(record, indent=1))
    LOGGER.info("split %s into %d parts of at most %d bytes", source.name, len(paths), max_bytes)
    return paths


def _reuse(manifest: Path, source: Path, max_bytes: int) -> list[Path] | None:
    try:
        record = json.loads(manifest.read_text())
        paths = [manifest.parent / name for name in record["parts"]]
        if (
            record["source"] == str(source)
            and record["source_size"] == source.stat().st_size
            and record["max_bytes"] == max_bytes
            and [p.stat().st_size for p in paths] == record["sizes"]
        ):
            return paths
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_part(
    src: BinaryIO,
    path: Path,
    ds: Dataset,
    meta: FileMetaDataset,
    frames: Frames,
    start: int,
    stop: int,
) -> None:
    lengths = frames.lengths[start:stop]
    table, position = [], 0
    for length in lengths:
        table.append(position)
        position += 8 + length
    if position > 0xFFFFFFFF:
        raise OutputError(f"{path}: a part passed 4 GiB (max_instance_bytes too large)")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as out:
            out.write(encode_header(ds, meta))
            out.write(_PIXEL_DATA_OB_UNDEFINED)
            out.write(_ITEM + struct.pack("<I", 4 * len(table)))
            out.write(struct.pack(f"<{len(table)}I", *table))
            for offset, length in zip(frames.offsets[start:stop], lengths, strict=True):
                out.write(_ITEM + struct.pack("<I", length))
                src.seek(offset)
                remaining = length
                while remaining > 0:
                    chunk = src.read(min(_COPY, remaining))
                    if not chunk:
                        raise OutputError(f"{path}: source shrank while being split")
                    out.write(chunk)
                    remaining -= len(chunk)
            out.write(_SEQ_DELIM + b"\0\0\0\0")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def digest_frames(path: Path) -> str:
    """SHA-256 over every frame's bytes in order (for tests and checks: parts joined must
    equal the source)."""
    frames = scan(path)
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for offset, length in zip(frames.offsets, frames.lengths, strict=True):
            fh.seek(offset)
            h.update(fh.read(length))
    return h.hexdigest()
