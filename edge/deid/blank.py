"""A label image kept with its pixels blanked (option keep-label-blanked).

Some viewers and archives expect a slide to have a label image; this keeps the instance (its
header de-identified like any other) while every frame becomes plain white, so nothing of
the printed or handwritten label survives. The frames are small and re-encoded as JPEG.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from edge.dicom.encode import Encoder
from edge.dicom.metadata import IMPLEMENTATION_NAME, IMPLEMENTATION_UID, TRANSFER_SYNTAX
from edge.dicom.writer import FrameWriter
from edge.errors import OutputError

WHITE = 255
_OFFSET_TABLES = (0x7FE00001, 0x7FE00002)  # extended offset table and lengths: of the old frames


def is_label(ds: Dataset) -> bool:
    image_type = [str(v).upper() for v in ds.get("ImageType", None) or []]
    return len(image_type) > 2 and image_type[2] == "LABEL"


def write_blank_label(ds: Dataset, dst: Path) -> None:
    """Write the (already de-identified) label instance `ds` to `dst` with white frames."""
    encoder = Encoder("jpeg", 95)
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = 3 if int(ds.get("SamplesPerPixel", 1) or 1) == 3 else 1
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = encoder.encode(np.full((rows, columns, samples), WHITE, np.uint8))
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = encoder.photometric(samples)
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    # SpecimenLabelInImage stays YES: the IOD ties it to the LABEL image type, not to content.
    ds.BurnedInAnnotation = "NO"
    for tag in (*_OFFSET_TABLES, 0x00282112):  # the ratio is recomputed by FrameWriter
        if tag in ds:
            del ds[tag]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(ds.SOPClassUID))
    meta.MediaStorageSOPInstanceUID = UID(str(ds.SOPInstanceUID))
    meta.TransferSyntaxUID = TRANSFER_SYNTAX["jpeg"]
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_NAME
    ds.preamble = None  # the dataset as read carries its old preamble and file meta
    ds.file_meta = FileMetaDataset()
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"{dst}: cannot write ({exc.strerror or exc})") from exc
    try:
        with FrameWriter(Path(tmp), ds, meta, frames) as writer:
            for _ in range(frames):
                writer.add(frame)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
