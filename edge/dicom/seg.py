"""The QC masks as a DICOM Segmentation on one of the slide's own pyramid levels.

Which grid: the analysis works on a mosaic at `mosaic_downsample` level-0 px per pixel, which
is rarely a written level. The SEG is laid on the total pixel matrix of the written VOLUME
level nearest the mosaic in scale (log2 of the downsample; ties go to the finer level, which
then holds the mosaic exactly, each mosaic pixel repeated), among levels of at most
MAX_SEG_PIXELS. Each level pixel takes the value of the mosaic pixel under its centre
(nearest neighbour), so where the level is finer by a whole factor the SEG is the mosaic
mask replicated, with no pixel changed. Sharing the level's Frame of Reference, pixel
spacing and tiling means a viewer overlays it on that level without any registration.

BINARY, not FRACTIONAL: the masks are what the verdict and every number in the report were
computed from (probability >= cut, specks removed, blur on tissue only), so a viewer shows
exactly what was counted; the probabilities are the heatmap PNGs beside the report. BINARY
also packs 8 pixels a byte, where FRACTIONAL needs a byte per pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from edge.analysis.geojson import COLORS  # one colour per class: GeoJSON, SEG, dashboard
from edge.dicom import qc_codes
from edge.errors import OutputError

MAX_SEG_PIXELS = 32 << 20  # level pixels: 7 segments of a byte each in memory while encoding
SEG_CLASSES = ("tissue", "blur", "pen", "fold", "bubble", "debris", "edge")
MODEL_OF = {"blur": "focus"}  # every other class comes from the artifact model

Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class LevelHeader:
    """A written pyramid level: its file and header (no pixels)."""

    path: Path
    dataset: Dataset

    @property
    def width(self) -> int:
        return int(self.dataset.TotalPixelMatrixColumns)

    @property
    def height(self) -> int:
        return int(self.dataset.TotalPixelMatrixRows)


def choose_level(levels: list[LevelHeader], mosaic_downsample: int) -> LevelHeader:
    """The level the SEG is laid on (see the module docstring). Levels largest first."""
    base = levels[0]
    fitting = [lv for lv in levels if lv.width * lv.height <= MAX_SEG_PIXELS] or [levels[-1]]

    def distance(level: LevelHeader) -> tuple[float, int]:
        downsample = base.width / level.width
        # Level sizes are rounded up at each halving, so 64x may measure 63.98x: steps of
        # 0.1 in log2 (7%) count as equal, and equal goes to the finer level.
        return (round(abs(math.log2(downsample / mosaic_downsample)), 1), -level.width)

    return min(fitting, key=distance)


def resample_mask(
    mask: Mask, downsample: int, base: tuple[int, int], level: tuple[int, int]
) -> Mask:
    """A mosaic mask (at `downsample` level-0 px per px) on a level's grid of `level`
    (width, height), level 0 being `base` (width, height): nearest neighbour, each level
    pixel taking the mosaic pixel under its centre."""
    (bw, bh), (lw, lh) = base, level
    rows = ((np.arange(lh) + 0.5) * (bh / lh) // downsample).astype(np.intp)
    cols = ((np.arange(lw) + 0.5) * (bw / lw) // downsample).astype(np.intp)
    np.minimum(rows, mask.shape[0] - 1, out=rows)
    np.minimum(cols, mask.shape[1] - 1, out=cols)
    if (lh, lw) == mask.shape and _identity(rows) and _identity(cols):
        return mask  # the level is the mosaic's grid (the usual case): nothing to pick
    out: Mask = mask[np.ix_(rows, cols)]
    return out


def _identity(index: npt.NDArray[np.intp]) -> bool:
    return bool((index == np.arange(len(index))).all())


def algorithm_identification(
    kind: str, models: list[dict[str, str]]
) -> hd.AlgorithmIdentificationSequence:
    """The model that found `kind` (name, version, sha256) as DICOM algorithm identification."""
    wanted = MODEL_OF.get(kind, "artifact")
    model = next((m for m in models if m.get("name") == wanted), None) or {
        "name": wanted,
        "version": "unknown",
        "sha256": "unknown",
    }
    return hd.AlgorithmIdentificationSequence(
        name=f"edge {model['name']} model",
        family=codes.cid7162.ArtificialIntelligence,
        version=str(model.get("version", "unknown"))[:64],
        source="edge appliance",
        parameters={"sha256": str(model.get("sha256", "unknown"))},
    )


def segment_descriptions(
    models: list[dict[str, str]], tracking_uids: dict[str, str]
) -> list[hd.seg.SegmentDescription]:
    """One per SEG_CLASSES entry; tracking_uids[kind] ties a segment to its SR group."""
    out = []
    for number, kind in enumerate(SEG_CLASSES, start=1):
        category = qc_codes.TISSUE if kind == "tissue" else qc_codes.ARTIFACT
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=qc_codes.CLASS_LABELS[kind],
                segmented_property_category=category,
                segmented_property_type=qc_codes.CLASS_TYPES[kind],
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm_identification(kind, models),
                tracking_id=f"edge QC {kind}",
                tracking_uid=tracking_uids[kind],
                display_color=hd.color.CIELabColor.from_rgb(*COLORS[kind]),
            )
        )
    return out


def level_masks(
    masks: dict[str, Mask], downsample: int, base: tuple[int, int], level: LevelHeader
) -> npt.NDArray[np.uint8]:
    """(1, rows, columns, segments) 0/1 on the level's grid, segments in SEG_CLASSES order."""
    stack = np.zeros((1, level.height, level.width, len(SEG_CLASSES)), np.uint8)
    for i, kind in enumerate(SEG_CLASSES):
        mask = masks.get(kind)
        if mask is not None:
            stack[0, :, :, i] = resample_mask(mask, downsample, base, (level.width, level.height))
    return stack


def build_segmentation(
    source: LevelHeader,
    masks: dict[str, Mask],
    downsample: int,
    base: tuple[int, int],
    models: list[dict[str, str]],
    tracking_uids: dict[str, str],
    series_uid: str,
    sop_uid: str,
    equipment: dict[str, Any],
) -> hd.seg.Segmentation:
    """The SEG of every class on `source`'s total pixel matrix (see the module docstring)."""
    pixels = level_masks(masks, downsample, base, source)
    found = bool(pixels.any())
    try:
        seg = hd.seg.Segmentation(
            source_images=[source.dataset],
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(models, tracking_uids),
            series_instance_uid=series_uid,
            series_number=2,
            sop_instance_uid=sop_uid,
            instance_number=1,
            **equipment,
            content_description="QC: tissue and artifacts found by the edge appliance",
            content_label="EDGE_QC",
            tile_pixel_array=True,
            # Only frames holding a segment are written (TILED_SPARSE, each frame with
            # its position); a slide with nothing found at all keeps every frame, as a
            # SEG needs frames. (highdicom's TILED_FULL fails dciodvfy: no Plane Position
            # in the shared groups.)
            omit_empty_frames=found,
        )
    except (ValueError, TypeError) as exc:
        raise OutputError(f"{source.path}: cannot build the QC segmentation on it: {exc}") from exc
    seg.SeriesDescription = "QC segmentation (edge)"
    # General Image, Type 2C: needed when the image has no Image Orientation (Patient), as
    # on a slide; highdicom leaves it out for slide microscopy sources.
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = ""
    seg.CodingSchemeIdentificationSequence = qc_codes.coding_scheme_identification()
    return seg
