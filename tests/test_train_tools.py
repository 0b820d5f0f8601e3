"""tools/train_models.py and tools/qc_bench.py: the guards and choices that decide what a
trained or benchmarked artifact model is measured on."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from edge.synth import texture


@pytest.fixture
def train_models() -> Iterator[ModuleType]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    try:
        import train_models as module

        yield module
    finally:
        sys.path.pop(0)


def test_no_real_texture_stops_training_and_bench(
    train_models: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the real-texture files every kit slide would silently be procedural (what a
    git worktree without EDGE_TEST_DATA gets): stop, naming the variable to set."""
    monkeypatch.setattr(texture, "default_texture_dirs", lambda: [tmp_path])
    with pytest.raises(SystemExit, match="EDGE_TEST_DATA"):
        train_models.require_real_texture()


def test_real_texture_found(train_models: ModuleType, real_data: Path) -> None:
    assert train_models.require_real_texture().is_dir()


def test_calibration_takes_the_middle_of_a_plateau(train_models: ModuleType) -> None:
    import qc_bench

    T = qc_bench.Tally
    # Five cut-offs scoring the same, then recall dropping: the middle one, not the lowest.
    row = [T(tp=20, fp=0, fn=0)] * 5 + [T(tp=18, fp=0, fn=2), T(tp=10, fp=0, fn=10)]
    assert qc_bench.choose_cut(row) == 2
    # Imprecise cut-offs (precision < 0.95) are never chosen while a precise one exists.
    row = [T(tp=40, fp=10, fn=0), T(tp=30, fp=1, fn=10), T(tp=20, fp=0, fn=20)]
    assert qc_bench.choose_cut(row) == 1
