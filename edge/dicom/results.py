"""QC results beside the slide as standard DICOM: one call for the CLI and the daemon.

    paths = write_qc_objects(result, slide_dir)   # qc-seg.dcm, qc-sr.dcm[, qc-ann.dcm]

reads the WSI headers of the converted slide folder (no pixels), lays the QC masks on one of
its levels as a Segmentation (edge.dicom.seg), writes the verdict and numbers as a structured
report (edge.dicom.sr) that references the WSI instances and the SEG, and the artifact
regions' outlines as Microscopy Bulk Simple Annotations (edge.dicom.ann), each atomically.
QC unavailable: the SR alone (verdict "review" and the reason).

UIDs are fixed by the slide's WSI series, so a re-run (after a crash, a second convert)
gives the same SOP Instance UIDs and a PACS keeps one copy. The models' sha256s are part of
the instance key: results of other models are other instances, in the same series.
"""

from __future__ import annotations

import io
import logging
import platform
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from edge import __version__
from edge.analysis.outputs import report_dict
from edge.analysis.run import AnalysisResult
from edge.dicom.ann import build_annotations
from edge.dicom.metadata import WSI_SOP_CLASS
from edge.dicom.seg import SEG_CLASSES, LevelHeader, build_segmentation, choose_level
from edge.dicom.sr import SrInputs, build_sr, focus_statistics
from edge.dicom.uids import DEFAULT_ROOT, check_root, make_uid
from edge.errors import InputError, OutputError
from edge.fileio import write_atomic

LOGGER = logging.getLogger(__name__)
SEG_NAME = "qc-seg.dcm"
SR_NAME = "qc-sr.dcm"
ANN_NAME = "qc-ann.dcm"


def warm_up() -> None:
    """Load highdicom's IOD and module tables (JSON, ~0.3 s) now rather than inside the
    first slide's SEG and SR. They are private helpers: if one moved, the first slide pays."""
    try:
        from highdicom import _standard_utils as tables

        for name in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
            getattr(tables, name)()
    except (ImportError, AttributeError) as exc:
        LOGGER.debug("highdicom tables not preloaded: %s", exc)


def read_slide_folder(slide_dir: Path) -> tuple[list[LevelHeader], list[Dataset]]:
    """(VOLUME levels largest first, every WSI image of the level-0 series) of a folder."""
    headers: list[LevelHeader] = []
    for path in sorted(slide_dir.glob("*.dcm")):
        if path.name in (SEG_NAME, SR_NAME, ANN_NAME):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise InputError(path, f"not a readable DICOM file ({exc})") from exc
        if ds.get("SOPClassUID") == WSI_SOP_CLASS:
            headers.append(LevelHeader(path, ds))
    volumes = [h for h in headers if list(h.dataset.get("ImageType", ""))[2:3] == ["VOLUME"]]
    if not volumes:
        raise InputError(slide_dir, "no VL Whole Slide Microscopy VOLUME instance (level-*.dcm)")
    volumes.sort(key=lambda h: -h.width * h.height)
    series = volumes[0].dataset.SeriesInstanceUID
    levels = [h for h in volumes if h.dataset.SeriesInstanceUID == series]
    images = [h.dataset for h in levels]
    images += [
        h.dataset for h in headers if h not in volumes and h.dataset.SeriesInstanceUID == series
    ]
    return levels, images


def qc_uids(series_uid: str, models: list[dict[str, str]], root: str) -> dict[str, str]:
    """The SEG's and SR's series, instance and tracking UIDs for a slide's WSI series."""
    shas = ",".join(sorted(str(m.get("sha256", "")) for m in models)) or "no models"
    uids = {
        "seg_series": make_uid(root, series_uid, "qc-seg-series"),
        "sr_series": make_uid(root, series_uid, "qc-sr-series"),
        "seg": make_uid(root, series_uid, "qc-seg", shas),
        "sr": make_uid(root, series_uid, "qc-sr", shas),
        "ann_series": make_uid(root, series_uid, "qc-ann-series"),
        "ann": make_uid(root, series_uid, "qc-ann", shas),
        "device": make_uid(root, "edge appliance", platform.node()),
    }
    for kind in ("slide", *SEG_CLASSES):
        uids[f"track-{kind}"] = make_uid(root, series_uid, "qc-tracking", kind)
        uids[f"ann-group-{kind}"] = make_uid(root, series_uid, "qc-ann-group", kind)
    return uids


