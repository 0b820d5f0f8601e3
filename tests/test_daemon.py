"""The daemon: scanner folder -> jobs -> convert + analyse -> outbox -> destinations.

Real files, real SQLite, real processes (killed with SIGKILL and SIGTERM), a real pynetdicom
SCP as the PACS; only the disk-usage reading is injected (a full disk cannot be made safely).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from edge import config as cfg
from edge.daemon import Daemon, embedded_defaults
from edge.ingest.watch import Candidate, Settler, scan
from edge.jobs import JobStore
from edge.outbox.queries import OutboxReader
from edge.outbox.schema import DATABASE
from edge.slide.synthetic import write_slide
from edge.system.disk import DiskUsage
from tests.dicom_peers import Behaviour, store_scp
from tests.helpers import run_edge

EXTENSIONS = (".svs", ".ndpi", ".tif", ".tiff", ".dcm")


def _config(home: Path, **pipeline: object) -> cfg.Config:
    base = embedded_defaults(home)
    return cfg.Config(
        state_dir=base.state_dir,
        ingest=cfg.Ingest(watch=base.ingest.watch, settle_s=0.0, poll_s=0.2),
        destinations=base.destinations,
        pipeline=cfg.Pipeline(**pipeline),  # type: ignore[arg-type]
        retry_base_s=0.1,
        retry_ceiling_s=0.5,
    )


def _delivered_sops(folder: Path) -> Counter[str]:
    return Counter(
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in folder.rglob("*.dcm")
    )


# ---- finding finished slides ----


def test_scan_skips_partial_hidden_locked_and_unmarked(tmp_path: Path) -> None:
    (tmp_path / "a.svs").write_bytes(b"x" * 10)
    (tmp_path / "b.svs.part").write_bytes(b"x")
    (tmp_path / ".c.svs").write_bytes(b"x")
    (tmp_path / "d.svs").write_bytes(b"x")
    (tmp_path / "d.svs.lock").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    day = tmp_path / "2026-11-27"
    day.mkdir()
    (day / "e.NDPI").write_bytes(b"x" * 5)
    series = day / "series-1"
    series.mkdir()
    for n in range(3):
        (series / f"{n}.dcm").write_bytes(b"d" * 7)
    found = {c.path.name: c for c in scan([tmp_path], EXTENSIONS)}
    assert set(found) == {"a.svs", "e.NDPI", "series-1"}
    assert found["series-1"].signature[:2] == (3, 21), "a DICOM folder is one slide"
    marked = {c.path.name for c in scan([tmp_path], EXTENSIONS, ready_marker=".done")}
    assert marked == set()
    (tmp_path / "a.svs.done").write_text("")
    assert {c.path.name for c in scan([tmp_path], EXTENSIONS, ready_marker=".done")} == {"a.svs"}


def test_scan_survives_a_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "a.svs").write_bytes(b"x")
    found = list(scan([tmp_path / "gone", tmp_path], EXTENSIONS))
    assert [c.path.name for c in found] == ["a.svs"]


def test_a_slide_settles_only_when_it_stops_changing() -> None:
    settler = Settler(settle_s=10.0)
    path = Path("/scanner/a.svs")
    growing = [Candidate(path, (1, n * 1000, n)) for n in range(1, 4)]
    assert settler.settled([growing[0]], now=0.0) == []
    assert settler.settled([growing[1]], now=8.0) == [], "it grew: the clock restarts"
    assert settler.settled([growing[1]], now=17.0) == []
    assert settler.settled([growing[1]], now=18.0) == [growing[1]]
    assert settler.settled([Candidate(path, (1, 0, 9))], now=100.0) == [], "empty: never"


# ---- the whole path ----


def test_slides_flow_to_the_destination_and_bad_input_is_quarantined(tmp_path: Path) -> None:
    config = _config(tmp_path)
    inbox = Path(config.ingest.watch[0])
    inbox.mkdir(parents=True)
    write_slide(inbox / "first.svs", 1536, 1024, "svs", seed=1)
    write_slide(inbox / "second.tiff", 1024, 768, "tiff", seed=2)
    (inbox / "broken.svs").write_bytes(b"II*\x00" + os.urandom(5000))
    assert Daemon(config, once=True).run(timeout_s=240) == 0

    with JobStore(config.state_dir / DATABASE) as jobs:
        rows = {r["name"]: r for r in jobs.list()}
    assert rows["first.svs"]["state"] == rows["second.tiff"]["state"] == "done"
    assert rows["first.svs"]["verdict"] in ("pass", "review", "rescan")
    assert rows["first.svs"]["unmatched"], "no sidecar, no worklist: flagged for the technician"
    assert rows["broken.svs"]["state"] == "quarantined"
    assert "broken.svs" not in rows["broken.svs"]["error"] or rows["broken.svs"]["error"]
    assert (inbox / "broken.svs").exists(), "the source is never moved unless configured"

    outgoing = Path(config.destinations[0].path)
    sent = _delivered_sops(outgoing)
    written = [
        p for r in ("first.svs", "second.tiff") for p in Path(rows[r]["output"]).glob("*.dcm")
    ]
    assert len(sent) == len(written) and set(sent.values()) == {1}
    reader = OutboxReader(config.state_dir / DATABASE)
    try:
        assert reader.stats()["destinations"]["local"]["delivered"] == len(written)
    finally:
        reader.close()
    # The pyramid was queued while the QC was still being computed; its QC objects after.
    with sqlite3.connect(config.state_dir / DATABASE) as conn:
        queued = conn.execute(
            "SELECT path, enqueued_at FROM instances WHERE slide_key = ?",
            (f"job-{rows['first.svs']['id']}",),
        ).fetchall()
    qc_at = [at for path, at in queued if Path(path).name.startswith("qc-")]
    pyramid_at = [at for path, at in queued if not Path(path).name.startswith("qc-")]
    assert qc_at and pyramid_at and max(pyramid_at) < min(qc_at)

    # A restart finds the same files and does nothing again.
    assert Daemon(config, once=True).run(timeout_s=60) == 0
    with JobStore(config.state_dir / DATABASE) as jobs:
        assert len(jobs.list()) == 3
    assert _delivered_sops(outgoing) == sent


def test_a_rescan_written_over_the_same_name_is_a_new_job(tmp_path: Path) -> None:
    config = _config(tmp_path, analyse=False)
    inbox = Path(config.ingest.watch[0])
    inbox.mkdir(parents=True)
    slide = write_slide(inbox / "s.svs", 1024, 768, "svs", seed=3)
    assert Daemon(config, once=True).run(timeout_s=120) == 0
    write_slide(slide, 1280, 768, "svs", seed=4)  # the technician rescanned it
    assert Daemon(config, once=True).run(timeout_s=120) == 0
    with JobStore(config.state_dir / DATABASE) as jobs:
        done = [r for r in jobs.list() if r["state"] == "done"]
    assert len(done) == 2 and done[0]["study_uid"] != done[1]["study_uid"]


def test_ingest_pauses_at_the_high_water_mark_and_resumes(tmp_path: Path) -> None:
    config = _config(tmp_path, analyse=False)
    inbox = Path(config.ingest.watch[0])
    inbox.mkdir(parents=True)
    write_slide(inbox / "s.svs", 1024, 768, "svs", seed=5)
    used = {"fraction": 0.97}
    daemon = Daemon(
        config,
        disk_usage=lambda _path: DiskUsage(total=1000, free=round(1000 * (1 - used["fraction"]))),
    )
    runner = threading.Thread(target=daemon.run, kwargs={"timeout_s": 120})
    runner.start()
    try:
        time.sleep(3.0)
        assert daemon.health.ingest_paused.startswith("disk 97% full")
        with JobStore(config.state_dir / DATABASE) as jobs:
            assert jobs.counts()["queued"] == 1 and jobs.counts()["done"] == 0
        used["fraction"] = 0.88  # between the marks: still paused (hysteresis)
        time.sleep(1.5)
        assert daemon.health.ingest_paused
        used["fraction"] = 0.5
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with JobStore(config.state_dir / DATABASE) as jobs:
                if jobs.counts()["done"] == 1:
                    break
            time.sleep(0.3)
        assert not daemon.health.ingest_paused
        with JobStore(config.state_dir / DATABASE) as jobs:
            assert jobs.counts()["done"] == 1
    finally:
        daemon.stop.set()
        runner.join(60)


def _toml(home: Path, body: str = "") -> Path:
    path = home / "edge.toml"
    path.write_text(
        f'[storage]\nstate_dir = "{home / "state"}"\n'
        f'[ingest]\nwatch = ["{home / "inbox"}"]\nsettle_s = 0.5\npoll_s = 0.2\n'
        "[forward]\nretry_base_s = 0.1\nretry_ceiling_s = 0.5\n" + body
    )
    (home / "inbox").mkdir(exist_ok=True)
    return path


def _run(config: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--config", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.integration
@pytest.mark.slow
def test_killed_mid_slide_and_stopped_mid_slide_then_everything_arrives_once(
    tmp_path: Path,
) -> None:
    """SIGKILL during a conversion (power cut), then SIGTERM during the next (shutdown):
    after a restart the PACS holds every instance of every slide, none of them twice."""
    with store_scp(Behaviour(stall_s=0.05)) as scp:
        config = _toml(
            tmp_path,
            f'[[destination]]\nname = "pacs"\nkind = "cstore"\nport = {scp.port}\n'
            'called_aet = "PACS"\ntimeout_s = 5\n',
        )
        inbox = tmp_path / "inbox"
        for seed in range(3):
            write_slide(inbox / f"slide-{seed}.svs", 6144, 4096, "svs", seed=seed)

        proc = _run(config)
        _wait_for(tmp_path, lambda jobs: any(j["state"] == "running" for j in jobs), proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)

        proc = _run(config)
        # The killed run's job is still marked running until the new process recovers it:
        # wait for a second attempt to be under way.
        _wait_for(
            tmp_path,
            lambda jobs: any(j["state"] == "running" and j["attempts"] >= 2 for j in jobs),
            proc,
        )
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "back in the queue (stopping)" in out or "done" in out

        proc = _run(config, "--once", "--timeout", "300")
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out
        with JobStore(tmp_path / "state" / DATABASE) as jobs:
            rows = jobs.list()
        assert [r["state"] for r in rows] == ["done"] * 3, rows
        expected = sum(r["instances"] for r in rows)
        sends = Counter(scp.store_uids)
        assert len(sends) == expected, "every instance of every slide reached the PACS"
        assert max(sends.values()) == 1, "nothing sent twice"
        assert not list((tmp_path / "state" / "slides").rglob(".*partial*")), "no debris"
        assert "PatientName" not in out


def _wait_for(
    home: Path, condition: Callable[[list[dict[str, Any]]], bool], proc: subprocess.Popen[str]
) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        if (home / "state" / DATABASE).exists():
            with JobStore(home / "state" / DATABASE) as jobs:
                if condition(jobs.list()):
                    return
        time.sleep(0.05)
    raise AssertionError("the daemon never got there")


# ---- the command line ----


def test_config_check_explains_mistakes(tmp_path: Path) -> None:
    good = _toml(tmp_path)
    result = run_edge("config", "check", "--config", str(good))
    assert result.returncode == 0 and "valid" in result.stdout
    assert "no [[destination]]" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[ingest]\nwatch = "/srv/scanner"\n')
    result = run_edge("config", "check", "--config", str(bad))
    assert result.returncode == 2
    assert "bad.toml: [ingest]: watch must be a list of text" in result.stderr
    missing = run_edge("run", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 78 and "no such configuration file" in missing.stderr


def test_jobs_cli_lists_quarantine_and_retries(tmp_path: Path) -> None:
    config = _toml(tmp_path)
    (tmp_path / "inbox" / "junk.ndpi").write_bytes(b"not a slide at all")
    result = run_edge("run", "--config", str(config), "--once", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    listing = run_edge("jobs", "--config", str(config), "list")
    assert "quarantined" in listing.stdout and "junk.ndpi" in listing.stdout
    assert run_edge("jobs", "--config", str(config), "retry", "1").returncode == 0
    assert run_edge("jobs", "--config", str(config), "retry", "1").returncode == 1
    with JobStore(tmp_path / "state" / DATABASE) as jobs:
        assert jobs.counts()["queued"] == 1


def test_one_slide_goes_identified_to_the_pacs_and_de_identified_to_research(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "site-secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    config = _toml(
        tmp_path,
        f'[privacy]\nsecret_file = "{secret}"\n'
        f'[[destination]]\nname = "pacs"\nkind = "folder"\npath = "{tmp_path / "pacs"}"\n'
        f'[[destination]]\nname = "research"\nkind = "folder"\npath = "{tmp_path / "research"}"\n'
        'deidentify = "basic"\n',
    )
    slide = write_slide(tmp_path / "inbox" / "s.svs", 1536, 1024, "svs", seed=7)
    slide.with_suffix(".json").write_text(
        '{"PatientName": "Doe^Jane", "PatientID": "MRN-4711", "AccessionNumber": "ACC-1"}'
    )
    for _ in range(2):  # the second run (a restart) must send nothing again
        result = run_edge("run", "--config", str(config), "--once", "--timeout", "120")
        assert result.returncode == 0, result.stderr
    pacs = {
        p.name: pydicom.dcmread(p, stop_before_pixels=True)
        for p in (tmp_path / "pacs").rglob("*.dcm")
    }
    research = [
        pydicom.dcmread(p, stop_before_pixels=True) for p in (tmp_path / "research").rglob("*.dcm")
    ]
    assert {str(ds.PatientName) for ds in pacs.values()} == {"Doe^Jane"}
    assert research and len(research) < len(pacs), "label and overview are not sent to research"
    assert all("LABEL" not in ds.ImageType for ds in research if "ImageType" in ds)
    for ds in research:
        assert ds.PatientID != "MRN-4711" and "Doe" not in str(ds.PatientName)
        assert ds.PatientIdentityRemoved == "YES"
    identified_uids = {str(ds.SOPInstanceUID) for ds in pacs.values()}
    assert not identified_uids & {str(ds.SOPInstanceUID) for ds in research}
    assert len({str(ds.StudyInstanceUID) for ds in research}) == 1, "one pseudonymous study"
    assert "Doe" not in result.stderr and "MRN-4711" not in result.stderr


def test_inotify_sees_a_new_slide_long_before_the_next_poll(tmp_path: Path) -> None:
    base = _config(tmp_path, analyse=False)
    config = dataclasses.replace(
        base, ingest=cfg.Ingest(watch=base.ingest.watch, settle_s=0.5, poll_s=60.0)
    )
    inbox = Path(config.ingest.watch[0])
    inbox.mkdir(parents=True)
    daemon = Daemon(config)
    runner = threading.Thread(target=daemon.run, kwargs={"timeout_s": 60})
    runner.start()
    try:
        time.sleep(1.5)  # the first scan has run; the next poll is a minute away
        write_slide(tmp_path / "s.svs", 1024, 768, "svs")
        os.replace(tmp_path / "s.svs", inbox / "s.svs")  # as a scanner's rename would
        deadline = time.monotonic() + 15
        found = 0
        while time.monotonic() < deadline and not found:
            with JobStore(config.state_dir / DATABASE) as jobs:
                found = sum(jobs.counts().values())
            time.sleep(0.1)
        assert found == 1, "a poll every 60 s would not have found it yet"
    finally:
        daemon.stop.set()
        runner.join(60)


def test_a_ready_marker_is_taken_at_once_and_an_unmarked_slide_waits(tmp_path: Path) -> None:
    """A scanner that writes a marker has said the slide is finished: the hour-long settle
    time configured here must not delay it, and a slide without its marker is not taken."""
    base = _config(tmp_path, analyse=False)
    config = dataclasses.replace(
        base,
        ingest=cfg.Ingest(
            watch=base.ingest.watch, settle_s=3600.0, poll_s=0.2, ready_marker=".done"
        ),
    )
    inbox = Path(config.ingest.watch[0])
    inbox.mkdir(parents=True)
    write_slide(inbox / "marked.svs", 1024, 768, "svs", seed=5)
    (inbox / "marked.svs.done").write_text("")
    write_slide(inbox / "unmarked.svs", 1024, 768, "svs", seed=6)
    assert Daemon(config, once=True).run(timeout_s=90) == 0, "the marked slide waited"
    with JobStore(config.state_dir / DATABASE) as jobs:
        rows = {r["name"]: r["state"] for r in jobs.list()}
    assert rows == {"marked.svs": "done"}


def test_under_systemd_edge_run_notifies_ready_status_watchdog_and_stopping(
    tmp_path: Path,
) -> None:
    """`edge run` as systemd's Type=notify service sees it: a real AF_UNIX datagram socket
    stands in for systemd's, with WATCHDOG_USEC set as WatchdogSec= would."""
    import socket

    config = _toml(tmp_path)
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.2)
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    messages: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(m == "WATCHDOG=1" for m in messages) < 3:
            with contextlib.suppress(TimeoutError):
                messages += sock.recv(4096).decode().splitlines()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        while True:
            try:
                messages += sock.recv(4096).decode().splitlines()
            except TimeoutError:
                break
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "READY=1" in messages
    assert any(m.startswith("STATUS=0 done") for m in messages), messages[:10]
    assert sum(m == "WATCHDOG=1" for m in messages) >= 3, "pinged while the stages beat"
    assert "STOPPING=1" in messages


