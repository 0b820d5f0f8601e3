"""Analysis masks as QuPath-compatible GeoJSON (regions.geojson).

Masks become exact polygons along pixel edges (no smoothing, no simplification beyond dropping
collinear points), so filling the polygons back reproduces the mask pixel for pixel and areas
computed from the polygons equal the pixel counts.

Conventions (chosen once, used everywhere):

* Connectivity: foreground regions are 4-connected. Two pixels that touch only at a corner are
  two regions (two Features) whose outlines share that corner point. This matches
  `scipy.ndimage.label`'s default and keeps every ring free of crossings.
* Coordinates: level-0 pixels, origin at the top-left corner of the image, x to the right,
  y down (QuPath's frame). A mask pixel (r, c) at `downsample` d covers
  [c*d, (c+1)*d] x [r*d, (r+1)*d].
* Orientation: the exterior ring has a positive signed area
  sum(x_i*y_(i+1) - x_(i+1)*y_i) / 2 computed on the numbers as written, i.e. it is
  counter-clockwise in the y-up frame that RFC 7946 and generic tools (shapely/GEOS `is_ccw`,
  GeoJSON linters) assume; holes have a negative signed area (clockwise). Because image y points
  down, an exterior looks clockwise on screen. We follow the numeric convention because that is
  what validators check; QuPath accepts either orientation.
* Rings touching themselves at a pixel corner (a "pinch" where the background passes
  diagonally) are split there into separate simple rings, so each polygon is OGC-valid: an
  exterior plus holes that may touch the exterior or each other at single points.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from edge.fileio import write_atomic

Point = tuple[int, int]
Ring = list[Point]
Polygon = list[Ring]

# Fixed per kind so the same artifact has the same colour on every slide and in every viewer.
COLORS: dict[str, tuple[int, int, int]] = {
    "tissue": (0, 160, 0),
    "blur": (255, 165, 0),
    "pen": (0, 90, 255),
    "fold": (160, 32, 240),
    "bubble": (0, 200, 200),
    "debris": (139, 69, 19),
    "edge": (220, 20, 60),
}

_I64 = npt.NDArray[np.int64]


def _runs(edges: npt.NDArray[np.bool_], axis: int) -> tuple[_I64, _I64, _I64]:
    """Maximal runs of True along `axis`: (line, first index, one past the last index), where
    line is the row (axis=1) or column (axis=0) holding the run."""
    shape = list(edges.shape)
    shape[axis] += 2
    padded = np.zeros(shape, dtype=bool)
    if axis == 1:
        padded[:, 1:-1] = edges
        i, j = np.nonzero(padded[:, 1:] != padded[:, :-1])
        up = padded[i, j + 1]
    else:
        padded[1:-1, :] = edges
        i, j = np.nonzero(padded[1:, :] != padded[:-1, :])
        up = padded[i + 1, j]
    i0, j0, i1, j1 = i[up], j[up], i[~up], j[~up]
    if axis == 1:  # row-major order already pairs each stop with its start
        return i0.astype(np.int64), j0.astype(np.int64), j1.astype(np.int64)
    # Column runs: order by (column, row) so starts and stops pair up. Sorting only the run
    # ends is much cheaper than scanning a transposed copy of the image.
    a = np.lexsort((i0, j0))
    b = np.lexsort((i1, j1))
    return j0[a].astype(np.int64), i0[a].astype(np.int64), i1[b].astype(np.int64)


def _successor(end_key: _I64, turn: _I64, start_key: _I64, direction: _I64) -> npt.NDArray[np.intp]:
    """For each segment ending at `end_key`, the index of the perpendicular segment that
    continues the outline. At a pinch two candidates start at the same corner; the one whose
    `direction` equals `turn` is the left turn (interior side), which keeps regions 4-connected."""
    order = np.lexsort((direction, start_key))
    keys = start_key[order]
    first = np.searchsorted(keys, end_key, side="left")
    second = np.minimum(first + 1, len(keys) - 1)
    pinch = (first + 1 < len(keys)) & (keys[second] == end_key)
    # Sorted by direction -1 then +1, so the +1 candidate is the second one.
    pick = first + (pinch & (turn == 1))
    result: npt.NDArray[np.intp] = order[pick]
    return result


def _split_pinches(ring: list[int]) -> list[list[int]]:
    """Split a ring that visits the same corner twice into simple rings (rare: pinches only)."""
    stack: list[int] = []
    where: dict[int, int] = {}
    loops: list[list[int]] = []
    for node_key in ring:
        if node_key in where:
            at = where[node_key]
            loop = stack[at:]
            del stack[at:]
            for k in loop:
                del where[k]
            loops.append(loop)
        where[node_key] = len(stack)
        stack.append(node_key)
    loops.append(stack)
    return loops


def mask_polygons(mask: npt.NDArray[np.bool_], downsample: int) -> list[Polygon]:
    """Exact outlines of the 4-connected regions of `mask`, in level-0 pixels.

    Each polygon is [exterior, *holes]; rings are closed (first point repeated last) and hold
    corners only. Orientation and connectivity conventions are in the module docstring.
    Polygons are ordered by the raster position of their region's first pixel.

    The boundary is built as maximal horizontal and vertical runs of pixel edges with numpy;
    only the corner-to-corner runs are chained in Python, so the cost follows the number of
    corners, not the image size.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if not len(rows):
        return []
    # Only the box around the regions is traced (artifacts cover a sliver of a slide).
    y0, x0 = int(rows[0]), int(cols[0])
    m = m[y0 : int(rows[-1]) + 1, x0 : int(cols[-1]) + 1]
    w = m.shape[1]
    p = np.pad(m, 1)
    stride = w + 1  # corner (x, y) has key y * stride + x

    # Pixel edges with background on the other side, directed so the region lies on the left
    # (in the y-up sense of the module docstring): top +x, right +y, bottom -x, left -y.
    top = m & ~p[:-2, 1:-1]
    bottom = m & ~p[2:, 1:-1]
    left = m & ~p[1:-1, :-2]
    right = m & ~p[1:-1, 2:]

    r, c0, c1 = _runs(top, 1)
    r_b, c0_b, c1_b = _runs(bottom, 1)
    c_l, r0_l, r1_l = _runs(left, 0)
    c_r, r0_r, r1_r = _runs(right, 0)

    h_start = np.concatenate([r * stride + c0, (r_b + 1) * stride + c1_b])
    h_end = np.concatenate([r * stride + c1, (r_b + 1) * stride + c0_b])
    h_dir = np.concatenate([np.ones_like(r), -np.ones_like(r_b)])
    v_start = np.concatenate([r1_l * stride + c_l, r0_r * stride + c_r + 1])
    v_end = np.concatenate([r0_l * stride + c_l, r1_r * stride + c_r + 1])
    v_dir = np.concatenate([-np.ones_like(c_l), np.ones_like(c_r)])

    labels, _ = ndimage.label(m)  # default structure: 4-connectivity
    node_label = np.concatenate(
        [labels[r, c0], labels[r_b, c0_b], labels[r0_l, c_l], labels[r0_r, c_r]]
    ).astype(np.int64)

    # Left turn: moving +x the interior is toward +y, so continue with dy = dx;
    # moving along y, continue with dx = -dy.
    n_h = len(h_start)
    next_of_h = _successor(h_end, h_dir, v_start, v_dir) + n_h
    next_of_v = _successor(v_end, -v_dir, h_start, h_dir)
    successor: list[int] = np.concatenate([next_of_h, next_of_v]).tolist()
    node_key = np.concatenate([h_start, v_start])

    # Chain runs into rings: a loop over corners only.
    n = len(successor)
    seen = bytearray(n)
    order: list[int] = []
    bounds: list[int] = []
    for s in range(n):
        if seen[s]:
            continue
        bounds.append(len(order))
        i = s
        while not seen[i]:
            seen[i] = 1
            order.append(i)
            i = successor[i]
    bounds.append(len(order))

    # A corner visited twice in one ring can only be a pinch; find rings that have one.
    tl, tr, bl, br = p[:-1, :-1], p[:-1, 1:], p[1:, :-1], p[1:, 1:]
    pinch = ((tl & br & ~tr & ~bl) | (tr & bl & ~tl & ~br)).ravel()
    keys_in_order = node_key[np.asarray(order, dtype=np.int64)]
    at_pinch = pinch[keys_in_order]
    ring_pinches = np.add.reduceat(at_pinch.astype(np.int64), np.asarray(bounds[:-1]))
    keys_list: list[int] = keys_in_order.tolist()
    labels_list: list[int] = node_label[np.asarray(order, dtype=np.int64)].tolist()

    exteriors: dict[int, Ring] = {}
    holes: dict[int, list[Ring]] = {}
    for k, (a, b) in enumerate(pairwise(bounds)):
        ring_keys = keys_list[a:b]
        label = labels_list[a]
        loops = _split_pinches(ring_keys) if ring_pinches[k] > 1 else [ring_keys]
        for loop in loops:
            pts = [
                ((key % stride + x0) * downsample, (key // stride + y0) * downsample)
                for key in loop
            ]
            pts.append(pts[0])
            if _signed_area2(pts) > 0:
                exteriors[label] = pts
            else:
                holes.setdefault(label, []).append(pts)
    return [[exteriors[label], *holes.get(label, [])] for label in sorted(exteriors)]


def _signed_area2(ring: Ring) -> int:
    """Twice the signed shoelace area of a closed ring (positive = exterior orientation)."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in pairwise(ring))


def polygon_area(polygon: Polygon) -> float:
    """Area enclosed by a polygon from `mask_polygons` (holes subtracted), in coordinate units."""
    return sum(_signed_area2(ring) for ring in polygon) / 2


def features(
    kind: str,
    mask: npt.NDArray[np.bool_],
    downsample: int,
    measurements: dict[str, float] | None = None,
    *,
    mpp: float | None = None,
) -> list[dict[str, Any]]:
    """QuPath annotation Features, one per region of `mask`, classified as `kind`.

    Property names follow QuPath's own GeoJSON export (objectType, classification {name,
    color}, isLocked, measurements as a name -> number map), so File > Import objects shows
    the regions with their class and colour. `measurements` is copied into every feature;
    with `mpp` (level-0 micrometres per pixel) each feature also gets its own `area_mm2`.
    """
    if kind not in COLORS:
        raise ValueError(f"unknown region kind {kind!r}; expected one of {sorted(COLORS)}")
    classification = {"name": kind.capitalize(), "color": list(COLORS[kind])}
    out: list[dict[str, Any]] = []
    for polygon in mask_polygons(mask, downsample):
        values: dict[str, float] = dict(measurements or {})
        if mpp is not None:
            values["area_mm2"] = polygon_area(polygon) * mpp * mpp / 1e6
        out.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[list(pt) for pt in ring] for ring in polygon],
                },
                "properties": {
                    "objectType": "annotation",
                    "classification": dict(classification),
                    "isLocked": False,
                    "measurements": values,
                },
            }
        )
    return out


def write_feature_collection(path: Path, features: list[dict[str, Any]]) -> None:
    """Write a FeatureCollection via a temporary name in the same folder and os.replace, so a
    reader (QuPath, the dashboard) never sees a half-written file."""
    data = json.dumps({"type": "FeatureCollection", "features": features}).encode()
    write_atomic(path, data)
