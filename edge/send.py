"""`edge send` and `edge queue`: the outbox from the command line."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

from edge import config as cfg
from edge.errors import EdgeError
from edge.forward import factory, link
from edge.forward.stowrs import PARALLEL_LIMIT, REQUEST_FLOOR
from edge.forward.worker import drain
from edge.outbox import CircuitBreaker, Outbox, RetryPolicy
from edge.outbox.schema import DATABASE
from edge.slide.dicom import is_dicom_part10

EXIT_OK, EXIT_INPUT, EXIT_UNDELIVERED = 0, 2, 3


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    send = sub.add_parser(
        "send",
        help="queue DICOM files or folders for a destination (and, with --wait, send them)",
        description="Queue DICOM files (or every DICOM file under the folders given) in the "
        "outbox for one configured destination. With --wait, forward them now and exit 0 only "
        "when all are delivered; 3 when some were parked or are still pending.",
    )
    send.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    send.add_argument("--to", required=True, metavar="NAME", help="destination name")
    send.add_argument("--wait", action="store_true", help="forward now and wait for the result")
    send.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="with --wait: give up waiting after this many seconds (default 3600)",
    )
    send.add_argument("--config", type=Path, default=cfg.DEFAULT_PATH)
    send.add_argument("--json", action="store_true", help="print the result as JSON")

    queue = sub.add_parser("queue", help="look at and act on the outbox")
    queue.add_argument("--config", type=Path, default=cfg.DEFAULT_PATH)
    actions = queue.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="queued, failed, parked and delivered instances")
    listing.add_argument("--to", dest="destination", metavar="NAME")
    listing.add_argument("--state", choices=("queued", "sending", "delivered", "failed", "parked"))
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true")
    actions.add_parser("stats", help="counts per destination and state (JSON)")
    progress = actions.add_parser(
        "progress",
        help="how far a slide is at each destination (results, overview, full resolution)",
    )
    progress.add_argument("slide", nargs="?", help="slide key (default: the 20 latest slides)")
    progress.add_argument("--to", dest="destination", metavar="NAME")
    progress.add_argument("--json", action="store_true")
    link = actions.add_parser(
        "link",
        help="the measured link per adaptive STOW-RS destination (throughput, drops, request "
        "size, requests in flight)",
    )
    link.add_argument("--to", dest="destination", metavar="NAME")
    link.add_argument("--json", action="store_true")
    retry = actions.add_parser("retry", help="send failed or parked deliveries again")
    retry.add_argument("ids", nargs="+", type=int)
    park = actions.add_parser("park", help="stop sending these deliveries")
    park.add_argument("ids", nargs="+", type=int)
    park.add_argument("--reason", default="parked by hand")
    purge = actions.add_parser("purge-delivered", help="delete files delivered everywhere")
    purge.add_argument("--older-than", type=float, default=7 * 86400, metavar="SECONDS")


def _dicom_files(paths: list[Path]) -> list[Path]:
    """Files given, and DICOM Part 10 files under folders given (sorted, stable)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and is_dicom_part10(p))
        elif path.is_file():
            out.append(path)
        else:
            raise EdgeError(f"{path}: no such file or folder")
    if not out:
        raise EdgeError(f"no DICOM files in {', '.join(map(str, paths))}")
    return out


def _open(config: cfg.Config) -> Outbox:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    return Outbox(
        config.state_dir / DATABASE,
        policy=RetryPolicy(base_s=config.retry_base_s, ceiling_s=config.retry_ceiling_s),
    )


