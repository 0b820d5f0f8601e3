"""Ground truth of a synthetic slide, and the rules that decide whether it needs a rescan.

Fractions are computed from the masks at the *truth downsample*: the smallest power of two
that keeps that level within 4 megapixels (a 4000 px slide: 2; a 100,000 px slide: 64). The
tissue mask is where tissue coverage >= 50%; an artifact's mask is its support (every pixel
it may change), and a kind's affected fraction is |kind mask AND tissue| / |tissue|.

A slide needs a rescan (or a restain / remount, as the reason says) when any of these holds:

    blur    >= 10% of the tissue out of focus (PSF radius >= 2 µm)
    pen     >= 5% of the tissue under pen marks
    fold    >= 5% of the tissue folded
    bubble  >= 5% of the tissue under air bubbles
    stain   >= 50% of the tissue mis-stained with severity >= 0.5 (optical density scaled
            by <= 0.63 or >= 1.58): a stain failure of the slide

Debris and a coverslip edge are recorded but never make a slide need a rescan on their own
(nor together with each other). Reasons are written for the technician, e.g.
"rescan: 14% of tissue out of focus (blur radius up to 6.1 µm)".
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import imagecodecs
import numpy as np

from edge.fileio import write_atomic
from edge.synth.protocol import ARTIFACT_KINDS, Truth
from edge.synth.texture import TEXTURE_MPP

if TYPE_CHECKING:
    from edge.synth.model import SyntheticSlide

MAX_TRUTH_PIXELS = 4 << 20
BLUR_FRACTION, BLUR_MIN_RADIUS_UM = 0.10, 2.0
PEN_FRACTION = FOLD_FRACTION = BUBBLE_FRACTION = 0.05
STAIN_FRACTION, STAIN_SEVERITY = 0.5, 0.5


def truth_downsample(width: int, height: int) -> int:
    d = 1
    while math.ceil(width / d) * math.ceil(height / d) > MAX_TRUTH_PIXELS:
        d *= 2
    return d


def _pct(f: float) -> str:
    return f"{max(1, round(100 * f))}%"


def rescan_rules(
    affected: dict[str, float], artifacts: Sequence[dict[str, Any]]
) -> tuple[bool, tuple[str, ...]]:
    """The verdict and its reasons from the affected fractions and the artifact records
    (dicts with "kind", "severity" and the kind's fields, as in Truth.artifacts)."""

    def of(kind: str) -> list[dict[str, Any]]:
        return [a for a in artifacts if a["kind"] == kind]

    reasons = []
    blur = [a for a in of("blur") if a.get("radius_um", 0.0) >= BLUR_MIN_RADIUS_UM]
    if blur and affected.get("blur", 0.0) >= BLUR_FRACTION:
        radius = max(a["radius_um"] for a in blur)
        reasons.append(
            f"rescan: {_pct(affected['blur'])} of tissue out of focus "
            f"(blur radius up to {radius:.1f} µm)"
        )
    if of("pen") and affected.get("pen", 0.0) >= PEN_FRACTION:
        colours = ", ".join(sorted({a.get("colour", "ink") for a in of("pen")}))
        reasons.append(
            f"clean the slide and rescan: {colours} pen marks over "
            f"{_pct(affected['pen'])} of tissue"
        )
    if of("fold") and affected.get("fold", 0.0) >= FOLD_FRACTION:
        reasons.append(f"recut or rescan: tissue fold over {_pct(affected['fold'])} of tissue")
    if of("bubble") and affected.get("bubble", 0.0) >= BUBBLE_FRACTION:
        reasons.append(f"remount and rescan: air bubbles over {_pct(affected['bubble'])} of tissue")
    stains = [a for a in of("stain") if a["severity"] >= STAIN_SEVERITY]
    if stains and affected.get("stain", 0.0) >= STAIN_FRACTION:
        worst = max(stains, key=lambda a: a["severity"])
        factor = float(np.mean(worst.get("od_factor", [1.0])))
        reasons.append(
            f"restain: {_pct(affected['stain'])} of tissue {worst.get('direction', 'mis')}-"
            f"stained (optical density x{factor:.2f})"
        )
    return bool(reasons), tuple(reasons)


def make_truth(model: SyntheticSlide, downsample: int) -> Truth:
    masks = model.masks(downsample)
    tissue = masks["tissue"]
    n_tissue = int(tissue.sum())
    affected = {
        kind: (
            float((masks[kind] & tissue).sum()) / n_tissue if kind in masks and n_tissue else 0.0
        )
        for kind in ARTIFACT_KINDS
    }
    spec = model.spec
    records = tuple(
        {
            "kind": a.kind,
            "index": a.index,
            "bbox": a.bbox(spec.width, spec.height),
            "severity": a.severity,
            **a.info,
        }
        for a in model.artifacts
    )
    needs, reasons = rescan_rules(affected, records)
    patches, layout = model.patches, model.layout
    height, width = tissue.shape
    fat = layout.fat.weight.sample(0, 0, width, height, downsample) >= 0.5
    extra = {
        "truth_downsample": downsample,
        "texture": {
            "origin": patches.origin,
            "files": list(patches.files),
            "patches": patches.count,
            "mpp": TEXTURE_MPP.get(patches.stain) if patches.origin == "real" else None,
        },
        "layout": {
            "kind": layout.kind,
            "pieces": len(layout.pieces),
            "coverage_target": round(layout.coverage_target, 4),
            "grid_px": layout.sdf.step,
            "fat_fraction": round(float((fat & tissue).sum()) / max(n_tissue, 1), 6),
        },
        "rules": "edge.synth.truth (module docstring)",
    }
    return Truth(
        spec,
        records,
        round(float(tissue.mean()), 6),
        {k: round(v, 6) for k, v in affected.items()},
        needs,
        reasons,
        extra,
    )


def truth_dict(truth: Truth) -> dict[str, Any]:
    """A JSON-able dict (tuples become lists)."""
    out: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(truth)))
    return out


def write_truth(
    model: SyntheticSlide, json_path: Path, mask_dir: Path, downsample: int
) -> dict[str, Any]:
    """Write the truth JSON and one PNG mask per class (0 / 255) at `downsample`; the JSON
    names the mask files (relative to the JSON's folder when possible) and their downsample.
    Returns the JSON document."""
    masks = model.masks(downsample)
    mask_dir.mkdir(parents=True, exist_ok=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, mask in masks.items():
        path = mask_dir / f"{name}.png"
        write_atomic(path, bytes(imagecodecs.png_encode(mask.astype(np.uint8) * np.uint8(255))))
        try:
            files[name] = str(path.resolve().relative_to(json_path.parent.resolve()))
        except ValueError:
            files[name] = str(path.resolve())
    doc = truth_dict(model.truth())
    height, width = masks["tissue"].shape
    doc["masks"] = {"downsample": downsample, "width": width, "height": height, "files": files}
    write_atomic(json_path, json.dumps(doc, indent=2).encode())
    return doc
