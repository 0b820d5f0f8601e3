"""`edge analyse` and `edge convert --analyse` end to end, as a technician runs them.

Kit slides come from `edge synth` (planted artifacts with known truth); the shipped models
run on ONNX Runtime's CPU backend. The models are retrained from time to time, so expected
identities are read from their manifests and scores are never pinned.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import tifffile
from onnx import TensorProto, helper
from PIL import Image

from edge.analysis.registry import DEFAULT_MODELS_DIR, sha256_file
from edge.synth.model import make_model
from edge.synth.protocol import SlideSpec
from tests.conftest import need, real_file
from tests.helpers import run_edge

MODELS = ("focus", "artifact", "stain")
CLASSES = ("tissue", "blur", "pen", "fold", "bubble", "debris", "edge")
# 3 x 2 mm at 0.5 µm/px: a 4096 x 3072 slide at 0.25 µm/px holds only ~0.14 mm2 of tissue in
# pieces under min_piece_mm2, which is honestly "no tissue found". Seed 8 puts strong pen over
# ~18% of the tissue (truth); seed 3, also strong pen, covers only ~5.5% (at the threshold).
W, H, MPP = 6000, 4000, 0.5
PEN = SlideSpec(W, H, seed=8, mpp=MPP, artifacts=("pen",), severity=1.0, extent=1.0)
CLEAN = SlideSpec(W, H, seed=4, mpp=MPP)
Mask = npt.NDArray[np.bool_]


# ---- helpers ---------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    out = {}
    for name in MODELS:
        path = DEFAULT_MODELS_DIR / name / "manifest.toml"
        need(path.is_file(), f"shipped model {name} has no manifest at {path}")
        out[name] = tomllib.loads(path.read_text())
    return out


def synth(spec: SlideSpec, path: Path) -> Path:
    args = ["synth", "-o", str(path), "--size", f"{spec.width}x{spec.height}"]
    args += ["--seed", str(spec.seed), "--mpp", str(spec.mpp), "-q"]
    if spec.artifacts:
        args += ["--artifacts", ",".join(spec.artifacts)]
    if spec.severity is not None:
        args += ["--severity", str(spec.severity), "--extent", str(spec.extent)]
    done = run_edge(*args)
    assert done.returncode == 0, done.stderr
    return path


def analyse(slide: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_edge("analyse", str(slide), "-o", str(out), "--backend", "ort-cpu", "-q", *extra)


def report_of(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / "report.json").read_text())
    return doc


def plain_tiff(path: Path, value: int, side: int = 1024, mpp: float = 0.25) -> Path:
    """A single-level tiled JPEG TIFF of one colour, with its pixel size in the tags."""
    image = np.full((side, side, 3), value, np.uint8)
    per_cm = 10000.0 / mpp
    tifffile.imwrite(
        path,
        image,
        tile=(256, 256),
        compression="jpeg",
        photometric="rgb",
        resolution=(per_cm, per_cm),
        resolutionunit="CENTIMETER",
    )
    return path


def fill_polygon(rings: list[list[list[int]]], d: int, shape: tuple[int, int]) -> Mask:
    """Rasterise a rectilinear polygon (level-0 corner coordinates, multiples of d) at
    downsample d, even-odd over its rings: exact for outlines along pixel edges."""
    toggles = np.zeros((shape[0], shape[1] + 1), np.int32)
    for ring in rings:
        for (x0, y0), (x1, y1) in itertools.pairwise(ring):
            if x0 != x1:
                continue  # horizontal edges do not cross a row's centre line
            assert x0 % d == 0 and y0 % d == 0 and y1 % d == 0
            lo, hi = sorted((y0 // d, y1 // d))
            toggles[lo:hi, x0 // d] ^= 1
    inside: Mask = np.bitwise_xor.accumulate(toggles, axis=1)[:, :-1] == 1
    return inside


def bad_models(root: Path) -> Path:
    """A copy of the shipped models to damage."""
    manifests()
    target = root / "models"
    shutil.copytree(DEFAULT_MODELS_DIR, target)
    return target


def tiny_stain_model(side: int) -> onnx.ModelProto:
    """A stain-like model (3 classes out) whose input is side x side instead of 32 x 32."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Softmax", ["flat"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "stain",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, side, side])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# ---- fixtures: kit slides, analysed once -----------------------------------------------------


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kit")
    synth(PEN, root / "pen.svs")
    synth(CLEAN, root / "clean.svs")
    return root