def test_a_paused_destination_keeps_its_queue_until_resumed(tmp_path: Path) -> None:
    from edge.outbox.store import Outbox

    config = _config(tmp_path, analyse=False)
    inbox = Path(config.ingest.watch[0])
    inbox.mkdir(parents=True)
    with Outbox(config.state_dir / DATABASE) as outbox:
        outbox.set_paused("local", True, "boss")
    write_slide(inbox / "s.svs", 1024, 768, "svs")
    assert Daemon(config, once=True).run(timeout_s=8) == 1, "once-mode cannot finish: paused"
    outgoing = Path(config.destinations[0].path)
    assert not list(outgoing.rglob("*.dcm")), "nothing sent while paused"
    with JobStore(config.state_dir / DATABASE) as jobs:
        (row,) = jobs.list()
    assert row["state"] == "done" and row["deliveries"]["pending"] == row["instances"]
    with Outbox(config.state_dir / DATABASE) as outbox:
        outbox.set_paused("local", False, "boss")
    assert Daemon(config, once=True).run(timeout_s=60) == 0
    assert len(list(outgoing.rglob("*.dcm"))) == row["instances"]


def test_a_slide_deleted_before_its_turn_gets_a_clear_state(tmp_path: Path) -> None:
    """The scanner software deleted (or moved) a slide after it settled: the job says what
    happened, the daemon goes on with the next slide."""
    config = _config(tmp_path, analyse=False)
    inbox = Path(config.ingest.watch[0])
    inbox.mkdir(parents=True)
    gone = write_slide(tmp_path / "gone.svs", 1024, 768, "svs", seed=21)
    with JobStore(config.state_dir / DATABASE) as jobs:
        jobs.add(inbox / "gone.svs", "gone|1|1|1")  # found earlier, deleted since
    gone.unlink()
    write_slide(inbox / "next.svs", 1024, 768, "svs", seed=22)
    assert Daemon(config, once=True).run(timeout_s=60) == 0
    with JobStore(config.state_dir / DATABASE) as jobs:
        rows = {r["name"]: r for r in jobs.list()}
    assert rows["gone.svs"]["state"] == "quarantined"
    assert (
        "no such file" in rows["gone.svs"]["error"].lower()
        or "not found" in rows["gone.svs"]["error"].lower()
    ), rows["gone.svs"]["error"]
    assert rows["next.svs"]["state"] == "done" and rows["next.svs"]["delivered"]


