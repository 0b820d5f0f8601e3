"""DICOM WSI input: re-package another scanner's or converter's series.

Frames are copied as they are (their JPEG markers, not the header, decide the photometric
label); the header is rebuilt from scratch so that files lacking required attributes come out
valid. Patient, study, specimen and optical path attributes are carried over when valid.
"""

from __future__ import annotations

import copy
import io
import re
import struct
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence

from edge.errors import CorruptInput, InputError, UnsupportedInput
from edge.slide import j2k, jpeg
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
from edge.slide.tiff import as_pixels

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
_CODECS = {
    "1.2.840.10008.1.2.4.50": (Codec.JPEG, True),
    "1.2.840.10008.1.2.4.90": (Codec.JPEG2000, False),
    "1.2.840.10008.1.2.4.91": (Codec.JPEG2000, True),
    "1.2.840.10008.1.2.4.201": (Codec.HTJ2K, False),
    "1.2.840.10008.1.2.4.202": (Codec.HTJ2K, False),
    "1.2.840.10008.1.2.4.203": (Codec.HTJ2K, True),
}
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# Attributes carried over from the input when their values are valid.
_CARRIED_TEXT = {
    "PatientName": 64,
    "PatientID": 64,
    "PatientBirthDate": 8,
    "PatientSex": 16,
    "AccessionNumber": 16,
    "StudyID": 16,
    "StudyDescription": 64,
    "ReferringPhysicianName": 64,
    "ContainerIdentifier": 64,
    "StudyDate": 8,
    "StudyTime": 14,
}
_CARRIED_UIDS = ("StudyInstanceUID", "FrameOfReferenceUID")


def _valid_uid(value: object) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and bool(_UID.match(text))


