"""The QC verdict and numbers as a DICOM Comprehensive SR holding a TID 1500 Measurement Report.

    Measurement Report (TID 1500)
      observation context: the appliance (device observer), the slide (specimen subject)
      image library: every WSI instance of the slide folder
      group "edge QC slide" (TID 1501), on level 0:
          verdict (CODE 99EDGE), stain (CODE), one TEXT "QC reason" per reason,
          fragments, priority, focus crops scored, focus probability mean/p95/max
          algorithm: edge QC, parameters: backend and each model's name, version, sha256
      one group per class (TID 1411), referencing its segment of the QC SEG:
          fraction of tissue, area (mm2), regions; tissue: area and fraction of slide
          algorithm: the model that found it (name, version, sha256)

Every number is taken from report.json's dictionary (edge.analysis.outputs.report_dict), so
the SR and the report cannot disagree. When QC was unavailable the report holds the slide
group only: verdict "review" and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from edge import __version__
from edge.dicom import qc_codes
from edge.dicom.seg import MODEL_OF, SEG_CLASSES
from edge.errors import OutputError


@dataclass(frozen=True)
class SrInputs:
    """What the SR refers to, and its fixed UIDs."""

    images: list[Dataset]  # WSI headers of the slide folder; images[0] is level 0
    seg: Dataset | None  # the QC SEG (None: QC unavailable)
    seg_source: Dataset | None  # the level the SEG lies on
    tracking_uids: dict[str, str]  # "slide" and each SEG class
    series_uid: str
    sop_uid: str
    device_uid: str
    equipment: dict[str, Any]


def focus_statistics(probabilities: list[float]) -> dict[str, float]:
    """The focus model's out-of-focus probability over the crops it scored: mean, p95, max
    (none when no crop was scored). Not in report.json: computed from the result."""
    if not probabilities:
        return {}
    p = np.asarray(probabilities, np.float64)
    return {
        "mean": round(float(p.mean()), 4),
        "p95": round(float(np.percentile(p, 95)), 4),
        "max": round(float(p.max()), 4),
    }


def _number(name: Code, value: float, unit: Code) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit)


def _model_algorithm(kind: str, models: list[dict[str, str]]) -> hd.sr.AlgorithmIdentification:
    wanted = MODEL_OF.get(kind, "artifact")
    model = next((m for m in models if m.get("name") == wanted), {})
    return hd.sr.AlgorithmIdentification(
        name=f"edge {wanted} model",
        version=str(model.get("version", "unknown")),
        parameters=[f"sha256={model.get('sha256', 'unknown')}"],
    )


def _slide_algorithm(report: dict[str, Any]) -> hd.sr.AlgorithmIdentification:
    parameters = [f"backend={report.get('backend') or 'none'}"]
    parameters += [
        f"model {m.get('name')} version={m.get('version')} sha256={m.get('sha256')}"
        for m in report.get("models", [])
    ]
    return hd.sr.AlgorithmIdentification(name="edge QC", version=__version__, parameters=parameters)


def _slide_group(
    report: dict[str, Any], focus: dict[str, float], inputs: SrInputs
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    level0 = inputs.images[0]
    evaluations = [
        hd.sr.QualitativeEvaluation(qc_codes.VERDICT, qc_codes.VERDICTS[report["verdict"]]),
    ]
    measurements = [_number(qc_codes.PRIORITY, report["priority"], qc_codes.NO_UNITS)]
    if report["qc_available"]:
        stain = qc_codes.STAINS.get(report.get("stain", "unknown"), qc_codes.STAINS["unknown"])
        evaluations.append(hd.sr.QualitativeEvaluation(qc_codes.STAIN, stain))
        measurements += [
            _number(qc_codes.FRAGMENTS, report["fragments"], qc_codes.COUNT),
            _number(qc_codes.CROPS, report["focus_crops_scored"], qc_codes.COUNT),
        ]
        for key, code in (
            ("mean", qc_codes.FOCUS_MEAN),
            ("p95", qc_codes.FOCUS_P95),
            ("max", qc_codes.FOCUS_MAX),
        ):
            if key in focus:
                measurements.append(_number(code, focus[key], qc_codes.NO_UNITS))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=inputs.tracking_uids["slide"], identifier="edge QC slide"
        ),
        algorithm_id=_slide_algorithm(report),
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(level0.SOPClassUID, level0.SOPInstanceUID)
        ],
    )
    # TID 1501 is extensible: the technician's sentences go in as TEXT beside the codes.
    content = group[0].ContentSequence
    for reason in report["reasons"]:
        content.append(
            hd.sr.TextContentItem(
                name=qc_codes.REASON,
                value=str(reason),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return group


def _class_group(
    kind: str, number: int, numbers: dict[str, Any], report: dict[str, Any], inputs: SrInputs
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    assert inputs.seg is not None and inputs.seg_source is not None
    source = inputs.seg_source
    if kind == "tissue":
        measurements = [
            _number(qc_codes.AREA, numbers["area_mm2"], qc_codes.MM2),
            _number(qc_codes.FRACTION_OF_SLIDE, numbers["fraction_of_slide"], qc_codes.NO_UNITS),
        ]
    else:
        measurements = [
            _number(qc_codes.FRACTION_OF_TISSUE, numbers["fraction_of_tissue"], qc_codes.NO_UNITS),
            _number(qc_codes.AREA, numbers.get("area_mm2", 0.0), qc_codes.MM2),
            _number(qc_codes.REGIONS, numbers.get("regions", 0), qc_codes.COUNT),
        ]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=inputs.tracking_uids[kind], identifier=f"edge QC {kind}"
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=inputs.seg.SOPClassUID,
            sop_instance_uid=inputs.seg.SOPInstanceUID,
            segment_number=number,
            source_images=[
                hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID)
            ],
        ),
        finding_type=qc_codes.CLASS_TYPES[kind],
        finding_category=qc_codes.TISSUE if kind == "tissue" else qc_codes.ARTIFACT,
        algorithm_id=_model_algorithm(kind, report.get("models", [])),
        measurements=measurements,
    )


def _specimen_subject(level0: Dataset) -> hd.sr.SubjectContext | None:
    """The slide's specimen as the SR's subject; None when the WSI does not describe one
    (a folder from another converter)."""
    specimens = level0.get("SpecimenDescriptionSequence") or []
    if not specimens or not specimens[0].get("SpecimenUID"):
        return None
    specimen = specimens[0]
    return hd.sr.SubjectContext(
        subject_class=codes.DCM.Specimen,
        subject_class_specific_context=hd.sr.SubjectContextSpecimen(
            uid=specimen.SpecimenUID,
            identifier=str(specimen.get("SpecimenIdentifier", "")) or None,
            container_identifier=str(level0.get("ContainerIdentifier", "")) or None,
        ),
    )


def build_sr(
    report: dict[str, Any], focus: dict[str, float], inputs: SrInputs
) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR of one slide's QC (see the module docstring)."""
    level0 = inputs.images[0]
    groups: list[Any] = [_slide_group(report, focus, inputs)]
    if inputs.seg is not None:
        for number, kind in enumerate(SEG_CLASSES, start=1):
            groups.append(_class_group(kind, number, report["classes"][kind], report, inputs))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=inputs.device_uid,
            name="edge QC",
            manufacturer_name=inputs.equipment["manufacturer"],
            model_name=inputs.equipment["manufacturer_model_name"],
            serial_number=inputs.equipment["device_serial_number"],
        ),
    )
    try:
        measurement_report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(
                observer_device_context=observer, subject_context=_specimen_subject(level0)
            ),
            procedure_reported=qc_codes.WSI_PROCEDURE,
            imaging_measurements=groups,
            referenced_images=inputs.images,
        )
        evidence = [*inputs.images, *([inputs.seg] if inputs.seg is not None else [])]
        sr = hd.sr.ComprehensiveSR(
            evidence=evidence,
            content=measurement_report[0],
            series_instance_uid=inputs.series_uid,
            series_number=3,
            sop_instance_uid=inputs.sop_uid,
            instance_number=1,
            manufacturer=inputs.equipment["manufacturer"],
            is_complete=True,
            series_description="QC report (edge)",
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputError(f"cannot build the QC structured report: {exc}") from exc
    sr.CodingSchemeIdentificationSequence = qc_codes.coding_scheme_identification()
    return sr
