"""QC results as DICOM SEG and SR beside the slide (edge.dicom.results), checked with real
readers and validators: dciodvfy/dcentvfy (dicom3tools), highdicom, Orthanc's DICOMweb.

The slide is a kit slide from `edge synth` with strong pen marks (a rescan, several classes
with regions); the shipped models run on ONNX Runtime's CPU backend.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset

from edge.analysis.api import analyse_path, unavailable
from edge.analysis.geojson import mask_polygons
from edge.analysis.outputs import write_outputs
from edge.analysis.qc import QC_CLASSES
from edge.analysis.run import AnalysisOptions, AnalysisResult
from edge.convert import ConvertOptions, convert
from edge.dicom import qc_codes
from edge.dicom.ann import slide_mapping
from edge.dicom.results import ANN_NAME, SEG_NAME, SR_NAME, qc_uids, write_qc_objects
from edge.dicom.seg import SEG_CLASSES, LevelHeader, choose_level, resample_mask
from edge.errors import InputError
from edge.outbox.header import read_header
from edge.outbox.priority import RESULT, THUMBNAIL, instance_priority
from tests.conftest import dcentvfy_errors, dciodvfy_errors, real_file
from tests.helpers import run_edge
from tests.orthanc import Orthanc, orthanc

__all__ = ["orthanc"]  # fixture used by name

SLIDE = ("--size", "6000x4000", "--seed", "8", "--mpp", "0.5", "--artifacts", "pen")
SEVERITY = ("--severity", "1.0", "--extent", "1.0")


@dataclass
class Converted:
    slide: Path  # the scanner file
    folder: Path  # the DICOM WSI folder with qc-seg.dcm / qc-sr.dcm
    result: AnalysisResult
    report: dict[str, Any]  # report.json as written
    written: list[Path]


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Converted]:
    root = tmp_path_factory.mktemp("qc-dicom")
    slide = root / "pen.svs"
    done = run_edge("synth", "-o", str(slide), *SLIDE, *SEVERITY, "-q")
    assert done.returncode == 0, done.stderr
    result = analyse_path(slide, AnalysisOptions(backend="ort-cpu"))
    assert result.available, result.unavailable
    folder = Path(convert(slide, root / "out").output)
    write_outputs(result, root / "out" / "pen.qc", slide.name)
    report = json.loads((root / "out" / "pen.qc" / "report.json").read_text())
    written = write_qc_objects(result, folder)
    yield Converted(slide, folder, result, report, written)


def _ds(path: Path) -> Dataset:
    return pydicom.dcmread(path)


def _level(folder: Path, sop_uid: str) -> Dataset:
    for path in folder.glob("level-*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.SOPInstanceUID == sop_uid:
            return ds
    raise AssertionError(f"no level with SOP Instance UID {sop_uid}")


def _texts(items: Any, code: str) -> list[str]:
    """TEXT values with concept code `code` anywhere under a content sequence."""
    out: list[str] = []
    for item in items:
        name = (
            item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else ""
        )
        if item.ValueType == "TEXT" and name == code:
            out.append(str(item.TextValue))
        out += _texts(item.get("ContentSequence", []), code)
    return out


# ---- the objects are valid DICOM ----------------------------------------------------------


def test_writes_seg_and_sr_that_dciodvfy_and_dcentvfy_accept(kit: Converted) -> None:
    assert kit.written == [kit.folder / SEG_NAME, kit.folder / SR_NAME, kit.folder / ANN_NAME]
    for path in kit.written:
        assert dciodvfy_errors(path) == [], path
    everything = sorted(kit.folder.glob("*.dcm"))
    assert len(everything) >= 6
    assert dcentvfy_errors(everything) == []
    seg, sr, ann = (_ds(path) for path in kit.written)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert ann.SOPClassUID == "1.2.840.10008.5.1.4.1.1.91.1"
    level0 = _ds(kit.folder / "level-00.dcm")
    for ds in (seg, sr, ann):
        assert ds.StudyInstanceUID == level0.StudyInstanceUID
        assert ds.SeriesInstanceUID != level0.SeriesInstanceUID
        assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99EDGE"
    assert seg.FrameOfReferenceUID == level0.FrameOfReferenceUID
    assert ann.FrameOfReferenceUID == level0.FrameOfReferenceUID


def test_patient_and_study_travel_with_the_results(kit: Converted, tmp_path: Path) -> None:
    sidecar = tmp_path / "pen.json"
    patient = {
        "PatientName": "Doe^Jane",
        "PatientID": "P123",
        "AccessionNumber": "A42",
        "StudyID": "S1",
        "StudyDescription": "Biopsy",
    }
    sidecar.write_text(json.dumps(patient))
    folder = Path(convert(kit.slide, tmp_path / "out", ConvertOptions(sidecar=sidecar)).output)
    written = write_qc_objects(kit.result, folder)
    level0 = _ds(folder / "level-00.dcm")
    for path in written:
        ds = _ds(path)
        for keyword, value in patient.items():
            assert str(ds[keyword].value) == value, (path.name, keyword)
        assert ds.StudyInstanceUID == level0.StudyInstanceUID
        assert dciodvfy_errors(path) == [], path
    assert dcentvfy_errors(sorted(folder.glob("*.dcm"))) == []


# ---- the SEG: on a written level, equal to the analysis masks ------------------------------


def test_seg_lies_on_a_written_level_and_references_it(kit: Converted) -> None:
    seg = _ds(kit.written[0])
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    source = _level(kit.folder, referenced.ReferencedSOPInstanceUID)
    # The mosaic is at 8x; the levels are 1x, 4x, 16x, ~32x: 4x and 16x tie, the finer wins.
    assert kit.result.geometry is not None and kit.result.geometry.mosaic_downsample == 8
    assert (source.TotalPixelMatrixColumns, source.TotalPixelMatrixRows) == (1500, 1000)
    assert seg.TotalPixelMatrixColumns == source.TotalPixelMatrixColumns
    assert seg.TotalPixelMatrixRows == source.TotalPixelMatrixRows
    spacing = source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    ours = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in ours] == [float(v) for v in spacing]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.SegmentationType == "BINARY"
    assert seg.ImageOrientationSlide == source.ImageOrientationSlide


def test_seg_masks_equal_the_analysis_masks(kit: Converted) -> None:
    seg = hd.seg.segread(kit.written[0])
    assert seg.number_of_segments == len(SEG_CLASSES)
    matrix = seg.get_total_pixel_matrix(combine_segments=False)
    assert matrix.shape == (1000, 1500, len(SEG_CLASSES))
    findings = kit.result.findings
    assert findings is not None
    masks = {"tissue": findings.tissue, **findings.masks}
    # Level 4x, mosaic 8x: each mosaic pixel is exactly a 2x2 block of the level. Equality is
    # exact (the mosaic's 750x500 covers the level's 1500x1000 with nothing left over).
    for i, kind in enumerate(SEG_CLASSES):
        expected = np.repeat(np.repeat(masks[kind], 2, axis=0), 2, axis=1)[:1000, :1500]
        got = matrix[..., i].astype(bool)
        assert np.array_equal(got, expected), kind
    assert matrix[..., SEG_CLASSES.index("pen")].any(), "the pen slide's pen mask is empty"
    assert matrix[..., 0].any()


def test_seg_segments_are_coded(kit: Converted) -> None:
    seg = _ds(kit.written[0])
    items = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    tissue = items[1]
    assert tissue.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"
    assert tissue.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert tissue.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"
    models = {m["name"]: m for m in kit.report["models"]}
    for number, kind in enumerate(SEG_CLASSES, start=1):
        item = items[number]
        assert item.SegmentLabel == qc_codes.CLASS_LABELS[kind]
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        model = models["focus" if kind == "blur" else "artifact"]
        assert algorithm.AlgorithmVersion == model["version"]
        assert algorithm.AlgorithmParameters == f"sha256={model['sha256']}"
        if kind != "tissue":
            code = item.SegmentedPropertyTypeCodeSequence[0]
            assert code.CodingSchemeDesignator == "99EDGE"
            category = item.SegmentedPropertyCategoryCodeSequence[0]
            assert (category.CodeValue, category.CodingSchemeDesignator) == ("111207", "DCM")


# ---- the SR: the report's numbers, the models, the references ------------------------------


def test_sr_numbers_equal_report_json(kit: Converted) -> None:
    sr = hd.sr.srread(kit.written[1])
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    (slide,) = report.get_image_measurement_groups()
    got = {m.name.meaning: m.value for m in slide.get_measurements()}
    doc = kit.report
    assert got["Triage priority"] == doc["priority"]
    assert got["Number of tissue fragments"] == doc["fragments"]
    assert got["Focus crops scored"] == doc["focus_crops_scored"]
    probs = np.array([p for _, p in kit.result.focus_scores])
    assert got["Mean out-of-focus probability"] == round(float(probs.mean()), 4)
    assert got["95th percentile out-of-focus probability"] == round(
        float(np.percentile(probs, 95)), 4
    )
    evaluations = {e.name.value: e.value for e in slide.get_qualitative_evaluations()}
    assert evaluations["VERDICT"].value == doc["verdict"].upper() == "RESCAN"
    assert evaluations["STAIN"].value == "104210008" and doc["stain"] == "H&E"
    assert _texts(sr.ContentSequence, "REASON") == doc["reasons"] != []

    groups = report.get_volumetric_roi_measurement_groups()
    by_kind = {g.tracking_identifier.removeprefix("edge QC "): g for g in groups}
    assert sorted(by_kind) == sorted(SEG_CLASSES)
    seg_uid = _ds(kit.written[0]).SOPInstanceUID
    for number, kind in enumerate(SEG_CLASSES, start=1):
        group = by_kind[kind]
        numbers = {m.name.meaning: m.value for m in group.get_measurements()}
        expected = doc["classes"][kind]
        if kind == "tissue":
            assert numbers["Area"] == expected["area_mm2"] == doc["tissue_mm2"]
            assert numbers["Fraction of slide"] == expected["fraction_of_slide"]
        else:
            assert numbers["Fraction of tissue"] == expected["fraction_of_tissue"]
            assert numbers["Area"] == expected["area_mm2"]
            assert numbers["Number of regions"] == expected["regions"]
        ref = group.referenced_segment
        assert ref is not None
        assert ref[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg_uid
        assert ref[0].ReferencedSOPSequence[0].ReferencedSegmentNumber == number


def test_sr_names_models_backend_and_every_instance(kit: Converted) -> None:
    sr = _ds(kit.written[1])
    text = "\n".join(str(e.value) for e in sr.iterall() if e.keyword == "TextValue")
    for model in kit.report["models"]:
        assert model["sha256"] in text
        assert f"model {model['name']} version={model['version']}" in text
    assert f"backend={kit.report['backend']}" in text and kit.report["backend"] == "ort-cpu"
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    wsi = {_ds(p).SOPInstanceUID for p in kit.folder.glob("*.dcm") if not p.name.startswith("qc-")}
    assert evidence == wsi | {_ds(kit.written[0]).SOPInstanceUID}
    assert sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"


# ---- the bulk annotations: one polygon per artifact region ---------------------------------


def test_ann_outlines_every_artifact_region(kit: Converted) -> None:
    ann = hd.ann.annread(kit.written[2])
    assert ann.AnnotationCoordinateType == "3D"
    findings, geometry = kit.result.findings, kit.result.geometry
    assert findings is not None and geometry is not None
    level0 = _ds(kit.folder / "level-00.dcm")
    to_slide = slide_mapping(level0)
    # Pixel centres land where highdicom puts them (its indices count from the centre of
    # the top-left pixel; ours from its corner).
    centres = np.array([[0, 0], [17, 3], [5999, 3999], [100, 2500]])
    reference = hd.spatial.PixelToReferenceTransformer.for_image(
        level0, for_total_pixel_matrix=True
    )
    assert np.allclose(to_slide(centres + 0.5), reference(centres), atol=1e-9)
    # back from slide mm to level-0 px: the mapping is affine (origin + x*ex + y*ey)
    origin = to_slide(np.zeros((1, 2)))[0]
    ex, ey = (
        to_slide(np.array([[1.0, 0.0]]))[0] - origin,
        to_slide(np.array([[0.0, 1.0]]))[0] - origin,
    )
    basis = np.stack([ex, ey], axis=1)
    groups = {g.label: g for g in ann.get_annotation_groups()}
    found = [k for k in QC_CLASSES if findings.masks[k].any()]
    assert sorted(groups) == sorted(qc_codes.CLASS_LABELS[k] for k in found)
    assert "pen" in found
    for kind in found:
        group = groups[qc_codes.CLASS_LABELS[kind]]
        assert group.annotated_property_type.value == qc_codes.CLASS_TYPES[kind].value
        polygons = mask_polygons(findings.masks[kind], geometry.mosaic_downsample)
        assert (
            group.number_of_annotations == len(polygons) == kit.report["classes"][kind]["regions"]
        )
        for outline, polygon in zip(group.get_graphic_data("3D"), polygons, strict=True):
            pixels, *_ = np.linalg.lstsq(basis, (outline - origin).T, rcond=None)
            assert np.allclose(pixels.T, np.asarray(polygon[0][:-1]), atol=1e-3), kind
        (names, values, units) = group.get_measurements()
        assert [n.meaning for n in names] == ["Area"] and units[0].value == "mm2"
        total = float(values[:, 0].sum())
        assert abs(total - kit.report["classes"][kind]["area_mm2"]) <= 0.0005 * len(polygons) + 1e-6


# ---- QC unavailable, re-runs, bad folders ---------------------------------------------------


def test_qc_unavailable_writes_the_sr_alone(kit: Converted, tmp_path: Path) -> None:
    folder = tmp_path / "slide"
    shutil.copytree(kit.folder, folder)  # holds an older run's SEG and ANN, which must go
    assert (folder / SEG_NAME).exists() and (folder / ANN_NAME).exists()
    result = unavailable("model focus: no model.onnx in models/focus")
    written = write_qc_objects(result, folder)
    assert written == [folder / SR_NAME]
    assert not (folder / SEG_NAME).exists() and not (folder / ANN_NAME).exists()
    assert dciodvfy_errors(written[0]) == []
    assert dcentvfy_errors(sorted(folder.glob("*.dcm"))) == []
    sr = hd.sr.srread(written[0])
    (slide,) = sr.content.get_image_measurement_groups()
    evaluations = {e.name.value: e.value.value for e in slide.get_qualitative_evaluations()}
    assert evaluations == {"VERDICT": "REVIEW"}
    assert _texts(sr.ContentSequence, "REASON") == [
        "QC unavailable: model focus: no model.onnx in models/focus"
    ]
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    # Other results (no models) are another instance in the same series.
    assert sr.SOPInstanceUID != _ds(kit.written[1]).SOPInstanceUID
    assert sr.SeriesInstanceUID == _ds(kit.written[1]).SeriesInstanceUID


def test_convert_analyse_writes_them_with_the_same_uids_every_run(
    kit: Converted, tmp_path: Path
) -> None:
    """`edge convert --analyse` (a separate process, twice): the folder holds qc-seg.dcm and
    qc-sr.dcm, each run with the same SOP Instance UIDs as the in-process write."""
    uids = []
    for run in ("a", "b"):
        out = tmp_path / run
        done = run_edge(
            "convert", str(kit.slide), "-o", str(out), "--analyse", "--backend", "ort-cpu",
            "--json", "-q",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        qc = json.loads(done.stdout)["converted"][0]["qc"]
        folder = out / "pen"
        names = (SEG_NAME, SR_NAME, ANN_NAME)
        assert qc["dicom"] == [str(folder / name) for name in names]
        uids.append([_ds(folder / name).SOPInstanceUID for name in names])
        report = json.loads((out / "pen.qc" / "report.json").read_text())
        assert report["classes"] == kit.report["classes"]
    assert uids[0] == uids[1] == [_ds(p).SOPInstanceUID for p in kit.written]


def test_nothing_found_keeps_every_frame(kit: Converted, tmp_path: Path) -> None:
    """No tissue and no findings (all masks empty): a valid SEG of empty segments."""
    folder = tmp_path / "slide"
    shutil.copytree(kit.folder, folder)
    assert kit.result.findings is not None
    found = dataclasses.replace(
        kit.result.findings,
        tissue=np.zeros_like(kit.result.findings.tissue),
        masks={k: np.zeros_like(m) for k, m in kit.result.findings.masks.items()},
    )
    result = dataclasses.replace(kit.result, findings=found)
    seg_path, sr_path = write_qc_objects(result, folder)  # no regions: no ANN
    assert not (folder / ANN_NAME).exists()
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []
    seg = hd.seg.segread(seg_path)
    tiles = (1500 + 255) // 256 * ((1000 + 255) // 256)
    assert seg.NumberOfFrames == tiles * len(SEG_CLASSES)
    assert not seg.get_total_pixel_matrix(combine_segments=False).any()


def test_convert_analyse_without_models_writes_the_sr_alone(kit: Converted, tmp_path: Path) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    out = tmp_path / "out"
    done = run_edge(
        "convert", str(kit.slide), "-o", str(out), "--analyse", "--models-dir", str(empty),
        "--backend", "ort-cpu", "-q",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    folder = out / "pen"
    assert not (folder / SEG_NAME).exists()
    assert dciodvfy_errors(folder / SR_NAME) == []
    sr = hd.sr.srread(folder / SR_NAME)
    reasons = _texts(sr.ContentSequence, "REASON")
    assert len(reasons) == 1 and reasons[0].startswith("QC unavailable: model focus")
    report = json.loads((out / "pen.qc" / "report.json").read_text())
    assert reasons == report["reasons"]


def test_real_svs_seg_equals_its_masks(tmp_path: Path) -> None:
    """A real Aperio file (CMU-1-Small-Region, 0.499 µm/px): the mosaic (8x, 278 x 371) and
    the generated 8x level have the same size, and the SEG on it is the masks unchanged."""
    slide = real_file("aperio-svs/CMU-1-Small-Region.svs")
    result = analyse_path(slide, AnalysisOptions(backend="ort-cpu"))
    assert result.available and result.findings is not None and result.geometry is not None
    folder = Path(convert(slide, tmp_path).output)
    seg_path, sr_path, ann_path = write_qc_objects(result, folder)
    for path in (seg_path, sr_path, ann_path):
        assert dciodvfy_errors(path) == [], path
    assert dcentvfy_errors(sorted(folder.glob("*.dcm"))) == []
    matrix = hd.seg.segread(seg_path).get_total_pixel_matrix(combine_segments=False)
    assert matrix.shape[:2] == result.geometry.mosaic_shape == (371, 278)
    masks = {"tissue": result.findings.tissue, **result.findings.masks}
    for i, kind in enumerate(SEG_CLASSES):
        assert np.array_equal(matrix[..., i].astype(bool), masks[kind]), kind


def test_uids_follow_the_series_and_the_models() -> None:
    models = [{"name": "focus", "version": "1", "sha256": "a" * 64}]
    one = qc_uids("2.25.1", models, "2.25")
    assert one == qc_uids("2.25.1", models, "2.25")
    other_models = qc_uids("2.25.1", [{**models[0], "sha256": "b" * 64}], "2.25")
    assert other_models["seg"] != one["seg"] and other_models["sr"] != one["sr"]
    assert other_models["seg_series"] == one["seg_series"]
    assert other_models["track-pen"] == one["track-pen"]
    other_slide = qc_uids("2.25.2", models, "2.25")
    assert not set(other_slide.values()) - {one["device"]} & set(one.values())
    rooted = qc_uids("2.25.1", models, "1.2.826.0.1.3680043.10.99")
    assert all(v.startswith("1.2.826.0.1.3680043.10.99.") for v in rooted.values())
    assert all(len(v) <= 64 for v in rooted.values())


def test_bad_folders_are_named(kit: Converted, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no VL Whole Slide Microscopy VOLUME instance") as exc:
        write_qc_objects(kit.result, empty)
    assert str(empty) in str(exc.value)
    other = tmp_path / "other"
    shutil.copytree(kit.folder, other)
    (other / "level-00.dcm").unlink()  # now the largest level is 1500x1000
    with pytest.raises(InputError, match="results belong to another slide") as exc:
        write_qc_objects(kit.result, other)
    assert "level-01.dcm" in str(exc.value)
    broken = tmp_path / "broken"
    shutil.copytree(kit.folder, broken)
    (broken / "level-02.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(InputError, match=r"level-02\.dcm: not a readable DICOM file"):
        write_qc_objects(kit.result, broken)


def test_results_are_sent_first(kit: Converted) -> None:
    ranks = {}
    for path in kit.folder.glob("*.dcm"):
        header = read_header(path)
        ranks[path.name] = instance_priority(header.sop_class_uid, header.image_type, header.pixels)
    assert ranks[SEG_NAME] == ranks[SR_NAME] == ranks[ANN_NAME] == RESULT
    assert ranks["thumbnail.dcm"] == THUMBNAIL
    assert max(ranks[SEG_NAME], ranks[SR_NAME], ranks[ANN_NAME]) < min(
        rank for name, rank in ranks.items() if not name.startswith("qc-")
    )


# ---- level choice and resampling (pure) ----------------------------------------------------


def _levels(*sizes: tuple[int, int]) -> list[LevelHeader]:
    out = []
    for width, height in sizes:
        ds = Dataset()
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
        out.append(LevelHeader(Path(f"{width}.dcm"), ds))
    return out


def test_choose_level_nearest_in_scale_ties_finer_capped() -> None:
    levels = _levels((6000, 4000), (1500, 1000), (375, 250), (188, 125))
    assert choose_level(levels, 8).width == 1500  # 4x and 16x tie around 8x
    assert choose_level(levels, 16).width == 375
    assert choose_level(levels, 2).width == 6000  # 1x and 4x tie; 24 MP is under the cap
    assert choose_level(levels, 64).width == 188
    big = _levels((100_000, 80_000), (25_000, 20_000), (6250, 5000), (1563, 1250))
    # 100k x 80k at 0.25 µm/px: the mosaic is at 32x (16x would pass its 16 Mi px cap)
    assert choose_level(big, 32).width == 6250  # 16x and 64x tie: the finer, 31 MP
    assert choose_level(big, 8).width == 6250  # 4x is 500 MP, over MAX_SEG_PIXELS


def test_resample_is_exact_for_whole_factors_and_nearest_otherwise() -> None:
    rng = np.random.default_rng(3)
    mask: npt.NDArray[np.bool_] = rng.random((50, 76)) > 0.5
    base = (608, 400)  # level 0; the mosaic is at 8x: 76 x 50
    # level 2x finer than the mosaic: every mosaic pixel repeated 2x2, nothing else
    finer = resample_mask(mask, 8, base, (152, 100))
    assert np.array_equal(finer, np.repeat(np.repeat(mask, 2, 0), 2, 1))
    # same grid: identity
    assert np.array_equal(resample_mask(mask, 8, base, (76, 50)), mask)
    # coarser (16x): the mosaic pixel under each level pixel's centre
    coarse = resample_mask(mask, 8, base, (38, 25))
    assert np.array_equal(coarse, mask[1::2, 1::2])
    # a level whose size is not a whole fraction (608/7 px per pixel): nearest, in range
    odd = resample_mask(mask, 8, base, (7, 5))
    assert odd.shape == (5, 7)
    rows = [int((r + 0.5) * 400 / 5 // 8) for r in range(5)]
    cols = [int((c + 0.5) * 608 / 7 // 8) for c in range(7)]
    assert np.array_equal(odd, mask[np.ix_(rows, cols)])
    # a level a pixel wider than the mosaic covers (ceil in the pyramid): clamped to the edge
    wide = resample_mask(mask, 8, base, (153, 100))
    assert wide.shape == (100, 153) and np.array_equal(wide[:, -1], mask[np.arange(100) // 2, -1])


# ---- Orthanc: stored with the slide's study, found by QIDO, returned by WADO ----------------


@pytest.mark.integration
def test_orthanc_serves_seg_and_sr_with_the_slide(
    kit: Converted, orthanc: Orthanc, tmp_path: Path
) -> None:
    orthanc.clear()
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[storage]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[destination]]\nname = "web"\nkind = "stowrs"\nurl = "{orthanc.dicomweb_url}"\n'
    )
    done = run_edge(
        "send", str(kit.folder), "--to", "web", "--wait", "--config", str(cfg), "--json"
    )
    assert done.returncode == 0, done.stderr
    files = sorted(kit.folder.glob("*.dcm"))
    assert json.loads(done.stdout)["delivered"] == len(files)
    seg, sr, ann = (_ds(path) for path in kit.written)
    study = seg.StudyInstanceUID
    with httpx.Client(base_url=orthanc.dicomweb_url, timeout=30) as web:
        found = web.get(f"/studies/{study}/series", headers={"Accept": "application/dicom+json"})
        found.raise_for_status()
        modalities = {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0] for s in found.json()}
        assert modalities == {
            _ds(kit.folder / "level-00.dcm").SeriesInstanceUID: "SM",
            seg.SeriesInstanceUID: "SEG",
            sr.SeriesInstanceUID: "SR",
            ann.SeriesInstanceUID: "ANN",
        }
        for ds, path in zip((seg, sr, ann), kit.written, strict=True):
            listed = web.get(
                f"/studies/{study}/series/{ds.SeriesInstanceUID}/instances",
                headers={"Accept": "application/dicom+json"},
            )
            listed.raise_for_status()
            assert [i["00080018"]["Value"][0] for i in listed.json()] == [ds.SOPInstanceUID]
            got = web.get(
                f"/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
                headers={"Accept": 'multipart/related; type="application/dicom"'},
            )
            got.raise_for_status()
            part = _single_part(got)
            theirs = pydicom.dcmread(__import__("io").BytesIO(part))
            assert theirs.SOPInstanceUID == ds.SOPInstanceUID
            ours = pydicom.dcmread(path)
            for keyword in ("PixelData", "ContentSequence", "AnnotationGroupSequence"):
                if keyword in ours:
                    assert theirs[keyword] == ours[keyword], keyword


def _single_part(response: httpx.Response) -> bytes:
    """The body of a one-part multipart/related WADO-RS response."""
    ctype = response.headers["Content-Type"]
    boundary = next(
        p.split("=", 1)[1].strip('"') for p in ctype.split(";") if p.strip().startswith("boundary=")
    )
    parts = response.content.split(f"--{boundary}".encode())
    bodies = [p.split(b"\r\n\r\n", 1)[1] for p in parts if b"\r\n\r\n" in p]
    assert len(bodies) == 1, f"{len(bodies)} parts"
    return bodies[0].removesuffix(b"\r\n")


def test_warm_up_loads_highdicom_tables_before_the_first_slide() -> None:
    # The daemon calls this at start-up; the first slide's SEG and SR then skip the JSON loads.
    from highdicom import _standard_utils as tables

    from edge.dicom.results import warm_up

    loaders = [tables.get_sop_class_iod_map, tables.get_iod_module_map]
    loaders.append(tables.get_module_attribute_map)
    for loader in loaders:
        loader.cache_clear()
    warm_up()
    assert [loader.cache_info().currsize for loader in loaders] == [1, 1, 1]
