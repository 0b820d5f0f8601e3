"""The analysis contract on disk: OUTDIR/report.json, heatmaps/<class>.png, regions.geojson.

report.json (read by the daemon, the dashboard and the DICOM SR writer):
    verdict        "pass" | "rescan" | "review"
    reasons        list of sentences for the technician, most serious first
    qc_available   false when QC could not run ("QC unavailable: <why>" is then the reason)
    downsample     level-0 px per heatmap px
    classes        {tissue, blur, pen, fold, bubble, debris, edge: {fraction_of_tissue,
                    heatmap ("heatmaps/<class>.png", 8-bit, 255 = certain), area_mm2, ...}}
    stain, stain_scores, priority (0-100), tissue_mm2, fragments,
    models [{name, version, sha256}], backend, mpp, seconds, tiles
Files are written to temporary names and renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np

from edge.analysis import geojson, qc
from edge.analysis.run import AnalysisResult
from edge.fileio import write_atomic

CLASSES = ("tissue", *qc.QC_CLASSES)
STRIP_ROWS = 512  # heatmap rows converted at a time (a 16 MP map in float would be 64 MB)


def report_dict(result: AnalysisResult, slide: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "slide": slide,
        "qc_available": result.available,
        "verdict": result.verdict,
        "reasons": result.reasons,
        "stain": result.stain,
        "stain_scores": result.stain_scores,
        "priority": result.priority,
        "site_scores": result.site_scores,
        "models": result.models,
        "backend": result.backend,
        "seconds": result.seconds,
        "tiles": result.tiles,
    }
    if not result.available or result.geometry is None or result.findings is None:
        doc.update(downsample=None, classes={})
        return doc
    g, found = result.geometry, result.findings
    numbers = qc.summary(found)
    classes: dict[str, Any] = {
        "tissue": {
            "fraction_of_tissue": 1.0,
            "fraction_of_slide": round(float(found.tissue.mean()), 4),
            "heatmap": "heatmaps/tissue.png",
            "area_mm2": round(found.tissue_mm2, 3),
        }
    }
    for kind in qc.QC_CLASSES:
        classes[kind] = {
            **numbers.get(kind, {"fraction_of_tissue": 0.0}),
            "heatmap": f"heatmaps/{kind}.png",
        }
    doc.update(
        downsample=g.mosaic_downsample,
        mpp=g.mpp,
        heatmap_mpp=g.mosaic_mpp,
        width=g.width,
        height=g.height,
        classes=classes,
        tissue_mm2=round(found.tissue_mm2, 3),
        fragments=found.fragments,
        focus_crops_scored=result.crops_scored,
    )
    return doc


def write_outputs(result: AnalysisResult, outdir: Path, slide: str) -> dict[str, Any]:
    """Write everything for one slide into outdir (created); returns the report."""
    outdir.mkdir(parents=True, exist_ok=True)
    doc = report_dict(result, slide)
    if result.available and result.geometry is not None and result.findings is not None:
        heat = outdir / "heatmaps"
        heat.mkdir(exist_ok=True)

        def heatmap(kind: str) -> None:
            prob = result.maps[kind]
            grey = np.empty(prob.shape, np.uint8)
            for y in range(0, prob.shape[0], STRIP_ROWS):  # float temporaries of a strip only
                # Clipped in float32: numpy's float16 arithmetic is scalar code, ~4x slower.
                part = prob[y : y + STRIP_ROWS].astype(np.float32)
                np.clip(part, 0, 1, out=part)
                grey[y : y + STRIP_ROWS] = part * 255 + 0.5
            # zlib's RLE strategy with the SUB filter: ~4x faster than the adaptive filters on
            # these smooth maps, and mostly smaller (tissue 274 -> 236 kB on a 40k slide).
            png = imagecodecs.png_encode(
                grey,
                level=1,
                strategy=imagecodecs.PNG.STRATEGY.RLE,
                filter=imagecodecs.PNG.FILTER.SUB,
            )
            write_atomic(heat / f"{kind}.png", bytes(png))

        # The encoders release the GIL: one thread per core.
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(heatmap, CLASSES))
        if result.mosaic is not None:  # the mosaic, for overlays: a photo, so JPEG
            jpeg = imagecodecs.jpeg8_encode(result.mosaic, level=90)
            write_atomic(heat / "slide.jpg", bytes(jpeg))
        features = []
        d = result.geometry.mosaic_downsample
        for kind, mask in result.findings.masks.items():
            areas = [r.area_mm2 for r in result.findings.regions.get(kind, [])]
            features += geojson.features(kind, mask, d, {"area_mm2_total": round(sum(areas), 3)})
        geojson.write_feature_collection(outdir / "regions.geojson", features)
    write_atomic(outdir / "report.json", json.dumps(doc, indent=2).encode())
    return doc
