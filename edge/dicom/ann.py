"""The QC regions as Microscopy Bulk Simple Annotations (one group per artifact class).

Each connected region of an artifact mask becomes a POLYGON: the exterior outline from
edge.analysis.geojson.mask_polygons (exact along the mosaic's pixel edges, level-0 px),
mapped into the slide coordinate system (3D, mm, z = 0) with level 0's own origin,
orientation and spacing. 3D rather than image-relative 2D because dciodvfy (dicom3tools
2022-06) reports an Error on highdicom's 2D groups (Common Z Coordinate Value, which they do
not hold). DICOM's POLYGON has no holes, so a region's holes are not drawn (its Area
measurement still subtracts them). Tissue is left to the SEG: its outline is long and adds
nothing a viewer needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from edge.analysis.geojson import COLORS, mask_polygons, polygon_area
from edge.analysis.qc import QC_CLASSES
from edge.dicom import qc_codes
from edge.dicom.seg import algorithm_identification
from edge.errors import OutputError

Mask = npt.NDArray[np.bool_]


def slide_mapping(level0: Dataset) -> Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]:
    """Level-0 pixel-edge coordinates (x right, y down; (0, 0) the top-left corner of the
    top-left pixel) to slide coordinates in mm, from the level's own geometry (origin,
    orientation, spacing), as a viewer maps its pixels."""
    to_slide = hd.spatial.PixelToReferenceTransformer.for_image(level0, for_total_pixel_matrix=True)
    # Affine: the images of pixel centres (0,0), (1,0), (0,1) give origin and steps.
    o, dx, dy = to_slide(np.array([[0, 0], [1, 0], [0, 1]]))
    origin, step_x, step_y = o - 0.5 * (dx - o) - 0.5 * (dy - o), dx - o, dy - o

    def convert(points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = origin + points[:, :1] * step_x + points[:, 1:2] * step_y
        return out

    return convert


def region_polygons(
    mask: Mask,
    downsample: int,
    mpp: float,
    to_slide: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]],
) -> tuple[list[npt.NDArray[np.float64]], npt.NDArray[np.float32]]:
    """(exterior outlines as (n, 3) slide mm, open; area of each region in mm2)."""
    outlines, areas = [], []
    for polygon in mask_polygons(mask, downsample):
        exterior = np.asarray(polygon[0][:-1], np.float64)  # DICOM closes a POLYGON itself
        outlines.append(to_slide(exterior))
        areas.append(polygon_area(polygon) * mpp * mpp / 1e6)
    return outlines, np.asarray(areas, np.float32)


def build_annotations(
    level0: Dataset,
    masks: dict[str, Mask],
    downsample: int,
    mpp: float,
    models: list[dict[str, str]],
    group_uids: dict[str, str],
    series_uid: str,
    sop_uid: str,
    equipment: dict[str, Any],
) -> hd.ann.MicroscopyBulkSimpleAnnotations | None:
    """The annotations of every artifact class with regions; None when there are none."""
    groups: list[hd.ann.AnnotationGroup] = []
    to_slide = slide_mapping(level0)
    for kind in QC_CLASSES:
        mask = masks.get(kind)
        if mask is None or not mask.any():
            continue
        outlines, areas = region_polygons(mask, downsample, mpp, to_slide)
        groups.append(
            hd.ann.AnnotationGroup(
                number=len(groups) + 1,
                uid=group_uids[kind],
                label=qc_codes.CLASS_LABELS[kind],
                annotated_property_category=qc_codes.ARTIFACT,
                annotated_property_type=qc_codes.CLASS_TYPES[kind],
                graphic_type=hd.ann.GraphicTypeValues.POLYGON,
                graphic_data=outlines,
                algorithm_type=hd.ann.AnnotationGroupGenerationTypeValues.AUTOMATIC,
                algorithm_identification=algorithm_identification(kind, models),
                measurements=[hd.ann.Measurements(qc_codes.AREA, areas, qc_codes.MM2)],
                display_color=hd.color.CIELabColor.from_rgb(*COLORS[kind]),
            )
        )
    if not groups:
        return None
    try:
        ann = hd.ann.MicroscopyBulkSimpleAnnotations(
            source_images=[level0],
            annotation_coordinate_type=hd.ann.AnnotationCoordinateTypeValues.SCOORD3D,
            annotation_groups=groups,
            series_instance_uid=series_uid,
            series_number=4,
            sop_instance_uid=sop_uid,
            instance_number=1,
            **equipment,
            content_description="QC: artifact regions found by the edge appliance",
            content_label="EDGE_QC",
        )
    except (ValueError, TypeError) as exc:
        raise OutputError(f"cannot build the QC annotations: {exc}") from exc
    ann.SeriesDescription = "QC regions (edge)"
    ann.CodingSchemeIdentificationSequence = qc_codes.coding_scheme_identification()
    return ann
