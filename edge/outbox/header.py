"""What the outbox needs to know about a DICOM file, read from its header only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from edge.errors import InputError


@dataclass(frozen=True)
class Header:
    path: Path
    size: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    study_uid: str
    series_uid: str
    image_type: tuple[str, ...]
    pixels: int  # total pixel matrix (WSI) or rows x columns; 0 when none


def read_header(path: Path) -> Header:
    """Read a DICOM file's header (stop before pixels). Raises InputError with the reason."""
    try:
        size = path.stat().st_size
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, InvalidDicomError) as exc:
        raise InputError(path, f"cannot queue: not a readable DICOM file ({exc})") from exc
    meta = getattr(ds, "file_meta", None)
    values = {
        "SOPClassUID": ds.get("SOPClassUID")
        or (meta.get("MediaStorageSOPClassUID") if meta else None),
        "SOPInstanceUID": ds.get("SOPInstanceUID"),
        "TransferSyntaxUID": meta.get("TransferSyntaxUID") if meta else None,
        "StudyInstanceUID": ds.get("StudyInstanceUID"),
        "SeriesInstanceUID": ds.get("SeriesInstanceUID"),
    }
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise InputError(path, f"cannot queue: the header lacks {', '.join(missing)}")
    columns = ds.get("TotalPixelMatrixColumns") or ds.get("Columns") or 0
    rows = ds.get("TotalPixelMatrixRows") or ds.get("Rows") or 0
    image_type = ds.get("ImageType") or ()
    if isinstance(image_type, str):
        image_type = [image_type]
    return Header(
        path=path,
        size=size,
        sop_class_uid=str(values["SOPClassUID"]),
        sop_instance_uid=str(values["SOPInstanceUID"]),
        transfer_syntax_uid=str(values["TransferSyntaxUID"]),
        study_uid=str(values["StudyInstanceUID"]),
        series_uid=str(values["SeriesInstanceUID"]),
        image_type=tuple(str(v) for v in image_type),
        pixels=int(columns) * int(rows),
    )
