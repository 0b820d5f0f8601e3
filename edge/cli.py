"""Command line: `edge convert` and `edge synth` (more subcommands arrive with the daemon)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import logging
import math
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from edge import __version__
from edge.analysis.cli import COMMANDS as ANALYSIS_COMMANDS
from edge.analysis.cli import add_parsers as add_analysis_parsers
from edge.convert import ConvertOptions, ConvertResult, output_name
from edge.daemon_cli import COMMANDS as DAEMON_COMMANDS
from edge.daemon_cli import add_parsers as add_daemon_parsers
from edge.deid.cli import COMMANDS as DEID_COMMANDS
from edge.deid.cli import add_parsers as add_deid_parsers
from edge.dicom.encode import FORMATS, Encoder
from edge.dicom.uids import DEFAULT_ROOT, UidError, check_root
from edge.errors import EdgeError
from edge.pipeline import convert_and_analyse, section_options
from edge.send import add_parsers as add_send_parsers
from edge.send import cmd_queue, cmd_send
from edge.synth.protocol import ARTIFACT_KINDS, STAINS, SlideModel, SlideSpec, check_unit
from edge.synth.writers import FORMATS as SYNTH_FORMATS
from edge.synth.writers import MAX_SIDE, check_request, write
from edge.web.cli import COMMANDS as WEB_COMMANDS
from edge.web.cli import add_parsers as add_web_parsers

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    conv = sub.add_parser(
        "convert",
        help="convert slides (SVS, NDPI, TIFF, OME-TIFF, DICOM) to DICOM WSI",
        description="Convert each SLIDE into OUTDIR/<slide name>/ as DICOM VL Whole Slide "
        "Microscopy Image instances, copying compressed tiles where DICOM allows.",
    )
    conv.add_argument(
        "slides",
        nargs="+",
        type=Path,
        metavar="SLIDE",
        help="slide file, or a folder holding one DICOM series",
    )
    conv.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    conv.add_argument(
        "--format",
        choices=FORMATS,
        default="jpeg",
        help="codec for tiles that must be (re-)encoded (default: jpeg)",
    )
    conv.add_argument(
        "--quality",
        type=int,
        default=95,
        help="1-100; 100 = lossless for jpeg2000/htj2k/jpegxl (default: 95)",
    )
    conv.add_argument(
        "--dyadic",
        action="store_true",
        help="also generate 2x levels between the source's 4x-spaced levels",
    )
    conv.add_argument(
        "--uid-root",
        default=DEFAULT_ROOT,
        help="organisation UID root for generated UIDs (default: 2.25, UUID-based)",
    )
    conv.add_argument("--mpp", type=float, help="pixel size in µm at level 0, overriding the file")
    conv.add_argument(
        "--sidecar",
        type=Path,
        help="JSON of patient/study attributes (default: SLIDE with .json suffix)",
    )
    conv.add_argument(
        "--filename-pattern",
        help="regex with named groups (PatientID, AccessionNumber, ...) "
        "matched against the slide's file name",
    )
    conv.add_argument(
        "--no-associated", action="store_true", help="skip label, overview and thumbnail images"
    )
    conv.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    conv.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    conv.add_argument(
        "--analyse",
        action="store_true",
        help="also run QC in the same read pass; results in OUTDIR/<slide name>.qc/",
    )
    _analysis_options(conv)

    ana = sub.add_parser(
        "analyse",
        help="QC and triage of a slide: verdict, heatmaps, regions (GeoJSON)",
        description="Analyse SLIDE (tissue, focus, pen, folds, bubbles, debris, coverslip edge, "
        "stain) and write OUTDIR/report.json, OUTDIR/heatmaps/*.png and OUTDIR/regions.geojson. "
        "Exit 0 with a verdict, 2 when the slide cannot be read, 3 when QC cannot run.",
    )
    ana.add_argument("slide", type=Path, metavar="SLIDE")
    ana.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    ana.add_argument("--mpp", type=float, help="pixel size in µm at level 0, overriding the file")
    ana.add_argument("--json", action="store_true", help="print report.json on stdout")
    ana.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _analysis_options(ana)

    _synth_parser(sub)
    add_send_parsers(sub)
    add_analysis_parsers(sub)
    add_daemon_parsers(sub)
    add_deid_parsers(sub)
    add_web_parsers(sub)
    return parser


def _analysis_options(parser: argparse.ArgumentParser) -> None:
    from edge.analysis.backends.base import BACKEND_NAMES
    from edge.analysis.registry import DEFAULT_MODELS_DIR

    parser.add_argument(
        "--config", type=Path, help="TOML with an [analysis] section (thresholds, backend)"
    )
    parser.add_argument(
        "--backend",
        default=None,
        choices=("auto", *BACKEND_NAMES),
        help="inference backend (default auto: TensorRT, then CUDA, then CPU; see edge doctor)",
    )
    parser.add_argument(
        "--models-dir", type=Path, help=f"folder of the QC models (default {DEFAULT_MODELS_DIR})"
    )


def _analysis_settings(args: argparse.Namespace) -> Any:
    """Options from --config's [analysis] (thresholds, backend), then the command line."""
    from edge.config import Analysis, load

    section = load(args.config).analysis if args.config else Analysis()
    options = dataclasses.replace(section_options(section), mpp=args.mpp)
    if args.backend:
        options = dataclasses.replace(options, backend=args.backend)
    if args.models_dir:
        options = dataclasses.replace(options, models_dir=args.models_dir)
    return options


