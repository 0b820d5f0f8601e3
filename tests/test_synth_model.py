"""The synthetic slide model: determinism, level agreement, seams, artifacts, truth, label."""

from __future__ import annotations

import itertools
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np
import numpy.typing as npt
import pytest

from edge.synth import lattice, texture
from edge.synth.label import bar_modules
from edge.synth.model import SyntheticSlide, make_model
from edge.synth.protocol import ARTIFACT_KINDS, SlideSpec
from edge.synth.truth import rescan_rules, truth_downsample, write_truth
from tests.conftest import real_data_dir, real_file
from tests.helpers import psnr

GLASS = np.array([240, 240, 242], np.uint8)
W, H = 1600, 1200  # small slides keep the module under a few seconds


def _model(seed: int = 1, artifacts: tuple[str, ...] = (), **kw: object) -> SyntheticSlide:
    return make_model(SlideSpec(W, H, seed=seed, artifacts=artifacts, **kw))  # type: ignore[arg-type]


def _level(m: SyntheticSlide, d: int) -> npt.NDArray[np.uint8]:
    return m.region(0, 0, -(-m.spec.width // d), -(-m.spec.height // d), d)


@pytest.fixture(scope="module")
def busy() -> SyntheticSlide:
    """One slide with every artifact kind."""
    return _model(seed=5, artifacts=ARTIFACT_KINDS, barcode="S-17")


@pytest.fixture(scope="module")
def clean() -> SyntheticSlide:
    return _model(seed=5)


# -- determinism ------------------------------------------------------------------------------


def test_same_spec_same_pixels_and_another_seed_differs(busy: SyntheticSlide) -> None:
    again = _model(seed=5, artifacts=ARTIFACT_KINDS, barcode="S-17")
    for d in (1, 4):
        assert np.array_equal(
            busy.region(300, 200, 400, 300, d), again.region(300, 200, 400, 300, d)
        )
    other = _model(seed=6, artifacts=ARTIFACT_KINDS)
    assert not np.array_equal(_level(busy, 8), _level(other, 8))
    assert busy.truth() == again.truth()


@pytest.mark.parametrize("d", [1, 4])
def test_region_is_the_crop_of_any_larger_region(busy: SyntheticSlide, d: int) -> None:
    whole = _level(busy, d)
    lh, lw = whole.shape[:2]
    for x, y, w, h in [(0, 0, 64, 64), (37, 91, 250, 170), (lw // 3, lh // 2, lw // 2, lh // 3)]:
        assert np.array_equal(busy.region(x, y, w, h, d), whole[y : y + h, x : x + w])
    # Reaching past the level: the inside is the same crop, the outside is plain glass.
    part = busy.region(lw - 20, lh - 10, 50, 30, d)
    assert np.array_equal(part[:10, :20], whole[lh - 10 :, lw - 20 :])
    assert (part[10:] == GLASS).all() and (part[:, 20:] == GLASS).all()
    assert (busy.region(-5, -5, 5, 5, d) == GLASS).all()


def test_thin_strips_and_threads_give_the_same_pixels(busy: SyntheticSlide) -> None:
    whole = _level(busy, 1)
    for y in (8, 56, 60, 1190):  # inside a cached band, at its end, across two bands, past the end
        strip = busy.region(0, y, W, 8, 1)
        assert np.array_equal(strip[: max(0, H - y)], whole[y : y + 8])
    tiles = [(x, y) for y in range(0, H, 256) for x in range(0, W, 256)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda t: busy.region(t[0], t[1], 256, 256, 1), tiles))
    for (x, y), tile in zip(tiles, got, strict=True):
        h, w = min(256, H - y), min(256, W - x)
        assert np.array_equal(tile[:h, :w], whole[y : y + h, x : x + w])


def test_bad_arguments_are_value_errors(busy: SyntheticSlide) -> None:
    with pytest.raises(ValueError, match="power of two"):
        busy.region(0, 0, 8, 8, 3)
    with pytest.raises(ValueError, match="stain"):
        make_model(SlideSpec(100, 100, stain="PAS"))
    with pytest.raises(ValueError, match="artifact"):
        make_model(SlideSpec(100, 100, artifacts=("smudge",)))


# -- levels and seams -------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["clean", "busy"])
def test_level_4_matches_the_box_filtered_level_0(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    m: SyntheticSlide = request.getfixturevalue(fixture)
    full = _level(m, 1).astype(np.float64)
    box = full.reshape(H // 4, 4, W // 4, 4, 3).mean(axis=(1, 3))
    level = _level(m, 4)
    assert psnr(level, np.rint(box).astype(np.uint8)) > 25.0
    tissue = m.masks(4)["tissue"]
    assert psnr(level[tissue], np.rint(box[tissue]).astype(np.uint8)) > 25.0


def test_texture_paths_agree_exactly() -> None:
    patches = texture.load_patches(texture.resolve_texture_dir(None), "H&E")
    for d in (1, 2, 4, 8, 16):
        blocks = lattice.render(3, patches, 37, 91, 300, 200, d, method="blocks")
        gather = lattice.render(3, patches, 37, 91, 300, 200, d, method="gather")
        assert np.array_equal(blocks, gather), d


def test_no_gradient_jump_at_cell_boundaries() -> None:
    patches = texture.load_patches(texture.resolve_texture_dir(None), "H&E")
    size = texture.CELL * 12
    tex = lattice.render(11, patches, 0, 0, size, size, 1).astype(np.float64).mean(axis=0)
    grad = np.abs(np.diff(tex, axis=1)).mean(axis=0)  # between columns x and x + 1
    boundary = np.arange(texture.CELL, size, texture.CELL) - 1
    elsewhere = np.setdiff1d(np.arange(grad.size), np.concatenate([boundary, boundary + 1]))
    ratio = grad[boundary].mean() / grad[elsewhere].mean()
    assert 0.7 < ratio < 1.25


# -- artifacts --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ARTIFACT_KINDS)
def test_an_artifact_changes_pixels_only_inside_its_mask(kind: str, clean: SyntheticSlide) -> None:
    m = _model(seed=5, artifacts=(kind,))
    for d in (1, 4):
        changed = (_level(m, d) != _level(clean, d)).any(axis=2)
        mask = m.masks(d)[kind]
        assert changed.any(), f"{kind} changed nothing at downsample {d}"
        assert not (changed & ~mask).any()
        assert changed.sum() > 0.5 * mask.sum() or kind == "blur"  # masks are tight


def test_artifacts_are_planned_independently(clean: SyntheticSlide) -> None:
    one = _model(seed=5, artifacts=("pen",)).truth().artifacts[0]
    both = _model(seed=5, artifacts=("bubble", "pen")).truth().artifacts[1]
    assert one["bbox"] == both["bbox"] and one["colour"] == both["colour"]
    assert clean.truth().artifacts == ()


# -- artifact severity and extent ---------------------------------------------------------------


def _effect(m: SyntheticSlide, clean: SyntheticSlide, d: int = 2) -> float:
    return float(np.abs(_level(m, d).astype(np.int16) - _level(clean, d)).mean())


def test_unset_severity_and_extent_leave_the_slide_as_it_was() -> None:
    old = make_model(SlideSpec(W, H, seed=5, artifacts=ARTIFACT_KINDS))
    new = _model(seed=5, artifacts=ARTIFACT_KINDS, severity=None, extent=None)
    assert np.array_equal(_level(old, 4), _level(new, 4))
    assert all("set_severity" not in a and "set_extent" not in a for a in old.truth().artifacts)


@pytest.mark.parametrize("kind", ["blur", "bubble", "stain"])
def test_higher_severity_is_a_stronger_effect(kind: str, clean: SyntheticSlide) -> None:
    mild, strong = (_model(seed=5, artifacts=(kind,), severity=s) for s in (0.1, 0.9))
    a, b = mild.truth().artifacts[0], strong.truth().artifacts[0]
    assert a["bbox"] == b["bbox"]  # same place and size: only the strength moved
    assert a["severity"] < b["severity"]
    assert (a["set_severity"], b["set_severity"]) == (0.1, 0.9)
    assert _effect(mild, clean) < _effect(strong, clean)
    if kind == "blur":
        assert a["radius_um"] < b["radius_um"]


@pytest.mark.parametrize("kind", ["blur", "bubble", "stain", "fold", "pen", "edge"])
def test_higher_extent_is_a_larger_mask(kind: str) -> None:
    small, large = (_model(seed=5, artifacts=(kind,), extent=e) for e in (0.1, 0.9))
    assert small.masks(4)[kind].sum() < large.masks(4)[kind].sum()
    assert small.truth().artifacts[0]["set_extent"] == 0.1
    if kind in ("blur", "stain"):  # a set extent is always a region, never the whole slide
        assert small.truth().artifacts[0]["scope"] == "region"


def test_debris_extent_is_the_speck_count() -> None:
    counts = [_model(seed=5, artifacts=("debris",), extent=e).truth().artifacts[0] for e in (0, 1)]
    assert [c["specks"] for c in counts] == [8, 30]


@pytest.mark.parametrize("kind", ARTIFACT_KINDS)
def test_the_largest_strongest_artifact_fits_a_tiny_slide(kind: str) -> None:
    m = make_model(SlideSpec(48, 32, seed=2, artifacts=(kind,), severity=1.0, extent=1.0))
    (art,) = m.truth().artifacts
    assert art["set_extent"] == 1.0 and art["bbox"][2] > 0 and art["bbox"][3] > 0
    assert m.masks(1)[kind].any()
    assert m.region(0, 0, 48, 32).shape == (32, 48, 3)


@pytest.mark.parametrize("field", ["severity", "extent"])
@pytest.mark.parametrize("value", [-0.01, 1.01, float("nan"), float("inf"), True, "0.5"])
def test_severity_and_extent_outside_0_to_1_are_value_errors(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{field} .*from 0 to 1"):
        SlideSpec(W, H, artifacts=("blur",), **{field: value})  # type: ignore[arg-type]


def test_truth_fractions_come_from_the_masks(busy: SyntheticSlide) -> None:
    truth = busy.truth()
    d = truth.extra["truth_downsample"]
    assert d == truth_downsample(W, H)
    masks = busy.masks(d)
    tissue = masks["tissue"]
    assert truth.tissue_fraction == pytest.approx(tissue.mean(), abs=1e-6)
    assert 0.1 < truth.tissue_fraction < 0.55
    for kind in ARTIFACT_KINDS:
        expected = (masks[kind] & tissue).sum() / tissue.sum()
        assert truth.affected_fraction[kind] == pytest.approx(expected, abs=1e-6)
    kinds = [a["kind"] for a in truth.artifacts]
    assert kinds == list(ARTIFACT_KINDS)
    for a in truth.artifacts:
        x, y, w, h = a["bbox"]
        assert min(x, y) >= 0 and x + w <= W and y + h <= H and min(w, h) > 0
        assert 0.0 <= a["severity"] <= 1.0
        rows, cols = np.nonzero(masks[a["kind"]])
        assert rows.size
        # The mask lies in the box (to within a truth pixel).
        assert cols.min() * d >= x - d and (cols.max() + 1) * d <= x + w + d
        assert rows.min() * d >= y - d and (rows.max() + 1) * d <= y + h + d
    blur = next(a for a in truth.artifacts if a["kind"] == "blur")
    assert blur["sigma_px"] == pytest.approx(blur["radius_um"] / 0.25 / 2, rel=1e-3)


@pytest.mark.parametrize(
    ("affected", "records", "expect"),
    [
        (
            {"blur": 0.14},
            [{"kind": "blur", "severity": 0.5, "radius_um": 4.5}],
            "14% of tissue out of focus",
        ),
        ({"blur": 0.09}, [{"kind": "blur", "severity": 0.5, "radius_um": 4.5}], None),
        (
            {"pen": 0.05},
            [{"kind": "pen", "severity": 0.8, "colour": "green"}],
            "green pen marks over 5%",
        ),
        ({"pen": 0.04}, [{"kind": "pen", "severity": 0.8, "colour": "green"}], None),
        ({"fold": 0.06}, [{"kind": "fold", "severity": 0.7}], "tissue fold over 6% of tissue"),
        ({"bubble": 0.05}, [{"kind": "bubble", "severity": 0.4}], "air bubbles over 5% of tissue"),
        (
            {"stain": 1.0},
            [{"kind": "stain", "severity": 0.6, "direction": "under", "od_factor": [0.5] * 3}],
            "100% of tissue under-stained (optical density x0.50)",
        ),
        ({"stain": 1.0}, [{"kind": "stain", "severity": 0.3, "od_factor": [0.8] * 3}], None),
        ({"stain": 0.3}, [{"kind": "stain", "severity": 0.9, "od_factor": [0.4] * 3}], None),
        (
            {"debris": 0.9, "edge": 0.9},
            [{"kind": "debris", "severity": 0.9}, {"kind": "edge", "severity": 0.9}],
            None,
        ),
    ],
)
def test_rescan_rules(
    affected: dict[str, float], records: list[dict[str, object]], expect: str | None
) -> None:
    needs, reasons = rescan_rules(affected, records)
    assert needs == (expect is not None)
    if expect is None:
        assert reasons == ()
    else:
        assert len(reasons) == 1 and expect in reasons[0]


def test_write_truth(busy: SyntheticSlide, tmp_path: Path) -> None:
    doc = write_truth(busy, tmp_path / "truth.json", tmp_path / "masks", 8)
    on_disk = json.loads((tmp_path / "truth.json").read_text())
    assert on_disk == doc
    assert on_disk["masks"]["downsample"] == 8
    assert set(on_disk["masks"]["files"]) == {"tissue", *ARTIFACT_KINDS}
    assert on_disk["needs_rescan"] == busy.truth().needs_rescan
    masks = busy.masks(8)
    for name, rel in on_disk["masks"]["files"].items():
        png = imagecodecs.png_decode((tmp_path / rel).read_bytes())
        assert png.shape == (math.ceil(H / 8), math.ceil(W / 8))
        assert np.array_equal(png > 0, masks[name])


# -- texture sources --------------------------------------------------------------------------


def test_every_slide_has_some_fat() -> None:
    fat = [
        make_model(SlideSpec(4000, 3000, seed=s)).truth().extra["layout"]["fat_fraction"]
        for s in range(6)
    ]
    assert all(0.0 < f < 0.4 for f in fat), fat  # hard negatives for a focus check


def test_the_real_bank_has_stroma_and_cellular_regions() -> None:
    real_file("aperio-svs/CMU-1-Small-Region.svs")
    bank = texture.load_patches(texture.resolve_texture_dir(real_data_dir()), "H&E")
    anchors = bank.kind[bank.anchor]
    assert (anchors == texture.KINDS.index("stroma")).any()
    assert (anchors == texture.KINDS.index("cellular")).any()


def test_texture_falls_back_to_procedural_without_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(texture, "default_texture_dirs", lambda: [tmp_path / "nowhere", tmp_path])
    m = make_model(SlideSpec(800, 600, seed=2, artifacts=("pen",)))
    assert m.truth().extra["texture"]["origin"] == "procedural"
    img = _level(m, 1)
    tissue = m.masks(1)["tissue"]
    assert img[tissue].std() > 10  # textured, not flat


def test_an_explicit_texture_dir_must_hold_texture(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        make_model(SlideSpec(100, 100), tmp_path / "missing")
    with pytest.raises(ValueError, match="none of the texture files"):
        make_model(SlideSpec(100, 100), tmp_path)


def test_real_texture_when_the_files_are_there() -> None:
    real_file("aperio-svs/CMU-1-Small-Region.svs")
    m = make_model(SlideSpec(800, 600, seed=2), real_data_dir())
    info = m.truth().extra["texture"]
    assert info["origin"] == "real" and "aperio-svs/CMU-1-Small-Region.svs" in info["files"]
    ihc = make_model(SlideSpec(800, 600, seed=2, stain="IHC"), real_data_dir())
    assert ihc.truth().extra["texture"]["files"] == ["ome-tiff/OS-2-ndpi.ome.tif"]


# -- large slides, label, macro ---------------------------------------------------------------


def test_a_100k_slide_is_cheap_to_build_and_to_read() -> None:
    m = make_model(SlideSpec(100_000, 100_000, seed=9, artifacts=ARTIFACT_KINDS))
    assert max(m.layout.sdf.values.shape) <= 2048
    tile = m.region(50_000 // 256, 50_000 // 256, 256, 256, 256)
    assert tile.shape == (256, 256, 3)
    assert m.region(49_000, 49_000, 64, 64).shape == (64, 64, 3)


def _decode_bars(line: npt.NDArray[np.bool_]) -> bytes:
    dark = np.flatnonzero(line)
    seg = line[dark[0] : dark[-1] + 1].astype(int)
    runs = np.diff([0, *(np.flatnonzero(np.diff(seg)) + 1).tolist(), seg.size])
    module = runs[0]
    widths = [round(r / module) for r in runs]
    assert widths[:4] == [1, 1, 1, 1] and widths[-3:] == [3, 1, 1]
    bits = [1 if w == 3 else 0 for w in widths[4:-3:2]]
    return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


@pytest.mark.parametrize("code", ["S-17", "SLIDE-2026-000123-H&E-BLOCK-4"])
def test_label_bars_encode_the_barcode(code: str) -> None:
    label = make_model(SlideSpec(200, 200, barcode=code)).label()
    assert label.shape == (600, 600, 3)
    m = 600 // 14
    field = label[2 * m : 2 * m + 200, 3 * m + 8 : 600 - 2 * m - 8, 0] < 128
    lines = [y for y in range(field.shape[0]) if field[y].any()]
    rows = [lines[0]] + [b for a, b in itertools.pairwise(lines) if b != a + 1]
    decoded = b"".join(_decode_bars(field[y + 2]) for y in rows)
    assert decoded == code.encode()
    assert sum(bar_modules(b"A")) == 4 + 8 * 2 + 2 * 2 + 5
    blank = make_model(SlideSpec(200, 200)).label()
    assert not (blank[2 * m : 2 * m + 200, 3 * m : 600 - 2 * m, 0] < 128).any()


def test_macro_shows_the_slide_beside_the_label(busy: SyntheticSlide) -> None:
    macro = busy.macro()
    lh, lw = math.ceil(H / 32), math.ceil(W / 32)
    b = max(2, lh // 20)
    assert macro.shape == (lh + 2 * b, lh + lw + 3 * b, 3)
    assert np.array_equal(macro[b : b + lh, 2 * b + lh : 2 * b + lh + lw], _level(busy, 32))
