"""Coded concepts for the QC objects (SEG, SR): standard codes where DICOM has one, else ours.

Standard: tissue (SCT 85756007, in CID 7150/7151), "Image artifact(s)" (DCM 111207) as the
category of the artifact classes, area (SCT 42798000), UCUM units. DICOM has no codes for pen
marks, tissue folds, air bubbles under the coverslip, debris, a coverslip edge's shadow or an
out-of-focus region, nor for a QC verdict, so these live in the private coding scheme
"99EDGE" (PS3.16 8.2: designators beginning "99" are private), declared in every object's
Coding Scheme Identification Sequence.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from edge import __version__

SCHEME = "99EDGE"
SCHEME_NAME = "edge appliance QC concepts"

TISSUE = Code("85756007", "SCT", "Tissue")
ARTIFACT = Code("111207", "DCM", "Image artifact(s)")
AREA = Code("42798000", "SCT", "Area")
MM2 = Code("mm2", "UCUM", "square millimeter")
NO_UNITS = Code("1", "UCUM", "no units")
COUNT = Code("{count}", "UCUM", "count")
WSI_PROCEDURE = Code("112703", "DCM", "Whole Slide Imaging")
HE_STAIN = Code("104210008", "SCT", "Hematoxylin and eosin stain method")

# The artifact classes of the analysis (edge.analysis.qc.QC_CLASSES) as segment types.
CLASS_TYPES = {
    "tissue": TISSUE,
    "blur": Code("BLUR", SCHEME, "Out-of-focus region"),
    "pen": Code("PEN", SCHEME, "Pen marking"),
    "fold": Code("FOLD", SCHEME, "Tissue fold"),
    "bubble": Code("BUBBLE", SCHEME, "Air bubble"),
    "debris": Code("DEBRIS", SCHEME, "Debris"),
    "edge": Code("EDGE", SCHEME, "Beyond coverslip edge"),
}
CLASS_LABELS = {
    "tissue": "Tissue",
    "blur": "Out of focus",
    "pen": "Pen marks",
    "fold": "Folds",
    "bubble": "Air bubbles",
    "debris": "Debris",
    "edge": "Coverslip edge",
}

VERDICT = Code("VERDICT", SCHEME, "Slide QC verdict")
VERDICTS = {
    "pass": Code("PASS", SCHEME, "Pass"),
    "review": Code("REVIEW", SCHEME, "Review"),
    "rescan": Code("RESCAN", SCHEME, "Rescan"),
}
REASON = Code("REASON", SCHEME, "QC reason")
STAIN = Code("STAIN", SCHEME, "Stain recognised")
STAINS = {
    "H&E": HE_STAIN,
    "IHC": Code("IHC", SCHEME, "Immunohistochemistry"),
    "other": Code("OTHERSTAIN", SCHEME, "Other stain"),
    "unknown": Code("UNKNOWNSTAIN", SCHEME, "Stain not determined"),
}
FRACTION_OF_TISSUE = Code("FRACTISSUE", SCHEME, "Fraction of tissue")
FRACTION_OF_SLIDE = Code("FRACSLIDE", SCHEME, "Fraction of slide")
REGIONS = Code("REGIONS", SCHEME, "Number of regions")
FRAGMENTS = Code("FRAGMENTS", SCHEME, "Number of tissue fragments")
PRIORITY = Code("PRIORITY", SCHEME, "Triage priority")
CROPS = Code("FOCUSCROPS", SCHEME, "Focus crops scored")
FOCUS_MEAN = Code("FOCUSMEAN", SCHEME, "Mean out-of-focus probability")
FOCUS_P95 = Code("FOCUSP95", SCHEME, "95th percentile out-of-focus probability")
FOCUS_MAX = Code("FOCUSMAX", SCHEME, "Maximum out-of-focus probability")


def coding_scheme_identification() -> list[Dataset]:
    """The Coding Scheme Identification Sequence (its items) that declares 99EDGE."""
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = SCHEME_NAME
    item.CodingSchemeVersion = __version__
    item.CodingSchemeResponsibleOrganization = "edge appliance"
    return [item]