def test_a_capped_destination_gets_level_0_as_concatenation_parts(tmp_path: Path) -> None:
    """`max_instance_bytes` (docs/sync.md): the daemon queues large levels as parts for that
    destination only; the other gets the level whole."""
    config = _toml(
        tmp_path,
        f'[[destination]]\nname = "hub"\nkind = "folder"\npath = "{tmp_path / "hub"}"\n'
        "max_instance_bytes = 1048576\n"
        f'[[destination]]\nname = "pacs"\nkind = "folder"\npath = "{tmp_path / "pacs"}"\n',
    )
    write_slide(tmp_path / "inbox" / "s.svs", 4096, 3072, "svs", seed=31, quality=95)
    done = run_edge("run", "--config", str(config), "--once", "--timeout", "120")
    assert done.returncode == 0, done.stderr
    hub = [pydicom.dcmread(p, stop_before_pixels=True) for p in (tmp_path / "hub").rglob("*.dcm")]
    pacs = [pydicom.dcmread(p, stop_before_pixels=True) for p in (tmp_path / "pacs").rglob("*.dcm")]
    parts = [ds for ds in hub if "ConcatenationUID" in ds]
    assert len(parts) >= 2, "level 0 went in parts"
    assert all(p.stat().st_size <= 1048576 for p in (tmp_path / "hub").rglob("*.dcm"))
    concatenations: dict[str, list[int]] = {}
    for ds in parts:
        concatenations.setdefault(str(ds.ConcatenationUID), []).append(
            int(ds.InConcatenationNumber)
        )
    for uid, numbers in concatenations.items():
        totals = {int(ds.InConcatenationTotalNumber) for ds in parts if ds.ConcatenationUID == uid}
        assert totals == {len(numbers)} and sorted(numbers) == list(range(1, len(numbers) + 1))
    assert not any("ConcatenationUID" in ds for ds in pacs), "the uncapped PACS gets it whole"
    assert len(hub) > len(pacs)


