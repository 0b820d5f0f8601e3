"""One slide to one folder of DICOM WSI instances, atomically.

Output goes to a hidden temporary folder beside the destination and is renamed into place only
when every instance is complete, so a failure (bad tile, full disk, crash) leaves nothing
half-written for a PACS forwarder or a person to pick up.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge.dicom import metadata as md
from edge.dicom.encode import Encoder
from edge.dicom.pyramid import plan_pyramid
from edge.dicom.uids import DEFAULT_ROOT, check_root, fingerprint, make_uid
from edge.dicom.writer import FrameWriter
from edge.dicom.wsi import WrittenInstance, WsiWriter, pad_tile, spec_for_plan
from edge.errors import InputError
from edge.fileio import partial_dir, replace_dir
from edge.slide.model import AssociatedKind
from edge.slide.open import open_slide
from edge.slide.source import SlideSource
from edge.slide.stream import ReadsBack, TileConsumer, stream_tiles

LOGGER = logging.getLogger(__name__)
ASSUMED_MPP = 0.25  # µm/px used only when the file states no pixel size (40x-equivalent)
_ALLOWED_KEYS = set(md.PATIENT_STUDY_KEYWORDS)


@dataclass(frozen=True)
class ConvertOptions:
    format: str = "jpeg"  # codec for levels that must be (re-)encoded
    quality: int = 95
    dyadic: bool = False
    uid_root: str = DEFAULT_ROOT
    mpp: float | None = None  # override the file's pixel size (µm/px)
    sidecar: Path | None = None  # JSON with patient/study attributes
    filename_pattern: str | None = None  # regex with named groups of PATIENT_STUDY_KEYWORDS
    associated: bool = True

    def settings_key(self) -> str:
        return f"{self.format}:{self.quality}:{int(self.dyadic)}:{self.mpp}"


@dataclass
class ConvertResult:
    source: str
    output: str
    format: str
    study_uid: str
    series_uid: str
    seconds: float
    bytes_in: int
    bytes_out: int
    instances: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    qc: dict[str, Any] | None = None  # verdict, reasons, report path when --analyse ran

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def patient_attributes(path: Path, options: ConvertOptions) -> dict[str, str]:
    """Patient/study attributes from a JSON sidecar and/or a filename pattern."""
    found: dict[str, str] = {}
    sidecar = options.sidecar or path.with_suffix(".json")
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(sidecar, f"sidecar is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError(sidecar, "sidecar must be a JSON object of DICOM keywords")
        unknown = sorted(set(data) - _ALLOWED_KEYS)
        if unknown:
            raise InputError(
                sidecar, f"unknown keys {unknown}; allowed: {', '.join(md.PATIENT_STUDY_KEYWORDS)}"
            )
        found.update({k: str(v)[:64] for k, v in data.items() if v is not None})
    if options.filename_pattern:
        match = re.search(options.filename_pattern, path.name)
        if match:
            found.update(
                {k: v[:64] for k, v in match.groupdict().items() if v and k in _ALLOWED_KEYS}
            )
    return found


def _acquired(source: SlideSource) -> datetime:
    """Scan time, or the file's modification time: stable across re-runs, unlike now()."""
    if source.metadata.scan_datetime:
        return source.metadata.scan_datetime
    return datetime.fromtimestamp(source.path.stat().st_mtime).replace(microsecond=0)


def _identity(
    source: SlideSource, options: ConvertOptions, patient: dict[str, str], key: str
) -> md.Identity:
    root = check_root(options.uid_root)
    carried = source.metadata.dicom_attributes
    container = (
        patient.get("ContainerIdentifier")
        or source.metadata.barcode
        or str(carried.get("ContainerIdentifier", ""))
        or source.path.stem
    )[:64]
    study = (
        patient.get("StudyInstanceUID")
        or str(carried.get("StudyInstanceUID", ""))
        or make_uid(root, key, "study")
    )
    merged = {k: str(v) for k, v in carried.items() if k in _ALLOWED_KEYS and v}
    merged.update(patient)
    return md.Identity(
        study_uid=study,
        series_uid=make_uid(root, key, "series"),
        frame_of_reference_uid=str(carried.get("FrameOfReferenceUID", ""))
        or make_uid(root, key, "frame-of-reference"),
        specimen_uid=make_uid(root, key, "specimen"),
        dimension_organization_uid=make_uid(root, key, "dimension-organization"),
        container_id=container,
        patient=merged,
    )


