"""DICOM VL Whole Slide Microscopy Image headers, built as pure functions of plain data.

Every Type 1 and Type 2 attribute of the IOD is written (Type 2 empty when unknown), because
PACS and viewers choke on what `dciodvfy` flags; the pixel data is appended by the writer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from edge import __version__
from edge.slide.model import OpticalPath, SlideMetadata

WSI_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.77.1.6")
IMPLEMENTATION_UID = UID("2.25.160933155447290316046447389394125516311")
IMPLEMENTATION_NAME = f"EDGE_{__version__}"[:16]

TRANSFER_SYNTAX = {
    "jpeg": UID("1.2.840.10008.1.2.4.50"),
    "jpeg2000": UID("1.2.840.10008.1.2.4.91"),
    "jpeg2000-lossless": UID("1.2.840.10008.1.2.4.90"),
    "htj2k": UID("1.2.840.10008.1.2.4.203"),
    "htj2k-lossless": UID("1.2.840.10008.1.2.4.201"),
    "jpegxl": UID("1.2.840.10008.1.2.4.112"),
}
LOSSY_METHOD = {
    "jpeg": "ISO_10918_1",
    "jpeg2000": "ISO_15444_1",
    "htj2k": "ISO_15444_15",
    "jpegxl": "ISO_18181_1",
}

# Patient/study attributes a sidecar or filename pattern may set (everything else is ours).
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "SeriesDescription",
    "ContainerIdentifier",
)


def srgb_profile() -> bytes:
    return resources.files("edge.dicom").joinpath("sRGB.icc").read_bytes()


@dataclass(frozen=True)
class Identity:
    """UIDs and identifiers fixed once per conversion job."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    specimen_uid: str
    dimension_organization_uid: str
    container_id: str
    series_number: int = 1
    patient: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageSpec:
    """One instance: a pyramid level or an associated image."""

    sop_instance_uid: str
    instance_number: int
    image_type: tuple[str, str, str, str]  # e.g. ORIGINAL\PRIMARY\VOLUME\NONE
    width: int  # total pixel matrix columns
    height: int
    tile_width: int
    tile_height: int
    frames: int
    samples: int
    photometric: str
    codec: str  # key of TRANSFER_SYNTAX
    lossy: bool
    pixel_spacing_mm: float | None  # None: unknown physical size
    base_width: int  # level 0 size, for the imaged volume
    base_height: int
    base_pixel_spacing_mm: float | None
    optical_paths: int = 1
    focal_planes: int = 1


_UNSAFE_TEXT = re.compile(r"[\x00-\x1f\x7f\\]")
_DA = re.compile(r"\d{8}")
_TM = re.compile(r"\d{2,6}(\.\d{1,6})?")


def clean(value: object, limit: int) -> str:
    """Text safe for a DICOM string VR: no control characters or backslashes (the value
    delimiter), at most `limit` characters. Scanner headers and sidecars carry both."""
    return _UNSAFE_TEXT.sub(" ", str(value)).strip()[:limit].strip()


def _date(value: str) -> str:
    return value if _DA.fullmatch(value) else ""


def _time(value: str) -> str:
    return value if _TM.fullmatch(value) else ""


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _da(dt: datetime | None) -> str:
    return dt.strftime("%Y%m%d") if dt else ""


def _tm(dt: datetime | None) -> str:
    return dt.strftime("%H%M%S") if dt else ""


def file_meta(spec: ImageSpec) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = WSI_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = UID(spec.sop_instance_uid)
    meta.TransferSyntaxUID = TRANSFER_SYNTAX[spec.codec]
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_NAME
    return meta