def test_retention_also_removes_levels_that_went_out_as_parts(tmp_path: Path) -> None:
    """Every destination capped: level 0 is queued only as parts, so the outbox alone would
    never remove the original; retention must, once everything is delivered (else the disk of
    a remote site fills), keeping the QC report."""
    (tmp_path / "inbox").mkdir()
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[storage]\nstate_dir = "{tmp_path / "state"}"\nretention_days = 0\n'
        f'[ingest]\nwatch = ["{tmp_path / "inbox"}"]\nsettle_s = 0.5\npoll_s = 0.2\n'
        f'[[destination]]\nname = "hub"\nkind = "folder"\npath = "{tmp_path / "hub"}"\n'
        "max_instance_bytes = 1048576\n"
    )
    write_slide(tmp_path / "inbox" / "s.svs", 4096, 3072, "svs", seed=32, quality=95)
    done = run_edge("run", "--config", str(config), "--once", "--timeout", "120")
    assert done.returncode == 0, done.stderr
    with JobStore(tmp_path / "state" / DATABASE) as jobs:
        (job,) = jobs.list()
    assert job["delivered"]
    assert run_edge("housekeeping", "--config", str(config)).returncode == 0
    assert not list(Path(job["output"]).glob("*.dcm")), "no DICOM left behind"
    assert Path(job["report"]).is_file(), "the QC report stays"
    assert list((tmp_path / "hub").rglob("*.dcm")), "what was delivered is at the hub"