@pytest.fixture(scope="module")
def pen_run(kit: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    manifests()
    out = kit / "pen.qc"
    return analyse(kit / "pen.svs", out, "--json"), out


@pytest.fixture(scope="module")
def clean_run(kit: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    manifests()
    out = kit / "clean.qc"
    return analyse(kit / "clean.svs", out), out


# ---- kit slides ------------------------------------------------------------------------------


@pytest.mark.slow
def test_strong_pen_means_rescan(pen_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = pen_run
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)  # --json prints the report
    report = report_of(out)
    assert printed == report
    assert report["verdict"] == "rescan", report["reasons"]
    assert any("pen" in r for r in report["reasons"]), report["reasons"]
    assert report["qc_available"] is True
    assert report["classes"]["pen"]["fraction_of_tissue"] >= 0.05
    truth = make_model(PEN).truth()
    assert truth.needs_rescan and truth.affected_fraction["pen"] > 0.1  # the kit agrees


@pytest.mark.slow
def test_clean_slide_passes(clean_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = clean_run
    assert done.returncode == 0, done.stderr
    report = report_of(out)
    assert "QC PASS" in done.stdout
    assert (report["verdict"], report["reasons"]) == ("pass", [])


@pytest.mark.slow
def test_report_keeps_the_contract(
    pen_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, out = pen_run
    assert done.returncode == 0, done.stderr
    report = report_of(out)
    for key in ("verdict", "reasons", "downsample", "classes", "stain", "priority", "models"):
        assert key in report, key
    assert report["verdict"] in ("pass", "rescan", "review")
    assert report["backend"] == "ort-cpu"
    assert report["stain"] == "H&E"
    assert isinstance(report["priority"], int) and 0 <= report["priority"] <= 100
    d = report["downsample"]
    assert isinstance(d, int) and d >= 1
    shape = (math.ceil(H / d), math.ceil(W / d))
    assert set(CLASSES) <= set(report["classes"])
    for kind in CLASSES:
        entry = report["classes"][kind]
        assert 0.0 <= entry["fraction_of_tissue"] <= 1.0, kind
        png = out / entry["heatmap"]
        assert png.is_file(), png
        with Image.open(png) as image:
            assert image.mode == "L", (kind, image.mode)
            assert (image.height, image.width) == shape
            pixels = np.asarray(image)
        assert pixels.dtype == np.uint8
    # the tissue heatmap shows the tissue: not blank, not everything
    with Image.open(out / "heatmaps" / "tissue.png") as image:
        tissue = np.asarray(image) >= 128
    assert 0.05 < tissue.mean() < 0.95
    expected = {(m["name"], m["version"], m["sha256"]) for m in manifests().values()}
    assert {(m["name"], m["version"], m["sha256"]) for m in report["models"]} == expected
    for name, manifest in manifests().items():  # and the manifests describe the files
        assert sha256_file(DEFAULT_MODELS_DIR / name / manifest["file"]) == manifest["sha256"]


@pytest.mark.slow
def test_pen_regions_are_where_the_pen_is(
    pen_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, out = pen_run
    assert done.returncode == 0, done.stderr
    d = report_of(out)["downsample"]
    collection = json.loads((out / "regions.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    pens = [f for f in collection["features"] if f["properties"]["classification"]["name"] == "Pen"]
    assert pens, [f["properties"]["classification"]["name"] for f in collection["features"]]
    shape = (math.ceil(H / d), math.ceil(W / d))
    truth = make_model(PEN).masks(d)["pen"]
    assert truth.shape == shape and truth.any()
    overlaps = []
    for feature in pens:
        assert feature["geometry"]["type"] == "Polygon"
        rings = feature["geometry"]["coordinates"]
        xs = [x for ring in rings for x, _ in ring]
        ys = [y for ring in rings for _, y in ring]
        assert min(xs) >= 0 and max(xs) <= shape[1] * d  # within the slide (last cell partial)
        assert min(ys) >= 0 and max(ys) <= shape[0] * d
        inside = fill_polygon(rings, d, shape)
        assert inside.any()
        overlaps.append((int(inside.sum()), float(truth[inside].mean())))
    largest = max(overlaps)
    assert largest[1] >= 0.5, overlaps


# ---- bad input -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plain")
    plain_tiff(root / "white.tif", 255)
    plain_tiff(root / "black.tif", 0)
    return root


def test_all_white_slide_has_no_tissue(plain: Path, tmp_path: Path) -> None:
    manifests()
    done = analyse(plain / "white.tif", tmp_path / "qc")
    assert done.returncode == 0, done.stderr
    report = report_of(tmp_path / "qc")
    assert report["verdict"] == "review"
    assert any("no tissue" in r for r in report["reasons"]), report["reasons"]
    assert report["classes"]["tissue"]["fraction_of_slide"] == 0


def test_all_black_slide_gets_a_clear_reason(plain: Path, tmp_path: Path) -> None:
    manifests()
    done = analyse(plain / "black.tif", tmp_path / "qc")
    assert done.returncode == 0, done.stderr
    report = report_of(tmp_path / "qc")
    # Not a slide a technician should wave through: a verdict other than pass, with reasons.
    assert report["verdict"] in ("review", "rescan"), report
    assert report["reasons"] and all(isinstance(r, str) and r for r in report["reasons"])


def test_corrupt_model_makes_qc_unavailable(plain: Path, tmp_path: Path) -> None:
    models = bad_models(tmp_path)
    onnx_file = models / "artifact" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    out = tmp_path / "qc"
    done = analyse(plain / "white.tif", out, "--models-dir", str(models))
    assert done.returncode == 3, (done.stdout, done.stderr)
    said = done.stdout + done.stderr
    assert "QC unavailable" in said and "model.onnx" in said and "sha256" in said
    report = report_of(out)
    assert report["qc_available"] is False and report["verdict"] == "review"
    assert report["reasons"][0].startswith("QC unavailable")
    assert "artifact" in report["reasons"][0] and "model.onnx" in report["reasons"][0]

    # a conversion carrying the analysis still converts, and says why QC is missing
    converted = tmp_path / "dicom"
    done = run_edge(
        "convert", str(plain / "white.tif"), "-o", str(converted), "--analyse",
        "--models-dir", str(models), "--backend", "ort-cpu", "-q",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list((converted / "white").glob("*.dcm")), list(converted.rglob("*"))
    qc_report = json.loads((converted / "white.qc" / "report.json").read_text())
    assert qc_report["qc_available"] is False and qc_report["verdict"] == "review"
    assert "QC unavailable" in qc_report["reasons"][0]


@pytest.mark.parametrize("manifest_side", [32, 48], ids=["manifest-disagrees", "both-48"])
def test_model_of_another_input_size_makes_qc_unavailable(
    plain: Path, tmp_path: Path, manifest_side: int
) -> None:
    models = bad_models(tmp_path)
    onnx.save(tiny_stain_model(48), models / "stain" / "model.onnx")
    manifest = models / "stain" / "manifest.toml"
    text = manifest.read_text()
    old = tomllib.loads(text)
    text = text.replace(old["sha256"], sha256_file(models / "stain" / "model.onnx"))
    text = text.replace("[-1, 3, 32, 32]", f"[-1, 3, {manifest_side}, {manifest_side}]")
    assert tomllib.loads(text)["input"]["shape"] == [-1, 3, manifest_side, manifest_side]
    manifest.write_text(text)
    out = tmp_path / "qc"
    done = analyse(plain / "white.tif", out, "--models-dir", str(models))
    assert done.returncode == 3, (done.stdout, done.stderr)
    reason = report_of(out)["reasons"][0]
    assert reason.startswith("QC unavailable") and "stain" in reason
    assert "48" in reason and "32" in reason, reason


def test_fluorescence_slide_is_not_judged(tmp_path: Path) -> None:
    manifests()
    folder = real_file("dicom-3dhistech-wg26-bpaec")
    done = analyse(folder, tmp_path / "qc")
    assert done.returncode == 3, (done.stdout, done.stderr)
    report = report_of(tmp_path / "qc")
    assert report["qc_available"] is False and report["verdict"] == "review"
    assert "QC unavailable" in report["reasons"][0] and "fluorescence" in report["reasons"][0]


def test_missing_slide_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.svs"
    done = analyse(missing, tmp_path / "qc")
    assert done.returncode == 2
    assert "nowhere.svs" in done.stderr


@pytest.mark.parametrize("keep", [0.5, 0.02], ids=["half", "header-only"])
def test_truncated_svs_exits_2_naming_it(kit: Path, tmp_path: Path, keep: float) -> None:
    manifests()
    data = (kit / "pen.svs").read_bytes()
    broken = tmp_path / "broken-scan.svs"
    broken.write_bytes(data[: int(len(data) * keep)])
    done = analyse(broken, tmp_path / "qc")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "broken-scan.svs" in done.stderr
    assert "Traceback" not in done.stderr


# ---- a real H&E slide ------------------------------------------------------------------------


@pytest.mark.slow
def test_real_he_slide(tmp_path: Path) -> None:
    manifests()
    slide = real_file("aperio-svs/CMU-1-Small-Region.svs")
    done = analyse(slide, tmp_path / "qc")
    assert done.returncode == 0, done.stderr
    report = report_of(tmp_path / "qc")
    assert report["qc_available"] is True
    assert report["stain"] == "H&E", report["stain_scores"]
    assert report["classes"]["tissue"]["fraction_of_slide"] > 0.2
    assert report["mpp"] == pytest.approx(0.499)
    assert report["verdict"] in ("pass", "rescan", "review")


@pytest.mark.slow
def test_config_thresholds_change_the_verdict(
    kit: Path, pen_run: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    """The site's [analysis] thresholds are the verdict's: with pen tolerated up to the whole
    tissue, the same slide is no longer sent back for pen."""
    found = report_of(pen_run[1])["classes"]["pen"]["fraction_of_tissue"]
    config = tmp_path / "edge.toml"
    config.write_text("[analysis]\npen_rescan = 1.0\nreview_share = 1.0\n")
    done = analyse(kit / "pen.svs", tmp_path / "out", "--config", str(config))
    assert done.returncode == 0, done.stderr
    report = report_of(tmp_path / "out")
    assert not any("pen" in r for r in report["reasons"]), report["reasons"]
    assert report["classes"]["pen"]["fraction_of_tissue"] == found  # same findings, other rule
    bad = tmp_path / "bad.toml"
    bad.write_text("[analysis]\npen_rescan = 5\n")
    done = analyse(kit / "pen.svs", tmp_path / "out2", "--config", str(bad))
    assert done.returncode == 2 and "pen_rescan must be a fraction" in done.stderr


@pytest.mark.slow
def test_procedural_texture_sample_is_tissue(tmp_path: Path) -> None:
    """A fresh appliance has no real scans to borrow texture from: `make run`'s sample slide
    is procedural texture, and QC must still see its tissue (it once found none)."""
    from edge.synth.model import make_model
    from edge.synth.writers import write

    spec = SlideSpec(8192, 6144, seed=0)
    slide = write(make_model(spec, procedural=True), tmp_path / "sample.svs", "svs")
    done = analyse(slide, tmp_path / "qc")
    assert done.returncode == 0, done.stderr
    report = report_of(tmp_path / "qc")
    truth = make_model(spec, procedural=True).truth()
    found = report["classes"]["tissue"]["fraction_of_slide"]
    assert abs(found - truth.tissue_fraction) < 0.25 * truth.tissue_fraction, (found, truth)
    assert not any("no tissue" in r for r in report["reasons"]), report["reasons"]
