"""Outage: the PACS is down for a while, then back; everything arrives, and the retry delays
grew as configured in between."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.outbox import OutboxReader
from tests.orthanc import Orthanc, orthanc
from tests.test_forward import wsi_files

__all__ = ["orthanc", "wsi_files"]  # fixtures used by name

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_orthanc_down_then_up(orthanc: Orthanc, wsi_files: list[Path], tmp_path: Path) -> None:
    orthanc.clear()
    slide = wsi_files[0].parent
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[storage]\nstate_dir = "{tmp_path / "state"}"\n'
        "[forward]\nretry_base_s = 0.25\nretry_ceiling_s = 4\n"
        f'[[destination]]\nname = "web"\nkind = "stowrs"\nurl = "{orthanc.dicomweb_url}"\n'
        "timeout_s = 5\n"
    )
    orthanc.stop()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge.cli",
                "send",
                str(slide),
                "--to",
                "web",
                "--wait",
                "--timeout",
                "120",
                "--config",
                str(cfg),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(6)  # down long enough for several retries
        assert proc.poll() is None, "the sender must keep waiting through the outage"
    finally:
        orthanc.start()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result = json.loads(out)
    files = list(slide.glob("*.dcm"))
    assert result["delivered"] == len(files) and result["pending"] == 0
    assert result["retries"] >= 2 * len(files)
    assert len(orthanc.instances()) == len(files)

    reader = OutboxReader(tmp_path / "state" / "outbox.sqlite")
    first = reader.list(destination="web", limit=1)[0]
    sends = sorted(
        e["at"]
        for e in reader.events(instance_id=first["instance_id"], limit=1000)
        if e["event"] == "sending"
    )
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert len(gaps) >= 3
    # Exponential backoff (base 0.25 s, factor 2, ±20 % jitter), capped at 4 s (+ jitter).
    assert gaps[2] > gaps[0] * 1.8, gaps
    assert max(gaps) <= 4 * 1.2 + 1.0, gaps