def cmd_send(args: argparse.Namespace) -> int:
    try:
        config = cfg.load(args.config)
        dest_config = config.destination(args.to)
        files = _dicom_files(args.paths)
        with _open(config) as outbox:
            outbox.enqueue(files, [dest_config.name], slide_key=str(args.paths[0]))
            print(f"queued {len(files)} instance(s) for {dest_config.name}", file=sys.stderr)
            if not args.wait:
                return EXIT_OK
            outbox.recover()
            destination = factory.build(dest_config, config.state_dir)
            try:
                result = drain(
                    outbox,
                    destination,
                    batch_size=config.batch_size,
                    # The breaker must not out-wait the configured retry ceiling.
                    breaker=CircuitBreaker(cooldown_s=min(60.0, config.retry_ceiling_s)),
                    deadline=time.time() + args.timeout,
                    windows=factory.windows(dest_config),
                )
            finally:
                destination.close()
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    summary = {
        "destination": dest_config.name,
        "delivered": result.delivered,
        "parked": result.parked,
        "retries": result.retried,
        "pending": result.pending,
        "parked_reasons": result.reasons[:10],
        "next_window": _local(result.next_window),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        line = (
            f"{dest_config.name}: {result.delivered} delivered, {result.parked} parked, "
            f"{result.pending} pending ({result.retried} retries)"
        )
        print(line)
        if result.next_window is not None:
            print(f"  outside the send windows; the next opens at {_local(result.next_window)}")
        for reason in result.reasons[:10]:
            print(f"  parked: {reason}")
    return EXIT_OK if result.parked == 0 and result.pending == 0 else EXIT_UNDELIVERED


def _local(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="minutes")


def cmd_queue(args: argparse.Namespace) -> int:
    try:
        config = cfg.load(args.config)
        with _open(config) as outbox:
            if args.action == "list":
                rows = outbox.list(destination=args.destination, state=args.state, limit=args.limit)
                if args.json:
                    print(json.dumps(rows, indent=2, default=str))
                for row in [] if args.json else rows:
                    print(
                        f"{row['id']:>6} {row['destination']:<12} {row['state']:<9} "
                        f"{row['attempts']:>3} {Path(row['path']).name} "
                        f"{row['last_error'] or ''}"
                    )
            elif args.action == "stats":
                print(json.dumps(outbox.stats(), indent=2))
            elif args.action == "progress":
                _progress(outbox, args)
            elif args.action == "link":
                _link(config, args)
            elif args.action == "retry":
                outbox.retry(args.ids)
            elif args.action == "park":
                outbox.park(args.ids, args.reason)
            elif args.action == "purge-delivered":
                removed = outbox.purge_delivered(args.older_than)
                print(f"removed {len(removed)} delivered file(s)")
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    return EXIT_OK


def link_status(config: cfg.Config, now: float | None = None) -> list[dict[str, Any]]:
    """Per adaptive STOW-RS destination: its saved link estimate (`estimate` None: nothing
    measured yet). Shared by `edge queue link` and the dashboard's status."""
    now = time.time() if now is None else now
    return [
        {
            "destination": d.name,
            "estimate": link.describe(
                config.state_dir, d.name, d.max_request_bytes, REQUEST_FLOOR, PARALLEL_LIMIT, now
            ),
        }
        for d in config.destinations
        if d.kind == "stowrs" and d.adaptive
    ]


def _link(config: cfg.Config, args: argparse.Namespace) -> None:
    found = [s for s in link_status(config) if args.destination in (None, s["destination"])]
    if args.json:
        print(json.dumps(found, indent=2))
        return
    if not found:
        print(
            "no adaptive STOW-RS destination"
            + (f" named {args.destination}" if args.destination else "")
        )
    for entry in found:
        e = entry["estimate"]
        if e is None:
            print(f"{entry['destination']:<12} nothing measured yet")
            continue
        rate = "-" if e["throughput_mbit_s"] is None else f"{e['throughput_mbit_s']:.2f}"
        print(
            f"{entry['destination']:<12} {rate} Mbit/s per request, "
            f"{e['drops_last_hour']} drop(s) in the last hour, "
            f"requests of {e['request_bytes'] / 1e6:.1f} MB, {e['parallel']} in flight"
        )


def _progress(outbox: Outbox, args: argparse.Namespace) -> None:
    pairs = [
        (key, dest)
        for key, dest in outbox.slide_keys(limit=20, slide_key=args.slide)
        if args.destination is None or dest == args.destination
    ]
    found = [outbox.slide_progress(key, dest) for key, dest in pairs]
    if args.json:
        print(json.dumps(found, indent=2))
        return
    if not found:
        print("nothing queued" + (f" for {args.slide}" if args.slide else ""))
    for p in found:
        start = p["enqueued_at"]

        def after(at: float | None, start: float = start) -> str:
            return "-" if at is None else f"+{at - start:.0f}s"

        print(
            f"{p['destination']:<12} {p['state']:<9} "
            f"{p['bytes_delivered'] / 1e6:.1f}/{p['bytes_total'] / 1e6:.1f} MB "
            f"full-res {p['full_resolution']:.0%} results {after(p['results_sent_at'])} "
            f"overview {after(p['overview_sent_at'])} done {after(p['completed_at'])} "
            f"{p['slide_key']}"
        )
