"""Disk watermarks: the pure rule with hysteresis, and the statvfs wrapper on a real path."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from edge.system.disk import (
    DiskError,
    DiskMonitor,
    DiskState,
    DiskUsage,
    Watermarks,
    classify,
    usage,
)

GB = 10**9
FRACTIONS = Watermarks(
    high_used=0.90,
    low_used=0.85,
    critical_used=0.97,
    high_free_bytes=0,
    low_free_bytes=0,
    critical_free_bytes=0,
)


def used(fraction: float, total: int = 1000 * GB) -> DiskUsage:
    return DiskUsage(total=total, free=round(total * (1 - fraction)))


def walk(marks: Watermarks, fractions: list[float]) -> list[str]:
    state = DiskState.OK
    out = []
    for f in fractions:
        state = classify(used(f), marks, state)
        out.append(state.name)
    return out


def test_fraction_marks_with_hysteresis() -> None:
    assert walk(FRACTIONS, [0.50, 0.89, 0.90, 0.88, 0.86, 0.849, 0.88]) == [
        "OK",
        "OK",
        "HIGH",
        "HIGH",
        "HIGH",
        "OK",
        "OK",
    ]
    # CRITICAL is left only 0.05 (high - low) below the critical mark, into HIGH, then OK.
    assert walk(FRACTIONS, [0.97, 0.95, 0.919, 0.87, 0.84]) == [
        "CRITICAL",
        "CRITICAL",
        "HIGH",
        "HIGH",
        "OK",
    ]
    assert walk(FRACTIONS, [0.99, 0.50]) == ["CRITICAL", "OK"]


def test_byte_marks_on_a_small_disk() -> None:
    marks = Watermarks(
        high_used=1.0,
        low_used=1.0,
        critical_used=1.0,
        high_free_bytes=20 * GB,
        low_free_bytes=30 * GB,
        critical_free_bytes=5 * GB,
    )
    total = 100 * GB

    def at(free_gb: float, prev: DiskState) -> DiskState:
        return classify(DiskUsage(total, int(free_gb * GB)), marks, prev)

    assert at(21, DiskState.OK) is DiskState.OK
    assert at(20, DiskState.OK) is DiskState.HIGH
    assert at(29, DiskState.HIGH) is DiskState.HIGH
    assert at(31, DiskState.HIGH) is DiskState.OK
    assert at(5, DiskState.HIGH) is DiskState.CRITICAL
    assert at(14, DiskState.CRITICAL) is DiskState.CRITICAL  # needs > 5 + 10 GB
    assert at(16, DiskState.CRITICAL) is DiskState.HIGH


def test_either_limit_reaches_a_mark() -> None:
    marks = Watermarks()  # defaults: 90 % used or 20 GiB free
    big = DiskUsage(total=4000 * GB, free=300 * GB)  # 92.5 % used, 300 GB free
    assert classify(big, marks) is DiskState.HIGH
    small = DiskUsage(total=64 * GB, free=19 * (1 << 30))  # 70 % used, < 20 GiB free
    assert classify(small, marks) is DiskState.HIGH
    assert not DiskState.HIGH.ingest_allowed and DiskState.OK.ingest_allowed


def test_inconsistent_marks_are_refused() -> None:
    with pytest.raises(DiskError, match="low_used <= high_used"):
        Watermarks(high_used=0.8, low_used=0.9)
    with pytest.raises(DiskError, match=r"critical_used=1\.5"):
        Watermarks(critical_used=1.5)
    with pytest.raises(DiskError, match="low_free_bytes >= high_free_bytes"):
        Watermarks(low_free_bytes=1, high_free_bytes=2, critical_free_bytes=0)


def test_usage_of_a_real_path_matches_statvfs(tmp_path: Path) -> None:
    u = usage(tmp_path)
    st = os.statvfs(tmp_path)
    assert u.total == st.f_blocks * st.f_frsize > 0
    assert 0 <= u.free <= u.total
    with pytest.raises(DiskError, match="no-such-dir"):
        usage(tmp_path / "no-such-dir")


def test_monitor_logs_transitions_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mon = DiskMonitor(tmp_path, FRACTIONS)
    assert mon.check() in set(DiskState)  # the real disk, whatever its state
    mon.state = DiskState.OK
    caplog.set_level(logging.INFO, logger="edge.system.disk")
    caplog.clear()
    for f in (0.91, 0.92, 0.80):
        mon.check(used(f))
    assert [r.getMessage().split(": ")[1].split(" (")[0] for r in caplog.records] == [
        "OK -> HIGH",
        "HIGH -> OK",
    ]
