"""DICOM VL Whole Slide Microscopy Image headers, built as pure functions of plain data.

Every Type 1 and Type 2 attribute of the IOD is written (Type 2 empty when unknown), because
PACS and viewers choke on what `dciodvfy` flags; the pixel data is appended by the writer.
"""

from __future__ import annotations

import copy
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
        ds.BarcodeValue = slide.barcode
        ds.LabelText = ""
    return ds


def _patient_study(ds: Dataset, ident: Identity, acquired: datetime | None) -> None:
    p = ident.patient
    ds.PatientName = p.get("PatientName", "")
    ds.PatientID = p.get("PatientID", "")
    ds.PatientBirthDate = p.get("PatientBirthDate", "")
    ds.PatientSex = p.get("PatientSex", "")
    if p.get("IssuerOfPatientID"):
        ds.IssuerOfPatientID = p["IssuerOfPatientID"]
    ds.StudyInstanceUID = ident.study_uid
    ds.StudyDate = p.get("StudyDate", _da(acquired))
    ds.StudyTime = p.get("StudyTime", _tm(acquired))
    ds.ReferringPhysicianName = p.get("ReferringPhysicianName", "")
    ds.StudyID = p.get("StudyID", "")
    ds.AccessionNumber = p.get("AccessionNumber", "")
    if p.get("StudyDescription"):
        ds.StudyDescription = p["StudyDescription"]


def _series_equipment(ds: Dataset, slide: SlideMetadata, ident: Identity) -> None:
    ds.SeriesInstanceUID = ident.series_uid
    ds.SeriesNumber = ident.series_number
    ds.SeriesDescription = ident.patient.get("SeriesDescription", "Whole slide image")
    ds.FrameOfReferenceUID = ident.frame_of_reference_uid
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.Manufacturer = slide.vendor or "Unknown"
    ds.ManufacturerModelName = slide.model or "Unknown"
    ds.DeviceSerialNumber = slide.serial_number or "Unknown"
    ds.SoftwareVersions = [v for v in (slide.software[:64], f"edge {__version__}") if v]
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
    ds.ContainerIdentifier = ident.container_id
    ds.IssuerOfTheContainerIdentifierSequence = Sequence()
    ds.ContainerTypeCodeSequence = Sequence([_code("433466003", "SCT", "Microscope slide")])
    specimen = Dataset()
    specimen.SpecimenIdentifier = ident.container_id
    specimen.SpecimenUID = ident.specimen_uid
    specimen.IssuerOfTheSpecimenIdentifierSequence = Sequence()
    specimen.SpecimenPreparationSequence = Sequence()
    ds.SpecimenDescriptionSequence = Sequence([specimen])


def _optical_paths(ds: Dataset, spec: ImageSpec, slide: SlideMetadata) -> None:
    items = _optical_path_items(spec, slide)
    ds.NumberOfOpticalPaths = len(items)
    ds.OpticalPathSequence = Sequence(items)


def _sanitised_path(carried: Dataset, spec: ImageSpec, slide: SlideMetadata) -> Dataset:
    """A copy of an input's optical path item with the values dciodvfy rejects repaired."""
    item = copy.deepcopy(carried)
    if "IlluminationWaveLength" in item and not float(item.IlluminationWaveLength or 0) > 0:
        del item.IlluminationWaveLength  # vendors write 0 for "unknown"
    if "IlluminationWaveLength" not in item and "IlluminationColorCodeSequence" not in item:
        item.IlluminationColorCodeSequence = Sequence([_code("414298005", "SCT", "Full Spectrum")])
    if "IlluminationTypeCodeSequence" not in item:
        item.IlluminationTypeCodeSequence = Sequence(
            [_code("111741", "DCM", "Transmission illumination")]
        )
    if "PaletteColorLookupTableSequence" in item:
        del item.PaletteColorLookupTableSequence  # optional; 8-bit descriptors are invalid here
    if "ICCProfile" not in item and spec.samples == 3:
        item.ICCProfile = slide.icc_profile or srgb_profile()
    if spec.samples == 1 and "ICCProfile" in item:
        del item.ICCProfile  # only allowed with colour pixels or a palette
    return item


def _optical_path_items(spec: ImageSpec, slide: SlideMetadata) -> list[Dataset]:
    carried = slide.dicom_attributes.get("OpticalPathSequence")
    if isinstance(carried, Sequence) and len(carried) == spec.optical_paths:
        return [_sanitised_path(item, spec, slide) for item in carried]
    paths = slide.optical_paths or (OpticalPath("1", "Brightfield"),)
    path = paths[0]
    item = Dataset()
    item.OpticalPathIdentifier = "1"
    item.OpticalPathDescription = path.description or "Brightfield"
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
