"""`edge convert` and `edge synth` as a technician runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli import main
from tests.helpers import run_edge as run


def test_json_summary_lists_instances(synthetic_svs: Path, tmp_path: Path) -> None:
    proc = run("convert", str(synthetic_svs), "-o", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["failed"] == []
    [result] = summary["converted"]
    assert result["output"] == str(tmp_path / "synth")
    hows = {i["how"] for i in result["instances"]}
    assert hows == {"copied", "re-encoded"}  # levels copied; label, macro, thumbnail encoded
    assert all((tmp_path / "synth" / i["file"]).is_file() for i in result["instances"])


def test_one_bad_file_does_not_stop_the_others(synthetic_tiff: Path, tmp_path: Path) -> None:
    bad = tmp_path / "notes.svs"
    bad.write_text("not a slide")
    out = tmp_path / "out"
    proc = run("convert", str(bad), str(synthetic_tiff), "-o", str(out))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "not a TIFF" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["synth-generic"]


def test_colliding_output_names_are_refused(synthetic_dir: Path, tmp_path: Path) -> None:
    from edge.slide.synthetic import write_slide

    a = write_slide(synthetic_dir / "same.svs", 300, 200, "svs")
    b = write_slide(synthetic_dir / "same.tiff", 300, 200, "tiff")
    proc = run("convert", str(a), str(b), "-o", str(tmp_path))
    assert proc.returncode == 2
    assert "already taken" in proc.stderr
    assert (tmp_path / "same").is_dir()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quality", "0"], "quality 0"),
        (["--uid-root", "1.2.abc"], "UID root"),
        (["--mpp", "-1"], "--mpp"),
    ],
)
def test_bad_options_exit_2(
    args: list[str],
    message: str,
    synthetic_tiff: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["convert", str(synthetic_tiff), "-o", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_synth_then_convert(tmp_path: Path) -> None:
    slide = tmp_path / "site-check.svs"
    assert run("synth", "-o", str(slide), "--size", "1200x900").returncode == 0
    proc = run("convert", str(slide), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0
    assert "copied without re-encoding" in proc.stdout
    assert run("synth", "-o", str(slide), "--size", "5x5").returncode == 2
