"""Atomic outputs: what a killed conversion leaves behind is cleared by the next one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edge.fileio import partial_dir, replace_dir


def test_a_retry_clears_what_a_killed_process_left_and_spares_a_live_writer(
    tmp_path: Path,
) -> None:
    final = tmp_path / "slide"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    left = tmp_path / f".slide.partial-{int(dead.stdout)}"  # a process that is gone
    left.mkdir()
    (left / "level-0.dcm").write_bytes(b"half a file")
    live = tmp_path / f".slide.partial-{os.getppid()}"  # another process still writing
    live.mkdir()
    other = tmp_path / ".other.partial-1"  # another output's folder: not ours to touch
    other.mkdir()

    temp = partial_dir(final)
    assert temp == tmp_path / f".slide.partial-{os.getpid()}" and temp.is_dir()
    assert not left.exists(), "the killed conversion's debris is gone"
    assert live.exists() and other.exists()
    (temp / "level-0.dcm").write_bytes(b"whole")
    replace_dir(temp, final)
    assert (final / "level-0.dcm").read_bytes() == b"whole" and not temp.exists()
