"""Patient and order data for a slide from the lab's DICOM Modality Worklist (C-FIND).

The slide's barcode (from its label metadata, or its file name) is matched against one
worklist key (`[worklist] match`, AccessionNumber by default). Exactly one answer: its
patient and study attributes become the slide's. None or several: the slide converts
anyway and is flagged unmatched for the technician; several matches are never guessed
between. A worklist that does not answer is not a reason to hold slides back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from edge import config as cfg

LOGGER = logging.getLogger(__name__)

# Worklist attribute -> the slide attribute it fills (edge.dicom.metadata PATIENT_STUDY_KEYWORDS)
RETURNED = {
    "PatientName": "PatientName",
    "PatientID": "PatientID",
    "IssuerOfPatientID": "IssuerOfPatientID",
    "PatientBirthDate": "PatientBirthDate",
    "PatientSex": "PatientSex",
    "AccessionNumber": "AccessionNumber",
    "StudyInstanceUID": "StudyInstanceUID",
    "ReferringPhysicianName": "ReferringPhysicianName",
    "RequestedProcedureDescription": "StudyDescription",
}


@dataclass(frozen=True)
class Match:
    attributes: dict[str, str]  # empty when unmatched
    note: str  # why unmatched, for the technician ("" when matched)


def _query(key: str, value: str) -> Dataset:
    ds = Dataset()
    for keyword in RETURNED:
        setattr(ds, keyword, "")
    ds.RequestedProcedureID = ""
    setattr(ds, key, value)
    step = Dataset()
    step.Modality = ""
    step.ScheduledStationAETitle = ""
    step.ScheduledProcedureStepStartDate = ""
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def lookup(settings: cfg.Worklist, barcode: str) -> Match:
    """The worklist entry whose `settings.match` key equals barcode."""
    if not settings.host:
        return Match({}, "no worklist configured")
    if not barcode:
        return Match({}, "the slide has no barcode to look up")
    ae = AE(ae_title=settings.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.timeout_s
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate(settings.host, settings.port, ae_title=settings.called_aet)
    if not assoc.is_established:
        LOGGER.warning("worklist %s:%d did not accept an association", settings.host, settings.port)
        return Match({}, "worklist unreachable")
    answers: list[Dataset] = []
    try:
        for status, identifier in assoc.send_c_find(
            _query(settings.match, barcode), ModalityWorklistInformationFind
        ):
            if not status or "Status" not in status:  # aborted, or no answer in time
                return Match({}, "worklist did not answer (association aborted or timed out)")
            if status.Status in (0xFF00, 0xFF01) and identifier is not None:
                answers.append(identifier)
            elif status.Status not in (0x0000, 0xFF00, 0xFF01):
                return Match({}, f"worklist query failed (status 0x{status.Status:04X})")
    finally:
        assoc.release()
    if not answers:
        return Match({}, f"no worklist entry with {settings.match} = the slide's barcode")
    if len(answers) > 1:
        return Match({}, f"{len(answers)} worklist entries match the barcode; none taken")
    found = answers[0]
    attributes = {
        target: str(found.get(source, "") or "")[:64]
        for source, target in RETURNED.items()
        if str(found.get(source, "") or "")
    }
    return Match(attributes, "")
