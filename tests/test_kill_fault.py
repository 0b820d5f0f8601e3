"""Unplug at any moment: a sender killed with SIGKILL 30 times mid-send loses nothing, sends
nothing twice that was already delivered, and re-sends only what was in flight."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from edge.convert import convert
from edge.slide.synthetic import write_slide
from tests.dicom_peers import Behaviour, store_scp
from tests.orthanc import Orthanc, orthanc

__all__ = ["orthanc"]  # fixture used by name

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KILLS = 30
BATCH = 4


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six converted synthetic slides in one folder tree (24 instances)."""
    root = tmp_path_factory.mktemp("kill-slides")
    work = tmp_path_factory.mktemp("kill-src")
    for seed in range(6):
        src = write_slide(work / f"s{seed}.tiff", 1800, 1200, "tiff", seed=seed)
        convert(src, root)
    return root


def _config(tmp_path: Path, body: str) -> Path:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[storage]\nstate_dir = "{tmp_path / "state"}"\n'
        f"[forward]\nbatch_size = {BATCH}\nretry_base_s = 0.1\nretry_ceiling_s = 0.2\n{body}"
    )
    return cfg


def _send(cfg: Path, name: str, slides: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "send",
            str(slides),
            "--to",
            name,
            "--wait",
            "--config",
            str(cfg),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_repeatedly(cfg: Path, name: str, slides: Path, rng: random.Random) -> int:
    """Start the sender and SIGKILL it at random moments; returns how many kills landed."""
    landed = 0
    for _ in range(KILLS):
        proc = _send(cfg, name, slides)
        time.sleep(rng.uniform(0.3, 0.9))  # start-up is ~0.4 s, then a batch every ~1 s
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            landed += 1
        proc.communicate(timeout=60)
    return landed


def _finish(cfg: Path, name: str, slides: Path) -> dict[str, int]:
    proc = _send(cfg, name, slides)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    result: dict[str, int] = json.loads(out)
    assert result["pending"] == 0 and result["parked"] == 0
    return result


def test_cstore_killed_30_times(slides: Path, tmp_path: Path) -> None:
    total = len(list(slides.rglob("*.dcm")))
    rng = random.Random(20261127)
    # A slow PACS (250 ms per instance) keeps each run busy sending when the kill comes.
    with store_scp(Behaviour(stall_s=0.25)) as scp:
        cfg = _config(
            tmp_path,
            f'[[destination]]\nname = "pacs"\nkind = "cstore"\n'
            f'port = {scp.port}\ncalled_aet = "PACS"\ntimeout_s = 5\n',
        )
        landed = _kill_repeatedly(cfg, "pacs", slides, rng)
        _finish(cfg, "pacs", slides)
        sends = Counter(scp.store_uids)
        assert len(sends) == total, "every instance reached the PACS"
        resent = sum(n - 1 for n in sends.values())
        # Only what was in flight at a kill is sent again: at most one batch per kill.
        assert resent <= landed * BATCH, (resent, landed)
        before = len(scp.store_uids)
        again = _finish(cfg, "pacs", slides)  # a clean restart sends nothing already delivered
        assert len(scp.store_uids) == before and again["delivered"] == 0
    assert landed >= 2 * KILLS // 3, f"only {landed} kills landed while the sender ran"


def test_stowrs_killed_30_times(slides: Path, tmp_path: Path, orthanc: Orthanc) -> None:
    orthanc.clear()
    total = len(list(slides.rglob("*.dcm")))
    rng = random.Random(27112026)
    cfg = _config(
        tmp_path,
        f'[[destination]]\nname = "web"\nkind = "stowrs"\nurl = "{orthanc.dicomweb_url}"\n',
    )
    landed = _kill_repeatedly(cfg, "web", slides, rng)
    _finish(cfg, "web", slides)
    stored = orthanc.instances()
    assert len(stored) == total and len(set(stored)) == total  # all there, one copy each
    assert landed >= 1