class _Instance:
    """One DICOM file: header, and the byte ranges of its frames."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with path.open("rb") as fh:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
                pixel_header = fh.tell(), fh.read(12)
        except (InvalidDicomError, EOFError, ValueError, struct.error, OSError) as exc:
            raise CorruptInput(path, f"not a readable DICOM file: {exc}") from exc
        self.ds = ds
        sop = str(ds.get("SOPClassUID", ""))
        if sop != WSI_SOP_CLASS:
            name = getattr(ds.get("SOPClassUID"), "name", sop) or "no SOP class"
            raise UnsupportedInput(
                path,
                f"DICOM {name} is not a VL Whole Slide Microscopy "
                "Image; only WSI series can be converted",
            )
        self.syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        image_type = [str(v).upper() for v in ds.get("ImageType", [])]
        self.flavor = image_type[2] if len(image_type) > 2 else "VOLUME"
        self.rows, self.cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        self.width = int(ds.get("TotalPixelMatrixColumns", self.cols) or self.cols)
        self.height = int(ds.get("TotalPixelMatrixRows", self.rows) or self.rows)
        self.frames = int(ds.get("NumberOfFrames", 1) or 1)
        self.samples = int(ds.get("SamplesPerPixel", 1))
        self.paths = int(ds.get("NumberOfOpticalPaths", 1) or 1)
        self.planes = int(ds.get("TotalPixelMatrixFocalPlanes", 1) or 1)
        organization = str(ds.get("DimensionOrganizationType", "TILED_FULL") or "TILED_FULL")
        if organization != "TILED_FULL" and self.frames > 1:
            raise UnsupportedInput(
                path,
                f"DimensionOrganizationType {organization}: only "
                "TILED_FULL series are supported for now",
            )
        if int(ds.get("BitsAllocated", 8)) != 8:
            raise UnsupportedInput(path, f"{ds.get('BitsAllocated')}-bit samples; expected 8")
        if self.samples not in (1, 3):
            raise UnsupportedInput(
                path, f"SamplesPerPixel is {self.samples}; expected 1 (grey) or 3 (colour)"
            )
        self._value_tell, self._length = self._pixel_data_value(*pixel_header)

    def _pixel_data_value(self, at: int, head: bytes) -> tuple[int, int]:
        """File offset and length of the Pixel Data value, read without loading it."""
        if head[:4] != b"\xe0\x7f\x10\x00":
            raise CorruptInput(self.path, "no pixel data (7FE0,0010) after the header")
        if self.syntax == "1.2.840.10008.1.2":  # implicit VR: tag, 4-byte length
            return at + 8, struct.unpack_from("<I", head, 4)[0]
        if head[4:6] not in (b"OB", b"OW"):
            raise CorruptInput(self.path, f"pixel data has VR {head[4:6]!r}; expected OB/OW")
        return at + 12, struct.unpack_from("<I", head, 8)[0]

    def frame_ranges(self, fh: BinaryIO) -> list[tuple[int, int]]:
        """(offset, length) of each frame; encapsulated frames may span several fragments."""
        if self.syntax in _NATIVE:
            size = self.rows * self.cols * self.samples
            if self._length < size * self.frames:
                raise CorruptInput(
                    self.path,
                    f"pixel data holds {self._length:,} bytes; "
                    f"{self.frames} frames need {size * self.frames:,}",
                )
            return [(self._value_tell + i * size, size) for i in range(self.frames)]
        fh.seek(self._value_tell)
        fragments: list[tuple[int, int]] = []
        first = True
        while True:
            head = fh.read(8)
            if len(head) < 8:
                raise CorruptInput(self.path, "truncated: pixel data ends inside a fragment")
            tag, length = struct.unpack("<II", head)
            if tag == 0xE0DDFFFE:
                break
            if tag != 0xE000FFFE:
                raise CorruptInput(self.path, f"bad item tag 0x{tag:08x} in pixel data")
            if first:
                first = False
                fh.seek(length, 1)  # Basic Offset Table: frames are re-found below
                continue
            fragments.append((fh.tell(), length))
            fh.seek(length, 1)
        if len(fragments) == self.frames:
            return fragments
        return self._group_fragments(fh, fragments)

    def _group_fragments(
        self, fh: BinaryIO, fragments: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """Frames split over fragments: a frame starts at each fragment opening with SOI/SOC."""
        starts = []
        for i, (offset, _) in enumerate(fragments):
            fh.seek(offset)
            if fh.read(2) in (jpeg.SOI, j2k.SOC):
                starts.append(i)
        if len(starts) != self.frames:
            raise CorruptInput(
                self.path,
                f"{len(fragments)} fragments hold {len(starts)} "
                f"frames; NumberOfFrames says {self.frames}",
            )
        ranges = []
        for n, start in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else len(fragments)
            ranges.append((-start - 1, end))  # marker: fragments start..end to be joined
        self._fragments = fragments
        return ranges

    def read_frame(self, fh: BinaryIO, where: tuple[int, int]) -> bytes:
        offset, length = where
        if offset < 0:
            first, end = -offset - 1, length
            parts = []
            for off, n in self._fragments[first:end]:
                fh.seek(off)
                parts.append(fh.read(n))
            return b"".join(parts)
        fh.seek(offset)
        data = fh.read(length)
        if len(data) != length:
            raise CorruptInput(self.path, "truncated: a frame runs past the end of the file")
        return data


class DicomSlide:
    """A SlideSource over one DICOM WSI series (a folder of instances, or one file)."""

    def __init__(self, path: Path, instances: list[_Instance]) -> None:
        self.path = path
        volumes = sorted(
            (i for i in instances if i.flavor == "VOLUME"), key=lambda i: -i.width * i.height
        )
        if not volumes:
            raise UnsupportedInput(path, "the series has no VOLUME (pyramid level) instance")
        seen: set[tuple[int, int]] = set()
        self._volumes: list[_Instance] = []
        for inst in volumes:  # one instance per level; duplicates (concatenations) unsupported
            if (inst.width, inst.height) not in seen:
                seen.add((inst.width, inst.height))
                self._volumes.append(inst)
        self._handles = {inst.path: inst.path.open("rb") for inst in self._volumes}
        self._ranges: dict[int, list[tuple[int, int]]] = {}
        levels = []
        for index, inst in enumerate(self._volumes):
            levels.append(self._level(index, inst))
        self.levels = tuple(levels)
        self._assoc: dict[AssociatedKind, _Instance] = {}
        for inst in instances:
            kind = {
                "LABEL": AssociatedKind.LABEL,
                "OVERVIEW": AssociatedKind.OVERVIEW,
                "REGIONLOCALIZER": AssociatedKind.OVERVIEW,
                "THUMBNAIL": AssociatedKind.THUMBNAIL,
            }.get(inst.flavor)
            if kind is not None and kind not in self._assoc and inst.frames == 1:
                check_associated(inst.path, kind.value.lower(), inst.cols, inst.rows)
                self._assoc[kind] = inst
        self.associated = tuple(
            AssociatedImage(k, i.cols, i.rows, min(i.samples, 3)) for k, i in self._assoc.items()
        )
        self.metadata = _metadata(self._volumes[0])

    @classmethod
    def open(cls, path: Path) -> DicomSlide:
        if path.is_dir():
            # Scanners and PACS exports leave DICOMDIRs, checksums and notes beside the series.
            files = sorted(p for p in path.iterdir() if p.is_file() and is_dicom_part10(p))
        else:
            files = [path]
        instances: list[_Instance] = []
        problems = []
        for file in files:
            try:
                instances.append(_Instance(file))
            except UnsupportedInput as exc:
                problems.append(exc)
        if not instances:
            if problems:
                raise problems[0]
            raise UnsupportedInput(path, "folder holds no DICOM WSI instance")
        series = {str(i.ds.get("SeriesInstanceUID", "")) for i in instances}
        if len(series) > 1:
            raise UnsupportedInput(
                path, f"{len(series)} series in one folder; give one series per slide"
            )
        return cls(path, instances)

    def _level(self, index: int, inst: _Instance) -> Level:
        what = f"{inst.path.name}"
        check_level_geometry(
            inst.path, what, inst.width, inst.height, max(inst.cols, 16), max(inst.rows, 16)
        )
        across, down = -(-inst.width // inst.cols), -(-inst.height // inst.rows)
        expected = across * down * inst.paths * inst.planes
        if inst.frames != expected:
            raise CorruptInput(
                inst.path,
                f"NumberOfFrames is {inst.frames}; a TILED_FULL "
                f"{inst.width}x{inst.height} matrix of "
                f"{inst.cols}x{inst.rows} tiles needs {expected}",
            )
        fh = self._handles[inst.path]
        ranges = inst.frame_ranges(fh)
        self._ranges[index] = ranges
        codec, lossy = _CODECS.get(inst.syntax, (None, True))
        photometric: str | None = None
        if codec is None and inst.syntax not in _NATIVE:
            raise UnsupportedInput(
                inst.path,
                f"transfer syntax {inst.syntax} is not supported "
                "(JPEG, JPEG 2000, HTJ2K or uncompressed)",
            )
        if codec is not None:
            sample = inst.read_frame(fh, ranges[0])
            try:
                if codec is Codec.JPEG:
                    info = jpeg.inspect(sample)
                    if len(info.components) != inst.samples:
                        raise jpeg.JpegFormatError(
                            f"{len(info.components)} colour components; SamplesPerPixel is "
                            f"{inst.samples}"
                        )
                    photometric = jpeg.photometric(
                        info, str(inst.ds.get("PhotometricInterpretation", "")) == "RGB"
                    )
                    if not info.is_baseline:
                        codec = None
                else:
                    info2 = j2k.inspect(sample)
                    if info2.components != inst.samples:
                        raise j2k.J2kFormatError(
                            f"{info2.components} colour components; SamplesPerPixel is "
                            f"{inst.samples}"
                        )
                    photometric = info2.photometric()
            except (jpeg.JpegFormatError, j2k.J2kFormatError) as exc:
                raise CorruptInput(inst.path, f"frame 1: {exc}") from exc
        lossy = lossy or str(inst.ds.get("LossyImageCompression", "00")) == "01"
        return Level(
            index=index,
            width=inst.width,
            height=inst.height,
            tile_width=inst.cols,
            tile_height=inst.rows,
            codec=codec or Codec.NONE,
            samples=inst.samples,
            photometric=photometric,
            downsample=self._volumes[0].width / inst.width,
            optical_paths=inst.paths,
            focal_planes=inst.planes,
            lossy=lossy,
            stored_bytes=sum(n for _, n in ranges if _ >= 0),
        )

    def frames(self, level: Level) -> Iterator[Frame]:
        inst = self._volumes[level.index]
        fh = self._handles[inst.path]
        for index, where in enumerate(self._ranges[level.index]):
            data = inst.read_frame(fh, where)
            if level.codec is Codec.NONE:
                yield Frame(level, index, None, self._decode_bytes(inst, data, index))
            else:
                yield Frame(level, index, data)

    def _decode_bytes(self, inst: _Instance, data: bytes, index: int) -> Pixels:
        try:
            if inst.syntax in _NATIVE:
                array = np.frombuffer(data, np.uint8).reshape(inst.rows, inst.cols, inst.samples)
                if str(inst.ds.get("PhotometricInterpretation")) == "YBR_FULL":
                    raise UnsupportedInput(inst.path, "uncompressed YBR_FULL frames")
                pixels = as_pixels(array)
            elif data[:2] == jpeg.SOI:
                pixels = as_pixels(imagecodecs.jpeg8_decode(data))
            else:
                pixels = as_pixels(imagecodecs.jpeg2k_decode(data))
        except InputError as exc:
            if exc.path:
                raise
            raise type(exc)(inst.path, f"frame {index + 1}: {exc.problem}") from exc
        except Exception as exc:
            raise CorruptInput(inst.path, f"frame {index + 1} does not decode: {exc}") from exc
        check_samples(
            inst.path, f"frame {index + 1}", pixels.shape[2], inst.samples, "SamplesPerPixel"
        )
        return pixels

    def decode(self, frame: Frame) -> Pixels:
        if frame.pixels is not None:
            return frame.pixels
        assert frame.data is not None
        return self._decode_bytes(self._volumes[frame.level.index], frame.data, frame.index)

    def associated_pixels(self, kind: AssociatedKind) -> Pixels:
        inst = self._assoc[kind]
        with inst.path.open("rb") as fh:
            ranges = inst.frame_ranges(fh)
            data = inst.read_frame(fh, ranges[0])
        return self._decode_bytes(inst, data, 0)

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()


def is_dicom_part10(path: Path) -> bool:
    """True when the file carries the DICOM Part 10 preamble marker ("DICM" at byte 128)."""
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _metadata(inst: _Instance) -> SlideMetadata:
    ds = inst.ds
    carried: dict[str, object] = {}
    for keyword, limit in _CARRIED_TEXT.items():
        value = str(ds.get(keyword, "") or "").strip()
        if value and value != "?" and len(value) <= limit:
            carried[keyword] = value
    for keyword in _CARRIED_UIDS:
        if _valid_uid(ds.get(keyword)):
            carried[keyword] = str(ds.get(keyword))
    paths = ds.get("OpticalPathSequence")
    if (
        paths
        and len(paths) == inst.paths
        and all("OpticalPathIdentifier" in p for p in paths)
        and _encodable(paths)
    ):
        carried["OpticalPathSequence"] = paths
    mpp = None
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        mpp = float(spacing[1]) * 1000 if float(spacing[1]) > 0 else None
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        mpp = None
    icc = None
    if paths and "ICCProfile" in paths[0]:
        icc = bytes(paths[0].ICCProfile)
    acquired = None
    raw = str(ds.get("AcquisitionDateTime", "") or "")[:14]
    if len(raw) >= 8:
        try:
            acquired = datetime.strptime(raw.ljust(14, "0"), "%Y%m%d%H%M%S")
        except ValueError:
            acquired = None
    software = ds.get("SoftwareVersions", "")
    if not isinstance(software, str):
        software = " ".join(str(v) for v in software)
    return SlideMetadata(
        format="dicom",
        vendor=_text(ds, "Manufacturer"),
        model=_text(ds, "ManufacturerModelName"),
        software=software[:64],
        serial_number=_text(ds, "DeviceSerialNumber"),
        mpp=mpp,
        barcode=_text(ds, "BarcodeValue"),
        scan_datetime=acquired,
        icc_profile=icc,
        optical_paths=(OpticalPath("1", icc_profile=icc),),
        dicom_attributes=carried,
    )


def _encodable(items: Any) -> bool:
    """False for items damaged beyond writing back (bytes where a VR or text belongs)."""
    probe = Dataset()
    probe.OpticalPathSequence = Sequence(copy.deepcopy(item) for item in items)
    try:
        for element in probe.iterall():  # values are converted lazily: force it here
            _ = element.value
        pydicom.dcmwrite(io.BytesIO(), probe, implicit_vr=False, little_endian=True)
    except Exception:  # any damage pydicom trips on (unknown VR, bad lengths, ...)
        return False
    return True


def _text(ds: Dataset, keyword: str) -> str:
    value: Any = ds.get(keyword, "")
    text = str(value or "").strip()
    return "" if text == "?" else text[:64]
