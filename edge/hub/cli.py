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

HUB_SCHEMA = 7  # the migration that made the hub's tables


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
        return [_never(name) for name in sites]
    conn = connect(path, readonly=True)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version < HUB_SCHEMA:
            return [_never(name) for name in sites]
        return records.status(conn, sites, at)
    finally:
        conn.close()


def _never(name: str) -> records.SiteStatus:
    return records.SiteStatus(name, None, "", 0, 0, 0, 0, 0, 0, [])


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
