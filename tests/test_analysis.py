"""Pure and component tests of edge.analysis: sampling geometry, the mosaic, DCT-scaled
decoding, the ONNX networks, dense inference over windows and the QC verdict.

The shipped models are being retrained from time to time: these tests read their manifests
and never pin a sha256 or a score.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from edge.analysis import nets, qc
from edge.analysis import run as run_module
from edge.analysis import sampler as sampler_module
from edge.analysis.api import analyse_file, analyse_path
from edge.analysis.dense import (
    HALF_TINY,
    INNER,
    MARGIN,
    WINDOW,
    DensePredictor,
    predict_dense,
)
from edge.analysis.registry import DEFAULT_MODELS_DIR
from edge.analysis.run import AnalysisOptions, AnalysisResult, priority, tissue_patches
from edge.analysis.sampler import (
    GLASS_SPREAD,
    MAX_MOSAIC_PIXELS,
    TISSUE_DARK,
    AnalysisSampler,
    FocusCrop,
    FocusGrid,
    Geometry,
    MosaicAccumulator,
    _cuts,
    focus_level,
    glass_gate,
    low_level,
    low_mosaic,
    reduced_tile,
    tissue_like,
)
from edge.convert import ConvertOptions
from edge.pipeline import Stopping, convert_and_analyse
from edge.slide.model import Codec, Level
from edge.slide.open import open_slide
from edge.slide.source import Frame, SlideSource
from edge.slide.stream import StreamTile, stream_tiles
from edge.slide.synthetic import tissue
from tests.conftest import need, real_file
from tests.helpers import psnr, read_level

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
GLASS = (238, 236, 240)


# ---- helpers ---------------------------------------------------------------------------------


def block_mean_rounded(image: U8, step: int) -> U8:
    """Exact block means (partial cells at the right/bottom edges average what exists),
    rounded half up, in integer arithmetic."""
    h, w = image.shape[:2]
    bh, bw = math.ceil(h / step), math.ceil(w / step)
    sums = np.zeros((bh * step, bw * step, 3), np.int64)
    ones = np.zeros((bh * step, bw * step), np.int64)
    sums[:h, :w] = image
    ones[:h, :w] = 1
    s = sums.reshape(bh, step, bw, step, 3).sum(axis=(1, 3))
    n = ones.reshape(bh, step, bw, step).sum(axis=(1, 3))[:, :, None]
    out: U8 = ((s + n // 2) // n).astype(np.uint8)
    return out


def pixel_tile(pixels: U8, tile: int, index: int = 0) -> StreamTile:
    """A frame carrying decoded pixels only (a codec the writer re-encodes)."""
    level = Level(0, tile, tile, tile, tile, Codec.NONE, samples=1 if pixels.ndim == 2 else 3)
    frame = Frame(level, index, None, pixels)
    return StreamTile(frame, source=None)  # type: ignore[arg-type]  # pixels need no source


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def run_onnx(sess: ort.InferenceSession, x: F32) -> F32:
    out: F32 = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return out


def shipped(name: str) -> tuple[dict[str, Any], Path]:
    """The shipped model's manifest (parsed TOML) and its ONNX file; skipped when absent."""
    folder = DEFAULT_MODELS_DIR / name
    manifest = folder / "manifest.toml"
    need(manifest.is_file(), f"shipped model {name} has no manifest at {manifest}")
    data = tomllib.loads(manifest.read_text())
    path = folder / str(data["file"])
    need(path.is_file(), f"shipped model file {path} is missing")
    return data, path


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def softmax(x: npt.NDArray[np.float64], axis: int) -> npt.NDArray[np.float64]:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    out: npt.NDArray[np.float64] = e / e.sum(axis=axis, keepdims=True)
    return out


# ---- Geometry.plan ---------------------------------------------------------------------------


@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_plan_samples_focus_at_1um_and_mosaic_at_4um(mpp: float) -> None:
    g = Geometry.plan(20000, 15000, mpp)
    assert g.decode_scale in (1, 2, 4, 8)
    assert g.decode_scale * mpp == pytest.approx(1.0)
    assert g.mosaic_mpp == pytest.approx(4.0)
    assert g.mosaic_downsample % g.decode_scale == 0
    assert g.mosaic_shape == (math.ceil(15000 / g.mosaic_downsample), 20000 // g.mosaic_downsample)


@pytest.mark.parametrize("mpp", [0.11, 0.3, 0.7, 2.0])
def test_plan_stays_within_a_factor_sqrt2_of_the_targets(mpp: float) -> None:
    g = Geometry.plan(8000, 8000, mpp)  # small enough that the mosaic bound does not bite
    assert 1 / math.sqrt(2) <= g.decode_scale * mpp <= math.sqrt(2) or g.decode_scale in (1, 8)
    assert 4 / math.sqrt(2) <= g.mosaic_mpp <= 4 * math.sqrt(2)
    assert g.mosaic_downsample % g.decode_scale == 0


def test_plan_bounds_the_mosaic_of_a_huge_slide() -> None:
    g = Geometry.plan(200000, 200000, 0.25)
    h, w = g.mosaic_shape
    assert h * w <= MAX_MOSAIC_PIXELS
    # and the downsample is the smallest power of two that keeps it under the bound
    half = g.mosaic_downsample // 2
    assert math.ceil(200000 / half) ** 2 > MAX_MOSAIC_PIXELS
    assert g.decode_scale == 4  # focus sampling is not coarsened by the mosaic bound


# ---- MosaicAccumulator and _cuts ---------------------------------------------------------------


def assemble(
    geometry: Geometry, tile: int, rng: np.random.Generator
) -> tuple[list[tuple[int, int, U8]], U8]:
    """Random reduced tiles covering the slide, and the reduced image they assemble to."""
    s = geometry.decode_scale
    rt = tile // s
    rh, rw = math.ceil(geometry.height / s), math.ceil(geometry.width / s)
    across, down = math.ceil(geometry.width / tile), math.ceil(geometry.height / tile)
    canvas = np.zeros((down * rt, across * rt, 3), np.uint8)
    tiles = []
    for r in range(down):
        for c in range(across):
            pixels = rng.integers(0, 256, (rt, rt, 3), dtype=np.uint8)
            canvas[r * rt : (r + 1) * rt, c * rt : (c + 1) * rt] = pixels
            tiles.append((c * tile, r * tile, pixels))
    return tiles, canvas[:rh, :rw]


def test_mosaic_is_the_block_mean_across_tile_borders() -> None:
    # 240 px tiles at scale 4 give 60 px reduced tiles: they do not divide the 4 px cells
    # of a mosaic at 16, so cells straddle tiles; 1000 x 700 leaves partial edge cells.
    g = Geometry(1000, 700, 0.25, 4, 16)
    rng = np.random.default_rng(7)
    tiles, reduced = assemble(g, 240, rng)
    acc = MosaicAccumulator(g)
    for i in rng.permutation(len(tiles)):  # order must not matter
        x0, y0, pixels = tiles[i]
        acc.add(x0, y0, pixels)
    expected = block_mean_rounded(reduced, 4)
    assert acc.image().shape == (*g.mosaic_shape, 3) == expected.shape
    assert acc.covered().all()
    np.testing.assert_array_equal(acc.image(), expected)


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 700),
    height=st.integers(1, 500),
    scale=st.sampled_from([1, 2, 4, 8]),
    cell=st.sampled_from([1, 2, 3, 4, 8]),
    tile_units=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_mosaic_block_mean_for_any_tile_and_cell(
    width: int, height: int, scale: int, cell: int, tile_units: int, seed: int
) -> None:
    tile = 16 * tile_units
    if tile % scale:
        return
    g = Geometry(width, height, 0.25, scale, scale * cell)
    tiles, reduced = assemble(g, tile, np.random.default_rng(seed))
    acc = MosaicAccumulator(g)
    for x0, y0, pixels in tiles:
        acc.add(x0, y0, pixels)
    np.testing.assert_array_equal(acc.image(), block_mean_rounded(reduced, cell))


