"""From probability maps to what the technician reads: masks, fractions, regions, a verdict.

Pure functions over numpy arrays on the mosaic grid; no I/O, no models. The thresholds are
the appliance's documented defaults (config [analysis.qc] overrides them):

    rescan when   >= 10% of tissue out of focus, or >= 5% under pen, folded, or under bubbles
    review when   an artifact covers at least `review_share` (60%) of its rescan threshold,
                  debris or a coverslip edge over >= 5% of tissue, no tissue found, or the
                  stain is not H&E or IHC
    pass          otherwise
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from edge.analysis.sampler import chroma

Mask = npt.NDArray[np.bool_]
Prob = npt.NDArray[np.floating[Any]]

MARK_CONTEXT = 127  # mosaic px (~0.5 mm): wider than most pen strokes
COVERED_CHROMA = 2.5  # still_stained: mean max-min over RGB of tissue under a bubble
COVERED_WINDOW = 5  # mosaic px that still_stained averages over
QC_CLASSES = ("blur", "pen", "fold", "bubble", "debris", "edge")
_NAMES = {
    "blur": "out of focus",
    "pen": "under pen marks",
    "fold": "folded",
    "bubble": "under air bubbles",
    "debris": "under debris",
    "edge": "beyond a coverslip edge",
}
_ACTIONS = {
    "blur": "rescan",
    "pen": "clean the slide and rescan",
    "fold": "recut or rescan",
    "bubble": "remount and rescan",
    "debris": "review",
    "edge": "review",
}


@dataclass(frozen=True)
class Thresholds:
    """Fractions of tissue at which a slide must be rescanned (None: never on its own)."""

    rescan: dict[str, float | None] = field(
        default_factory=lambda: {
            "blur": 0.10,
            "pen": 0.05,
            "fold": 0.05,
            "bubble": 0.05,
            "debris": None,
            "edge": None,
        }
    )
    review: dict[str, float] = field(default_factory=lambda: {"debris": 0.05, "edge": 0.05})
    review_share: float = 0.6  # of a rescan threshold: close enough for a person to look
    probability: dict[str, float] = field(default_factory=dict)  # per-class map cut-offs
    # Per-class cut-offs for the fraction of tissue (the verdict's number). The detection
    # cut-off above is chosen for finding tiles and runs low (recall), which draws every region
    # a little wide: 3-4% of tissue under pen was reported as 6-7%. This one is chosen so the
    # fraction matches the truth's on validation slides (tools/qc_bench.py calibrate).
    area_probability: dict[str, float] = field(default_factory=dict)
    # Smaller regions of a class are noise, not findings (an air bubble is never a speck; a
    # piece of debris can be).
    min_region_mm2: dict[str, float] = field(
        default_factory=lambda: {"bubble": 0.02, "fold": 0.002, "pen": 0.002, "debris": 0.0005}
    )
    default_min_region_mm2: float = 0.002
    smoothing_px: int = 5  # artifact maps are averaged over this many mosaic px first
    min_tissue_mm2: float = 0.1  # less tissue than this: "no tissue found" (a small biopsy
    # is about 0.5 mm2; a tenth of that left after dropping specks is not a section)

    @classmethod
    def from_config(cls, a: Any) -> Thresholds:
        """From config.Analysis (its fractions; the rest stays at the defaults)."""
        return cls(
            rescan={
                "blur": a.blur_rescan,
                "pen": a.pen_rescan,
                "fold": a.fold_rescan,
                "bubble": a.bubble_rescan,
                "debris": None,
                "edge": None,
            },
            review={"debris": a.debris_review, "edge": a.edge_review},
            review_share=a.review_share,
        )

    def cut(self, kind: str) -> float:
        return self.probability.get(kind, 0.5)

    def area_cut(self, kind: str) -> float:
        return self.area_probability.get(kind, self.cut(kind))

    def min_region(self, kind: str) -> float:
        return self.min_region_mm2.get(kind, self.default_min_region_mm2)


@dataclass(frozen=True)
class Region:
    kind: str
    area_mm2: float
    x: int  # centroid, level-0 px
    y: int
    bbox: tuple[int, int, int, int]  # level-0 px: x, y, width, height


@dataclass
class Findings:
    tissue: Mask
    masks: dict[str, Mask]
    fractions: dict[str, float]
    regions: dict[str, list[Region]]
    tissue_mm2: float
    fragments: int


def tissue_mask(
    artifact_probs: Prob,
    tissue_index: int,
    background_index: int,
    pixel_mm2: float,
    min_piece_mm2: float = 0.05,
    stained: Mask | Callable[[Mask], Mask] | None = None,
) -> Mask:
    """Tissue: what the artifact model calls tissue or fold, plus what lies under a bubble
    or debris where the pixels still look stained (`stained`, still_stained's colour test, or
    a function giving it for a mask of the covered pixels: a bubble washes tissue out but
    does not remove it), plus pen marks and edge shadows where tissue surrounds them; pen or
    a shadow on glass is not tissue."""
    names = ("background", "tissue", "pen", "fold", "bubble", "debris", "edge")
    at = {name: artifact_probs[i] for i, name in enumerate(names) if i < len(artifact_probs)}
    del background_index  # the class order is fixed by the model (nets.ARTIFACT_CLASSES)
    solid = (at["tissue"] + at.get("fold", 0.0)) >= 0.5
    if stained is not None:
        covered = (at.get("bubble", 0.0) + at.get("debris", 0.0)) >= 0.5
        solid |= covered & (stained(covered) if callable(stained) else stained)
    # A pen stroke or an edge's shadow hides what is under it: call it tissue where what
    # surrounds it (within MARK_CONTEXT px, the marks themselves left out) is mostly tissue,
    # so a stroke across a section counts and a stroke on the glass beside it does not.
    marks = at.get("pen", np.zeros(1)) >= 0.5
    if marks.any():
        solid |= marks & _mostly_tissue_around(marks, solid)
    solid = within_box(solid, lambda m: ndimage.binary_opening(m, iterations=1), margin=2)
    solid = within_box(solid, ndimage.binary_fill_holes)
    return remove_small(solid, max(1, int(min_piece_mm2 / pixel_mm2)))


def _mostly_tissue_around(marks: Mask, solid: Mask) -> Mask:
    """Where at least half of the unmarked pixels within MARK_CONTEXT px are tissue. Needed at
    marks only, so computed in the box around them: with a margin of twice the filter's
    reach, no value a mark pixel depends on sees the box's edge (same answer as the whole
    mosaic; the filter's sums of 0/1 values are exact)."""
    out = np.zeros_like(marks)
    box = box_of(marks, MARK_CONTEXT)
    if box is None:
        return out
    m, t = marks[box], solid[box]
    near = ndimage.uniform_filter((t & ~m).astype(np.float32), MARK_CONTEXT)
    seen = ndimage.uniform_filter((~m).astype(np.float32), MARK_CONTEXT)
    out[box] = near / np.maximum(seen, 1e-3) >= 0.5
    return out