def _verdict_line(name: str, report: dict[str, Any]) -> str:
    reasons = "; ".join(report["reasons"]) or "no findings"
    return f"{name}: QC {report['verdict'].upper()}: {reasons}"


def cmd_analyse(args: argparse.Namespace) -> int:
    from edge.analysis.api import analyse_file

    show = not args.quiet and sys.stderr.isatty()
    with _progress_bar(show) as bar:
        task = bar.add_task(args.slide.name, total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            report = analyse_file(args.slide, args.output, _analysis_settings(args), tick)
        except EdgeError as exc:
            print(f"edge analyse: {exc}", file=sys.stderr)
            return EXIT_INPUT
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_verdict_line(args.slide.name, report))
    return EXIT_OK if report["qc_available"] else 3


def _synth_parser(sub: Any) -> None:
    # Values are taken as text and checked in cmd_synth, so that every bad value is reported
    # as one line naming what is allowed (argparse would print its usage block as well).
    synth = sub.add_parser(
        "synth",
        help="write a synthetic test slide",
        description="Write a synthetic pyramidal slide (rendered tile by tile, any size), for "
        "trying the appliance end to end before the first patient slide and for tests.",
    )
    synth.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="PATH",
        help="file to write (a folder for --format dicom)",
    )
    synth.add_argument(
        "--size",
        default="4096x3072",
        help=f"WIDTHxHEIGHT in pixels, each 16..{MAX_SIDE} (default 4096x3072)",
    )
    synth.add_argument("--format", default="svs", help=f"{'|'.join(SYNTH_FORMATS)} (default svs)")
    synth.add_argument("--seed", default="0", help="whole number; same seed, same slide")
    synth.add_argument(
        "--artifacts",
        default="none",
        help=f"comma-separated {','.join(ARTIFACT_KINDS)}, or none (default)",
    )
    synth.add_argument(
        "--severity",
        default=None,
        help="strength of every planted artifact, 0..1 within its kind's range "
        "(default: drawn from the seed)",
    )
    synth.add_argument(
        "--extent",
        default=None,
        help="size of every planted artifact, 0..1 within its kind's range "
        "(default: drawn from the seed)",
    )
    synth.add_argument("--tissue", default="H&E", help=f"stain: {' or '.join(STAINS)}")
    synth.add_argument("--mpp", default="0.25", help="µm per level-0 pixel (default 0.25)")
    synth.add_argument("--barcode", default=None, help="label barcode (default SYNTH-<seed>)")
    synth.add_argument("--quality", default="80", help="JPEG/JPEG 2000 quality 1..100")
    synth.add_argument("--tile", default="256", help="tile side, a multiple of 16")
    synth.add_argument(
        "--jpeg2000",
        action="store_true",
        help="JPEG 2000 tiles (svs: Aperio 33005; tiff/ome-tiff: 34712; dicom)",
    )
    synth.add_argument(
        "--texture",
        type=Path,
        metavar="DIR",
        help="folder of real tissue textures for the textured model",
    )
    synth.add_argument(
        "--truth", action="store_true", help="also write PATH.truth.json and masks beside the slide"
    )
    synth.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tiles"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
    )


def _summary_line(result: ConvertResult) -> str:
    copied = sum(1 for i in result.instances if i["how"] == "copied")
    mb = result.bytes_out / 1e6
    return (
        f"{result.source} -> {result.output}: {len(result.instances)} instances "
        f"({copied} copied without re-encoding), {mb:.1f} MB in {result.seconds:.2f} s"
    )


