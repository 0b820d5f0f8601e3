"""End to end: a slide with pen marks dropped into the scanner folder of a running `edge run`
reaches a real Orthanc over STOW-RS with its QC verdict as DICOM (SEG, SR, annotations) in
the same study, a de-identified copy reaches a research folder, and nothing in the logs or
the audit trail names the patient."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from edge.jobs import JobStore
from edge.outbox.schema import DATABASE
from tests.helpers import run_edge
from tests.orthanc import orthanc_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN-4711", "AccessionNumber": "ACC-77"}
SM, SEG, SR, ANN = "SM", "SEG", "SR", "ANN"


def test_slide_to_pacs_with_qc_results_and_no_patient_data_in_logs(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    # Strong pen over ~18% of the tissue (the kit's truth): the technician must rescan.
    done = run_edge(
        "synth", "-o", str(tmp_path / "pen.svs"), "--size", "6000x4000", "--seed", "8",
        "--mpp", "0.5", "--artifacts", "pen", "--severity", "1", "--extent", "1", "-q",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (tmp_path / "pen.json").write_text(json.dumps(PATIENT))
    secret = tmp_path / "secret"
    secret.write_bytes(b"0123456789abcdef0123456789abcdef")
    secret.chmod(0o600)
    with orthanc_server(tmp_path / "orthanc") as orthanc:
        config = tmp_path / "edge.toml"
        config.write_text(
            f'[storage]\nstate_dir = "{tmp_path / "state"}"\n'
            f'[ingest]\nwatch = ["{inbox}"]\nsettle_s = 0.5\npoll_s = 0.5\n'
            f'[privacy]\nsecret_file = "{secret}"\n'
            f'[[destination]]\nname = "pacs"\nkind = "stowrs"\nurl = "{orthanc.dicomweb_url}"\n'
            f'[[destination]]\nname = "research"\nkind = "folder"\n'
            f'path = "{tmp_path / "research"}"\ndeidentify = "basic"\n'
        )
        # The scanner writes the slide, then its sidecar; the daemon waits for both to settle.
        (tmp_path / "pen.json").rename(inbox / "pen.json")
        (tmp_path / "pen.svs").rename(inbox / "pen.svs")
        run = subprocess.run(
            [sys.executable, "-m", "edge.cli", "run", "--config", str(config), "--once",
             "--timeout", "300", "-v"],
            capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]

        with JobStore(tmp_path / "state" / DATABASE) as jobs:
            (job,) = jobs.list()
        assert job["verdict"] == "rescan" and not job["unmatched"], job
        assert any("pen" in reason for reason in job["reasons"])

        with httpx.Client(base_url=orthanc.dicomweb_url, timeout=30) as web:
            studies = web.get("/studies", params={"PatientID": PATIENT["PatientID"]}).json()
            assert len(studies) == 1, "one study holds the slide and its results"
            study = studies[0]["0020000D"]["Value"][0]
            assert study == job["study_uid"]
            series = web.get(f"/studies/{study}/series").json()
        modalities = sorted(s["00080060"]["Value"][0] for s in series)
        assert modalities == sorted([SM, SEG, SR, ANN]), modalities
        assert orthanc.count() == job["instances"], "every instance once, nothing twice"

    research = list((tmp_path / "research").rglob("*.dcm"))
    assert research, "a de-identified copy went to research"
    for path in research:
        assert (
            b"Doe" not in path.read_bytes()[:200_000]
            and b"MRN-4711" not in path.read_bytes()[:200_000]
        )

    audit = run_edge("audit", "--config", str(config), "--json")
    actions = {r["action"] for r in json.loads(audit.stdout)}
    assert {"start", "ingest", "analyse", "send", "stop"} <= actions
    everything = run.stderr + run.stdout + audit.stdout
    for secret_value in (PATIENT["PatientName"], "Doe", PATIENT["PatientID"]):
        assert secret_value not in everything, f"{secret_value!r} leaked into logs or audit"
