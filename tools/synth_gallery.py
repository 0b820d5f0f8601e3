#!/usr/bin/env python3
"""Render the test-slide kit's gallery: docs/synth/*.png and docs/synth.md.

One slide per artifact class (same seed, so the tissue is the same), its thumbnail beside its
ground-truth mask, plus full-resolution crops, so a pathologist can judge realism at a glance.
Usage: .venv/bin/python tools/synth_gallery.py [--out docs] [--size 16000x12000] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import imagecodecs
import numpy as np

from edge.synth.model import make_model
from edge.synth.protocol import ARTIFACT_KINDS, SlideSpec
from edge.synth.truth import truth_dict

DOWNSAMPLE = 16


def _save(path: Path, pixels: np.ndarray) -> None:
    path.write_bytes(bytes(imagecodecs.png_encode(pixels)))


def _overlay(thumb: np.ndarray, mask: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Tissue in grey, the artifact mask in red, on white."""
    h, w = thumb.shape[:2]
    out = np.full((h, w, 3), 255, np.uint8)
    out[tissue[:h, :w]] = (200, 200, 200)
    out[mask[:h, :w]] = (220, 30, 30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--size", default="16000x12000")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    images = args.out / "synth"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in ("none", *ARTIFACT_KINDS):
        spec = SlideSpec(width, height, seed=args.seed, artifacts=() if kind == "none" else (kind,))
        model = make_model(spec, None)
        w, h = -(-width // DOWNSAMPLE), -(-height // DOWNSAMPLE)
        thumb = model.region(0, 0, w, h, DOWNSAMPLE)
        masks = model.masks(DOWNSAMPLE)
        mask = masks.get(kind, np.zeros((h, w), bool))
        gap = np.full((h, 12, 3), 255, np.uint8)
        _save(
            images / f"{kind}.png",
            np.concatenate([thumb, gap, _overlay(thumb, mask, masks["tissue"])], axis=1),
        )
        truth = truth_dict(model.truth())
        if kind != "none" and truth["artifacts"]:
            x, y, bw, bh = truth["artifacts"][0]["bbox"]
            cx, cy = x + bw // 2, y + bh // 2
            crop = model.region(max(0, cx - 384), max(0, cy - 256), 768, 512, 1)
            _save(images / f"{kind}-detail.png", crop)
        elif kind == "none":
            ys, xs = np.nonzero(masks["tissue"])  # the tissue pixel nearest the centroid
            near = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
            cx, cy = int(xs[near]) * DOWNSAMPLE, int(ys[near]) * DOWNSAMPLE
            _save(images / "none-detail.png", model.region(cx - 384, cy - 256, 768, 512, 1))
        rows.append((kind, truth))
    lines = [
        "# Test-slide kit gallery",
        "",
        f"Made by `.venv/bin/python tools/synth_gallery.py --size {args.size} --seed {args.seed}`"
        f" (the `edge synth` model; texture: "
        f"{rows[0][1]['extra'].get('texture', {}).get('origin', '?')}). Left: the slide at "
        f"1/{DOWNSAMPLE}; right: ground truth (tissue grey, the planted class red). Below each: "
        "a full-resolution crop at the first planted artifact.",
        "",
    ]
    for kind, truth in rows:
        verdict = "; ".join(truth["reasons"]) or "no rescan"
        affected = truth["affected_fraction"].get(kind, 0.0) if kind != "none" else 0.0
        lines += [
            f"## {kind}",
            "",
            f"tissue {truth['tissue_fraction']:.0%} of the slide; {kind} covers "
            f"{affected:.1%} of tissue; verdict: {verdict}",
            "",
            f"![{kind}](synth/{kind}.png)",
            "",
            f"![{kind} detail](synth/{kind}-detail.png)",
            "",
        ]
    (args.out / "synth.md").write_text("\n".join(lines))
    print(json.dumps({k: t["needs_rescan"] for k, t in rows}))


if __name__ == "__main__":
    main()