def test_uncovered_mosaic_pixels_are_glass() -> None:
    g = Geometry(512, 512, 0.25, 4, 16)
    acc = MosaicAccumulator(g)
    acc.add(0, 0, np.zeros((64, 64, 3), np.uint8))  # the top-left 256 x 256 only
    image, covered = acc.image(fill=250), acc.covered()
    assert covered[:16, :16].all() and not covered[16:].any() and not covered[:, 16:].any()
    assert (image[:16, :16] == 0).all() and (image[16:] == 250).all()


@settings(max_examples=300, deadline=None)
@given(origin=st.integers(0, 5000), length=st.integers(1, 500), step=st.integers(1, 64))
def test_cuts_split_a_run_at_cell_borders(origin: int, length: int, step: int) -> None:
    cuts = _cuts(origin, length, step)
    assert cuts[0] == 0
    assert all(a < b for a, b in itertools.pairwise(cuts))
    assert cuts[-1] < length
    assert all((origin + c) % step == 0 for c in cuts[1:])
    ends = [*cuts[1:], length]
    cells = [(origin + a) // step for a in cuts]
    # each piece lies in one cell, and consecutive pieces are in consecutive cells
    assert all(
        (origin + a) // step == (origin + b - 1) // step for a, b in zip(cuts, ends, strict=False)
    )
    assert cells == list(range(cells[0], cells[0] + len(cells)))
    assert len(cuts) == (origin + length - 1) // step - origin // step + 1


# ---- reduced_tile ------------------------------------------------------------------------------


def test_dct_scaled_jpeg_decode_is_close_to_block_mean_of_full_decode() -> None:
    source = open_slide(real_file("aperio-svs/CMU-1-Small-Region.svs"))
    try:
        level = source.levels[0]
        assert level.codec is Codec.JPEG and level.tile_width == 240
        checked = 0
        for frame in source.frames(level):
            if frame.row != 5 or frame.data is None:
                continue
            tile = StreamTile(frame, source)
            reduced = reduced_tile(tile, 4)
            full = source.decode(frame)
            assert reduced.shape == (60, 60, 3) and reduced.dtype == np.uint8
            reference = block_mean_rounded(np.asarray(full), 4)
            assert psnr(reduced, reference) >= 30, f"tile {frame.index}"
            checked += 1
        assert checked == level.tiles_across
    finally:
        source.close()


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_pixels_only_frame_is_reduced_by_exact_block_mean(scale: int) -> None:
    pixels = np.random.default_rng(scale).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    reduced = reduced_tile(pixel_tile(pixels, 256), scale)
    assert reduced.shape == (256 // scale, 256 // scale, 3)
    np.testing.assert_array_equal(reduced, block_mean_rounded(pixels, scale))


def test_grey_pixels_are_reduced_to_three_equal_channels() -> None:
    grey = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    reduced = reduced_tile(pixel_tile(grey, 64), 2)
    assert reduced.shape == (32, 32, 3)
    expected = block_mean_rounded(grey[:, :, None], 2)[:, :, 0]
    for c in range(3):
        np.testing.assert_array_equal(reduced[:, :, c], expected)


# ---- the sampler in a real read pass --------------------------------------------------------


def test_sampler_on_a_slide_gives_its_mosaic_and_tissue_crops(synthetic_svs: Path) -> None:
    source: SlideSource = open_slide(synthetic_svs)
    batches: list[tuple[list[FocusCrop], U8]] = []
    try:
        level = source.levels[0]
        g = Geometry.plan(level.width, level.height, 0.25)
        sampler = AnalysisSampler(g, lambda c, p: batches.append((c, p)), batch_size=16)
        stream_tiles(source, [sampler])
    finally:
        source.close()
    assert sampler.tiles_seen == level.tile_count  # level 0 only, every tile once
    image = sampler.mosaic.image()
    assert image.shape == (*g.mosaic_shape, 3)
    truth = block_mean_rounded(read_level(synthetic_svs, 0), g.mosaic_downsample)
    assert psnr(image, truth) >= 30
    crops = [c for cs, _ in batches for c in cs]
    assert len(crops) == sampler.crops_scored > 0
    assert all(len(cs) <= 16 and p.shape == (len(cs), 64, 64) for cs, p in batches)
    assert all(p.dtype == np.uint8 for _, p in batches)
    for crop in crops:
        assert 0 <= crop.x < g.width and 0 <= crop.y < g.height
        assert crop.size == 64 * g.decode_scale
    # crops are taken where the mosaic shows tissue, not over bare glass
    d = g.mosaic_downsample
    centre_dark = [
        image[
            min((c.y + c.size // 2) // d, image.shape[0] - 1),
            min((c.x + c.size // 2) // d, image.shape[1] - 1),
        ].mean()
        for c in crops
    ]
    assert float(np.median(centre_dark)) < 225


def test_rows_reported_final_never_change_afterwards(synthetic_svs: Path) -> None:
    """The sampler says how many mosaic rows are final while the pass goes on (the artifact
    model starts on them): those rows must already be what the finished mosaic holds."""
    source: SlideSource = open_slide(synthetic_svs)
    seen: list[tuple[int, U8]] = []
    try:
        level = source.levels[0]
        g = Geometry.plan(level.width, level.height, 0.25)
        low = low_mosaic(source, g)
        sampler: AnalysisSampler

        def final(rows: int) -> None:
            seen.append((rows, sampler.rows(0, rows).copy()))

        sampler = AnalysisSampler(g, lambda c, p: None, batch_size=16, low=low, on_rows=final)
        stream_tiles(source, [sampler])
    finally:
        source.close()
    counts = [n for n, _ in seen]
    assert counts == sorted(counts) and counts[-1] == g.mosaic_shape[0]
    assert len(set(counts)) > 3, "rows are reported during the pass, not only at its end"
    # The finished sums, rounded afresh (the sampler keeps the final rows it rounded once):
    image = sampler.mosaic.image(under=low)
    for n, rows in seen:
        assert np.array_equal(rows, image[:n])
    assert np.array_equal(sampler.image(), image)


def test_tiles_out_of_row_order_give_the_same_mosaic(synthetic_svs: Path) -> None:
    """A source whose frames do not come row by row reports no final rows early (the model
    then runs after the pass) and its mosaic is still the block means of every tile."""
    source: SlideSource = open_slide(synthetic_svs)
    try:
        level = source.levels[0]
        g = Geometry.plan(level.width, level.height, 0.25)
        low = low_mosaic(source, g)
        reported: list[int] = []
        ordered = AnalysisSampler(g, lambda c, p: None, batch_size=16, low=low)
        stream_tiles(source, [ordered])
        shuffled = AnalysisSampler(
            g, lambda c, p: None, batch_size=16, low=low, on_rows=reported.append
        )
        shuffled.start_level(level)
        for frame in reversed(list(source.frames(level))):  # bottom row first
            shuffled.consume(StreamTile(frame, source))
            shuffled.rows(0, 8)  # asking early must not keep rows that change later
        shuffled.end_level(level)
    finally:
        source.close()
    # At most the first tile row is reported (disorder shows from the second one on); the
    # analysis then drops what the model did during the pass (Analyser.finish).
    assert not shuffled.rows_in_order and len(reported) <= 1
    assert np.array_equal(shuffled.image(), ordered.image())
    assert np.array_equal(shuffled.image(), shuffled.mosaic.image(under=low))


def test_a_pass_that_fails_leaves_no_model_thread_behind(
    synthetic_svs: Path, tmp_path: Path
) -> None:
    """The daemon stops or quarantines slides mid-pass; the slide's artifact-model thread,
    waiting for rows that will not come, must end with it (or a long-running daemon would
    collect one thread and its probability maps per failed slide)."""

    def interrupted(done: int, total: int) -> None:
        if done > 3:
            raise Stopping(f"stopping after {done} of {total} tiles")

    with pytest.raises(Stopping):
        convert_and_analyse(
            synthetic_svs, tmp_path, ConvertOptions(), AnalysisOptions(), interrupted
        )
    with pytest.raises(Stopping):
        analyse_path(synthetic_svs, AnalysisOptions(), interrupted)
    assert not [t for t in threading.enumerate() if t.name.startswith("edge-a")]
    result = analyse_path(synthetic_svs, AnalysisOptions())  # and the next slide still works
    assert result.available and result.seconds["artifact_model"] >= 0
    assert not [t for t in threading.enumerate() if t.name == "edge-artifact"]


@pytest.mark.parametrize("qc_first", [True, False])
def test_converted_and_qc_objects_are_handed_over_as_soon_as_written(
    synthetic_svs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, qc_first: bool
) -> None:
    """The daemon sends what `on_converted` gets at once: first the pyramid (QC still
    running), then the SEG/SR/annotations, before the heatmaps and report.json on a normal
    slide; a huge slide writes its heatmaps first (memory) and hands over only the pyramid,
    its QC objects going out with the finished job. Same files and report either way."""
    import edge.pipeline as pipeline_module

    if not qc_first:
        monkeypatch.setattr(pipeline_module, "QC_FIRST_PIXELS", 0)
    out = tmp_path / "out"
    handed: list[tuple[list[str], bool]] = []
    boosts: list[int] = []

    def converted(files: list[Path], boost: int) -> None:
        report = out / f"{synthetic_svs.stem}.qc" / "report.json"
        handed.append(([f.name for f in files], report.exists()))
        boosts.append(boost)

    result, report = convert_and_analyse(
        synthetic_svs, out, ConvertOptions(), AnalysisOptions(), on_converted=converted
    )
    assert report is not None and result.qc is not None
    qc_names = sorted(Path(p).name for p in result.qc["dicom"])
    assert {"qc-seg.dcm", "qc-sr.dcm"} <= set(qc_names)  # qc-ann.dcm where regions were found
    pyramid, report_then = handed[0]
    assert "level-00.dcm" in pyramid and not set(pyramid) & set(qc_names) and not report_then
    if qc_first:
        assert [(sorted(names), then) for names, then in handed[1:]] == [(qc_names, False)]
        assert boosts == [0, min(100, report["priority"]) // 10]  # the QC's triage, known now
    else:
        assert handed[1:] == []
    assert sorted(p.name for p in Path(result.output).glob("*.dcm")) == sorted(pyramid + qc_names)


@pytest.mark.parametrize("budget", [0, 200_000, sampler_module.READ_BACK_AFTER_BYTES])
def test_tiles_read_back_from_the_conversion_give_the_same_analysis(
    synthetic_svs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """The conversion does not wait for the decoders: past `budget` bytes of tiles waiting,
    the rest of level 0 is decoded after the pass from the conversion's own copy. Whether a
    tile came from the stream or from the copy, the report, the heatmaps (to the byte) and
    the verdict are those of an analysis that read the file alone; no thread or file
    descriptor is left behind."""
    reference = analyse_file(synthetic_svs, tmp_path / "alone")
    threads = {t.name for t in threading.enumerate()}
    fds = len(os.listdir("/proc/self/fd"))
    default = sampler_module.READ_BACK_AFTER_BYTES
    monkeypatch.setattr(sampler_module, "READ_BACK_AFTER_BYTES", budget)
    out = tmp_path / "converted"
    _, report = convert_and_analyse(synthetic_svs, out, ConvertOptions(), AnalysisOptions())
    assert report is not None
    read_back = report["tiles"]["read_back"]
    if budget == 0:
        assert read_back > 0.8 * reference["tiles"]["decoded"]  # nearly all from the copy
    elif budget == default:
        assert read_back == 0  # a small slide: the decoders kept up
    else:
        assert 0 < read_back < reference["tiles"]["decoded"]  # some of each
    assert report["tiles"]["decoded"] == reference["tiles"]["decoded"]
    assert report["tiles"]["skipped_glass"] == reference["tiles"]["skipped_glass"]
    for key in ("verdict", "reasons", "classes", "stain", "priority", "tissue_mm2", "fragments"):
        assert report[key] == reference[key], key
    heatmaps = tmp_path / "alone" / "heatmaps"
    assert sorted(p.name for p in heatmaps.iterdir())
    for png in heatmaps.iterdir():
        got = out / f"{synthetic_svs.stem}.qc" / "heatmaps" / png.name
        assert got.read_bytes() == png.read_bytes(), png.name
    assert json.loads((out / f"{synthetic_svs.stem}.qc" / "report.json").read_text())["tiles"]
    assert {t.name for t in threading.enumerate()} <= threads
    assert len(os.listdir("/proc/self/fd")) == fds


def test_a_daemon_stopping_while_tiles_are_read_back_stops_the_analysis(
    synthetic_svs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-back after the conversion reports progress like the pass does, so a daemon
    told to stop is not held up by it: Stopping reaches the caller (the job goes back to the
    queue) rather than becoming "QC unavailable", and nothing is left running or open."""
    monkeypatch.setattr(sampler_module, "READ_BACK_AFTER_BYTES", 0)
    threads = {t.name for t in threading.enumerate()}
    fds = len(os.listdir("/proc/self/fd"))
    seen: list[tuple[int, int]] = []

    def stop_midway(done: int, total: int) -> None:
        seen.append((done, total))
        if done == 10:
            raise Stopping(f"stopping after {done} of {total} tiles read back")

    with pytest.raises(Stopping, match="10 of"):
        convert_and_analyse(
            synthetic_svs, tmp_path, ConvertOptions(), AnalysisOptions(), analysing=stop_midway
        )
    assert seen[0] == (1, seen[0][1]) and seen[0][1] > 10
    assert {t.name for t in threading.enumerate()} <= threads
    assert len(os.listdir("/proc/self/fd")) == fds


def test_model_during_the_pass_and_after_it_give_the_same_maps(
    synthetic_svs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small mosaics get the artifact model during the pass, huge ones after it (memory):
    the maps and the verdict must not depend on which."""
    during = analyse_path(synthetic_svs, AnalysisOptions())
    monkeypatch.setattr(run_module, "STREAM_MAX_MOSAIC_PIXELS", 0)
    after = analyse_path(synthetic_svs, AnalysisOptions())
    assert during.available and after.available
    assert during.maps.keys() == after.maps.keys()
    for kind, values in during.maps.items():
        assert np.array_equal(values, after.maps[kind]), kind
    assert (during.verdict, during.reasons) == (after.verdict, after.reasons)


def test_low_level_picks_the_cheapest_level_on_whole_mosaic_cells() -> None:
    g = Geometry(40000, 30000, 0.25, 4, 16)

    def lvl(i: int, d: float, tile: int = 256, w: int | None = None) -> Level:
        return Level(i, w or math.ceil(40000 / d), math.ceil(30000 / d), tile, tile,
                     Codec.JPEG, downsample=d)  # fmt: skip

    levels = (lvl(0, 1), lvl(1, 4), lvl(2, 16), lvl(3, 64))
    assert low_level(levels, g) == (levels[2], 16)  # 64 does not divide the mosaic's 16
    odd = lvl(1, 4.0003)  # SVS downsamples are ratios of rounded sizes
    assert low_level((lvl(0, 1), odd), g) == (odd, 4)
    assert low_level((lvl(0, 1), lvl(1, 4, tile=250)), g) is None  # 250 px: not whole cells
    assert low_level((lvl(0, 1), lvl(1, 4, w=5000)), g) is None  # a cropped level
    assert low_level((lvl(0, 1), lvl(1, 3)), g) is None  # 3 does not divide 16
    assert low_level((lvl(0, 1),), g) is None


def test_focus_level_is_the_sources_own_level_at_the_focus_resolution() -> None:
    g = Geometry(40000, 30000, 0.25, 4, 16)

    def lvl(i: int, d: float, w: int | None = None, samples: int = 3) -> Level:
        return Level(i, w or math.ceil(40000 / d), math.ceil(30000 / d), 256, 256,
                     Codec.JPEG, samples=samples, downsample=d)  # fmt: skip

    assert focus_level((lvl(0, 1), lvl(1, 4), lvl(2, 16)), g) == (lvl(1, 4), 4)
    assert focus_level((lvl(0, 1), lvl(1, 4.0003)), g) is not None  # SVS rounding
    assert focus_level((lvl(0, 1), lvl(1, 2), lvl(2, 8)), g) is None  # no 1 µm/px level
    assert focus_level((lvl(0, 1), lvl(1, 4, w=5000)), g) is None  # a cropped level
    assert focus_level((lvl(0, 1), lvl(1, 4, samples=1)), g) is None  # not RGB


def blur_by_crop(result: AnalysisResult) -> dict[tuple[int, int], float]:
    """P(out of focus) per focus crop origin."""
    return {(crop.x, crop.y): p for crop, p in result.focus_scores}


def test_reading_the_lower_level_judges_the_same_places(synthetic_svs: Path) -> None:
    """With `lower_level` the analysis decodes the scanner's own 1 µm/px level (1/16 of the
    entropy decoding): the same focus crops, the same mosaic up to the level's JPEG noise, and
    the same verdict as from level 0."""
    full = analyse_path(synthetic_svs, AnalysisOptions())
    lower = analyse_path(synthetic_svs, AnalysisOptions(lower_level=True))
    assert full.tiles["level"] == 0 and lower.tiles["level"] == 1
    assert lower.tiles["decoded"] * 16 <= full.tiles["decoded"] + 16 * 2 * 8  # edge tiles
    crops_full, crops_lower = blur_by_crop(full), blur_by_crop(lower)
    # The same crop grid; a crop just at the 25 %-tissue line may flip with the JPEG noise.
    assert len(crops_full.keys() ^ crops_lower.keys()) <= max(1, len(crops_full) // 100)
    assert psnr(lower.mosaic, full.mosaic) >= 35
    both = crops_full.keys() & crops_lower.keys()
    assert float(np.mean([abs(crops_full[k] - crops_lower[k]) for k in both])) < 0.05
    assert (lower.verdict, len(lower.reasons)) == (full.verdict, len(full.reasons))


def test_glass_gate_covers_stain_and_a_margin_and_nothing_else() -> None:
    low = np.full((40, 50, 3), GLASS, np.uint8)
    low[10:12, 20:22] = (180, 90, 150)  # a speck of tissue
    busy = glass_gate(low)
    assert busy[8:14, 18:24].all()  # the speck and its 2-cell margin
    assert busy.sum() == 6 * 6
    assert not glass_gate(np.full((40, 50, 3), GLASS, np.uint8)).any()


def test_glass_tiles_are_skipped_and_the_mosaic_barely_changes(synthetic_svs: Path) -> None:
    """The gated pass decodes fewer level-0 tiles, keeps every focus crop, and its mosaic
    equals the full pass's on every cell that holds anything stained."""
    runs: dict[bool, tuple[AnalysisSampler, list[FocusCrop]]] = {}
    for gated in (False, True):
        source: SlideSource = open_slide(synthetic_svs)
        crops: list[FocusCrop] = []
        try:
            level = source.levels[0]
            g = Geometry.plan(level.width, level.height, 0.25)
            low = low_mosaic(source, g) if gated else None
            if gated:
                assert low is not None and low.shape == (*g.mosaic_shape, 3)
            sampler = AnalysisSampler(g, lambda c, p, k=crops: k.extend(c), batch_size=16, low=low)
            stream_tiles(source, [sampler])
        finally:
            source.close()
        runs[gated] = sampler, crops
    (full, full_crops), (gated_sampler, gated_crops) = runs[False], runs[True]
    assert gated_sampler.tiles_skipped > 0
    assert gated_sampler.tiles_seen + gated_sampler.tiles_skipped == full.tiles_seen
    assert sorted((c.x, c.y) for c in gated_crops) == sorted((c.x, c.y) for c in full_crops)
    a, b = gated_sampler.image(), full.image()
    stained = tissue_like(b, spread=10)
    assert np.array_equal(a[stained], b[stained])
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 12  # glass from the lower level


@pytest.mark.parametrize("spread", [0, 1, 10, 30, 254, 255])
def test_tissue_like_is_chroma_over_spread_or_dark(spread: int) -> None:
    # The definition in plain (slow) numpy, on every colour class: grey, saturated, dark,
    # extremes, and a strided view as the sampler passes it.
    rng = np.random.default_rng(spread)
    rgb = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    rgb[:8] = rng.integers(0, 256, (8, 96, 1), dtype=np.uint8)  # grey rows: chroma 0
    rgb[8, :6] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 255], [1, 1, 1], [254, 255, 0]]
    for view in (rgb, rgb[::3, 1::2]):
        values = view.astype(int)
        chroma = values.max(axis=2) - values.min(axis=2)
        expected = (chroma > spread) | (values.sum(axis=2) < 3 * TISSUE_DARK)
        assert np.array_equal(tissue_like(view, spread=spread), expected)


def test_dense_maps_hold_no_float16_subnormals() -> None:
    # Values below float16's smallest normal number are stored as 0 (the slow cast path);
    # everything from 2**-14 up is stored as a plain float16 cast would store it.
    values = np.array([0.0, 1e-9, 3e-5, 2.0**-14, 1e-3, 0.35, 1.0], np.float32)

    def runner(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = np.empty((batch.shape[0], len(values), WINDOW, WINDOW), np.float32)
        out[:] = values[None, :, None, None]
        out.flags.writeable = False  # a backend may hand out its own buffer
        return out

    mosaic = np.full((64, 64, 3), 120, np.uint8)  # stained everywhere: every window runs
    out = predict_dense(runner, mosaic, len(values))
    kept = np.where(values >= HALF_TINY, values, 0).astype(np.float16)
    assert np.array_equal(out[:, 10, 10], kept)
    assert out[2].max() == 0 and out[3].min() == np.float16(2.0**-14)


def test_focus_grid_spreads_crops_and_averages_overlaps() -> None:
    g = Geometry(1024, 1024, 0.25, 4, 16)
    grid = FocusGrid(g)
    grid.add(FocusCrop(0, 0, 256), 0.2)
    grid.add(FocusCrop(128, 0, 256), 0.6)
    p, scored = grid.probability(), grid.scored()
    assert p.shape == g.mosaic_shape
    # the first covers mosaic columns 0..15, the second 8..23
    assert p[0, 0] == pytest.approx(0.2) and p[0, 20] == pytest.approx(0.6)
    assert p[15, 8] == pytest.approx(0.4) and p[0, 15] == pytest.approx(0.4)
    assert scored[:16, :24].all() and not scored[16:].any() and not scored[:, 24:].any()
    assert len(grid.scores) == 2


# ---- nets ------------------------------------------------------------------------------------


def random_head(name: str, width: int, rng: np.random.Generator) -> nets.Head:
    hidden = {"focus": [16], "artifact": [32, 32], "stain": [16]}[name]
    outs = {"focus": 1, "artifact": len(nets.ARTIFACT_CLASSES), "stain": 3}[name]
    sizes = [width, *hidden, outs]
    weights = [
        (rng.normal(0, 1, (o, i)) / math.sqrt(i)).astype(np.float32)
        for i, o in itertools.pairwise(sizes)
    ]
    biases = [rng.normal(0, 0.5, o).astype(np.float32) for o in sizes[1:]]
    return nets.Head(weights, biases)


def mlp(features: npt.NDArray[np.float64], head: nets.Head) -> npt.NDArray[np.float64]:
    """features (..., F) -> logits (..., out), ReLU between layers."""
    x = features
    for i, (w, b) in enumerate(zip(head.weights, head.biases, strict=True)):
        x = x @ w.astype(np.float64).T + b
        if i < len(head.weights) - 1:
            x = np.maximum(x, 0)
    return x


@pytest.mark.parametrize("name", ["focus", "artifact", "stain"])
def test_full_network_is_front_end_then_head(name: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.random((2, *nets.INPUT_SHAPES[name])).astype(np.float32)
    feats = run_onnx(session(nets.front_end(name)), x).astype(np.float64)
    width = feats.shape[1]
    head = random_head(name, width, rng)
    model = nets.full(name, head)
    onnx.checker.check_model(model)
    got = run_onnx(session(model), x)
    if name == "artifact":
        logits = mlp(feats.transpose(0, 2, 3, 1), head).transpose(0, 3, 1, 2)
        expected = softmax(logits, axis=1)
        assert got.shape == (2, len(nets.ARTIFACT_CLASSES), *nets.INPUT_SHAPES[name][1:])
    elif name == "focus":
        expected = 1 / (1 + np.exp(-mlp(feats, head)))
        assert got.shape == (2, 1)
    else:
        expected = softmax(mlp(feats, head), axis=1)
        assert got.shape == (2, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_artifact_front_end_any_size_matches_fixed_size() -> None:
    x = np.random.default_rng(4).random((1, *nets.INPUT_SHAPES["artifact"])).astype(np.float32)
    fixed = run_onnx(session(nets.front_end("artifact")), x)
    free = run_onnx(session(nets.front_end("artifact", any_size=True)), x)
    np.testing.assert_allclose(free, fixed, atol=1e-6)


CLASSES = {
    "focus": nets.FOCUS_CLASSES,
    "artifact": nets.ARTIFACT_CLASSES,
    "stain": nets.STAIN_CLASSES,
}


@pytest.mark.parametrize("name", ["focus", "artifact", "stain"])
def test_shipped_model_matches_nets_and_its_manifest(name: str) -> None:
    manifest, path = shipped(name)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    shape = dims(inp)
    assert tuple(shape[1:]) == nets.INPUT_SHAPES[name]
    assert tuple(manifest["input"]["shape"][1:]) == nets.INPUT_SHAPES[name]
    assert inp.name == manifest["input"]["name"]
    assert out.name == manifest["output"]["name"]
    assert tuple(manifest["output"]["classes"]) == CLASSES[name]
    out_shape = dims(out)
    assert out_shape[1] == len(CLASSES[name])
    if name == "artifact":
        assert tuple(out_shape[2:]) == nets.INPUT_SHAPES[name][1:]
    # and it runs: probabilities of the declared shape
    x = np.random.default_rng(5).random((2, *nets.INPUT_SHAPES[name])).astype(np.float32)
    probs = run_onnx(session(path), x)
    assert probs.shape[:2] == (2, len(CLASSES[name]))
    assert np.all((probs >= 0) & (probs <= 1))
    if name != "focus":
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)


# ---- predict_dense ---------------------------------------------------------------------------

Runner = Callable[[F32], F32]


@pytest.fixture(scope="module")
def artifact_runner() -> Runner:
    _, path = shipped("artifact")
    sess = session(path)
    return lambda batch: run_onnx(sess, batch)


class Counting:
    """Wraps the real runner; records every window it was given."""

    def __init__(self, run: Runner) -> None:
        self.run = run
        self.windows: list[F32] = []

    def __call__(self, batch: F32) -> F32:
        assert batch.dtype == np.float32 and batch.shape[1:] == (3, WINDOW, WINDOW)
        assert batch.min() >= 0 and batch.max() <= 1
        self.windows.extend(batch)
        return self.run(batch)


def glass(h: int, w: int) -> U8:
    return np.tile(np.array(GLASS, np.uint8), (h, w, 1))


def test_dense_on_clean_glass_runs_no_window(artifact_runner: Runner) -> None:
    counting = Counting(artifact_runner)
    out = predict_dense(counting, glass(300, 500), len(nets.ARTIFACT_CLASSES))
    assert counting.windows == []
    assert out.shape == (7, 300, 500)
    assert (out[0] == 1).all() and (out[1:] == 0).all()


def test_dense_runs_only_windows_touching_tissue(artifact_runner: Runner) -> None:
    inner = WINDOW - 2 * MARGIN
    mosaic = glass(3 * inner + 20, 4 * inner)
    # a patch crossing the border between window rows 0/1 in column 2 only
    y0, x0 = inner - 10, 2 * inner + 20
    mosaic[y0 : y0 + 30, x0 : x0 + 40] = (180, 90, 150)
    counting = Counting(artifact_runner)
    out = predict_dense(counting, mosaic, len(nets.ARTIFACT_CLASSES))
    assert len(counting.windows) == 2
    ran = np.zeros(mosaic.shape[:2], bool)
    ran[0 : 2 * inner, 2 * inner : 3 * inner] = True
    assert (out[0][~ran] == 1).all() and (out[1:, ~ran] == 0).all()
    np.testing.assert_allclose(out[:, ran].sum(axis=0), 1, atol=3e-3)  # float16 storage
    # the model saw the pixels around the patch with their context (window origin = cell
    # origin - MARGIN): the patch sits at MARGIN + its offset in the cell
    first = counting.windows[0]
    assert first[0, MARGIN + y0, MARGIN + x0 - 2 * inner] == pytest.approx(180 / 255)
    # the patch itself is not called glass
    assert out[0, y0 + 15, x0 + 20] < 0.5


def test_dense_fed_rows_piecemeal_equals_the_whole_mosaic(artifact_runner: Runner) -> None:
    """Rows arriving in uneven steps (as a pass delivers them) run the same windows on the
    same pixels as the finished mosaic: the same result to the bit."""
    mosaic = tissue(3 * INNER + 37, 2 * INNER + 51, seed=4)
    whole = predict_dense(artifact_runner, mosaic, len(nets.ARTIFACT_CLASSES))
    counting = Counting(artifact_runner)
    piecemeal = DensePredictor(counting, mosaic.shape[:2], len(nets.ARTIFACT_CLASSES))
    asked: list[int] = []

    def rows(top: int, bottom: int) -> U8:
        asked.append(bottom)
        return mosaic[top:bottom]

    for final in (0, 50, 217, 217, 300, 401, mosaic.shape[0]):
        piecemeal.advance(final, rows)
        assert all(b <= final for b in asked), "a row was read before it was final"
    assert piecemeal.done and piecemeal.windows == len(counting.windows) > 0
    assert np.array_equal(piecemeal.out, whole)


def fully_convolutional(path: Path) -> ort.InferenceSession:
    """The shipped artifact model with free height and width (its ops are all local)."""
    model = onnx.load(path)
    for value in (*model.graph.input, *model.graph.output):
        shape = value.type.tensor_type.shape
        shape.dim[2].dim_param = "height"
        shape.dim[3].dim_param = "width"
    return session(model)


def test_dense_windows_leave_no_seams(artifact_runner: Runner) -> None:
    """Window by window agrees with the whole mosaic at once wherever a window ran. The CNN
    (artifact 2.0.0) sees further than MARGIN, so a kept pixel near a window's side lacks some
    of the context it has in the whole mosaic; it was trained on exactly these windows
    (loss on the centre only), and the two must still agree on most pixels."""
    _, path = shipped("artifact")
    inner = WINDOW - 2 * MARGIN
    mosaic = tissue(3 * inner + 37, 2 * inner + 51, seed=9)
    counting = Counting(artifact_runner)
    tiled = predict_dense(counting, mosaic, len(nets.ARTIFACT_CLASSES))
    h, w = mosaic.shape[:2]
    busy = tissue_like(mosaic)
    ran = np.zeros((h, w), bool)
    for y in range(0, h, inner):
        for x in range(0, w, inner):
            ran[y : y + inner, x : x + inner] = busy[y : y + inner, x : x + inner].any()
    assert len(counting.windows) >= 4 and ran.mean() > 0.5
    assert (tiled[0][~ran] == 1).all()
    padded = np.pad(
        mosaic, ((MARGIN, MARGIN + inner), (MARGIN, MARGIN + inner), (0, 0)), mode="edge"
    )
    # The encoder strides to 1/16: the whole image in multiples of 16 (the windows' origins,
    # multiples of inner = 176, are on that grid too).
    hh, ww = padded.shape[0] // 16 * 16, padded.shape[1] // 16 * 16
    batch = padded[:hh, :ww].transpose(2, 0, 1)[None].astype(np.float32) / 255
    whole = run_onnx(fully_convolutional(path), np.ascontiguousarray(batch))[0]
    whole = whole[:, MARGIN : MARGIN + h, MARGIN : MARGIN + w]
    same = tiled[:, ran].argmax(axis=0) == whole[:, ran].argmax(axis=0)

    # Measured (artifact 2.0.0 on this synthetic mosaic, not a kit slide): 89% of pixels
    # agree outright, mean difference 0.025; the rest flip between tissue, glass and "beyond
    # a coverslip edge", the context a window's side cuts off (models/artifact/MODEL_CARD.md,
    # Limits).
    assert same.mean() > 0.85, same.mean()
    assert np.abs(tiled[:, ran] - whole[:, ran]).mean() < 0.04


# ---- qc: hand-made probability maps ----------------------------------------------------------

MPP = 4.0  # mosaic µm/px
PIX_MM2 = (MPP / 1000) ** 2
D = 16  # level-0 px per mosaic px
SIDE = 300  # tissue is a 300 x 300 square: 1.44 mm2


def maps(**overrides: F32) -> dict[str, F32]:
    out = {kind: np.zeros((400, 400), np.float32) for kind in qc.QC_CLASSES}
    out.update(overrides)
    return out


def square_tissue() -> npt.NDArray[np.bool_]:
    t = np.zeros((400, 400), bool)
    t[50 : 50 + SIDE, 50 : 50 + SIDE] = True
    return t


def judge(
    probs: dict[str, F32], tissue_mask: npt.NDArray[np.bool_], stain: str = "H&E"
) -> tuple[str, list[str], qc.Findings]:
    th = qc.Thresholds()
    found = qc.findings(probs, tissue_mask, D, MPP, th)
    verdict, reasons = qc.verdict(found, th, stain, MPP)
    return verdict, reasons, found


def rect(y: int, x: int, h: int, w: int, value: float = 1.0) -> F32:
    m = np.zeros((400, 400), np.float32)
    m[y : y + h, x : x + w] = value
    return m


def test_pen_over_a_fifth_of_tissue_means_rescan() -> None:
    verdict, reasons, found = judge(maps(pen=rect(50, 50, 60, SIDE)), square_tissue())
    assert verdict == "rescan"
    assert found.fractions["pen"] == pytest.approx(0.2, abs=0.005)
    assert len(reasons) == 1
    text = reasons[0]
    assert "pen" in text and "20%" in text and "mm2" in text
    region = found.regions["pen"][0]
    assert region.area_mm2 == pytest.approx(60 * SIDE * PIX_MM2, rel=0.01)
    assert f"x={region.x}" in text and f"y={region.y}" in text


def test_little_blur_passes() -> None:
    verdict, reasons, found = judge(maps(blur=rect(50, 50, 9, SIDE)), square_tissue())
    assert found.fractions["blur"] == pytest.approx(0.03)
    assert (verdict, reasons) == ("pass", [])


def test_blur_near_its_threshold_asks_for_review() -> None:
    verdict, reasons, found = judge(maps(blur=rect(50, 50, 21, SIDE)), square_tissue())
    assert found.fractions["blur"] == pytest.approx(0.07)
    assert verdict == "review"
    assert len(reasons) == 1 and "7.0% of tissue out of focus" in reasons[0]
    assert "rescan from 10%" in reasons[0]


@pytest.mark.parametrize(
    ("fraction", "said"), [(0.047, "4.7%"), (0.0004, "0.1%"), (0.0995, "10%"), (0.142, "14%")]
)
def test_fractions_near_a_threshold_are_not_rounded_onto_it(fraction: float, said: str) -> None:
    """4.7% of tissue under pen is a review, not a rescan: it must not read "5% ... (rescan
    from 5%)", as it did on a test slide (seed 50078)."""
    assert qc._pct(fraction) == said


@pytest.mark.parametrize(
    ("fraction", "limit", "said"),
    [(0.0996, 0.10, "9.9%"), (0.1496, 0.15, "14.9%"), (0.0499, 0.05, "4.9%"), (0.12, 0.10, "12%")],
)
def test_a_fraction_under_its_limit_is_never_written_at_it(
    fraction: float, limit: float, said: str
) -> None:
    assert qc._pct(fraction, limit) == said


@pytest.mark.parametrize(("area", "said"), [(0.043, "0.043"), (3.14, "3.1"), (123.4, "123")])
def test_region_areas_keep_two_digits(area: float, said: str) -> None:
    assert qc._mm2(area) == said


def test_blur_over_threshold_means_rescan() -> None:
    verdict, reasons, _ = judge(maps(blur=rect(50, 50, 45, SIDE)), square_tissue())
    assert verdict == "rescan" and "15%" in reasons[0]


def test_blur_off_tissue_does_not_count() -> None:
    # blur is only judged on tissue: a blurred stretch of glass is no finding
    verdict, _, found = judge(maps(blur=rect(0, 0, 400, 50)), square_tissue())
    assert found.fractions["blur"] == 0 and verdict == "pass"


def test_no_tissue_means_review() -> None:
    verdict, reasons, _ = judge(maps(pen=rect(0, 0, 100, 100)), np.zeros((400, 400), bool))
    assert verdict == "review"
    assert len(reasons) == 1 and "no tissue found" in reasons[0]


def test_a_speck_of_tissue_is_no_tissue() -> None:
    speck = np.zeros((400, 400), bool)
    speck[10:20, 10:20] = True  # 0.0016 mm2, far below min_tissue_mm2
    verdict, reasons, _ = judge(maps(), speck)
    assert verdict == "review" and "no tissue found" in reasons[0]


@pytest.mark.parametrize("stain", ["other", "unknown"])
def test_unrecognised_stain_means_review(stain: str) -> None:
    verdict, reasons, _ = judge(maps(), square_tissue(), stain)
    assert verdict == "review"
    assert any("stain" in r and stain in r for r in reasons)


def test_rescan_reasons_come_before_review_reasons() -> None:
    probs = maps(pen=rect(50, 50, 60, SIDE), blur=rect(200, 50, 21, SIDE))
    verdict, reasons, _ = judge(probs, square_tissue(), "other")
    assert verdict == "rescan"
    assert reasons[0].startswith("clean the slide and rescan")
    assert all(r.startswith("review") for r in reasons[1:]) and len(reasons) == 3


def test_small_regions_are_removed() -> None:
    pen = rect(60, 60, 8, 8) + rect(200, 200, 40, 40)  # 0.001 mm2 and 0.0256 mm2
    _, _, found = judge(maps(pen=pen), square_tissue())
    assert len(found.regions["pen"]) == 1
    assert not found.masks["pen"][60:75, 60:75].any()
    assert found.masks["pen"][210:230, 210:230].all()


def test_remove_small_keeps_exactly_the_big_enough_pieces() -> None:
    m = np.zeros((50, 50), bool)
    m[0:3, 0:3] = True  # 9 px
    m[10:12, 10:15] = True  # 10 px
    m[30:40, 30:40] = True  # 100 px
    kept = qc.remove_small(m, 10)
    assert not kept[0:3, 0:3].any()
    assert kept[10:12, 10:15].all() and kept[30:40, 30:40].all()
    assert int(kept.sum()) == 110
    assert not qc.remove_small(np.zeros((5, 5), bool), 1).any()


def test_regions_are_level0_and_largest_first() -> None:
    m = np.zeros((100, 100), bool)
    m[10:14, 20:30] = True  # 40 px
    m[50:70, 60:70] = True  # 200 px
    regions = qc.regions_of(m, "fold", D, PIX_MM2)
    assert [r.area_mm2 for r in regions] == [round(200 * PIX_MM2, 3), round(40 * PIX_MM2, 3)]
    big, small = regions
    assert big.bbox == (60 * D, 50 * D, 10 * D, 20 * D)
    assert small.bbox == (20 * D, 10 * D, 10 * D, 4 * D)
    assert (big.x, big.y) == (65 * D, 60 * D)
    assert big.kind == "fold"


def test_pieces_counts_4_connected_fragments() -> None:
    m = np.zeros((40, 40), bool)
    m[5:8, 30:35] = True
    m[20:30, 10:12] = True
    m[30, 12] = True  # touches the band diagonally only: a piece of its own
    assert qc.pieces(m) == 3
    assert qc.pieces(np.zeros((4, 4), bool)) == 0


def test_summary_numbers() -> None:
    _, _, found = judge(maps(pen=rect(50, 50, 60, SIDE)), square_tissue())
    s = qc.summary(found)
    assert set(s) == set(qc.QC_CLASSES)
    assert s["pen"]["regions"] == 1 and len(s["pen"]["largest"]) == 1
    assert 0.19 < s["pen"]["fraction_of_tissue"] < 0.21
    assert s["fold"] == {"fraction_of_tissue": 0.0, "area_mm2": 0.0, "regions": 0, "largest": []}


def test_tissue_mask_counts_pen_on_tissue_but_not_on_glass() -> None:
    n = len(nets.ARTIFACT_CLASSES)
    probs = np.zeros((n, 200, 300), np.float32)
    probs[0] = 1.0  # glass everywhere ...
    probs[:, 50:150, 50:150] = 0
    probs[1, 50:150, 50:150] = 1.0  # ... but a tissue square
    probs[:, 80:120, 80:120] = 0
    probs[2, 80:120, 80:120] = 1.0  # pen inside the tissue
    probs[:, 80:120, 200:260] = 0
    probs[2, 80:120, 200:260] = 1.0  # pen on glass
    t = qc.tissue_mask(probs, 1, 0, PIX_MM2, min_piece_mm2=0.01)
    assert t[60:140, 60:140].all()  # the pen over tissue is tissue beneath
    assert not t[:, 190:].any()
    assert not t[:40].any()


def test_a_bubble_on_glass_is_not_tissue_but_tissue_under_a_bubble_is() -> None:
    # Glass (grey), a pink tissue square; a bubble on the glass (dark grey rim, grey inside)
    # and one over the tissue (rim, washed-out pink inside): the model calls both "bubble".
    n = len(nets.ARTIFACT_CLASSES)
    mosaic = np.full((200, 320, 3), (226, 226, 228), np.uint8)
    mosaic[40:160, 20:140] = (200, 150, 190)
    yy, xx = np.mgrid[:200, :320]
    probs = np.zeros((n, 200, 320), np.float32)
    probs[0] = 1.0
    probs[:, 40:160, 20:140] = 0
    probs[1, 40:160, 20:140] = 1.0
    for cx, inside in ((240, (230, 230, 231)), (80, (222, 210, 219))):
        r = np.hypot(yy - 100, xx - cx)
        mosaic[r < 40] = inside
        mosaic[(r >= 34) & (r < 40)] = (110, 110, 110)  # the refractive rim: dark, grey
        probs[:, r < 40] = 0
        probs[4, r < 40] = 1.0
    t = qc.tissue_mask(probs, 1, 0, PIX_MM2, min_piece_mm2=0.01, stained=qc.still_stained(mosaic))
    assert not t[:, 190:].any()  # the bubble on glass, rim and all
    assert t[70:130, 50:110].all()  # washed-out tissue under the other bubble
    # Before the colour-only test, the dark rim made the bubble on glass tissue.
    dark_rim = tissue_like(mosaic, spread=GLASS_SPREAD)
    assert qc.tissue_mask(probs, 1, 0, PIX_MM2, min_piece_mm2=0.01, stained=dark_rim)[100, 240]


@pytest.mark.parametrize("seed", range(6))
def test_boxed_mask_operations_equal_the_whole_mosaic_ones(seed: int) -> None:
    # Blobs (some with holes, some at the mosaic's edge) on an otherwise empty map: every
    # operation done on the box around them equals the same operation on the whole map.
    rng = np.random.default_rng(seed)
    prob = np.zeros((300, 400), np.float32)
    for _ in range(int(rng.integers(1, 5))):
        y, x = int(rng.integers(-20, 300)), int(rng.integers(-20, 400))
        h, w = int(rng.integers(3, 60)), int(rng.integers(3, 60))
        prob[max(0, y) : y + h, max(0, x) : x + w] = rng.uniform(0.2, 1.0)
        prob[max(0, y) + h // 3 : y + h // 2, max(0, x) + w // 3 : x + w // 2] = 0.0  # a hole
    prob += rng.uniform(0, 0.05, prob.shape).astype(np.float32)  # the faint rest of a map
    th = qc.Thresholds()
    full = qc.smoothed("pen", prob, th)
    for cut in (0.1, 0.3, 0.5):
        boxed = qc.smoothed("pen", prob, th, floor=cut)
        assert np.array_equal(boxed >= cut, full >= cut)
        mask = full >= cut
        assert np.array_equal(
            qc.within_box(mask, ndimage.binary_fill_holes), ndimage.binary_fill_holes(mask)
        )
        opening = lambda m: ndimage.binary_opening(m, iterations=1)  # noqa: E731
        assert np.array_equal(qc.within_box(mask, opening, margin=2), opening(mask))
        labels, n = ndimage.label(mask)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        expected = (sizes >= 200)[labels] & mask
        assert np.array_equal(qc.remove_small(mask, 200), expected)
    empty = np.zeros((30, 40), bool)
    assert not qc.within_box(empty, ndimage.binary_fill_holes).any()


def whole_mosaic_tissue_under_marks(
    marks: npt.NDArray[np.bool_], solid: npt.NDArray[np.bool_]
) -> Any:
    """tissue_mask's pen rule as first written, over the whole mosaic (the reference)."""
    near = ndimage.uniform_filter((solid & ~marks).astype(np.float32), qc.MARK_CONTEXT)
    seen = ndimage.uniform_filter((~marks).astype(np.float32), qc.MARK_CONTEXT)
    return marks & (near / np.maximum(seen, 1e-3) >= 0.5)


@pytest.mark.parametrize("seed", range(6))
def test_boxed_context_filters_equal_the_whole_mosaic_ones(seed: int) -> None:
    """tissue_mask's two neighbourhood tests, the pen marks' surroundings (127 px) and the
    colour left under bubbles (5 px), run on the box around the marks or bubbles only: the
    same masks as over the whole mosaic, with strokes at the mosaic's edges and tissue of
    any shape around them."""
    rng = np.random.default_rng(seed)
    shape = (420, 560)
    solid = ndimage.uniform_filter(rng.uniform(0, 1, shape), 40) > 0.5  # tissue blobs
    marks = np.zeros(shape, bool)
    for _ in range(int(rng.integers(1, 4))):
        y, x = int(rng.integers(-10, shape[0])), int(rng.integers(-10, shape[1]))
        marks[
            max(0, y) : y + int(rng.integers(3, 30)), max(0, x) : x + int(rng.integers(20, 200))
        ] = True
    expected = whole_mosaic_tissue_under_marks(marks, solid)
    assert np.array_equal(marks & qc._mostly_tissue_around(marks, solid), expected)
    mosaic = rng.integers(200, 240, (*shape, 3), dtype=np.uint8)
    mosaic[solid] = (200, 150, 190)
    mosaic[:, :, 1] -= rng.integers(0, 4, shape, dtype=np.uint8)  # faint colour everywhere
    covered = ndimage.uniform_filter(rng.uniform(0, 1, shape), 25) > 0.56
    whole = qc.still_stained(mosaic)
    assert np.array_equal(qc.still_stained(mosaic, covered) & covered, whole & covered)
    assert not qc.still_stained(mosaic, np.zeros(shape, bool)).any()


def test_fractions_use_the_area_cut_and_masks_the_detection_cut() -> None:
    # A pen band whose probability falls off: 0.9 inside, 0.35 in a fringe on both sides.
    pen = rect(50, 50, 60, SIDE, 0.35)
    pen[60:100, 50 : 50 + SIDE] = 0.9
    th = qc.Thresholds(probability={"pen": 0.3}, area_probability={"pen": 0.5}, smoothing_px=1)
    found = qc.findings(maps(pen=pen), square_tissue(), D, MPP, th)
    assert found.masks["pen"][50:110, 50 : 50 + SIDE].all()  # detection: the fringe too
    assert found.fractions["pen"] == pytest.approx(40 / SIDE, abs=0.005)  # area: the core
    # The regions (report, GeoJSON, annotations) are the detection mask's.
    assert found.regions["pen"][0].area_mm2 == pytest.approx(60 * SIDE * PIX_MM2, rel=0.01)
    # Without an area cut-off the fraction is the detection mask's.
    plain = qc.Thresholds(probability={"pen": 0.3}, smoothing_px=1)
    same = qc.findings(maps(pen=pen), square_tissue(), D, MPP, plain)
    assert same.fractions["pen"] == pytest.approx(60 / SIDE, abs=0.005)


# ---- run helpers -----------------------------------------------------------------------------


def test_tissue_patches_take_tissue_and_spread() -> None:
    mosaic = np.zeros((128, 256, 3), np.uint8)
    mosaic[..., 0] = np.arange(256)[None, :]  # red: the column, green: the row
    mosaic[..., 1] = np.arange(128)[:, None]
    t = np.zeros((128, 256), bool)
    t[:, 64:] = True
    patches = tissue_patches(mosaic, t, 32, 5)
    assert patches.shape == (5, 32, 32, 3)
    assert all(int(p[0, 0, 0]) >= 64 for p in patches)
    origins = {(int(p[0, 0, 1]), int(p[0, 0, 0])) for p in patches}
    assert len(origins) == 5
    rows, cols = {r for r, _ in origins}, {c for _, c in origins}
    assert max(rows) == 96 and max(cols) == 224  # spread over the slide, not the first five
    assert tissue_patches(mosaic, np.zeros_like(t), 32, 5).shape == (0, 32, 32, 3)


def test_priority_orders_rescan_review_pass() -> None:
    _, _, found = judge(maps(pen=rect(50, 50, 60, SIDE)), square_tissue())
    _, _, clean = judge(maps(), square_tissue())
    assert priority("rescan", found) > priority("review", clean) > priority("pass", clean)
    assert 0 <= priority("pass", clean) <= priority("rescan", found) <= 100