def convert(
    path: Path,
    out_root: Path,
    options: ConvertOptions = ConvertOptions(),
    progress: Callable[[int, int], None] | None = None,
    extra_consumers: tuple[TileConsumer, ...] = (),
    consumers_for: Callable[[SlideSource], tuple[TileConsumer, ...]] | None = None,
) -> ConvertResult:
    """Convert one slide into out_root/<slide name>/. Raises InputError or OutputError.

    consumers_for(source) may add consumers that need the opened source (the analysis)."""
    started = time.monotonic()
    encoder = Encoder(options.format, options.quality)
    patient = patient_attributes(path, options)
    source = open_slide(path)
    try:
        if consumers_for is not None:
            extra_consumers = (*extra_consumers, *consumers_for(source))
        out_root.mkdir(parents=True, exist_ok=True)
        final = out_root / output_name(source.path)
        result = _convert_atomically(
            source, final, options, encoder, patient, progress, extra_consumers, None
        )
    finally:
        source.close()
    result.seconds = round(time.monotonic() - started, 3)
    return result


def convert_source(
    source: SlideSource,
    final: Path,
    identity_key: str,
    options: ConvertOptions = ConvertOptions(),
    progress: Callable[[int, int], None] | None = None,
) -> ConvertResult:
    """Write an already open source that has no file behind it (a synthetic slide model) as
    the DICOM folder `final`, atomically. `identity_key` stands in for the file fingerprint
    in the UIDs, so the same key and options give the same UIDs. The caller closes `source`."""
    started = time.monotonic()
    encoder = Encoder(options.format, options.quality)
    final.parent.mkdir(parents=True, exist_ok=True)
    result = _convert_atomically(source, final, options, encoder, {}, progress, (), identity_key)
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _convert_atomically(
    source: SlideSource,
    final: Path,
    options: ConvertOptions,
    encoder: Encoder,
    patient: dict[str, str],
    progress: Callable[[int, int], None] | None,
    extra_consumers: tuple[TileConsumer, ...],
    identity_key: str | None,
) -> ConvertResult:
    temp = partial_dir(final)
    try:
        result = _convert_open(
            source, temp, options, encoder, patient, progress, extra_consumers, identity_key
        )
        replace_dir(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    result.output = str(final)
    return result


def _convert_open(
    source: SlideSource,
    temp: Path,
    options: ConvertOptions,
    encoder: Encoder,
    patient: dict[str, str],
    progress: Callable[[int, int], None] | None,
    extra_consumers: tuple[TileConsumer, ...],
    identity_key: str | None = None,
) -> ConvertResult:
    meta = source.metadata
    warnings: list[str] = []
    mpp = options.mpp or meta.mpp
    if mpp is None:
        mpp = ASSUMED_MPP
        warnings.append(
            f"the file states no pixel size; assumed {ASSUMED_MPP} µm/px (pass --mpp to set it)"
        )
    identity = identity_key or fingerprint(source.path)
    key = "\x1f".join((identity, options.settings_key(), options.uid_root))
    ident = _identity(source, options, patient, key)
    acquired = _acquired(source)
    plan = plan_pyramid(source.levels, options.dyadic)
    base_level = source.levels[0]
    root = check_root(options.uid_root)

    template = md.ImageSpec(
        sop_instance_uid="",
        instance_number=0,
        image_type=("DERIVED", "PRIMARY", "VOLUME", "NONE"),
        width=base_level.width,
        height=base_level.height,
        tile_width=base_level.tile_width,
        tile_height=base_level.tile_height,
        frames=1,
        samples=base_level.samples,
        photometric="",
        codec="jpeg",
        lossy=True,
        pixel_spacing_mm=mpp / 1000,
        base_width=base_level.width,
        base_height=base_level.height,
        base_pixel_spacing_mm=mpp / 1000,
    )
    specs: list[md.ImageSpec] = []
    for i, planned in enumerate(plan):
        if planned.source is not None:
            level = source.levels[planned.source]
            codec, photometric, lossy, copied = WsiWriter.level_spec_codec(level, encoder)
            original = copied and planned.source == 0 and meta.format != "dicom"
            frames = level.frame_count
            samples = level.samples
            paths, planes = level.optical_paths, level.focal_planes
        else:
            parent_spec = specs[planned.parent] if planned.parent is not None else template
            samples = parent_spec.samples
            codec, photometric, lossy = (
                encoder.codec,
                encoder.photometric(samples),
                parent_spec.lossy or not encoder.lossless,
            )
            original, frames = False, planned.tiles
            paths, planes = 1, 1
        image_type = (
            "ORIGINAL" if original else "DERIVED",
            "PRIMARY",
            "VOLUME",
            "NONE" if i == 0 else "RESAMPLED",
        )
        specs.append(
            spec_for_plan(
                plan,
                i,
                template,
                frames,
                sop_instance_uid=make_uid(root, key, f"level-{i}"),
                instance_number=i + 1,
                image_type=image_type,
                samples=samples,
                photometric=photometric,
                codec=codec,
                lossy=lossy,
                optical_paths=paths,
                focal_planes=planes,
            )
        )

    def open_writer(spec: md.ImageSpec, name: str, extended: bool) -> FrameWriter:
        dataset = md.build_dataset(spec, meta, ident, acquired)
        return FrameWriter(temp / name, dataset, md.file_meta(spec), spec.frames, extended)

    total = sum(level.frame_count for level in source.levels)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    writer = WsiWriter(source.levels, plan, specs, encoder, open_writer)
    for consumer in extra_consumers:
        if isinstance(consumer, ReadsBack):  # the analysis: the pass need not wait for it
            consumer.read_back_from(writer.frame_copy)
    try:
        stream_tiles(source, (writer, *extra_consumers), tick)
    except BaseException:
        writer.abort()
        raise
    written = list(writer.written)
    if options.associated:
        written += _write_associated(
            source, temp, template, ident, acquired, key, root, len(plan), warnings
        )
    bytes_out = sum((temp / w.file).stat().st_size for w in written)
    return ConvertResult(
        source=str(source.path),
        output="",
        format=meta.format,
        study_uid=ident.study_uid,
        series_uid=ident.series_uid,
        seconds=0.0,
        bytes_in=_size(source.path) if identity_key is None else 0,
        bytes_out=bytes_out,
        instances=[
            {
                "file": w.file,
                "type": "\\".join(w.spec.image_type),
                "how": w.how,
                "width": w.spec.width,
                "height": w.spec.height,
                "frames": w.spec.frames,
                "transfer_syntax": str(md.TRANSFER_SYNTAX[w.spec.codec]),
                "photometric": w.spec.photometric,
                "bytes": (temp / w.file).stat().st_size,
            }
            for w in written
        ],
        warnings=warnings,
    )


_ASSOCIATED_TYPES = {
    AssociatedKind.LABEL: ("ORIGINAL", "PRIMARY", "LABEL", "NONE"),
    AssociatedKind.OVERVIEW: ("ORIGINAL", "PRIMARY", "OVERVIEW", "NONE"),
    AssociatedKind.THUMBNAIL: ("DERIVED", "PRIMARY", "THUMBNAIL", "RESAMPLED"),
}
# Nominal physical widths (mm) where the file says nothing: a label area and a whole slide.
_NOMINAL_WIDTH_MM = {AssociatedKind.LABEL: 25.0, AssociatedKind.OVERVIEW: 76.0}


def _write_associated(
    source: SlideSource,
    temp: Path,
    template: md.ImageSpec,
    ident: md.Identity,
    acquired: datetime,
    key: str,
    root: str,
    first_number: int,
    warnings: list[str],
) -> list[WrittenInstance]:
    encoder = Encoder("jpeg", 95)
    out = []
    for n, image in enumerate(source.associated, start=first_number + 1):
        try:
            pixels = source.associated_pixels(image.kind)
        except InputError as exc:
            warnings.append(f"{image.kind.value.lower()} image skipped: {exc.problem}")
            continue
        if pixels.shape[2] == 1 and template.samples == 3:
            pixels = np.repeat(pixels, 3, axis=2)
        height, width, samples = pixels.shape
        # JPEG needs even sides for 4:2:2; pad with white rather than crop the label.
        pixels = pad_tile(pixels, width + (width & 1), height + (height & 1))
        if image.kind is AssociatedKind.THUMBNAIL:
            spacing = (
                template.base_pixel_spacing_mm * template.base_width / width
                if template.base_pixel_spacing_mm
                else None
            )
        else:
            spacing = _NOMINAL_WIDTH_MM[image.kind] / width
        spec = md.ImageSpec(
            sop_instance_uid=make_uid(root, key, image.kind.value),
            instance_number=n,
            image_type=_ASSOCIATED_TYPES[image.kind],
            width=width,
            height=height,
            tile_width=pixels.shape[1],
            tile_height=pixels.shape[0],
            frames=1,
            samples=samples,
            photometric=encoder.photometric(samples),
            codec=encoder.codec,
            lossy=True,
            pixel_spacing_mm=spacing,
            base_width=template.base_width,
            base_height=template.base_height,
            base_pixel_spacing_mm=template.base_pixel_spacing_mm,
        )
        name = f"{image.kind.value.lower()}.dcm"
        dataset = md.build_dataset(spec, source.metadata, ident, acquired)
        with FrameWriter(temp / name, dataset, md.file_meta(spec), 1) as writer:
            writer.add(encoder.encode(pixels))
        out.append(WrittenInstance(name, spec, "re-encoded"))
    return out


def output_name(path: Path) -> str:
    """The slide's output folder name: its file name without format suffixes."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".svs", ".ndpi", ".tiff", ".tif", ".dcm", ".qptiff"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
