"""`edge deidentify`: de-identified copies of slide folders, as a destination would get them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.deid.keyed import pseudonym
from edge.deid.policy import OPTIONS, PROFILES, Policy, policy
from edge.deid.stream import deidentify_file, deidentify_slide
from edge.errors import EdgeError

EXIT_OK, EXIT_INPUT = 0, 2


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deid = sub.add_parser(
        "deidentify",
        help="write de-identified copies of DICOM slide folders (PS3.15 basic profile)",
        description="De-identify each SRC (a folder of one slide's DICOM instances, or one "
        "DICOM file) into OUTDIR/<pseudonym>/. Label and overview images are dropped; pixel "
        "data is copied unchanged. The policy comes from a destination in --config, or from "
        "--profile/--options with --secret-file. See docs/privacy.md.",
    )
    deid.add_argument("sources", nargs="+", type=Path, metavar="SRC")
    deid.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    deid.add_argument("--config", type=Path, help="edge.toml with [privacy] and the destination")
    deid.add_argument("--destination", metavar="NAME", help="use this destination's policy")
    deid.add_argument("--profile", choices=PROFILES, default="basic")
    deid.add_argument(
        "--options",
        default="",
        help=f"comma-separated: {', '.join(OPTIONS)}",
    )
    deid.add_argument("--secret-file", type=Path, help="site secret (mode 600)")


def _settings(args: argparse.Namespace) -> tuple[Policy, bytes]:
    from edge import config as cfg
    from edge.secrets import read_secret

    if args.destination:
        if args.config is None:
            raise cfg.ConfigError("--destination needs --config")
        from edge.deid.site import destination_policy, site_secret

        config = cfg.load(args.config)
        dest = config.destination(args.destination)
        found = destination_policy(dest)
        if found is None:
            raise cfg.ConfigError(
                f"{args.config}: destination {dest.name!r} receives identified data "
                "(no deidentify setting); nothing to do"
            )
        if args.secret_file:
            return found, read_secret(args.secret_file, "--secret-file")
        return found, site_secret(config)
    options = tuple(o.strip() for o in args.options.split(",") if o.strip())
    chosen = policy(args.profile, options, "--options")
    secret_file = args.secret_file
    if secret_file is None and args.config is not None:
        secret_file = Path(cfg.load(args.config).privacy.secret_file or "") or None
    if secret_file is None:
        raise cfg.ConfigError("a site secret is needed: --secret-file FILE or --config FILE")
    return chosen, read_secret(secret_file, "--secret-file")


def cmd_deidentify(args: argparse.Namespace) -> int:
    try:
        chosen, secret = _settings(args)
    except EdgeError as exc:
        print(f"edge deidentify: {exc}", file=sys.stderr)
        return EXIT_INPUT
    failed = False
    for src in args.sources:
        # The output is named by a pseudonym: slide names are often accession numbers.
        name = f"slide-{pseudonym(secret, 'slide-name', src.resolve().name, 12).lower()}"
        target = args.output / name
        try:
            if src.is_dir():
                written = deidentify_slide(src, target, chosen, secret)
                total = sum(1 for p in src.iterdir() if p.is_file() and p.name[0] != ".")
            else:
                one = deidentify_file(src, target / f"{name}.dcm", chosen, secret)
                written, total = ([one] if one else []), 1
        except EdgeError as exc:
            print(f"edge deidentify: {exc}", file=sys.stderr)
            failed = True
            continue
        print(f"{src} -> {target}: {len(written)} instances, {total - len(written)} dropped")
    return EXIT_INPUT if failed else EXIT_OK


COMMANDS = {"deidentify": cmd_deidentify}
