"""`edge hub status [--json] [--config FILE]`: what each site sent, read from the state
database (read-only, so it works beside the running daemon)."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

from edge import config as cfg
from edge.errors import EdgeError
from edge.hub import records
from edge.outbox.schema import DATABASE, connect


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hub = sub.add_parser("hub", help="the hub role: what each site sent (docs/hub.md)")
    actions = hub.add_subparsers(dest="action", required=True)
    status = actions.add_parser(
        "status",
        help="per site: last contact, instances and bytes today and in total, series",
    )
    status.add_argument("--config", type=Path, default=cfg.DEFAULT_PATH)
    status.add_argument("--json", action="store_true", help="print the status as JSON")


def site_status(config: cfg.Config, now: float | None = None) -> list[records.SiteStatus]:
    sites = [s.name for s in config.hub.site]
    path = config.state_dir / DATABASE
    at = time.time() if now is None else now
    if not path.exists():
        return [records.never(name) for name in sites]
    conn = connect(path, readonly=True)
    try:
        return records.status_of_configured(conn, sites, at)
    finally:
        conn.close()


def cmd_hub(args: argparse.Namespace) -> int:
    try:
        config = cfg.load(args.config)
        statuses = site_status(config)
    except (EdgeError, sqlite3.Error) as exc:
        print(f"edge hub status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"sites": [s.as_dict() for s in statuses]}, indent=2))
    else:
        print(records.render(statuses))
    return 0


COMMANDS = {"hub": cmd_hub}
