"""Command line: `edge convert` and `edge synth` (more subcommands arrive with the daemon)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

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
from edge.convert import ConvertOptions, ConvertResult, convert, output_name
from edge.dicom.encode import FORMATS, Encoder
from edge.dicom.uids import DEFAULT_ROOT, UidError, check_root
from edge.errors import EdgeError
from edge.slide.synthetic import FORMATS as SYNTH_FORMATS
from edge.slide.synthetic import write_slide

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

    synth = sub.add_parser(
        "synth",
        help="write a synthetic test slide",
        description="Write a synthetic H&E-like pyramidal slide, for trying the appliance "
        "end to end before the first patient slide.",
    )
    synth.add_argument("-o", "--output", type=Path, required=True, metavar="PATH")
    synth.add_argument("--size", default="4096x3072", help="WIDTHxHEIGHT (default 4096x3072)")
    synth.add_argument("--format", choices=SYNTH_FORMATS, default="svs")
    synth.add_argument("--seed", type=int, default=0)
    return parser


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
    except (ValueError, UidError) as exc:
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

            try:
                result = convert(slide, args.output, options, show_progress)
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


def cmd_synth(args: argparse.Namespace) -> int:
    try:
        width, _, height = args.size.lower().partition("x")
        path = write_slide(args.output, int(width), int(height), args.format, seed=args.seed)
    except ValueError as exc:
        print(f"edge synth: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(f"wrote {path} ({args.size}, {args.format})")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Inputs with over-long values are expected (they are repaired in the output); pydicom's
    # per-value complaints would bury the one line that matters.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pydicom")
    commands = {"convert": cmd_convert, "synth": cmd_synth}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
