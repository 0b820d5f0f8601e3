"""The appliance's must-show: three slides (SVS and NDPI dropped in the scanner folder, a
DICOM slide sent by a scanner over C-STORE) reach a real Orthanc as DICOM WSI with their QC
results, the job table says delivered; and SIGKILLed at 20 random moments across the same
flow, after restarts Orthanc holds exactly what a clean run gave it: one study per slide, the
same instances (a restarted job mints no new UIDs), nothing twice."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from edge.convert import convert
from edge.jobs import JobStore
from edge.outbox.schema import DATABASE
from edge.slide.synthetic import write_slide
from tests.helpers import run_edge
from tests.orthanc import Orthanc, free_port, orthanc_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KILLS = 20
WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scans")
    ndpi = root / "b.ndpi"
    done = run_edge(
        "synth", "-o", str(ndpi), "--format", "ndpi", "--size", "4096x3072", "--seed", "12", "-q"
    )
    assert done.returncode == 0, done.stderr
    dicom = convert(write_slide(root / "c.svs", 3072, 2048, "svs", seed=13), root / "scanner")
    return {
        "svs": write_slide(root / "a.svs", 4096, 3072, "svs", seed=11),
        "ndpi": ndpi,
        "dicom": Path(dicom.output),
    }


def _config(home: Path, orthanc: Orthanc, receiver_port: int) -> Path:
    (home / "inbox").mkdir(parents=True)
    path = home / "edge.toml"
    path.write_text(
        f'[storage]\nstate_dir = "{home / "state"}"\n'
        f'[ingest]\nwatch = ["{home / "inbox"}"]\nsettle_s = 0.3\npoll_s = 0.2\n'
        f'[receiver]\nport = {receiver_port}\nlisten = "127.0.0.1"\nsettle_s = 1.0\n'
        "[forward]\nretry_base_s = 0.2\nretry_ceiling_s = 1.0\n"
        f'[[destination]]\nname = "pacs"\nkind = "cstore"\nport = {orthanc.dicom_port}\n'
        'called_aet = "ORTHANC"\ntimeout_s = 10\n'
    )
    return path


def _start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _scanner_sends(folder: Path, port: int) -> None:
    """A DICOM-native scanner: every instance acknowledged (retrying while the box starts)."""
    ae = AE(ae_title="SCANNER")
    for syntax in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"):
        ae.add_requested_context(WSI, syntax)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assoc = ae.associate("127.0.0.1", port, ae_title="EDGE")
        if assoc.is_established:
            try:
                statuses = [
                    int(assoc.send_c_store(pydicom.dcmread(p)).Status)
                    for p in sorted(folder.glob("*.dcm"))
                ]
            finally:
                assoc.release()
            if set(statuses) == {0}:
                return
        time.sleep(0.3)
    raise AssertionError("the receiver never took the scanner's slide")


def _busy(home: Path) -> bool:
    """Is there work in flight (a job not done, an instance not yet delivered)?"""
    database = home / "state" / DATABASE
    if not database.exists():
        return True
    with JobStore(database) as jobs:
        rows = jobs.list()
    return len(rows) < 3 or not all(r["state"] == "done" and r["delivered"] for r in rows)


def _flow(
    home: Path, orthanc: Orthanc, scans: dict[str, Path], kills: int
) -> tuple[list[dict], int]:  # type: ignore[type-arg]
    port = free_port()
    busy = 0
    config = _config(home, orthanc, port)
    proc = _start(config)
    try:
        _scanner_sends(scans["dicom"], port)
        for kind in ("svs", "ndpi"):
            shutil.copy(scans[kind], home / "inbox" / scans[kind].name)
        rng = random.Random(20261127)
        for _ in range(kills):
            time.sleep(rng.uniform(0.4, 2.5))
            busy += _busy(home)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            proc = _start(config)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    done = run_edge("run", "--config", str(config), "--once", "--timeout", "300", timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    with JobStore(home / "state" / DATABASE) as jobs:
        return jobs.list(), busy if kills else 0


def _holdings(orthanc: Orthanc) -> tuple[Counter[str], dict[str, set[str]]]:
    """SOP Instance UIDs (with how many copies) and, per study, its modalities."""
    with orthanc.client() as client:
        found = client.post(
            "/tools/find", json={"Level": "Instance", "Query": {}, "Expand": True}
        ).json()
        studies: dict[str, set[str]] = {}
        for series in client.post(
            "/tools/find", json={"Level": "Series", "Query": {}, "Expand": True}
        ).json():
            study = client.get(f"/studies/{series['ParentStudy']}").json()
            uid = study["MainDicomTags"]["StudyInstanceUID"]
            studies.setdefault(uid, set()).add(series["MainDicomTags"].get("Modality", "?"))
    return Counter(str(i["MainDicomTags"]["SOPInstanceUID"]) for i in found), studies


def test_three_slides_clean_then_killed_20_times_give_the_same_pacs(
    tmp_path: Path, scans: dict[str, Path]
) -> None:
    with orthanc_server(tmp_path / "orthanc-clean") as clean:
        rows, _ = _flow(tmp_path / "clean", clean, scans, kills=0)
        reference, studies = _holdings(clean)
    assert len(rows) == 3 and all(r["state"] == "done" and r["delivered"] for r in rows), rows
    kinds = {"received" if "/received/" in r["source"] else Path(r["source"]).suffix for r in rows}
    assert kinds == {".svs", ".ndpi", "received"}, "two files, one series over C-STORE"
    assert len(studies) == 3, "one study per slide"
    for modalities in studies.values():
        assert {"SM", "SEG", "SR"} <= modalities, "each slide with its QC results"
    assert max(reference.values()) == 1

    with orthanc_server(tmp_path / "orthanc-killed") as killed:
        rows, busy = _flow(tmp_path / "killed", killed, scans, kills=KILLS)
        holdings, studies_after = _holdings(killed)
    assert all(r["state"] == "done" and r["delivered"] for r in rows), rows
    assert len(rows) == 3, "no slide became two jobs"
    assert set(holdings) == set(reference), "the same instances as the clean run"
    assert max(holdings.values()) == 1, "nothing stored twice"
    assert set(studies_after) == set(studies), "the same three studies"
    assert busy >= KILLS // 2, f"only {busy} of {KILLS} kills landed while work was in flight"