def box_of(mask: Mask, margin: int = 0) -> tuple[slice, slice] | None:
    """The box around mask's pixels plus margin (clipped at the top and left; slicing clips
    the rest), or None when it has none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return (
        slice(max(0, rows[0] - margin), rows[-1] + 1 + margin),
        slice(max(0, cols[0] - margin), cols[-1] + 1 + margin),
    )


def within_box(mask: Mask, operation: Callable[[Mask], Mask], margin: int = 0) -> Mask:
    """operation(mask) computed on the box around mask's pixels (plus margin) only: the same
    result for operations that leave the empty rest empty and see no further than margin
    (hole filling and labelling need none: past the box is all background, so the box's
    border already counts as outside). Artifact masks cover a few % of a mosaic of up to 16 MP;
    labelling and filling the whole of it took ~40 ms a call, a dozen calls a slide."""
    box = box_of(mask, margin)
    if box is None:
        return mask
    out = np.zeros_like(mask)
    out[box] = operation(mask[box])
    return out


def pieces(mask: Mask) -> int:
    """The number of connected pieces (4-connected) of mask, labelled in its box."""
    box = box_of(mask)
    return 0 if box is None else int(ndimage.label(mask[box])[1])


def still_stained(mosaic: npt.NDArray[np.uint8], where: Mask | None = None) -> Mask:
    """Where a bubble or debris covers the slide, tissue lies beneath where colour is left:
    glass under a bubble is grey (chroma about 1 averaged over 5 mosaic px), washed-out
    tissue 2-15 (kit validation slides). Darkness does not count: a bubble's grey rim on
    glass is dark, and tissue_mask's hole filling then made a whole bubble on glass tissue
    (its area counted as "tissue under air bubbles"). With `where`, only there (and False
    elsewhere): the box around it is computed, with the margin that keeps it exact."""
    box = (slice(None), slice(None)) if where is None else box_of(where, 2 * (COVERED_WINDOW // 2))
    found: Mask = np.zeros(mosaic.shape[:2], bool)
    if box is not None:
        colour = ndimage.uniform_filter(chroma(mosaic[box]).astype(np.float32), COVERED_WINDOW)
        found[box] = colour >= COVERED_CHROMA
    return found


def remove_small(mask: Mask, min_pixels: int) -> Mask:
    """mask without its connected pieces (4-connected) of fewer than min_pixels pixels."""

    def keep_big(part: Mask) -> Mask:
        labels, n = ndimage.label(part)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_pixels
        keep[0] = False
        big: Mask = keep[labels]
        return big

    return within_box(mask, keep_big)


def regions_of(mask: Mask, kind: str, downsample: int, pixel_mm2: float) -> list[Region]:
    """Connected regions of a class, largest first, in level-0 coordinates."""
    around = box_of(mask)  # labelled in the box around the class only (within_box's reason)
    if around is None:
        return []
    top, left = int(around[0].start), int(around[1].start)
    labels, _ = ndimage.label(mask[around])
    found = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        part = labels[box] == index
        area = int(part.sum())
        cy, cx = ndimage.center_of_mass(part)
        ys = slice(box[0].start + top, box[0].stop + top)
        xs = slice(box[1].start + left, box[1].stop + left)
        found.append(
            Region(
                kind,
                round(area * pixel_mm2, 3),
                int((xs.start + cx + 0.5) * downsample),
                int((ys.start + cy + 0.5) * downsample),
                (
                    xs.start * downsample,
                    ys.start * downsample,
                    (xs.stop - xs.start) * downsample,
                    (ys.stop - ys.start) * downsample,
                ),
            )
        )
    return sorted(found, key=lambda r: -r.area_mm2)


def smoothed(kind: str, prob: Prob, thresholds: Thresholds, floor: float | None = None) -> Prob:
    """An artifact map averaged over thresholds.smoothing_px (blur, already per crop, as is).
    With a floor, only where the average can reach it (near pixels >= floor: a mean is never
    above its window's maximum) and 0 elsewhere: the same masks at any cut >= floor, for the
    few % of a mosaic an artifact covers."""
    if kind == "blur":
        return prob
    size = thresholds.smoothing_px

    def smooth(part: Prob) -> Prob:
        out: Prob = ndimage.uniform_filter(part.astype(np.float32), size, mode="nearest")
        return out

    if floor is None:
        return smooth(prob)
    near = prob >= floor
    rows, cols = np.flatnonzero(near.any(axis=1)), np.flatnonzero(near.any(axis=0))
    found: Prob = np.zeros(prob.shape, np.float32)
    if len(rows):
        # Past `size` px from the box, a window holds no value >= floor, in the crop's
        # edge-repeating mode as in the whole map's: both averages stay under floor.
        ys = slice(max(0, rows[0] - size), rows[-1] + 1 + size)
        xs = slice(max(0, cols[0] - size), cols[-1] + 1 + size)
        found[ys, xs] = smooth(prob[ys, xs])
    return found


def class_mask(
    kind: str, smooth: Prob, tissue: Mask, cut: float, thresholds: Thresholds, pixel_mm2: float
) -> Mask:
    """Where a class is reported: smoothed probability >= cut (blur only on tissue), regions
    under the class's minimum area dropped."""
    mask = smooth >= cut
    if kind == "blur":
        mask &= tissue
    elif kind == "bubble":  # a bubble is a disc: what its rim encloses is under it
        mask = within_box(mask, ndimage.binary_fill_holes)
    return remove_small(mask, max(1, int(thresholds.min_region(kind) / pixel_mm2)))


def findings(
    probs: dict[str, Prob],
    tissue: Mask,
    downsample: int,
    mosaic_mpp: float,
    thresholds: Thresholds,
) -> Findings:
    """Masks (probability >= cut, on tissue for blur, minus specks), fractions of tissue
    (under the class's area cut-off), regions, tissue area and fragment count."""
    pixel_mm2 = (mosaic_mpp / 1000.0) ** 2
    n_tissue = int(tissue.sum())
    masks, fractions, regions = {}, {}, {}
    for kind in QC_CLASSES:
        prob = probs.get(kind)
        if prob is None:
            continue
        cut, area_cut = thresholds.cut(kind), thresholds.area_cut(kind)
        smooth = smoothed(kind, prob, thresholds, floor=min(cut, area_cut))
        mask = class_mask(kind, smooth, tissue, cut, thresholds, pixel_mm2)
        masks[kind] = mask
        regions[kind] = regions_of(mask, kind, downsample, pixel_mm2)
        if area_cut != cut:
            mask = class_mask(kind, smooth, tissue, area_cut, thresholds, pixel_mm2)
        fractions[kind] = float((mask & tissue).sum()) / n_tissue if n_tissue else 0.0
    return Findings(tissue, masks, fractions, regions, n_tissue * pixel_mm2, pieces(tissue))


def _mm2(area: float) -> str:
    """An area with two significant digits under 10 mm2 (a 0.04 mm2 region read "0.0")."""
    return f"{area:.0f}" if area >= 9.95 else f"{area:.2g}"


def _pct(f: float, limit: float | None = None) -> str:
    """A fraction for the technician: one decimal under 10%, where thresholds lie (4.7% read
    as "5%" beside "rescan from 5%" looked like a rescan that was not called); a fraction
    under `limit` is never written at or above it (9.96% of a 10% limit: "9.9%")."""
    percent = 100 * f
    text = f"{round(percent)}" if percent >= 9.95 else f"{max(percent, 0.1):.1f}"
    if limit is not None and f < limit and float(text) >= 100 * limit:
        text = f"{math.floor(percent * 10) / 10:.1f}"
    return f"{text}%"


def verdict(
    found: Findings, thresholds: Thresholds, stain: str, mosaic_mpp: float
) -> tuple[str, list[str]]:
    """("pass" | "rescan" | "review", reasons for the technician, most serious first)."""
    rescan: list[str] = []
    review: list[str] = []
    if found.tissue_mm2 < thresholds.min_tissue_mm2:
        return "review", [
            f"review: no tissue found (pieces of at least {thresholds.min_tissue_mm2} mm2 "
            f"looked for; {found.tissue_mm2:.2f} mm2 found)"
        ]
    for kind, fraction in found.fractions.items():
        largest = found.regions[kind][0] if found.regions.get(kind) else None
        where = (
            f", largest region {_mm2(largest.area_mm2)} mm2 at x={largest.x}, y={largest.y}"
            if largest
            else ""
        )
        limit = thresholds.rescan.get(kind)
        text = f"{_pct(fraction, limit)} of tissue {_NAMES[kind]}{where}"
        if limit is not None and fraction >= limit:
            rescan.append(f"{_ACTIONS[kind]}: {text}")
        elif limit is not None and fraction >= thresholds.review_share * limit and fraction > 0:
            review.append(f"review: {text} (rescan from {100 * limit:g}%)")
        elif kind in thresholds.review and fraction >= thresholds.review[kind]:
            review.append(f"review: {text}")
    if stain not in ("H&E", "IHC"):
        review.append(f"review: stain not recognised as H&E or IHC ({stain})")
    if rescan:
        return "rescan", rescan + review
    if review:
        return "review", review
    return "pass", []


def summary(found: Findings) -> dict[str, Any]:
    """Numbers for the report: per class fraction, area and the largest regions."""
    out: dict[str, Any] = {}
    for kind, fraction in found.fractions.items():
        regs = found.regions.get(kind, [])
        out[kind] = {
            "fraction_of_tissue": round(fraction, 4),
            "area_mm2": round(sum(r.area_mm2 for r in regs), 3),
            "regions": len(regs),
            "largest": [
                {"area_mm2": r.area_mm2, "x": r.x, "y": r.y, "bbox": list(r.bbox)} for r in regs[:5]
            ],
        }
    return out