def _equipment() -> dict[str, Any]:
    """The appliance as equipment, keyed as highdicom's image constructors name it (so the SEG
    and the annotations take it as **keywords)."""
    return {
        "manufacturer": "edge appliance",
        "manufacturer_model_name": "edge",
        "software_versions": __version__,
        "device_serial_number": platform.node()[:64] or "unknown",
    }


def _encode(ds: Dataset, what: Path) -> bytes:
    buffer = io.BytesIO()
    try:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    except (ValueError, TypeError, OverflowError) as exc:
        raise OutputError(f"{what}: the DICOM object cannot be encoded: {exc}") from exc
    return buffer.getvalue()


def write_qc_objects(
    result: AnalysisResult, slide_dir: Path, uid_root: str = DEFAULT_ROOT
) -> list[Path]:
    """Write slide_dir/qc-seg.dcm (when QC ran), slide_dir/qc-sr.dcm and, when artifacts
    were found, slide_dir/qc-ann.dcm (their outlines); return the paths, in that order.

    Raises InputError when slide_dir holds no WSI level (or one of another size than the
    analysed slide) and OutputError when an object cannot be built or written."""
    root = check_root(uid_root)
    levels, images = read_slide_folder(slide_dir)
    level0 = levels[0]
    report = report_dict(result, slide_dir.name)
    uids = qc_uids(str(level0.dataset.SeriesInstanceUID), report["models"], root)
    tracking = {kind: uids[f"track-{kind}"] for kind in ("slide", *SEG_CLASSES)}
    equipment = _equipment()
    written: list[Path] = []
    seg = None
    source = None
    seg_path = slide_dir / SEG_NAME
    if result.available and result.geometry is not None and result.findings is not None:
        g = result.geometry
        if (level0.width, level0.height) != (g.width, g.height):
            raise InputError(
                level0.path,
                f"level 0 is {level0.width}x{level0.height} px, the analysed slide "
                f"{g.width}x{g.height}: results belong to another slide",
            )
        source = choose_level(levels, g.mosaic_downsample)
        masks = {"tissue": result.findings.tissue, **result.findings.masks}
        seg = build_segmentation(
            source,
            masks,
            g.mosaic_downsample,
            (g.width, g.height),
            report["models"],
            tracking,
            uids["seg_series"],
            uids["seg"],
            equipment,
        )
        write_atomic(seg_path, _encode(seg, seg_path))
        written.append(seg_path)
        # Paths carry the scanner's file name, which may carry an accession or a name: DEBUG.
        LOGGER.debug("QC segmentation on %s written: %s", source.path.name, seg_path)
    else:
        seg_path.unlink(missing_ok=True)  # an older run's SEG would contradict this SR
    focus = focus_statistics(result.focus_scores.probability.tolist())
    sr = build_sr(
        report,
        focus,
        SrInputs(
            images=images,
            seg=seg,
            seg_source=source.dataset if source is not None else None,
            tracking_uids=tracking,
            series_uid=uids["sr_series"],
            sop_uid=uids["sr"],
            device_uid=uids["device"],
            equipment=equipment,
        ),
    )
    sr_path = slide_dir / SR_NAME
    write_atomic(sr_path, _encode(sr, sr_path))
    written.append(sr_path)
    LOGGER.debug("QC report written: %s (verdict %s)", sr_path, result.verdict)
    ann_path = slide_dir / ANN_NAME
    ann = None
    if seg is not None and result.geometry is not None and result.findings is not None:
        ann = build_annotations(
            level0.dataset,
            result.findings.masks,
            result.geometry.mosaic_downsample,
            result.geometry.mpp,
            report["models"],
            {kind: uids[f"ann-group-{kind}"] for kind in SEG_CLASSES},
            uids["ann_series"],
            uids["ann"],
            equipment,
        )
    if ann is None:
        ann_path.unlink(missing_ok=True)  # no regions (or no QC): an older run's would mislead
    else:
        write_atomic(ann_path, _encode(ann, ann_path))
        written.append(ann_path)
    return written
