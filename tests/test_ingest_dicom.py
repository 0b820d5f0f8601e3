"""DICOM in: a real Orthanc worklist (C-FIND) fills in patient and order data; a DICOM-native
scanner (a pynetdicom SCU here) sends a slide to the daemon's C-STORE receiver."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from edge import config as cfg
from edge.convert import convert
from edge.daemon import Daemon, embedded_defaults
from edge.jobs import JobStore
from edge.outbox.schema import DATABASE
from edge.slide.synthetic import write_slide
from tests.orthanc import free_port, orthanc_server

pytestmark = pytest.mark.integration

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN-4711"}


def _worklist_entry(folder: Path, name: str, accession: str, study_uid: str) -> None:
    ds = Dataset()
    ds.PatientName = PATIENT["PatientName"]
    ds.PatientID = PATIENT["PatientID"]
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.AccessionNumber = accession
    ds.StudyInstanceUID = study_uid
    ds.RequestedProcedureID = f"RP-{accession}"
    ds.RequestedProcedureDescription = "Skin biopsy"
    ds.ReferringPhysicianName = "Who^Doctor"
    step = Dataset()
    step.Modality = "SM"
    step.ScheduledStationAETitle = "EDGE"
    step.ScheduledProcedureStepStartDate = "20261127"
    ds.ScheduledProcedureStepSequence = [step]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ModalityWorklistInformationFind
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(folder / f"{name}.wl", enforce_file_format=True)


def _config(home: Path, **sections: object) -> cfg.Config:
    base = embedded_defaults(home)
    return dataclasses.replace(
        base,
        ingest=cfg.Ingest(watch=base.ingest.watch, settle_s=0.0, poll_s=0.2),
        pipeline=cfg.Pipeline(analyse=False),
        **sections,  # type: ignore[arg-type]
    )


def test_worklist_fills_in_the_patient_and_flags_what_it_cannot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worklists = tmp_path / "worklists"
    worklists.mkdir()
    study = generate_uid()
    _worklist_entry(worklists, "one", "ACC-1001", study)
    _worklist_entry(worklists, "twin-a", "ACC-2002", generate_uid())
    _worklist_entry(worklists, "twin-b", "ACC-2002", generate_uid())
    with orthanc_server(tmp_path / "orthanc", worklists=worklists) as orthanc:
        config = _config(
            tmp_path,
            worklist=cfg.Worklist(host="127.0.0.1", port=orthanc.dicom_port, called_aet="ORTHANC"),
        )
        inbox = Path(config.ingest.watch[0])
        inbox.mkdir(parents=True)
        for barcode in ("ACC-1001", "ACC-2002", "ACC-9999"):
            write_slide(inbox / f"{barcode}-slide.svs", 1024, 768, "svs", barcode=barcode)
        with caplog.at_level(logging.DEBUG):
            assert Daemon(config, once=True).run(timeout_s=120) == 0
    with JobStore(config.state_dir / DATABASE) as jobs:
        rows = {r["name"].split("-slide")[0]: r for r in jobs.list()}
    assert {r["state"] for r in rows.values()} == {"done"}

    matched = rows["ACC-1001"]
    assert not matched["unmatched"] and matched["note"] == ""
    assert matched["study_uid"] == study, "the worklist's study UID is the slide's"
    level0 = pydicom.dcmread(Path(matched["output"]) / "level-00.dcm", stop_before_pixels=True)
    assert str(level0.PatientName) == PATIENT["PatientName"]
    assert level0.PatientID == PATIENT["PatientID"]
    assert level0.AccessionNumber == "ACC-1001"
    assert level0.StudyDescription == "Skin biopsy"

    assert rows["ACC-2002"]["unmatched"]
    assert "2 worklist entries match" in rows["ACC-2002"]["note"], "never guess between two"
    assert rows["ACC-9999"]["unmatched"]
    assert "no worklist entry" in rows["ACC-9999"]["note"]
    for secret in ("Doe", "MRN-4711"):
        assert secret not in caplog.text, "patient data never goes to the logs"


def test_a_worklist_that_is_down_does_not_hold_slides_back(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        worklist=cfg.Worklist(host="127.0.0.1", port=free_port(), timeout_s=2.0),
    )
    inbox = Path(config.ingest.watch[0])
    inbox.mkdir(parents=True)
    write_slide(inbox / "s.svs", 1024, 768, "svs", barcode="ACC-1")
    assert Daemon(config, once=True).run(timeout_s=60) == 0
    with JobStore(config.state_dir / DATABASE) as jobs:
        (row,) = jobs.list()
    assert row["state"] == "done" and row["unmatched"]
    assert row["note"] == "worklist unreachable"


def _send(folder: Path, port: int, calling: str) -> list[int]:
    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts[:120]
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        VLWholeSlideMicroscopyImageStorage,
    )

    ae.requested_contexts = []
    for syntax in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"):
        ae.add_requested_context(VLWholeSlideMicroscopyImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE")
    if not assoc.is_established:
        return []
    statuses = []
    try:
        for path in sorted(folder.glob("*.dcm")):
            status = assoc.send_c_store(pydicom.dcmread(path))
            statuses.append(int(status.Status))
    finally:
        assoc.release()
    return statuses


def test_a_dicom_scanner_sends_a_slide_to_the_receiver(tmp_path: Path) -> None:
    scanned = convert(write_slide(tmp_path / "scan.svs", 2048, 1536, "svs"), tmp_path / "scanner")
    port = free_port()
    config = _config(
        tmp_path / "edge",
        receiver=cfg.Receiver(
            port=port, listen="127.0.0.1", allowed_aets=("SCANNER",), settle_s=1.0
        ),
    )
    daemon = Daemon(config)
    runner = threading.Thread(target=daemon.run, kwargs={"timeout_s": 120})
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while daemon.receiver is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert _send(Path(scanned.output), port, "INTRUDER") == [], "unknown AE refused"
        sent = _send(Path(scanned.output), port, "SCANNER")
        assert sent and set(sent) == {0}
        outgoing = Path(config.destinations[0].path)
        expected = len(list(Path(scanned.output).glob("*.dcm")))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(outgoing.rglob("*.dcm"))) < expected:
            time.sleep(0.2)
    finally:
        daemon.stop.set()
        runner.join(60)
    with JobStore(config.state_dir / DATABASE) as jobs:
        (row,) = jobs.list()
    assert row["state"] == "done", row
    assert not row["unmatched"] or row["note"], "a DICOM input with no patient is explained"
    delivered = list(outgoing.rglob("*.dcm"))
    assert len(delivered) == row["instances"] == expected
    assert not any(daemon.spool.rglob("*.dcm")), "the spooled copy is removed once converted"
