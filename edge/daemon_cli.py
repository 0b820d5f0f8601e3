"""`edge run`, `edge config check|show`, `edge jobs list|show|retry`, `edge housekeeping`."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from edge import config as cfg
from edge.errors import EdgeError
from edge.hub import cli as hub_cli

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
EXIT_RUN_CONFIG = 78  # sysexits EX_CONFIG: systemd's unit does not restart on it
DEFAULT_HOME = Path("edge-data")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run",
        help="run the appliance: watch, convert, analyse, forward",
        description="Watch the scanner folders of the configuration and take every finished "
        "slide through conversion, QC and forwarding until stopped (SIGTERM / Ctrl-C). Without "
        f"--config and without {cfg.DEFAULT_PATH}, it runs on embedded defaults under "
        f"--home (default ./{DEFAULT_HOME}): watch HOME/inbox, state in HOME/state, send to "
        "the folder HOME/outgoing, CPU or whatever backend the box has.",
    )
    _config_option(run)
    run.add_argument(
        "--once",
        action="store_true",
        help="stop once everything found has been converted and sent (exit 1 on --timeout)",
    )
    run.add_argument("--timeout", type=float, help="with --once: give up after this many seconds")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.add_argument(
        "--role",
        choices=("site", "hub"),
        default="site",
        help="hub: also receive STOW-RS from site appliances; needs [hub] listen and "
        "[[hub.site]] (docs/hub.md). A site with [hub] listen set runs the hub too.",
    )

    conf = sub.add_parser("config", help="check or show the configuration")
    conf_actions = conf.add_subparsers(dest="action", required=True)
    check = conf_actions.add_parser("check", help="load the file and explain any mistake")
    _config_option(check)
    show = conf_actions.add_parser("show", help="the effective settings, defaults included")
    _config_option(show)

    jobs = sub.add_parser("jobs", help="slides the daemon found: states, verdicts, quarantine")
    _config_option(jobs)
    jobs_actions = jobs.add_subparsers(dest="action", required=True)
    listing = jobs_actions.add_parser("list", help="newest first")
    listing.add_argument("--state", choices=("queued", "running", "done", "failed", "quarantined"))
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    one = jobs_actions.add_parser("show", help="one job as JSON")
    one.add_argument("id", type=int)
    again = jobs_actions.add_parser("retry", help="run a failed or quarantined job again")
    again.add_argument("ids", nargs="+", type=int)

    audit = sub.add_parser("audit", help="the audit trail: who did what, when")
    _config_option(audit)
    audit.add_argument("--job", type=int, help="only this job's records")
    audit.add_argument("--limit", type=int, default=200)
    audit.add_argument("--json", action="store_true")

    hub_cli.add_parsers(sub)

    house = sub.add_parser(
        "housekeeping", help="remove delivered files past retention (the timer runs it)"
    )
    _config_option(house)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help=f"TOML configuration (default {cfg.DEFAULT_PATH})"
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        help=f"root of the embedded defaults, used when there is no configuration file "
        f"(default ./{DEFAULT_HOME})",
    )


def load_config(args: argparse.Namespace) -> tuple[cfg.Config, str]:
    """The configuration and where it came from; embedded defaults when there is no file."""
    if args.config is not None:
        return cfg.load(args.config), str(args.config)
    if cfg.DEFAULT_PATH.exists():
        return cfg.load(cfg.DEFAULT_PATH), str(cfg.DEFAULT_PATH)
    from edge.daemon import embedded_defaults

    home = Path(args.home).resolve()
    return embedded_defaults(home), f"embedded defaults under {home}"


def _logging(verbose: bool) -> None:
    # Under systemd (JOURNAL_STREAM set) the journal adds time and unit; on a terminal, time.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)


def cmd_run(args: argparse.Namespace) -> int:
    from edge.daemon import Daemon
    from edge.system import notify

    try:
        config, origin = load_config(args)
    except EdgeError as exc:
        print(f"edge run: {exc}", file=sys.stderr)
        return EXIT_RUN_CONFIG
    if getattr(args, "role", "site") == "hub" and not config.hub.listen:
        print(
            f"edge run --role hub: {origin}: [hub] listen is not set (e.g. "
            '"0.0.0.0:8042"), with at least one [[hub.site]]; see docs/hub.md',
            file=sys.stderr,
        )
        return EXIT_RUN_CONFIG
    _logging(args.verbose)
    logging.getLogger(__name__).info("configuration: %s", origin)
    if args.config is None and not cfg.DEFAULT_PATH.exists():
        for folder in config.ingest.watch:
            Path(folder).mkdir(parents=True, exist_ok=True)
        print(
            f"edge: no configuration file; embedded defaults: drop slides into "
            f"{config.ingest.watch[0]}, converted copies go to "
            f"{config.destinations[0].path}",
            file=sys.stderr,
        )
    notifier = notify.default()
    try:
        return Daemon(config, once=args.once, notify=notifier.send).run(timeout_s=args.timeout)
    except cfg.ConfigError as exc:  # found at start: a secret file, a destination setting
        print(f"edge run: {exc}", file=sys.stderr)
        return EXIT_RUN_CONFIG
    except EdgeError as exc:
        print(f"edge run: {exc}", file=sys.stderr)
        return EXIT_FAIL


def cmd_config(args: argparse.Namespace) -> int:
    try:
        config, origin = load_config(args)
    except EdgeError as exc:
        print(f"✗ {exc}", file=sys.stderr)
        return EXIT_CONFIG
    problems = _environment_problems(config)
    if args.action == "show":
        print(json.dumps(_plain(config), indent=2))
        return EXIT_OK
    print(f"✓ {origin}: valid")
    for line in problems:
        print(f"! {line}")
    return EXIT_OK


def _environment_problems(config: cfg.Config) -> list[str]:
    """What is valid TOML but will not work on this machine (warnings, not errors: a share
    may be mounted later)."""
    found = []
    for folder in config.ingest.watch:
        if not Path(folder).is_dir():
            found.append(f"[ingest] watch: {folder} is not a folder (yet)")
    if not config.ingest.watch:
        found.append("[ingest] watch is empty: only slides received over DICOM will arrive")
    if not config.destinations:
        found.append("no [[destination]]: slides are converted and kept, never sent")
    for dest in config.destinations:
        for name in ("token_file", "tls_ca_file", "tls_cert_file", "tls_key_file"):
            value = getattr(dest, name, "")
            if value and not Path(value).is_file():
                found.append(f"[[destination]] {dest.name}: {name} {value} does not exist")
    return found


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def cmd_jobs(args: argparse.Namespace) -> int:
    from edge.jobs import JobStore
    from edge.outbox.schema import DATABASE

    try:
        config, _ = load_config(args)
        with JobStore(config.state_dir / DATABASE) as jobs:
            if args.action == "list":
                rows = jobs.list(args.state, args.limit)
                if args.json:
                    print(json.dumps(rows, indent=2))
                    return EXIT_OK
                for row in rows:
                    note = row["error"] or "; ".join(row["reasons"])
                    sent = row["deliveries"]
                    delivery = (
                        f"sent {sent['delivered']}/{sent['total']}"
                        + (f", {sent['parked']} parked" if sent["parked"] else "")
                        if sent["total"]
                        else "-"
                    )
                    print(
                        f"{row['id']:>6} {row['state']:<11} {row['verdict'] or '-':<7} "
                        f"{delivery:<14} {row['name']}  {note}"
                    )
            elif args.action == "show":
                found = jobs.get(args.id)
                if found is None:
                    print(f"edge jobs: no job {args.id}", file=sys.stderr)
                    return EXIT_FAIL
                print(json.dumps(found, indent=2))
            else:
                actor = f"{getpass.getuser()} (edge jobs)"
                missing = [i for i in args.ids if not jobs.retry(i, actor=actor)]
                if missing:
                    print(f"edge jobs: not failed or quarantined: {missing}", file=sys.stderr)
                    return EXIT_FAIL
    except EdgeError as exc:
        print(f"edge jobs: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    import dataclasses
    import datetime as dt

    from edge.audit.trail import records
    from edge.outbox.schema import DATABASE, connect

    try:
        config, _ = load_config(args)
        path = config.state_dir / DATABASE
        if not path.exists():
            print(f"edge audit: no state database at {path}", file=sys.stderr)
            return EXIT_FAIL
        conn = connect(path, readonly=True)
        try:
            rows = records(conn, limit=args.limit, job_id=args.job)
        finally:
            conn.close()
    except EdgeError as exc:
        print(f"edge audit: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return EXIT_OK
    for r in rows:
        when = dt.datetime.fromtimestamp(r.at).isoformat(sep=" ", timespec="seconds")
        job = f"job {r.job_id}" if r.job_id is not None else ""
        print(
            f"{when} {r.actor:<20} {r.action:<13} {r.outcome:<7} {job:<9} "
            f"{r.destination} {r.detail}"
        )
    return EXIT_OK


def cmd_housekeeping(args: argparse.Namespace) -> int:
    from edge.daemon import Daemon

    try:
        config, _ = load_config(args)
        removed = Daemon(config).sweep()
    except EdgeError as exc:
        print(f"edge housekeeping: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"removed {removed} delivered file(s) past {config.storage.retention_days:g} day(s)")
    return EXIT_OK


COMMANDS = {
    "audit": cmd_audit,
    "run": cmd_run,
    "config": cmd_config,
    "jobs": cmd_jobs,
    "housekeeping": cmd_housekeeping,
    **hub_cli.COMMANDS,
}