def test_the_models_are_checked_at_start_and_a_broken_set_does_not_stop_the_daemon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The QC code is loaded and the models verified before the first slide: the log says
    which backend and versions run, or why QC is unavailable (the daemon still converts)."""
    config = _config(tmp_path / "good")
    Path(config.ingest.watch[0]).mkdir(parents=True)
    with caplog.at_level("INFO", logger="edge.daemon"):
        assert Daemon(config, once=True).run(timeout_s=60) == 0
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("QC on ")]
    assert started and "artifact" in started[0] and "focus" in started[0], caplog.text
    caplog.clear()

    empty = tmp_path / "no-models"
    empty.mkdir()
    base = _config(tmp_path / "broken")
    broken = dataclasses.replace(base, analysis=cfg.Analysis(models_dir=str(empty)))
    inbox = Path(broken.ingest.watch[0])
    inbox.mkdir(parents=True)
    write_slide(inbox / "s.svs", 1024, 768, "svs", seed=7)
    with caplog.at_level("INFO", logger="edge.daemon"):
        assert Daemon(broken, once=True).run(timeout_s=120) == 0
    assert "QC unavailable: model focus" in caplog.text, caplog.text
    with JobStore(broken.state_dir / DATABASE) as jobs:
        assert [r["state"] for r in jobs.list()] == ["done"], "converted without QC"
