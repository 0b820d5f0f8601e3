"""tools/bench: the measuring helpers and a small pace run, so the benchmark the docs quote keeps
working (its numbers are measured by running it, never asserted here)."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import load_script

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "tools" / "bench"


bench = load_script(BENCH, "edge_bench_tool")


def test_process_cpu_counts_the_work_a_process_has_done() -> None:
    before = bench.process_cpu(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # 0.3 s of CPU in this process
        pass
    assert bench.process_cpu(os.getpid()) - before >= 0.2
    assert bench.process_cpu(2**22 + 12345) == 0.0  # no such process


def test_run_measured_reports_the_child_cpu(tmp_path: Path) -> None:
    spin = "import time\nt = time.process_time() + 0.3\nwhile time.process_time() < t: pass"
    wall, rss, _, code, cpu = bench.run_measured([sys.executable, "-c", spin], tmp_path / "log", 60)
    assert code == 0 and cpu >= 0.25 and wall >= cpu * 0.5 and rss > 0


def test_job_steps_reads_queueing_and_verdict_times(tmp_path: Path) -> None:
    database = tmp_path / "state.sqlite"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE instances (enqueued_at REAL)")
        conn.execute("CREATE TABLE jobs (finished_at REAL)")
        conn.executemany("INSERT INTO instances VALUES (?)", [(102.5,), (107.0,)])
        conn.execute("INSERT INTO jobs VALUES (106.25)")
    assert bench._job_steps(database, 100.0) == "2.5 / 6.2"
    empty = tmp_path / "empty.sqlite"
    with sqlite3.connect(empty) as conn:
        conn.execute("CREATE TABLE instances (enqueued_at REAL)")
        conn.execute("CREATE TABLE jobs (finished_at REAL)")
    assert bench._job_steps(empty, 100.0) == ""


@pytest.mark.slow
def test_pace_runs_on_a_small_slide_and_reports_cpu(tmp_path: Path) -> None:
    out = tmp_path / "pace.md"
    done = subprocess.run(
        [sys.executable, str(BENCH), "pace", "--size", "4096", "--workdir", str(tmp_path),
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| edge ")]
    assert [r.split("|")[1].strip() for r in rows] == [
        "edge convert",
        "edge convert + analyse",
        "edge analyse alone",
    ]
    for row in rows:
        wall, mps, cpu, rss = (float(v) for v in re.findall(r"\| ([0-9.]+) ", row + " "))
        assert wall > 0 and mps > 0 and cpu > 0 and rss > 0
