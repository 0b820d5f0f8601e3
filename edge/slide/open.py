"""Open any supported slide: sniff the bytes, pick the reader, turn library errors into ours."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import tifffile

from edge.errors import CorruptInput, EdgeError, InputError, UnsupportedInput
from edge.slide.source import SlideSource

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def sniff(path: Path) -> str:
    """ "tiff", "dicom" or "dicom-folder" from content, not from the file name."""
    if path.is_dir():
        return "dicom-folder"
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from exc
    if len(head) == 0:
        raise CorruptInput(path, "empty file")
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if head[128:132] == b"DICM":
        return "dicom"
    raise UnsupportedInput(
        path, "not a TIFF-based slide (SVS, NDPI, OME-TIFF, TIFF) or a DICOM file"
    )


def open_slide(path: Path | str) -> SlideSource:
    """Open a slide for one streaming pass. Raises InputError subclasses with the reason."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    kind = sniff(path)
    try:
        if kind == "tiff":
            return _open_tiff(path)
        from edge.slide.dicom import DicomSlide

        return DicomSlide.open(path)
    except EdgeError:
        raise
    except MemoryError as exc:
        raise CorruptInput(path, "header asks for more memory than a slide can need") from exc
    except Exception as exc:  # a parser library failing on damaged bytes
        raise CorruptInput(path, f"damaged file ({type(exc).__name__}: {exc})") from exc


class _TiffComplaints(logging.Filter):
    """What tifffile logs while parsing: the damaged tags and directories it skipped. Kept
    off the console (edge reports one line per slide) and turned into that line instead."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.errors.append(" ".join(record.getMessage().split()))
        return False


def _check_chain_end(path: Path, tif: tifffile.TiffFile) -> None:
    """The last image directory must end the chain (next offset 0). tifffile stops quietly
    at a pointer past the end of the file or into damaged bytes, which would drop the levels
    stored after it (NDPI keeps its directories behind the pixel data) instead of failing."""
    tiff, fh = tif.tiff, tif.filehandle
    last = tif.pages[-1]
    fh.seek(last.offset)
    head = fh.read(tiff.tagnosize)
    count = struct.unpack(tiff.tagnoformat, head)[0] if len(head) == tiff.tagnosize else 0
    fh.seek(last.offset + tiff.tagnosize + count * tiff.tagsize)
    raw = fh.read(tiff.offsetsize)
    if len(raw) < tiff.offsetsize:
        raise CorruptInput(
            path,
            f"truncated: image directory {len(tif.pages) - 1} is cut off at the end of the "
            f"file ({fh.size:,} bytes)",
        )
    following = struct.unpack(tiff.offsetformat, raw)[0]
    if following != 0:
        where = "past the end of the file" if following >= fh.size else "to damaged bytes"
        raise CorruptInput(
            path,
            f"truncated or damaged: after {len(tif.pages)} image directories the chain "
            f"points {where} (offset {following:,}, file size {fh.size:,}); expected it to "
            "end with 0",
        )


def _open_tiff(path: Path) -> SlideSource:
    logger = logging.getLogger("tifffile")
    complaints = _TiffComplaints()
    logger.addFilter(complaints)
    try:
        source = _open_tiff_quietly(path)
    finally:
        logger.removeFilter(complaints)
    if complaints.errors:  # a skipped tag or directory: metadata or levels silently missing
        source.close()
        raise CorruptInput(path, f"damaged TIFF structure: {complaints.errors[0][:200]}")
    return source


def _open_tiff_quietly(path: Path) -> SlideSource:
    try:
        tif = tifffile.TiffFile(path)
    except tifffile.TiffFileError as exc:
        raise CorruptInput(path, f"damaged TIFF structure: {exc}") from exc
    try:
        if len(tif.pages) == 0:
            raise CorruptInput(path, "TIFF holds no image (empty or cut-off directory)")
        _check_chain_end(path, tif)
        if tif.is_ndpi:
            from edge.slide.ndpi import NdpiSlide

            return NdpiSlide(path, tif)
        from edge.slide.tiff import TiffSlide

        return TiffSlide(path, tif)
    except BaseException:
        tif.close()
        raise
