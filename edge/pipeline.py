"""One slide through the one streaming pass: convert (+ analyse) -> results on disk.

The daemon calls `process` for each job; `edge convert --analyse` does the same steps one
slide at a time. Raises InputError for a slide that cannot be converted (the daemon
quarantines it), Stopping when the daemon is shutting down (the partial output is removed by
the atomic writer; the job goes back to the queue), anything else for a crash (retried).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge import config as cfg
from edge.convert import ConvertOptions, ConvertResult, convert, output_name, patient_attributes
from edge.errors import EdgeError
from edge.fileio import write_atomic
from edge.jobs import Job, JobResult

LOGGER = logging.getLogger(__name__)

IDENTITY_KEYS = ("PatientID", "AccessionNumber")  # a slide with neither is "unmatched"
# Mosaics up to this size (a 40k x 40k slide's is 6.3 MP) keep their heatmaps in memory while
# the SEG is built, so the QC objects can be sent first; above it memory comes first.
QC_FIRST_PIXELS = 8 << 20


class Stopping(EdgeError):
    """The daemon is stopping; the slide goes back to the queue."""


def analysis_options(config: cfg.Config) -> Any:
    """AnalysisOptions from the [analysis] section (engine cache under state_dir)."""
    return section_options(config.analysis, config.state_dir / "engines")


def section_options(section: cfg.Analysis, cache_dir: Path | None = None) -> Any:
    """AnalysisOptions from an [analysis] section; engines cached in its engine_cache_dir,
    else `cache_dir`, else the analysis's default."""
    from edge.analysis.qc import Thresholds
    from edge.analysis.run import AnalysisOptions

    options = AnalysisOptions(
        backend=section.backend,
        thresholds=Thresholds.from_config(section),
        threads=section.threads or None,
        lower_level=section.lower_level,
    )
    if section.models_dir:
        options = dataclasses.replace(options, models_dir=Path(section.models_dir))
    cache = section.engine_cache_dir or cache_dir
    if cache:
        options = dataclasses.replace(options, cache_dir=Path(cache))
    return options


@dataclasses.dataclass
class SlideOutput:
    """What a processed slide left on disk, and what to tell the job store."""

    convert: ConvertResult
    files: list[Path]  # every DICOM instance to send
    report: dict[str, Any] | None
    job: JobResult


def convert_and_analyse(
    path: Path,
    out_root: Path,
    options: ConvertOptions,
    analysis: Any | None,
    progress: Callable[[int, int], None] | None = None,
    on_converted: Callable[[list[Path], int], None] | None = None,
    analysing: Callable[[int, int], None] | None = None,
) -> tuple[ConvertResult, dict[str, Any] | None]:
    """Convert into out_root/<name>/ with the analysis riding the pass; QC outputs go to
    out_root/<name>.qc/ and, as DICOM (SEG, SR), into the slide folder.

    `on_converted` gets the converted instances (the pyramid and the associated images) as
    soon as they are in place, while the analysis still works on its results: the daemon
    starts sending them then; it gets the QC DICOM objects (SEG, SR, annotations) as soon as
    they are written, too. Its second argument is the send-order boost (`boost`): 0 for the
    pyramid, whose triage is not known yet, the slide's own for the QC objects.

    `progress` follows the pass's tiles, `analysing` (default: `progress`) the tiles the
    analysis reads back after the conversion; either may raise Stopping."""
    session = None
    if analysis is not None:
        from edge.analysis.api import SlideAnalysis

        session = SlideAnalysis(analysis)
    try:
        result = convert(
            path, out_root, options, progress, consumers_for=session.consumers if session else None
        )
    except BaseException:
        if session is not None:
            session.close()  # its model thread waits for rows that will not come
        raise
    if on_converted is not None and session is not None:
        on_converted(sorted(Path(result.output).glob("*.dcm")), 0)
    report = None
    if session is not None:
        from edge.analysis.outputs import write_outputs
        from edge.dicom.results import write_qc_objects

        qc_dir = out_root / f"{output_name(path)}.qc"
        analysed = session.result(analysing or progress)

        def qc_objects() -> list[Path] | None:
            try:  # the slide is converted: a QC object it lacks is a warning, not a failure
                return write_qc_objects(analysed, Path(result.output), options.uid_root)
            except EdgeError as exc:
                result.warnings.append(f"QC SEG/SR not written: {exc}")
                return None

        geometry = analysed.geometry
        small = geometry is not None and math.prod(geometry.mosaic_shape) <= QC_FIRST_PIXELS
        if small:  # the PACS gets the QC objects while the heatmaps are still being written
            qc_files = qc_objects()
            if on_converted is not None and qc_files:
                on_converted(qc_files, priority_boost(analysed.priority))
        report = write_outputs(analysed, qc_dir, path.name)
        if not small:
            # A huge slide: the heatmaps and the mosaic are on disk now and the DICOM objects
            # need the masks only; dropping them first keeps the SEG's build under the
            # analysis's own memory peak.
            analysed.maps, analysed.mosaic = {}, None
            qc_files = qc_objects()
        result.qc = {
            "verdict": report["verdict"],
            "reasons": report["reasons"],
            "report": str(qc_dir / "report.json"),
        }
        if qc_files is not None:
            result.qc["dicom"] = [str(p) for p in qc_files]
    return result, report


