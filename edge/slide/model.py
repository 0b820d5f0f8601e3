"""Plain data describing a slide: levels, codecs, associated images, metadata."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime


class Codec(enum.Enum):
    """How one stored tile (frame) is encoded, as far as DICOM cares."""

    JPEG = "jpeg"  # baseline 8-bit JPEG, a complete interchange stream per tile
    JPEG2000 = "jpeg2000"  # raw J2K codestream, lossy or lossless
    HTJ2K = "htj2k"
    JPEGXL = "jpegxl"
    NONE = "none"  # tiles must be decoded and re-encoded (LZW, deflate, NDPI strips, ...)


class AssociatedKind(enum.Enum):
    LABEL = "LABEL"
    OVERVIEW = "OVERVIEW"
    THUMBNAIL = "THUMBNAIL"


@dataclass(frozen=True)
class Level:
    """One pyramid level as stored in the source.

    `photometric` is the DICOM PhotometricInterpretation of the frames exactly as they will be
    copied (after JPEG table merging); None when frames are re-encoded anyway.
    """

    index: int
    width: int
    height: int
    tile_width: int
    tile_height: int
    codec: Codec
    samples: int = 3
    photometric: str | None = None
    downsample: float = 1.0
    optical_paths: int = 1
    focal_planes: int = 1
    lossy: bool = True  # the stored frames are lossy-compressed
    stored_bytes: int = 0  # total bytes of the stored frames, 0 when unknown

    @property
    def tiles_across(self) -> int:
        return math.ceil(self.width / self.tile_width)

    @property
    def tiles_down(self) -> int:
        return math.ceil(self.height / self.tile_height)

    @property
    def tile_count(self) -> int:
        return self.tiles_across * self.tiles_down

    @property
    def frame_count(self) -> int:
        return self.tile_count * self.optical_paths * self.focal_planes


@dataclass(frozen=True)
class AssociatedImage:
    kind: AssociatedKind
    width: int
    height: int
    samples: int = 3


@dataclass(frozen=True)
class OpticalPath:
    """One optical path (channel) as the source describes it."""

    identifier: str
    description: str = ""
    illumination: str = "brightfield"  # or "fluorescence"
    wavelength_nm: float | None = None
    icc_profile: bytes | None = None


@dataclass(frozen=True)
class SlideMetadata:
    """What the source tells about the slide. None or empty means the file does not say."""

    format: str  # "aperio-svs", "generic-tiff", "ome-tiff", "hamamatsu-ndpi", "dicom"
    vendor: str = ""
    model: str = ""
    software: str = ""
    serial_number: str = ""
    mpp: float | None = None  # micrometres per pixel at level 0 (x == y assumed)
    magnification: float | None = None
    barcode: str = ""
    scan_datetime: datetime | None = None
    icc_profile: bytes | None = None
    optical_paths: tuple[OpticalPath, ...] = ()
    # Attributes carried over verbatim from a DICOM input (patient, study, specimen ...).
    dicom_attributes: dict[str, object] = field(default_factory=dict)
    description: str = ""