def cmd_convert(args: argparse.Namespace) -> int:
    try:
        Encoder(args.format, args.quality)
        check_root(args.uid_root)
        if args.mpp is not None and not 0.01 <= args.mpp <= 1000:
            raise ValueError(f"--mpp {args.mpp} is outside 0.01..1000 µm")
        analysis_options = _analysis_settings(args) if args.analyse else None
    except (ValueError, UidError, EdgeError) as exc:
        print(f"edge convert: {exc}", file=sys.stderr)
        return EXIT_INPUT
    options = ConvertOptions(
        format=args.format,
        quality=args.quality,
        dyadic=args.dyadic,
        uid_root=args.uid_root,
        mpp=args.mpp,
        sidecar=args.sidecar,
        filename_pattern=args.filename_pattern,
        associated=not args.no_associated,
    )
    results: list[ConvertResult] = []
    failures: list[dict[str, str]] = []
    claimed: dict[str, Path] = {}
    show = not args.quiet and sys.stderr.isatty()
    internal = False
    with _progress_bar(show) as bar:

        def say(text: str, style: str) -> None:
            """One line on stderr per event: never wrapped, never mixed into --json output."""
            if show:
                bar.console.print(text, style=style, highlight=False, soft_wrap=True)
            else:
                print(text, file=sys.stderr)

        for slide in args.slides:
            task = bar.add_task(slide.name, total=None)
            name = output_name(slide)
            if name in claimed:
                message = (
                    f"{slide}: its output folder {name!r} is already taken by "
                    f"{claimed[name]} in this run; convert it separately"
                )
                failures.append({"source": str(slide), "error": message})
                say(f"error: {message}", "red")
                bar.remove_task(task)
                continue
            claimed[name] = slide

            def show_progress(done: int, total: int, task_id: TaskID = task) -> None:
                bar.update(task_id, completed=done, total=total)

            def show_analysing(
                done: int, total: int, task_id: TaskID = task, label: str = f"{slide.name}: QC"
            ) -> None:  # the tiles the analysis reads back once the slide is converted
                bar.update(task_id, description=label, completed=done, total=total)

            try:
                result, report = convert_and_analyse(
                    slide,
                    args.output,
                    options,
                    analysis_options,
                    show_progress,
                    analysing=show_analysing,
                )
                if report is not None:
                    say(_verdict_line(slide.name, report), "bold")
            except EdgeError as exc:
                failures.append({"source": str(slide), "error": str(exc)})
                say(f"error: {exc}", "red")
                continue
            except Exception as exc:  # a bug: report it, keep converting the other slides
                internal = True
                message = f"{slide}: internal error ({type(exc).__name__}: {exc}); please report"
                failures.append({"source": str(slide), "error": message})
                say(f"error: {message}", "red")
                continue
            finally:
                bar.remove_task(task)
            results.append(result)
            for warning in result.warnings:
                say(f"warning: {slide}: {warning}", "yellow")
            if not args.json:
                print(_summary_line(result), file=sys.stderr if show else sys.stdout)
    if args.json:
        json.dump(
            {"converted": [r.as_dict() for r in results], "failed": failures}, sys.stdout, indent=2
        )
        print()
    if internal:
        return EXIT_INTERNAL
    return EXIT_INPUT if failures else EXIT_OK


_SYNTH_VALUE_OPTIONS = (
    "--size",
    "--seed",
    "--mpp",
    "--quality",
    "--tile",
    "--severity",
    "--extent",
)