def build_dataset(
    spec: ImageSpec, slide: SlideMetadata, ident: Identity, acquired: datetime
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = WSI_SOP_CLASS
    ds.SOPInstanceUID = spec.sop_instance_uid
    ds.ImageType = list(spec.image_type)
    ds.Modality = "SM"
    _patient_study(ds, ident, acquired)
    _series_equipment(ds, slide, ident)
    _image(ds, spec, acquired)
    _functional_groups(ds, spec, ident, slide)
    _specimen(ds, ident, slide)
    _optical_paths(ds, spec, slide)
    if spec.image_type[2] == "LABEL":
        ds.BarcodeValue = clean(slide.barcode, 64)
        ds.LabelText = ""
    return ds


def _patient_study(ds: Dataset, ident: Identity, acquired: datetime | None) -> None:
    p = {key: clean(value, 64) for key, value in ident.patient.items()}
    ds.PatientName = p.get("PatientName", "")
    ds.PatientID = p.get("PatientID", "")
    ds.PatientBirthDate = _date(p.get("PatientBirthDate", ""))
    sex = p.get("PatientSex", "").upper()
    ds.PatientSex = sex if sex in ("M", "F", "O") else ""
    if p.get("IssuerOfPatientID"):
        ds.IssuerOfPatientID = p["IssuerOfPatientID"]
    ds.StudyInstanceUID = ident.study_uid
    ds.StudyDate = _date(p.get("StudyDate", "")) or _da(acquired)
    ds.StudyTime = _time(p.get("StudyTime", "")) or _tm(acquired)
    ds.ReferringPhysicianName = p.get("ReferringPhysicianName", "")
    ds.StudyID = p.get("StudyID", "")[:16]
    ds.AccessionNumber = p.get("AccessionNumber", "")[:16]
    if p.get("StudyDescription"):
        ds.StudyDescription = p["StudyDescription"]


def _series_equipment(ds: Dataset, slide: SlideMetadata, ident: Identity) -> None:
    ds.SeriesInstanceUID = ident.series_uid
    ds.SeriesNumber = ident.series_number
    ds.SeriesDescription = clean(ident.patient.get("SeriesDescription", ""), 64) or (
        "Whole slide image"
    )
    ds.FrameOfReferenceUID = ident.frame_of_reference_uid
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.Manufacturer = clean(slide.vendor, 64) or "Unknown"
    ds.ManufacturerModelName = clean(slide.model, 64) or "Unknown"
    ds.DeviceSerialNumber = clean(slide.serial_number, 64) or "Unknown"
    ds.SoftwareVersions = [v for v in (clean(slide.software, 64), f"edge {__version__}") if v]
    contributor = Dataset()
    contributor.Manufacturer = "edge appliance"
    contributor.ContributionDescription = f"Converted to DICOM WSI from {slide.format}"
    contributor.SoftwareVersions = __version__
    contributor.PurposeOfReferenceCodeSequence = Sequence(
        [_code("109103", "DCM", "Modifying Equipment")]
    )
    ds.ContributingEquipmentSequence = Sequence([contributor])


def _image(ds: Dataset, spec: ImageSpec, acquired: datetime | None) -> None:
    ds.InstanceNumber = spec.instance_number
    ds.ContentDate = _da(acquired)
    ds.ContentTime = _tm(acquired)
    ds.AcquisitionDateTime = acquired.strftime("%Y%m%d%H%M%S") if acquired else ""
    ds.NumberOfFrames = spec.frames
    ds.Rows = spec.tile_height
    ds.Columns = spec.tile_width
    ds.SamplesPerPixel = spec.samples
    ds.PhotometricInterpretation = spec.photometric
    if spec.samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if spec.samples == 1:
        ds.PresentationLUTShape = "IDENTITY"
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
    ds.TotalPixelMatrixColumns = spec.width
    ds.TotalPixelMatrixRows = spec.height
    ds.TotalPixelMatrixFocalPlanes = spec.focal_planes
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 0
    origin.YOffsetInSlideCoordinateSystem = 0
    ds.TotalPixelMatrixOriginSequence = Sequence([origin])
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    base_mm = spec.base_pixel_spacing_mm or 0.001
    ds.ImagedVolumeWidth = round(spec.base_width * base_mm, 6)
    ds.ImagedVolumeHeight = round(spec.base_height * base_mm, 6)
    ds.ImagedVolumeDepth = 0.001
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.VolumetricProperties = "VOLUME"
    ds.DimensionOrganizationType = "TILED_FULL"
    kind = spec.image_type[2]
    ds.SpecimenLabelInImage = "YES" if kind in ("LABEL", "OVERVIEW") else "NO"
    ds.BurnedInAnnotation = "YES" if kind in ("LABEL", "OVERVIEW") else "NO"
    ds.LossyImageCompression = "01" if spec.lossy else "00"
    if spec.lossy:
        ds.LossyImageCompressionMethod = LOSSY_METHOD[spec.codec.split("-")[0]]
    ds.AcquisitionContextSequence = Sequence()


def _functional_groups(ds: Dataset, spec: ImageSpec, ident: Identity, slide: SlideMetadata) -> None:
    shared = Dataset()
    measures = Dataset()
    spacing = spec.pixel_spacing_mm or 0.001 * spec.base_width / max(spec.width, 1)
    measures.PixelSpacing = [round(spacing, 9), round(spacing, 9)]
    measures.SliceThickness = 0.001
    shared.PixelMeasuresSequence = Sequence([measures])
    frame_type = Dataset()
    frame_type.FrameType = list(spec.image_type)
    shared.WholeSlideMicroscopyImageFrameTypeSequence = Sequence([frame_type])
    if spec.optical_paths == 1:
        path = Dataset()
        path.OpticalPathIdentifier = _optical_path_items(spec, slide)[0].OpticalPathIdentifier
        shared.OpticalPathIdentificationSequence = Sequence([path])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    org = Dataset()
    org.DimensionOrganizationUID = ident.dimension_organization_uid
    ds.DimensionOrganizationSequence = Sequence([org])
    index = []
    for pointer in ("ColumnPositionInTotalImagePixelMatrix", "RowPositionInTotalImagePixelMatrix"):
        item = Dataset()
        item.DimensionOrganizationUID = org.DimensionOrganizationUID
        item.DimensionIndexPointer = pointer
        item.FunctionalGroupPointer = "PlanePositionSlideSequence"
        index.append(item)
    ds.DimensionIndexSequence = Sequence(index)


def _specimen(ds: Dataset, ident: Identity, slide: SlideMetadata) -> None:
    container = clean(ident.container_id, 64) or "UNKNOWN"
    ds.ContainerIdentifier = container
    ds.IssuerOfTheContainerIdentifierSequence = Sequence()
    ds.ContainerTypeCodeSequence = Sequence([_code("433466003", "SCT", "Microscope slide")])
    specimen = Dataset()
    specimen.SpecimenIdentifier = container
    specimen.SpecimenUID = ident.specimen_uid
    specimen.IssuerOfTheSpecimenIdentifierSequence = Sequence()
    specimen.SpecimenPreparationSequence = Sequence()
    ds.SpecimenDescriptionSequence = Sequence([specimen])


def _optical_paths(ds: Dataset, spec: ImageSpec, slide: SlideMetadata) -> None:
    items = _optical_path_items(spec, slide)
    ds.NumberOfOpticalPaths = len(items)
    ds.OpticalPathSequence = Sequence(items)


def _valid_code(item: Dataset) -> Dataset | None:
    try:
        value, scheme, meaning = item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning
    except AttributeError:
        return None
    if not all(isinstance(v, str) and v.strip() for v in (value, scheme, meaning)):
        return None
    return _code(clean(value, 16), clean(scheme, 16), clean(meaning, 64))


def _codes(carried: Dataset, keyword: str) -> Sequence | None:
    items = [_valid_code(item) for item in carried.get(keyword, None) or []]
    good = [item for item in items if item is not None]
    return Sequence(good) if good else None


def _sanitised_path(carried: Dataset, spec: ImageSpec, slide: SlideMetadata) -> Dataset:
    """An input's optical path item rebuilt from the attributes we understand, repaired.

    Copying the item whole would carry over what dciodvfy rejects: wavelength 0 for "unknown",
    8-bit palette descriptors, damaged text, private or unknown tags.
    """
    item = Dataset()
    item.OpticalPathIdentifier = clean(carried.get("OpticalPathIdentifier", "1"), 16) or "1"
    description = clean(carried.get("OpticalPathDescription", ""), 1024)
    if description:
        item.OpticalPathDescription = description
    item.IlluminationTypeCodeSequence = _codes(carried, "IlluminationTypeCodeSequence") or (
        Sequence([_code("111741", "DCM", "Transmission illumination")])
    )
    try:
        wavelength = float(carried.get("IlluminationWaveLength", 0) or 0)
    except (TypeError, ValueError):
        wavelength = 0.0
    colour = _codes(carried, "IlluminationColorCodeSequence")
    if 0 < wavelength < 100_000:
        item.IlluminationWaveLength = wavelength
    elif colour is not None:
        item.IlluminationColorCodeSequence = colour
    else:
        item.IlluminationColorCodeSequence = Sequence([_code("414298005", "SCT", "Full Spectrum")])
    icc = carried.get("ICCProfile")
    if spec.samples == 3:  # ICC only for colour pixels (no palette is carried over)
        item.ICCProfile = (
            bytes(icc) if isinstance(icc, bytes) and icc else (slide.icc_profile or srgb_profile())
        )
    return item


def _optical_path_items(spec: ImageSpec, slide: SlideMetadata) -> list[Dataset]:
    carried = slide.dicom_attributes.get("OpticalPathSequence")
    if isinstance(carried, Sequence) and len(carried) == spec.optical_paths:
        return [_sanitised_path(item, spec, slide) for item in carried]
    paths = slide.optical_paths or (OpticalPath("1", "Brightfield"),)
    path = paths[0]
    item = Dataset()
    item.OpticalPathIdentifier = "1"
    item.OpticalPathDescription = clean(path.description, 1024) or "Brightfield"
    if path.illumination == "fluorescence":
        item.IlluminationTypeCodeSequence = Sequence(
            [_code("111743", "DCM", "Epifluorescence illumination")]
        )
    else:
        item.IlluminationTypeCodeSequence = Sequence(
            [_code("111741", "DCM", "Transmission illumination")]
        )
    if path.wavelength_nm:
        item.IlluminationWaveLength = path.wavelength_nm
    else:
        item.IlluminationColorCodeSequence = Sequence([_code("414298005", "SCT", "Full Spectrum")])
    if spec.samples == 3:
        item.ICCProfile = path.icc_profile or slide.icc_profile or srgb_profile()
    return [item]
