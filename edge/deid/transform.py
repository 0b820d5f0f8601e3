"""The de-identification of one header: a pure function of (dataset, policy, secret).

Every element is visited, nested sequences too. An element with a row in the profile table
(edge.deid.profile) gets that row's action; the others fall under generic rules: private
tags, curves and overlays are removed; person names emptied; dates removed (or shifted with
retain-modified-dates); free text removed (or cleaned with clean-descriptors) where it can
carry anything; UIDs other than the standard's own replaced. Pixel data never passes here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydicom._uid_dict import UID_dictionary
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from edge import __version__
from edge.deid import keyed, profile
from edge.deid.policy import Policy

_TEXT_VRS = {"AE", "AS", "CS", "DS", "IS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
_FREE_TEXT = {"LT", "ST", "UT"}
_SHORT_TEXT = {"LO", "SH", "UC"}
# Groups of patient, study, visit and interpretation attributes: short text there is about
# the patient or the request, so text the table does not list is removed too.
_PATIENT_STUDY_GROUPS = {0x0010, 0x0032, 0x0038, 0x4008}
# Free text the table does not list but that describes the instrument, not the patient.
_SAFE_TEXT = {0x00480106}  # OpticalPathDescription
_MAX_LENGTH = {"SH": 16, "LO": 64, "PN": 64, "CS": 16, "AE": 16}
DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "PN": "ANONYMOUS"}
IDENTIFIER = "identifier"  # label of the keyed pseudonyms of identifiers (container, specimen)


@dataclass
class _Context:
    secret: bytes
    keys: frozenset[str]  # profile option keys in force
    days: int | None  # date shift with retain-modified-dates, else None
    namespace: str  # the policy's UID namespace (Policy.uid_namespace)
    masks: list[tuple[str, str]] = field(default_factory=list)  # (identifying text, stand-in)


def deidentify_dataset(ds: Dataset, policy: Policy, secret: bytes) -> Dataset:
    """De-identify `ds` in place (and return it): the header of one instance, no pixel data."""
    patient_key = _patient_key(ds)
    keys = policy.keys
    ctx = _Context(
        secret=secret,
        keys=keys,
        days=keyed.day_offset(secret, patient_key) if "dates" in keys else None,
        namespace=policy.uid_namespace,
    )
    ctx.masks = _masks(ds, secret, keyed.pseudonym(secret, "patient", patient_key, 20))
    had_patient = bool(str(ds.get("PatientID", "") or "") or str(ds.get("PatientName", "") or ""))
    _clean(ds, ctx)
    if had_patient:
        pid = keyed.pseudonym(secret, "patient", patient_key, 20)
        ds.PatientID = pid
        ds.PatientName = f"ANON^{pid[:8]}"
    _record(ds, policy)
    return ds


def _patient_key(ds: Dataset) -> str:
    """What identifies the patient for pseudonyms and the date offset: the patient ID, else the
    name, else the study (so the levels of one slide still agree with each other)."""
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            return f"{keyword}={value}"
    return ""


def _masks(ds: Dataset, secret: bytes, new_patient_id: str) -> list[tuple[str, str]]:
    """Identifying text of this instance and what replaces it inside cleaned descriptors:
    the patient ID its pseudonym, other identifiers theirs, names and dates `***`."""
    found: dict[str, str] = {}

    def add(value: object, stand_in: str) -> None:
        text = str(value or "").strip()
        if len(text) >= 3:
            found.setdefault(text, stand_in)

    add(ds.get("PatientID", ""), new_patient_id)
    for keyword in ("AccessionNumber", "StudyID", "ContainerIdentifier"):
        add(ds.get(keyword, ""), keyed.pseudonym(secret, IDENTIFIER, str(ds.get(keyword, ""))))
    for keyword in ("OtherPatientIDs", "BarcodeValue", "PatientBirthDate", "IssuerOfPatientID"):
        add(ds.get(keyword, ""), "***")
    for keyword in ("PatientName", "ReferringPhysicianName", "OtherPatientNames"):
        for part in re.split(r"[\^=\\]", str(ds.get(keyword, "") or "")):
            add(part, "***")
    for item in ds.get("SpecimenDescriptionSequence", None) or []:
        value = str(item.get("SpecimenIdentifier", "") or "")
        add(value, keyed.pseudonym(secret, IDENTIFIER, value))
    return sorted(found.items(), key=lambda pair: -len(pair[0]))


def _clean(ds: Dataset, ctx: _Context) -> None:
    # Decided on tag and VR from the raw element where possible: converting every value of a
    # sparse slide's 100,000 per-frame items would take seconds and change nothing.
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if tag.is_private or _curve_or_overlay(tag.group):
            del ds[tag]
            continue
        # Implicit VR and UN elements get their dictionary VR from the conversion.
        vr = raw.VR if raw is not None and raw.VR not in (None, "UN") else ds[tag].VR
        chosen = profile.action(int(tag), ctx.keys) or generic_action(int(tag), vr, ctx.keys)
        if chosen == "K" and vr != "SQ":
            continue
        elem = ds[tag]
        chosen = profile.resolve(chosen, int(tag), not elem.is_empty)
        if chosen == "X":
            del ds[tag]
        elif chosen == "Z":
            _empty(elem)
        elif chosen == "D":
            _dummy(elem, ctx)
        elif chosen == "U":
            _new_uids(elem, ctx)
        elif chosen == "C":
            _cleaned(elem, ctx)
        elif elem.VR == "SQ":  # K and U*: keep the sequence, apply the rules inside it
            _items(elem, ctx)


def _curve_or_overlay(group: int) -> bool:
    """Repeating groups 50xx (curves, retired) and 60xx (overlays): graphics and text drawn
    over the image, which PS3.15 removes (Clean Graphics is not offered)."""
    return group & 1 == 0 and (0x5000 <= group <= 0x501E or 0x6000 <= group <= 0x601E)


def generic_action(tag: int, vr: str, keys: frozenset[str]) -> str:
    """The action for an attribute the table does not list (`keys`: option keys in force)."""
    group = tag >> 16
    if vr == "UI":
        return "K" if "uids" in keys else "U"
    if vr == "PN":
        return "Z"
    if vr in ("DA", "DT", "TM"):
        return "C" if "dates" in keys else "X"
    if tag in _SAFE_TEXT:
        return "K"
    if vr in _FREE_TEXT or (vr in _SHORT_TEXT and group in _PATIENT_STUDY_GROUPS):
        return "C" if "desc" in keys else "X"
    return "K"


def _items(elem: DataElement, ctx: _Context) -> None:
    for item in elem.value or []:
        _clean(item, ctx)


def _empty(elem: DataElement) -> None:
    if elem.VR == "SQ":
        elem.value = Sequence()
    elif elem.VR in _TEXT_VRS or elem.VR in ("DA", "DT", "TM", "UI"):
        elem.value = ""
    else:
        elem.value = None


def _dummy(elem: DataElement, ctx: _Context) -> None:
    vr = elem.VR
    if elem.is_empty and vr != "SQ":
        return  # nothing to stand in for: a made-up value would only look like data
    if vr == "SQ":
        _items(elem, ctx)
    elif vr == "UI":
        _new_uids(elem, ctx)
    elif vr in DUMMY:
        elem.value = DUMMY[vr]
    elif vr in ("IS", "DS"):
        elem.value = "0"
    elif vr in _TEXT_VRS:
        # A keyed pseudonym: the same identifier gets the same stand-in in every instance.
        length = min(_MAX_LENGTH.get(vr, 64), 16)
        elem.value = keyed.pseudonym(ctx.secret, IDENTIFIER, str(elem.value or ""), length)
    else:
        elem.value = None


def _new_uids(elem: DataElement, ctx: _Context) -> None:
    if "uids" in ctx.keys or elem.VR != "UI" or elem.is_empty:
        return
    values = list(elem.value) if isinstance(elem.value, MultiValue | list) else [elem.value]
    # Standard UIDs (SOP classes, transfer syntaxes, coding schemes) identify nothing.
    out = [
        str(v) if str(v) in UID_dictionary else keyed.new_uid(ctx.secret, str(v), ctx.namespace)
        for v in values
    ]
    elem.value = out if len(out) > 1 else out[0]


def _cleaned(elem: DataElement, ctx: _Context) -> None:
    vr = elem.VR
    if vr == "SQ":
        _items(elem, ctx)
    elif vr == "DA" and ctx.days is not None:
        elem.value = keyed.shift_da(str(elem.value or ""), ctx.days) or (
            DUMMY["DA"] if not elem.is_empty else ""
        )
    elif vr == "DT" and ctx.days is not None:
        elem.value = keyed.shift_dt(str(elem.value or ""), ctx.days) or (
            DUMMY["DT"] if not elem.is_empty else ""
        )
    elif vr in ("DA", "DT"):
        _empty(elem)
    elif vr == "UI":
        _new_uids(elem, ctx)
    elif vr in _TEXT_VRS and vr not in ("TM", "CS", "DS", "IS", "AS"):
        elem.value = _masked(elem.value, ctx)


def _masked(value: object, ctx: _Context) -> object:
    if isinstance(value, MultiValue | list):
        return [_mask_text(str(v), ctx) for v in value]
    return _mask_text(str(value or ""), ctx)


def _mask_text(text: str, ctx: _Context) -> str:
    for original, stand_in in ctx.masks:
        text = re.sub(re.escape(original), stand_in, text, flags=re.IGNORECASE)
    return text


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def _record(ds: Dataset, policy: Policy) -> None:
    """What was done, in the attributes PS3.15 E.1.1 asks for, and who did it."""
    ds.PatientIdentityRemoved = "YES"
    methods = [f"edge {__version__}: PS3.15 E.1 {policy.profile} profile"[:64]]
    methods += [f"option {name}"[:64] for name in sorted(policy.options)]
    ds.DeidentificationMethod = methods if len(methods) > 1 else methods[0]
    ds.DeidentificationMethodCodeSequence = Sequence(
        [_code(value, meaning) for value, meaning in policy.codes()]
    )
    ds.LongitudinalTemporalInformationModified = (
        "MODIFIED" if policy.has("retain-modified-dates") else "REMOVED"
    )
    item = Dataset()
    item.Manufacturer = "edge appliance"
    item.SoftwareVersions = __version__
    item.ContributionDescription = f"De-identified ({policy.profile} profile)"
    item.PurposeOfReferenceCodeSequence = Sequence([_code("109104", "De-identifying Equipment")])
    items = list(ds.get("ContributingEquipmentSequence", None) or [])
    ds.ContributingEquipmentSequence = Sequence([*items, item])
