"""Shared fixtures: real scanner files, synthetic slides, and the real validators.

Real files come from EDGE_TEST_DATA (default ../shared/data/real). Where a real file or a
system tool is missing the test is skipped with the reason, unless EDGE_REQUIRE_ALL=1 (CI),
which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.slide.synthetic import write_slide

REPO = Path(__file__).resolve().parents[1]
REQUIRE_ALL = os.environ.get("EDGE_REQUIRE_ALL") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip (or, in CI, fail) when something the test needs is missing."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"EDGE_REQUIRE_ALL=1 but {reason}")
    pytest.skip(reason)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once on a build disk past the daemon's high-water mark: the daemon tests'
    appliances would (rightly) pause ingest and each wait out its timeout instead."""
    import tempfile

    from edge.config import Storage
    from edge.system.disk import usage

    folder = tempfile.gettempdir()
    used = usage(folder).used_fraction
    if used >= Storage().high_water - 0.01:
        pytest.exit(
            f"{folder} is {used:.0%} full: the daemon pauses ingest at "
            f"{Storage().high_water:.0%} ([storage] high_water), so the daemon tests would "
            "hang until their timeouts. Free some space and run the tests again.",
            returncode=2,
        )


def real_data_dir() -> Path:
    return Path(os.environ.get("EDGE_TEST_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = real_data_dir()
    need(root.is_dir(), f"real scanner files not found at {root} (set EDGE_TEST_DATA)")
    return root


def real_file(relative: str) -> Path:
    path = real_data_dir() / relative
    need(path.exists(), f"real test file {path} is missing (set EDGE_TEST_DATA)")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines starting with "Error" from dciodvfy -new (dicom3tools)."""
    tool = shutil.which("dciodvfy")
    need(tool is not None, "dciodvfy not installed (Debian package dicom3tools)")
    out = subprocess.run(
        [str(tool), "-new", str(path)], capture_output=True, text=True, check=False
    )
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def dcentvfy_errors(paths: list[Path]) -> list[str]:
    tool = shutil.which("dcentvfy")
    need(tool is not None, "dcentvfy not installed (Debian package dicom3tools)")
    out = subprocess.run([str(tool), *map(str, paths)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="session")
def synthetic_svs(synthetic_dir: Path) -> Path:
    return write_slide(synthetic_dir / "synth.svs", 2600, 1800, "svs", seed=1)


@pytest.fixture(scope="session")
def synthetic_tiff(synthetic_dir: Path) -> Path:
    return write_slide(synthetic_dir / "synth-generic.tiff", 2000, 1500, "tiff", seed=2)


@pytest.fixture(scope="session")
def synthetic_ome(synthetic_dir: Path) -> Path:
    return write_slide(synthetic_dir / "synth.ome.tif", 1800, 1300, "ome-tiff", seed=3)


@pytest.fixture()
def out_dir(tmp_path: Path) -> Iterator[Path]:
    out = tmp_path / "out"
    yield out