def process(
    job: Job,
    config: cfg.Config,
    progress: Callable[[int, int], None] | None = None,
    on_converted: Callable[[list[Path], int], None] | None = None,
) -> SlideOutput:
    """Convert (and analyse) one job's slide; `progress` may raise Stopping to abandon it;
    `on_converted` as in `convert_and_analyse`."""
    options = ConvertOptions(format=config.pipeline.format, quality=config.pipeline.quality)
    if not config.ingest.sidecar:
        options = dataclasses.replace(options, sidecar=Path("/nonexistent/no-sidecar.json"))
    out_root = config.slides_dir / f"job-{job.id:06d}"
    patient = patient_attributes(job.source, options)
    note = ""
    if not _identified(patient):
        barcode, carried = _slide_identity(job.source)
        if _identified(carried):  # a DICOM input that already names its patient
            patient = {**carried, **patient}
        else:
            patient, note = _from_worklist(config, barcode, patient)
            if patient:
                out_root.mkdir(parents=True, exist_ok=True)
                sidecar = out_root / "patient.json"  # PHI: 0600 (mkstemp) in the 0700 state dir
                write_atomic(sidecar, json.dumps(patient).encode())
                options = dataclasses.replace(options, sidecar=sidecar)
    unmatched = not _identified(patient)

    analysis = analysis_options(config) if config.pipeline.analyse else None
    result, report = convert_and_analyse(
        job.source, out_root, options, analysis, progress, on_converted
    )
    files = sorted(Path(result.output).glob("*.dcm"))
    verdict = str(report["verdict"]) if report else ""
    return SlideOutput(
        convert=result,
        files=files,
        report=report,
        job=JobResult(
            output=result.output,
            study_uid=result.study_uid,
            series_uid=result.series_uid,
            instances=len(files),
            bytes_in=result.bytes_in,
            seconds=result.seconds,
            verdict=verdict,
            reasons=tuple(report["reasons"]) if report else (),
            stain=str(report.get("stain", "")) if report else "",
            priority=int(report.get("priority", 0)) if report else 0,
            unmatched=unmatched,
            report=str(result.qc["report"]) if result.qc else "",
            note=note if unmatched else "",
        ),
    )


def _identified(attributes: dict[str, str]) -> bool:
    return any(attributes.get(k) for k in IDENTITY_KEYS)


def _slide_identity(path: Path) -> tuple[str, dict[str, str]]:
    """The slide's barcode (its file name when the label gives none) and the patient/order
    attributes the file itself carries (DICOM inputs)."""
    from edge.slide.open import open_slide

    source = open_slide(path)
    try:
        meta = source.metadata
        carried = {k: str(v) for k, v in meta.dicom_attributes.items() if k in IDENTITY_KEYS and v}
        return meta.barcode or path.stem, carried
    finally:
        source.close()


def _from_worklist(
    config: cfg.Config, barcode: str, patient: dict[str, str]
) -> tuple[dict[str, str], str]:
    """The sidecar's attributes completed from the worklist (the sidecar's win), and a note
    saying why the slide stays unmatched, if it does."""
    from edge.ingest.worklist import lookup

    if not config.worklist.host:
        return patient, "no sidecar and no worklist configured"
    match = lookup(config.worklist, barcode)
    return {**match.attributes, **patient}, match.note


def priority_boost(priority: int) -> int:
    """Send order across slides from the triage priority (0-100; rescans score 80 and up),
    in ten steps: a rescan or a likely finding goes ahead of routine slides."""
    return max(0, min(100, priority)) // 10
