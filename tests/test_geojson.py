"""Mask -> GeoJSON polygons: exact outlines, orientation, QuPath feature shape, atomic write."""

from __future__ import annotations

import importlib
import json
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from edge.analysis import geojson
from edge.analysis.geojson import Polygon, Ring, mask_polygons

Mask = npt.NDArray[np.bool_]


def _area2(ring: Ring) -> int:
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in pairwise(ring))


def _check(polygons: list[Polygon], mask: Mask, downsample: int) -> None:
    """Invariants every output must satisfy, whatever the mask."""
    total = 0
    for polygon in polygons:
        assert polygon, "a polygon needs an exterior"
        for k, ring in enumerate(polygon):
            assert len(ring) >= 5, ring  # a pixel square: 4 corners + closing point
            assert ring[0] == ring[-1], "ring not closed"
            assert all(isinstance(v, int) for pt in ring for v in pt)
            assert all(x % downsample == 0 and y % downsample == 0 for x, y in ring)
            a2 = _area2(ring)
            # Documented convention: exterior positive signed area (CCW in y-up numbers).
            assert (a2 > 0) if k == 0 else (a2 < 0), (k, a2)
            pts = ring[:-1]
            for i in range(len(pts)):
                p0, p1, p2 = pts[i - 1], pts[i], pts[(i + 1) % len(pts)]
                cross = (p1[0] - p0[0]) * (p2[1] - p1[1]) - (p1[1] - p0[1]) * (p2[0] - p1[0])
                assert cross != 0, f"collinear or repeated point {p1} in {ring}"
            assert len(set(pts)) == len(pts), "ring touches itself"
            total += a2
        _check_shapely(polygon)
    assert total == 2 * int(mask.sum()) * downsample * downsample


def _check_shapely(polygon: Polygon) -> None:
    try:  # optional: shapely is not a dependency; GEOS validity is a strong extra check
        shapely_geometry = importlib.import_module("shapely.geometry")
    except ImportError:
        return
    geom = shapely_geometry.shape({"type": "Polygon", "coordinates": polygon})
    assert geom.is_valid, polygon