def _number(option: str, text: str, kind: Callable[[str], Any], what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{option} {text!r}: expected {what}")
    return value


def _synth_spec(args: argparse.Namespace) -> SlideSpec:
    """The slide asked for, or ValueError naming the bad value and what is allowed."""
    size = re.fullmatch(r"\s*(-?\d+)\s*[xX]\s*(-?\d+)\s*", args.size)
    if size is None:
        raise ValueError(f"--size {args.size!r}: expected WIDTHxHEIGHT in pixels, e.g. 4096x3072")
    seed = _number("--seed", args.seed, int, "a whole number")
    if seed < 0:
        raise ValueError(f"--seed {seed}: expected a whole number >= 0")
    kinds = tuple(k.strip().lower() for k in args.artifacts.split(",") if k.strip())
    if kinds in ((), ("none",)):
        kinds = ()
    unknown = [k for k in kinds if k not in ARTIFACT_KINDS]
    if unknown:
        raise ValueError(
            f"--artifacts: unknown {', '.join(unknown)}; choose from "
            f"{', '.join(ARTIFACT_KINDS)} or none"
        )
    stain = {s.lower(): s for s in STAINS}.get(args.tissue.strip().lower())
    if stain is None:
        raise ValueError(f"--tissue {args.tissue!r}: choose {' or '.join(STAINS)}")
    if args.texture is not None and not args.texture.is_dir():
        raise ValueError(f"--texture {args.texture}: no such folder")
    settings: dict[str, float | None] = {}
    for name in ("severity", "extent"):
        text = getattr(args, name)
        value = None if text is None else _number(f"--{name}", text, float, "a number 0..1")
        try:
            check_unit(name, value)
        except ValueError:
            raise ValueError(f"--{name} {text!r}: expected a number from 0 to 1") from None
        settings[name] = value
    return SlideSpec(
        width=int(size.group(1)),
        height=int(size.group(2)),
        seed=seed,
        mpp=_number("--mpp", args.mpp, float, "micrometres per pixel, e.g. 0.25"),
        stain=stain,
        artifacts=tuple(dict.fromkeys(kinds)),
        barcode=args.barcode if args.barcode is not None else f"SYNTH-{seed:04d}",
        **settings,
    )


def _synth_model(spec: SlideSpec, texture: Path | None) -> tuple[SlideModel, str]:
    """The textured model (edge.synth.model) when it is installed, else the simple one."""
    # find_spec, not try/import: a textured model that fails to import must say so.
    if importlib.util.find_spec("edge.synth.model") is None:
        from edge.synth.simple import SimpleModel

        if spec.artifacts or texture is not None:
            print(
                "edge synth: note: the textured model (edge.synth.model) is not available; "
                "using the simple model, which ignores --artifacts and --texture",
                file=sys.stderr,
            )
        return SimpleModel(spec), "simple"
    module = importlib.import_module("edge.synth.model")
    model: SlideModel = module.make_model(spec, texture)
    return model, "textured"


def _synth_truth(model: SlideModel, path: Path) -> str:
    """PATH.truth.json and PATH.masks/ through edge.synth.truth, when that module exists."""
    if importlib.util.find_spec("edge.synth.truth") is None:
        return "ground truth skipped: edge.synth.truth is not available"
    truth = importlib.import_module("edge.synth.truth")
    spec = model.spec
    downsample = 1 << max(0, math.ceil(math.log2(max(spec.width, spec.height) / 2048)))
    json_path = path.with_name(path.name + ".truth.json")
    truth.write_truth(model, json_path, path.with_name(path.name + ".masks"), downsample)
    return f"ground truth: {json_path}"


def cmd_synth(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        spec = _synth_spec(args)
        fmt = args.format.strip().lower()
        quality = _number("--quality", args.quality, int, "a whole number 1..100")
        tile = _number("--tile", args.tile, int, "a whole number, a multiple of 16")
        check_request(spec, fmt, tile, quality, args.jpeg2000)
        model, kind = _synth_model(spec, args.texture)
        show = not args.quiet and sys.stderr.isatty()
        with _progress_bar(show) as bar:
            task = bar.add_task(args.output.name, total=None)
            path = write(
                model,
                args.output,
                fmt,
                tile=tile,
                quality=quality,
                jpeg2000=args.jpeg2000,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        note = _synth_truth(model, path) if args.truth else ""
    except ValueError as exc:
        print(f"edge synth: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (OSError, EdgeError) as exc:
        print(f"edge synth: cannot write {args.output}: {exc}", file=sys.stderr)
        return EXIT_INPUT
    seconds = time.monotonic() - started
    print(
        f"wrote {path} ({spec.width}x{spec.height} {fmt}, {kind} model, seed {spec.seed}, "
        f"{seconds:.1f} s)"
    )
    if note:
        print(note, file=sys.stderr if note.startswith("ground truth skipped") else sys.stdout)
    return EXIT_OK


def _attach_negative_values(argv: Sequence[str]) -> list[str]:
    """`edge synth --size -5x10` as `--size=-5x10`: argparse would take the value for an
    unknown option and print its usage block instead of the one-line reason cmd_synth gives."""
    out = list(argv)
    if not out or out[0] != "synth":
        return out
    for i in range(len(out) - 2, 0, -1):
        if out[i] in _SYNTH_VALUE_OPTIONS and re.match(r"-[\d.]", out[i + 1]):
            out[i : i + 2] = [f"{out[i]}={out[i + 1]}"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(_attach_negative_values(argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Inputs with over-long values are expected (they are repaired in the output); pydicom's
    # per-value complaints would bury the one line that matters.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pydicom")
    commands = {
        "convert": cmd_convert,
        "analyse": cmd_analyse,
        "synth": cmd_synth,
        "send": cmd_send,
        "queue": cmd_queue,
    }
    commands.update(ANALYSIS_COMMANDS)
    commands.update(DAEMON_COMMANDS)
    commands.update(DEID_COMMANDS)
    commands.update(WEB_COMMANDS)
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
