"""Open any supported slide: sniff the bytes, pick the reader, turn library errors into ours."""

from __future__ import annotations

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


def _open_tiff(path: Path) -> SlideSource:
    try:
        tif = tifffile.TiffFile(path)
    except tifffile.TiffFileError as exc:
        raise CorruptInput(path, f"damaged TIFF structure: {exc}") from exc
    try:
        if len(tif.pages) == 0:
            raise CorruptInput(path, "TIFF holds no image (empty or cut-off directory)")
        if tif.is_ndpi:
            from edge.slide.ndpi import NdpiSlide

            return NdpiSlide(path, tif)
        from edge.slide.tiff import TiffSlide

        return TiffSlide(path, tif)
    except BaseException:
        tif.close()
        raise
