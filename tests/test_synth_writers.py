"""Synthetic-slide writers: every format opens in the independent readers (OpenSlide, tifffile)
with the model's size, pixel size, levels and associated images, holds the model's pixels, and
converts to DICOM that dciodvfy accepts; writing streams tile by tile; `edge synth` refuses
nonsense with one line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from edge.cli import main
from edge.convert import convert
from edge.slide.model import AssociatedKind, Codec
from edge.slide.open import open_slide
from edge.synth.protocol import RGB, Mask, SlideModel, SlideSpec, Truth
from edge.synth.simple import SimpleModel
from edge.synth.writers import write
from tests.conftest import dciodvfy_errors
from tests.helpers import dicom_mosaic, psnr

SPEC = SlideSpec(2048, 1536, seed=7, mpp=0.5, barcode="SYN-42")
NAMES = {"svs": "s.svs", "tiff": "g.tiff", "ome-tiff": "o.ome.tif", "ndpi": "n.ndpi"}


@pytest.fixture(scope="module")
def model() -> SimpleModel:
    return SimpleModel(SPEC)


@pytest.fixture(scope="module")
def written(model: SimpleModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth-writers")
    out = {fmt: write(model, root / name, fmt) for fmt, name in NAMES.items()}
    out["svs-j2k"] = write(model, root / "j.svs", "svs", jpeg2000=True)
    out["dicom"] = write(model, root / "dicom", "dicom")
    return out


def _openslide_level(path: Path, level: int) -> RGB:
    slide = openslide.OpenSlide(str(path))
    try:
        width, height = slide.level_dimensions[level]
        return np.asarray(slide.read_region((0, 0), level, (width, height)).convert("RGB"))
    finally:
        slide.close()


def _model_level(model: SlideModel, downsample: int) -> RGB:
    width, height = -(-SPEC.width // downsample), -(-SPEC.height // downsample)
    return model.region(0, 0, width, height, downsample)


@pytest.mark.parametrize("fmt", ["svs", "svs-j2k"])
def test_svs_is_an_aperio_slide_in_openslide(
    fmt: str, written: dict[str, Path], model: SimpleModel
) -> None:
    path = written[fmt]
    slide = openslide.OpenSlide(str(path))
    try:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert slide.level_dimensions == ((2048, 1536), (512, 384))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert slide.properties["aperio.AppMag"] == "20"
        assert slide.properties["aperio.Barcode"] == "SYN-42"
        assert slide.properties["aperio.Filename"] == path.stem
        assert set(slide.associated_images) == {"label", "macro", "thumbnail"}
        label = np.asarray(slide.associated_images["label"].convert("RGB"))
        assert np.array_equal(label, model.label())  # LZW: lossless
    finally:
        slide.close()
    with tifffile.TiffFile(path) as tif:
        assert tif.is_svs
        assert tif.pages[0].compression == (33005 if fmt == "svs-j2k" else 7)
        assert not tif.pages[1].is_tiled  # page 1 is the striped thumbnail
    assert psnr(_openslide_level(path, 0), _model_level(model, 1)) > 30
    assert psnr(_openslide_level(path, 1), _model_level(model, 4)) > 30


def test_generic_tiff_levels_halve_down_to_one_tile(
    written: dict[str, Path], model: SimpleModel
) -> None:
    slide = openslide.OpenSlide(str(written["tiff"]))
    try:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_dimensions == (
            (2048, 1536),
            (1024, 768),
            (512, 384),
            (256, 192),
        )
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    finally:
        slide.close()
    for level, downsample in enumerate((1, 2, 4, 8)):
        expected = _model_level(model, downsample)
        assert psnr(_openslide_level(written["tiff"], level), expected) > 30


def test_ome_tiff_has_a_subifd_pyramid_and_physical_size(
    written: dict[str, Path], model: SimpleModel
) -> None:
    with tifffile.TiffFile(written["ome-tiff"]) as tif:
        assert tif.is_ome
        assert len(tif.pages) == 3  # level 0, label, macro; smaller levels are SubIFDs
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata
        series = tif.series[0]
        assert [lvl.shape[:2] for lvl in series.levels] == [
            (1536, 2048),
            (768, 1024),
            (384, 512),
            (192, 256),
        ]
        assert [s.name for s in tif.series[1:]] == ["label", "macro"]
        assert psnr(series.levels[0].asarray(), _model_level(model, 1)) > 30
        assert psnr(series.levels[2].asarray(), _model_level(model, 4)) > 30
    source = open_slide(written["ome-tiff"])
    try:
        assert source.metadata.format == "ome-tiff"
        assert source.metadata.mpp == pytest.approx(0.5)
        assert {a.kind for a in source.associated} == {
            AssociatedKind.LABEL,
            AssociatedKind.OVERVIEW,
        }
    finally:
        source.close()


def test_ndpi_is_hamamatsu_to_tifffile_edge_and_openslide(
    written: dict[str, Path], model: SimpleModel
) -> None:
    path = written["ndpi"]
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ndpi
        page = tif.series[0].levels[0].keyframe
        assert page.ndpi_tags["Magnification"] == 20
        assert len(page.ndpi_tags["McuStarts"]) == 1536 // 8  # one restart segment per MCU row
        assert [s.name for s in tif.series] == ["Baseline", "Macro"]
        assert psnr(tif.series[0].levels[0].asarray(), _model_level(model, 1)) > 30
    source = open_slide(path)
    try:
        assert source.metadata.format == "hamamatsu-ndpi"
        assert source.metadata.mpp == pytest.approx(0.5)
        assert [(lv.width, lv.height) for lv in source.levels] == [
            (2048, 1536),
            (1024, 768),
            (512, 384),
            (256, 192),
        ]
    finally:
        source.close()
    slide = openslide.OpenSlide(str(path))
    try:
        assert slide.properties["openslide.vendor"] == "hamamatsu"
        assert slide.dimensions == (2048, 1536)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert "macro" in slide.associated_images
    finally:
        slide.close()
    assert psnr(_openslide_level(path, 0), _model_level(model, 1)) > 30


def test_ndpi_of_any_size_reads_in_edge(tmp_path: Path) -> None:
    """Sides that are not whole 8-px MCUs: one level, read correctly by tifffile and edge."""
    odd = SimpleModel(SlideSpec(1001, 703, seed=2))
    path = write(odd, tmp_path / "odd.ndpi", "ndpi")
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].shape == (703, 1001, 3)
        assert psnr(tif.series[0].asarray(), odd.region(0, 0, 1001, 703)) > 30
    result = convert(path, tmp_path / "out")
    level0 = Path(result.output) / "level-00.dcm"
    assert psnr(dicom_mosaic(level0), odd.region(0, 0, 1001, 703)) > 30


@pytest.mark.parametrize("fmt", ["svs", "svs-j2k", "tiff", "ome-tiff", "ndpi"])
def test_every_format_converts_to_valid_dicom(
    fmt: str, written: dict[str, Path], model: SimpleModel, tmp_path: Path
) -> None:
    result = convert(written[fmt], tmp_path)
    out = Path(result.output)
    level0 = next(i for i in result.instances if i["file"] == "level-00.dcm")
    assert (level0["width"], level0["height"]) == (2048, 1536)
    assert psnr(dicom_mosaic(out / "level-00.dcm"), _model_level(model, 1)) > 30
    for instance in result.instances:
        assert dciodvfy_errors(out / instance["file"]) == [], instance["file"]


def test_dicom_format_is_valid_wsi_down_to_one_tile(
    written: dict[str, Path], model: SimpleModel
) -> None:
    folder = written["dicom"]
    names = sorted(p.name for p in folder.iterdir())
    levels = [n for n in names if n.startswith("level-")]
    assert len(levels) == 4  # 2048 -> 256: 2x levels until one 256 tile holds the level
    assert {"label.dcm", "overview.dcm", "thumbnail.dcm"} <= set(names)
    for name in names:
        assert dciodvfy_errors(folder / name) == [], name
    slide = openslide.OpenSlide(str(folder / "level-00.dcm"))
    try:
        assert slide.properties["openslide.vendor"] == "dicom"
        assert slide.level_dimensions[0] == (2048, 1536)
        assert slide.level_dimensions[-1] == (256, 192)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    finally:
        slide.close()
    assert psnr(dicom_mosaic(folder / "level-02.dcm"), _model_level(model, 4)) > 30


@pytest.mark.parametrize(("fmt", "name"), [*NAMES.items(), ("dicom", "dicom")])
def test_same_seed_same_bytes(fmt: str, name: str, tmp_path: Path) -> None:
    def files(seed: int, folder: str) -> dict[str, bytes]:
        path = write(SimpleModel(SlideSpec(700, 500, seed=seed)), tmp_path / folder / name, fmt)
        paths = sorted(path.iterdir()) if path.is_dir() else [path]
        return {p.name: p.read_bytes() for p in paths}

    first = files(11, "a")
    assert first == files(11, "b")
    assert first != files(12, "c")


class _Recording:
    """A SlideModel wrapper that remembers the largest region each writer asked for."""

    def __init__(self, inner: SlideModel) -> None:
        self.inner, self.spec, self.largest = inner, inner.spec, 0

    def region(self, x: int, y: int, width: int, height: int, downsample: int = 1) -> RGB:
        self.largest = max(self.largest, width * height)
        return self.inner.region(x, y, width, height, downsample)

    def masks(self, downsample: int) -> dict[str, Mask]:
        return self.inner.masks(downsample)

    def truth(self) -> Truth:
        return self.inner.truth()

    def label(self) -> RGB:
        return self.inner.label()

    def macro(self) -> RGB:
        return self.inner.macro()


@pytest.mark.parametrize("fmt", ["svs", "tiff", "ome-tiff", "ndpi", "dicom"])
def test_writers_stream_one_tile_or_strip_at_a_time(fmt: str, tmp_path: Path) -> None:
    """A 4096 x 4096 slide is never rendered in pieces larger than a tile, an 8-row NDPI strip
    or the 1024-px thumbnail; progress counts every tile up to the total."""
    recording = _Recording(SimpleModel(SlideSpec(4096, 4096, seed=3)))
    seen: list[tuple[int, int]] = []
    write(recording, tmp_path / f"big.{fmt}", fmt, progress=lambda d, t: seen.append((d, t)))
    assert recording.largest <= max(256 * 256, 4096 * 8, 1024 * 1024)
    assert seen[-1][0] == seen[-1][1] > 0
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_simple_model_regions_do_not_depend_on_the_request() -> None:
    model = SimpleModel(SlideSpec(3000, 2000, seed=5))
    whole = model.region(0, 0, 800, 600, 2)
    assert np.array_equal(model.region(300, 200, 256, 256, 2), whole[200:456, 300:556])
    past_edge = model.region(1400, 900, 256, 256, 2)  # the level is 1500 x 1000
    assert (past_edge[150:, :] == (242, 240, 244)).all()
    assert (past_edge[:, 150:] == (242, 240, 244)).all()
    assert np.array_equal(
        SimpleModel(SlideSpec(3000, 2000, seed=5)).region(0, 0, 800, 600, 2), whole
    )
    tissue = model.masks(16)["tissue"]
    assert tissue.shape == (125, 188) and 0.2 < tissue.mean() < 0.8


def test_edge_reads_every_format_with_its_codec(written: dict[str, Path]) -> None:
    expected = {
        "svs": Codec.JPEG,
        "svs-j2k": Codec.JPEG2000,
        "tiff": Codec.JPEG,
        "ome-tiff": Codec.JPEG,
        "ndpi": Codec.NONE,
    }
    for fmt, codec in expected.items():
        source = open_slide(written[fmt])
        try:
            assert source.levels[0].codec is codec, fmt
            assert source.metadata.mpp == pytest.approx(0.5), fmt
        finally:
            source.close()


CLI_ARGS = ["--size", "640x480", "--format", "ndpi", "--seed", "3", "--tissue", "IHC", "--truth"]


def test_cli_writes_a_slide(tmp_path: Path) -> None:
    out = tmp_path / "cli.ndpi"
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "synth", *CLI_ARGS, "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ndpi and tif.series[0].shape == (480, 640, 3)
    truth = out.with_name(out.name + ".truth.json")
    assert truth.is_file() or "ground truth skipped" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "0x100"], "width 0"),
        (["--size", "-5x100"], "width -5"),
        (["--size", "100x"], "expected WIDTHxHEIGHT"),
        (["--size", "200001x100"], "16..200000"),
        (["--format", "bmp"], "choose one of svs, tiff, ome-tiff, ndpi, dicom"),
        (["--artifacts", "blur,smudge"], "unknown smudge"),
        (["--texture", "/no/such/folder"], "no such folder"),
        (["--seed", "x"], "--seed"),
        (["--mpp", "0"], "mpp"),
        (["--tissue", "PAS"], "H&E or IHC"),
        (["--severity", "1.5"], "--severity '1.5': expected a number from 0 to 1"),
        (["--extent", "-0.1"], "--extent '-0.1': expected a number from 0 to 1"),
        (["--extent", "big"], "--extent 'big'"),
        (["--format", "ndpi", "--jpeg2000"], "JPEG only"),
        (["--format", "ndpi", "--size", "70000x64"], "at most 65500 pixels wide"),
    ],
)
def test_cli_refuses_nonsense_with_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["synth", "-o", str(tmp_path / "x.svs"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not any(tmp_path.iterdir())


def test_cli_sets_artifact_severity_and_extent(tmp_path: Path) -> None:
    out = tmp_path / "set.tiff"
    args = ["--size", "320x240", "--format", "tiff", "--artifacts", "blur,bubble", "--truth"]
    assert main(["synth", "-q", "-o", str(out), *args, "--severity", "0.7", "--extent=0.4"]) == 0
    truth = json.loads(out.with_name(out.name + ".truth.json").read_text())
    assert (truth["spec"]["severity"], truth["spec"]["extent"]) == (0.7, 0.4)
    assert [(a["set_severity"], a["set_extent"]) for a in truth["artifacts"]] == [(0.7, 0.4)] * 2
