"""Disk watermarks: when ingest must pause, and when the disk is critically full.

`classify()` is the pure rule over (total, free) bytes and the previous state; `usage()` is
the thin statvfs wrapper and `DiskMonitor` keeps the previous state between checks.

States:
- OK: everything runs.
- HIGH: ingest pauses (no new slides are taken; a DICOM receiver answers "out of
  resources"); conversion of slides already taken, forwarding and purging continue.
- CRITICAL: nothing new is written; only forwarding and purging delivered files run.

Each mark can be a fraction of the disk used and/or bytes left free; a mark is reached when
either of its limits is. Hysteresis keeps a disk hovering at a mark from flapping ingest
on and off: HIGH is left only below the low-water mark, CRITICAL only once usage is back by
the same gap (high - low) below the critical mark.
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError

LOGGER = logging.getLogger(__name__)


class DiskError(EdgeError):
    """Watermarks that contradict each other, or a state directory that cannot be measured."""


class DiskState(enum.IntEnum):
    OK = 0
    HIGH = 1  # pause ingest
    CRITICAL = 2  # write nothing new

    @property
    def ingest_allowed(self) -> bool:
        return self is DiskState.OK


@dataclass(frozen=True)
class DiskUsage:
    total: int  # bytes in the file system
    free: int  # bytes an unprivileged writer may still use (statvfs f_bavail)

    @property
    def used_fraction(self) -> float:
        return 1.0 - self.free / self.total if self.total > 0 else 1.0


@dataclass(frozen=True)
class Watermarks:
    """Limits; a fraction of 1.0 or a byte count of 0 switches that limit off."""

    high_used: float = 0.90  # HIGH at or above this fraction used ...
    high_free_bytes: int = 20 << 30  # ... or at or below this many bytes free (two big slides)
    low_used: float = 0.85  # leave HIGH below this fraction used ...
    low_free_bytes: int = 30 << 30  # ... and above this many bytes free
    critical_used: float = 0.97  # CRITICAL at or above this fraction used ...
    critical_free_bytes: int = 5 << 30  # ... or at or below this many bytes free

    def __post_init__(self) -> None:
        for name in ("high_used", "low_used", "critical_used"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise DiskError(f"disk watermark {name}={v}: expected a fraction in (0, 1]")
        for name in ("high_free_bytes", "low_free_bytes", "critical_free_bytes"):
            if getattr(self, name) < 0:
                raise DiskError(f"disk watermark {name}={getattr(self, name)}: expected >= 0")
        if not self.low_used <= self.high_used <= self.critical_used:
            raise DiskError(
                "disk watermarks: expected low_used <= high_used <= critical_used, got "
                f"{self.low_used} / {self.high_used} / {self.critical_used}"
            )
        if not self.low_free_bytes >= self.high_free_bytes >= self.critical_free_bytes:
            raise DiskError(
                "disk watermarks: expected low_free_bytes >= high_free_bytes >= "
                f"critical_free_bytes, got {self.low_free_bytes} / {self.high_free_bytes} / "
                f"{self.critical_free_bytes}"
            )


def _at_or_past(u: DiskUsage, used: float, free_bytes: int) -> bool:
    by_fraction = used < 1.0 and u.used_fraction >= used
    by_bytes = free_bytes > 0 and u.free <= free_bytes
    return by_fraction or by_bytes


def classify(u: DiskUsage, marks: Watermarks, previous: DiskState = DiskState.OK) -> DiskState:
    """The disk state now, given the state at the previous check (for hysteresis)."""
    if _at_or_past(u, marks.critical_used, marks.critical_free_bytes):
        return DiskState.CRITICAL
    if previous is DiskState.CRITICAL:
        gap_used = marks.high_used - marks.low_used
        gap_bytes = marks.low_free_bytes - marks.high_free_bytes
        if _at_or_past(
            u,
            marks.critical_used - gap_used if marks.critical_used < 1.0 else 1.0,
            marks.critical_free_bytes + gap_bytes if marks.critical_free_bytes else 0,
        ):
            return DiskState.CRITICAL
    if _at_or_past(u, marks.high_used, marks.high_free_bytes):
        return DiskState.HIGH
    if previous is not DiskState.OK and not _below_low(u, marks):
        return DiskState.HIGH
    return DiskState.OK


def _below_low(u: DiskUsage, marks: Watermarks) -> bool:
    ok_fraction = marks.high_used >= 1.0 or u.used_fraction < marks.low_used
    ok_bytes = marks.high_free_bytes == 0 or u.free > marks.low_free_bytes
    return ok_fraction and ok_bytes


def usage(path: str | os.PathLike[str]) -> DiskUsage:
    """Total and available bytes of the file system holding `path`."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        raise DiskError(f"{path}: cannot measure free space ({exc.strerror})") from exc
    return DiskUsage(total=st.f_blocks * st.f_frsize, free=st.f_bavail * st.f_frsize)


class DiskMonitor:
    """Remembers the last state of one path so `check()` applies hysteresis; logs changes."""

    def __init__(self, path: str | os.PathLike[str], marks: Watermarks | None = None) -> None:
        self.path = Path(path)
        self.marks = marks or Watermarks()
        self.state = DiskState.OK

    def check(self, u: DiskUsage | None = None) -> DiskState:
        u = usage(self.path) if u is None else u
        new = classify(u, self.marks, self.state)
        if new is not self.state:
            log = LOGGER.info if new < self.state else LOGGER.warning
            log(
                "disk %s: %s -> %s (%.1f%% used, %.1f GiB free)",
                self.path,
                self.state.name,
                new.name,
                100 * u.used_fraction,
                u.free / (1 << 30),
            )
            self.state = new
        return new
