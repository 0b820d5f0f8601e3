"""Atomic file writes: a reader (QuPath, the dashboard, a forwarder) never sees half a file."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from edge.errors import OutputError


def write_atomic(path: Path, data: bytes) -> None:
    """Write data to a temporary name beside path, fsync, rename onto path; on failure the
    temporary file is removed and path is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(temp: Path, final: Path) -> None:
    """Swap a finished folder into place; an older result is removed only afterwards, so a
    failure leaves either the old folder or the new one, never a mix."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    try:
        if final.exists():
            final.rename(old)
        temp.rename(final)
    except OSError as exc:
        raise OutputError(f"{final}: cannot move the finished output into place: {exc}") from exc
    shutil.rmtree(old, ignore_errors=True)


def partial_dir(final: Path) -> Path:
    """A fresh work folder beside `final` for this process, with what earlier processes left
    there removed: a conversion killed mid-way (power cut, SIGKILL) leaves its
    `.NAME.partial-PID` folder behind, and the retry runs under another PID."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another live process (e.g. a second `edge convert`) is writing it
        shutil.rmtree(stale, ignore_errors=True)
    temp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    temp.mkdir()
    return temp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
