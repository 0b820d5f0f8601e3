"""De-identified copies of DICOM files without loading their pixel data.

The header is parsed up to the pixel data element, de-identified and written anew; the pixel
data element (its tag, length, offset table and every fragment) is then copied byte for byte
from the original. Multi-GB levels therefore cost one sequential copy, and the compressed
frames are exactly the scanner's. Output goes to a temporary name and is renamed into place.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import dcmwrite, write_file_meta_info
from pydicom.uid import UID

from edge.deid.blank import is_label, write_blank_label
from edge.deid.keyed import MIN_SECRET_BYTES, pseudonym
from edge.deid.policy import DeidError, Policy
from edge.deid.transform import deidentify_dataset
from edge.dicom.metadata import IMPLEMENTATION_NAME, IMPLEMENTATION_UID
from edge.errors import CorruptInput, OutputError, UnsupportedInput
from edge.fileio import partial_dir, replace_dir

LOGGER = logging.getLogger(__name__)
COPY_CHUNK = 8 << 20
_PIXEL_TAGS = {b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00"}
_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_DELIM = b"\xfe\xff\xdd\xe0"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_UNSUPPORTED_SYNTAXES = {
    "1.2.840.10008.1.2.2": "explicit VR big endian (retired)",
    "1.2.840.10008.1.2.1.99": "deflated explicit VR little endian",
}
# Kinds of image that show the slide label: dropped, since the pixels are not de-identified.
DROPPED_KINDS = ("LABEL", "OVERVIEW")
_OUR_NAMES = re.compile(r"(level-\d+|thumbnail|label)\.dcm")


def check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise DeidError(
            f"the site secret has {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed "
            "(e.g. head -c 32 /dev/urandom > /etc/edge/site-secret)"
        )


def drop_reason(ds: Dataset) -> str:
    """Why this instance is not sent at all ("" when it is): images that show the label."""
    image_type = [str(v).upper() for v in ds.get("ImageType", None) or []]
    kind = image_type[2] if len(image_type) > 2 else ""
    if kind in DROPPED_KINDS:
        return f"{kind.lower()} image"
    if str(ds.get("SpecimenLabelInImage", "")).upper() == "YES":
        return "the specimen label is in the image"
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "burned-in annotation"
    return ""


def read_header(src: Path, fh: BinaryIO) -> tuple[Dataset, int]:
    """The dataset up to (not including) the pixel data, and the pixel data's byte offset
    (the file size when there is none). InputError naming `src` for what is not DICOM."""
    fh.seek(128)
    if fh.read(4) != b"DICM":
        raise UnsupportedInput(src, "not a DICOM Part 10 file (no DICM marker at byte 128)")
    fh.seek(0)
    try:
        ds = dcmread(fh, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, struct.error) as exc:
        raise CorruptInput(src, f"the DICOM header cannot be read: {exc}") from exc
    offset = fh.tell()
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax in _UNSUPPORTED_SYNTAXES:
        raise UnsupportedInput(src, f"transfer syntax {_UNSUPPORTED_SYNTAXES[syntax]}")
    if not syntax:
        raise CorruptInput(src, "the file meta information has no Transfer Syntax UID")
    return ds, offset


def _needs_pixels(ds: Dataset) -> bool:
    """pydicom stops quietly at the end of a short file; an image (or segmentation) without
    pixel data is a file cut short, not an instance to send."""
    name = UID(str(ds.get("SOPClassUID", ""))).name
    return "Rows" in ds or "Image Storage" in name or "Segmentation" in name


def _cut_short(ds: Dataset) -> bool:
    """The last element read holds fewer bytes than its header announced."""
    if not len(ds):
        return True
    last = ds.get_item(max(ds.keys()))
    declared = getattr(last, "length", None)
    value = getattr(last, "value", None)
    return (
        isinstance(declared, int)
        and declared != 0xFFFFFFFF
        and isinstance(value, bytes)
        and len(value) < declared
    )


def pixel_end(src: Path, fh: BinaryIO, offset: int, size: int, implicit: bool) -> int:
    """Where the pixel data element ends; CorruptInput when the file stops short of it.

    Only element and item headers are read (a seek per frame), never the frames."""
    if offset >= size:
        return size
    fh.seek(offset)
    head = fh.read(12)
    if len(head) < 8 or head[:4] not in _PIXEL_TAGS:
        raise CorruptInput(src, f"expected the pixel data element at byte {offset}")
    if implicit:
        length, start = int(struct.unpack("<I", head[4:8])[0]), offset + 8
    else:
        length, start = int(struct.unpack("<I", head[8:12])[0]), offset + 12
    if length != 0xFFFFFFFF:
        end = start + length
        if end > size:
            raise CorruptInput(src, f"truncated: pixel data needs {end} bytes, the file has {size}")
        return end
    position = start
    while True:  # encapsulated: items until the sequence delimiter
        fh.seek(position)
        item = fh.read(8)
        if len(item) < 8:
            raise CorruptInput(
                src, f"truncated: the pixel data fragments stop at byte {position} of {size}"
            )
        tag, item_length = item[:4], int(struct.unpack("<I", item[4:])[0])
        if tag == _SEQ_DELIM:
            return position + 8
        if tag != _ITEM or position + 8 + item_length > size:
            raise CorruptInput(
                src, f"truncated or damaged pixel data: bad fragment at byte {position}"
            )
        position += 8 + item_length


def encode_header(ds: Dataset, meta: FileMetaDataset, implicit: bool) -> bytes:
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(DicomFileLike(out), meta, enforce_standard=True)
    # The dataset as read carries its old preamble and file meta; dcmwrite would write both.
    ds.preamble = None
    ds.file_meta = FileMetaDataset()
    dcmwrite(out, ds, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    return out.getvalue()


def _file_meta(ds: Dataset, syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(ds.SOPClassUID))
    meta.MediaStorageSOPInstanceUID = UID(str(ds.SOPInstanceUID))
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_NAME
    return meta


def _copy_range(fh: BinaryIO, out: BinaryIO, start: int, end: int) -> None:
    fh.seek(start)
    left = end - start
    while left > 0:
        chunk = fh.read(min(COPY_CHUNK, left))
        if not chunk:
            raise OSError("the source file shrank while it was copied")
        out.write(chunk)
        left -= len(chunk)


def output_name(src: Path, ds: Dataset) -> str:
    """The de-identified file's name: ours (level-00.dcm) kept, others (which may carry an
    accession number or a barcode) replaced by the new SOP Instance UID."""
    return src.name if _OUR_NAMES.fullmatch(src.name) else f"{ds.SOPInstanceUID}.dcm"


def deidentify_file(src: Path, dst: Path, policy: Policy, secret: bytes) -> Path | None:
    """Write a de-identified copy of the DICOM file `src` at `dst` (atomically) and return
    `dst`; None, writing nothing, when the instance is dropped (label and overview images).

    Raises UnsupportedInput/CorruptInput naming `src`, OutputError naming `dst`, DeidError."""
    check_secret(secret)
    try:
        fh = src.open("rb")
    except OSError as exc:
        raise UnsupportedInput(src, f"cannot open: {exc.strerror or exc}") from exc
    with fh:
        size = os.fstat(fh.fileno()).st_size
        ds, offset = read_header(src, fh)
        blank = policy.has("keep-label-blanked") and is_label(ds)
        if drop_reason(ds) and not blank:
            return None
        syntax = str(ds.file_meta.TransferSyntaxUID)
        implicit = syntax == _IMPLICIT_LE
        end = pixel_end(src, fh, offset, size, implicit)
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            raise CorruptInput(src, "truncated or damaged: no SOP Class or SOP Instance UID")
        if end == offset == size and (_needs_pixels(ds) or _cut_short(ds)):
            raise CorruptInput(src, f"truncated: the file ends after {size} bytes of header")
        try:
            deidentify_dataset(ds, policy, secret)
            if blank:
                write_blank_label(ds, dst)
                return dst
            header = encode_header(ds, _file_meta(ds, syntax), implicit)
        except (ValueError, TypeError, OverflowError, struct.error) as exc:
            raise CorruptInput(src, f"the de-identified header cannot be written: {exc}") from exc
        _write(dst, header, fh, offset, end)
    return dst


def _write(dst: Path, header: bytes, fh: BinaryIO, start: int, end: int) -> None:
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"{dst}: cannot write ({exc.strerror or exc})") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(header)
            _copy_range(fh, out, start, end)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{dst}: cannot write ({exc.strerror or exc})") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def slide_files(src_dir: Path) -> list[Path]:
    """The files of a slide folder (hidden files, such as partial writes, left out)."""
    if not src_dir.is_dir():
        raise UnsupportedInput(src_dir, "not a folder")
    return sorted(p for p in src_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def deidentify_slide(src_dir: Path, dst_dir: Path, policy: Policy, secret: bytes) -> list[Path]:
    """De-identify every instance of the slide folder `src_dir` into the folder `dst_dir`,
    which appears complete or not at all (written beside it, then renamed; a previous
    `dst_dir` is replaced). Returns the files written; dropped instances are not among them.
    A file that is not DICOM stops the slide with an InputError naming it."""
    check_secret(secret)
    files = slide_files(src_dir)
    if not files:
        raise UnsupportedInput(src_dir, "the folder holds no files")
    temp = partial_dir(dst_dir)
    written: list[Path] = []
    try:
        for src in files:
            made = _one(src, temp, policy, secret)
            if made is not None:
                written.append(made)
        replace_dir(temp, dst_dir)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    LOGGER.info("de-identified %d of %d instances", len(written), len(files))
    return [dst_dir / p.name for p in written]


def _one(src: Path, folder: Path, policy: Policy, secret: bytes) -> Path | None:
    # Written under a provisional name first: the final one needs the new SOP Instance UID.
    provisional = folder / f".{pseudonym(secret, 'file', src.name, 16)}.dcm"
    made = deidentify_file(src, provisional, policy, secret)
    if made is None:
        return None
    with made.open("rb") as fh:
        ds = dcmread(fh, stop_before_pixels=True)
    final = folder / output_name(src, ds)
    if final.exists():
        raise CorruptInput(
            src, f"another file of the slide has the same SOP Instance UID ({final.name})"
        )
    made.rename(final)
    return final