def _rasterise(polygons: list[Polygon], shape: tuple[int, int], downsample: int) -> Mask:
    """Even-odd scanline fill at pixel centres; only vertical edges cross y = row + 0.5."""
    out = np.zeros(shape, dtype=bool)
    crossings: list[list[float]] = [[] for _ in range(shape[0])]
    for polygon in polygons:
        for ring in polygon:
            for (x0, y0), (x1, y1) in pairwise(ring):
                if x0 != x1:
                    continue
                lo, hi = sorted((y0 // downsample, y1 // downsample))
                for row in range(lo, hi):
                    crossings[row].append(x0 / downsample)
    for row, xs in enumerate(crossings):
        xs.sort()
        assert len(xs) % 2 == 0
        for a, b in zip(xs[::2], xs[1::2], strict=True):
            out[row, int(a) : int(b)] = True
    return out


def _grid(text: str) -> Mask:
    return np.array([[ch == "#" for ch in line] for line in text.split()], dtype=bool)


def test_square() -> None:
    mask = np.zeros((6, 7), dtype=bool)
    mask[1:4, 2:6] = True
    polys = mask_polygons(mask, 4)
    assert polys == [[[(8, 4), (24, 4), (24, 16), (8, 16), (8, 4)]]]
    _check(polys, mask, 4)


def test_square_with_hole() -> None:
    mask = _grid("""
        .....
        .###.
        .#.#.
        .###.
        .....
    """)
    polys = mask_polygons(mask, 2)
    assert len(polys) == 1 and len(polys[0]) == 2
    assert sorted(polys[0][1][:-1]) == [(4, 4), (4, 6), (6, 4), (6, 6)]
    _check(polys, mask, 2)


def test_diagonal_pixels_are_two_regions() -> None:
    """4-connectivity: corner-touching pixels are two features sharing one point."""
    mask = _grid("""
        #.
        .#
    """)
    polys = mask_polygons(mask, 1)
    assert len(polys) == 2 and all(len(p) == 1 for p in polys)
    assert sorted(polys[0][0][:-1]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sorted(polys[1][0][:-1]) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    _check(polys, mask, 1)


def test_pinched_ring_splits_into_shell_and_touching_hole() -> None:
    """The background pinches through a corner: a hole touching the shell at one point."""
    mask = _grid("""
        .##
        #.#
        ###
    """)
    polys = mask_polygons(mask, 1)
    assert len(polys) == 1 and len(polys[0]) == 2
    shell, hole = polys[0]
    assert (1, 1) in shell and (1, 1) in hole
    _check(polys, mask, 1)


def test_l_shape() -> None:
    mask = _grid("""
        #..
        #..
        ###
    """)
    polys = mask_polygons(mask, 10)
    assert len(polys) == 1 and len(polys[0]) == 1
    assert len(polys[0][0]) == 7  # six corners + closing point
    assert sorted(polys[0][0][:-1]) == sorted(
        [(0, 0), (10, 0), (10, 20), (30, 20), (30, 30), (0, 30)]
    )
    _check(polys, mask, 10)


@pytest.mark.parametrize("seed", range(4))
def test_random_blobs_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random((70, 90)), 1.5) > 0.5
    speckle = rng.random((70, 90)) < 0.45  # many pinches and one-pixel regions
    for mask, d in ((smooth, 3), (speckle, 1), (smooth ^ speckle, 2)):
        polys = mask_polygons(mask, d)
        assert len(polys) == ndimage.label(mask)[1]
        _check(polys, mask, d)
        np.testing.assert_array_equal(_rasterise(polys, mask.shape, d), mask)


def test_full_and_border_masks() -> None:
    mask = np.ones((4, 5), dtype=bool)
    assert mask_polygons(mask, 1) == [[[(0, 0), (5, 0), (5, 4), (0, 4), (0, 0)]]]
    mask[1:3, 1:4] = False
    polys = mask_polygons(mask, 1)
    _check(polys, mask, 1)
    np.testing.assert_array_equal(_rasterise(polys, mask.shape, 1), mask)


def test_empty_mask() -> None:
    assert mask_polygons(np.zeros((10, 10), dtype=bool), 4) == []
    assert mask_polygons(np.zeros((0, 0), dtype=bool), 4) == []
    assert geojson.features("blur", np.zeros((3, 3), dtype=bool), 8) == []


def test_large_mask_with_many_blobs() -> None:
    rng = np.random.default_rng(7)
    size = 3000
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(300):
        cy, cx = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(8, 50))
        yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
        disk = yy * yy + xx * xx <= r * r
        y0, x0 = max(cy - r, 0), max(cx - r, 0)
        y1, x1 = min(cy + r + 1, size), min(cx + r + 1, size)
        mask[y0:y1, x0:x1] |= disk[y0 - cy + r : y1 - cy + r, x0 - cx + r : x1 - cx + r]
    start = time.perf_counter()
    polys = mask_polygons(mask, 16)
    elapsed = time.perf_counter() - start
    print(f"3000x3000, {len(polys)} regions: {elapsed:.3f} s")  # no assert: CI speed varies
    assert len(polys) == ndimage.label(mask)[1]
    area = sum(geojson.polygon_area(p) for p in polys)
    assert area == mask.sum() * 16 * 16


def test_features_have_qupath_keys() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:3, 1:3] = True
    mask[5:8, 4:8] = True
    feats = geojson.features("pen", mask, 8, {"area_mm2_total": 1.5}, mpp=0.5)
    assert len(feats) == 2
    for f in feats:
        assert f["type"] == "Feature"
        assert f["geometry"]["type"] == "Polygon"
        props: dict[str, Any] = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"] == {"name": "Pen", "color": list(geojson.COLORS["pen"])}
        assert props["isLocked"] is False
        assert props["measurements"]["area_mm2_total"] == 1.5
        _check_shapely(f["geometry"]["coordinates"])
    # 2x2 mask pixels at downsample 8 = 256 level-0 px at 0.5 um = 64 um^2.
    assert feats[0]["properties"]["measurements"]["area_mm2"] == pytest.approx(64e-6)
    assert feats[0]["geometry"]["coordinates"][0][0] == [8, 8]
    json.dumps(feats)  # plain JSON types only
    names = {
        geojson.features(k, mask, 1)[0]["properties"]["classification"]["name"]
        for k in geojson.COLORS
    }
    assert names == {"Blur", "Pen", "Fold", "Bubble", "Debris", "Edge", "Tissue"}
    with pytest.raises(ValueError, match="unknown region kind"):
        geojson.features("smudge", mask, 1)


def test_write_feature_collection(tmp_path: Path) -> None:
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    feats = geojson.features("tissue", mask, 2)
    target = tmp_path / "regions.geojson"
    target.write_text("old")
    geojson.write_feature_collection(target, feats)
    doc = json.loads(target.read_text())
    assert doc == {"type": "FeatureCollection", "features": feats}
    assert [p.name for p in tmp_path.iterdir()] == ["regions.geojson"]  # no temp left behind
