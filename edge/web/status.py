"""The appliance's state at a glance: destinations with their health, the overview's numbers
and alerts, the daemon's stage heartbeats. Read-only connections, as edge.web.data."""

from __future__ import annotations

import shutil
import sqlite3
import time
from typing import Any

from edge import config as cfg
from edge.forward import link
from edge.forward.stowrs import PARALLEL_LIMIT, REQUEST_FLOOR
from edge.jobs import job_counts
from edge.outbox import queries
from edge.outbox.schema import STATES
from edge.web.data import read_report


def destination_health(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Per destination in the outbox: last delivery and the latest error."""
    found: dict[str, dict[str, Any]] = {}
    for row in conn.execute(
        "SELECT destination, MAX(delivered_at) FROM deliveries WHERE state = 'delivered' "
        "GROUP BY destination"
    ):
        found.setdefault(row[0], {})["last_success_at"] = row[1]
    # SQLite returns the bare columns of the row holding the MAX.
    for row in conn.execute(
        "SELECT destination, last_error, MAX(updated_at) FROM deliveries "
        "WHERE state IN ('failed', 'parked') AND last_error != '' GROUP BY destination"
    ):
        entry = found.setdefault(row[0], {})
        entry["last_error"], entry["last_error_at"] = row[1], row[2]
    return found


def _public(dest: cfg.Destination) -> dict[str, Any]:
    """What the page may show of a destination (no key or token file contents)."""
    target = {
        "cstore": f"{dest.called_aet}@{dest.host}:{dest.port}",
        "stowrs": dest.url,
        "folder": dest.path,
    }.get(dest.kind, "")
    return {"name": dest.name, "kind": dest.kind, "target": target, "tls": dest.tls}


def destinations(
    conn: sqlite3.Connection, config: cfg.Config, outbox: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Configured destinations (and any still in the outbox) with queue and health; outbox is
    queries.stats() when the caller already has it."""
    stats = (outbox or queries.stats(conn))["destinations"]
    health = destination_health(conn)
    paused = queries.paused(conn)
    out = []
    names = [d.name for d in config.destinations]
    now = time.time()
    for dest in config.destinations:
        found = {**_public(dest), "configured": True}
        if dest.kind == "stowrs" and dest.adaptive:
            found["link"] = link.describe(
                config.state_dir,
                dest.name,
                dest.max_request_bytes,
                REQUEST_FLOOR,
                PARALLEL_LIMIT,
                now,
            )
        out.append(found)
    for name in sorted(set(stats) - set(names)):
        out.append({"name": name, "kind": "", "target": "", "tls": False, "configured": False})
    for entry in out:
        counts = stats.get(entry["name"], dict.fromkeys(STATES, 0))
        h = health.get(entry["name"], {})
        entry.update(
            counts=counts,
            queue=counts["queued"] + counts["sending"] + counts["failed"],
            last_success_at=h.get("last_success_at"),
            last_error=h.get("last_error", ""),
            last_error_at=h.get("last_error_at"),
            paused=paused.get(entry["name"]),
        )
        # Failing: errors newer than the last success, with work waiting.
        entry["failing"] = bool(
            entry["queue"]
            and entry["last_error_at"]
            and (entry["last_success_at"] or 0) < entry["last_error_at"]
        )
    return out


def latest_backend(conn: sqlite3.Connection) -> str:
    """The inference backend named in the newest QC report, or '' when none is readable."""
    row = conn.execute(
        "SELECT report FROM jobs WHERE state = 'done' AND report != '' ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return ""
    report = read_report(str(row[0]))
    return str(report.get("backend", "")) if report else ""


SILENT_S = 120.0  # a stage that has not beaten this long is reported (they beat every few s)


def stage_ages(health: Any) -> dict[str, float]:
    """Seconds since each daemon stage's last heartbeat ({} when not inside the daemon)."""
    beats = getattr(health, "beats", None)
    if not beats:
        return {}
    now = time.monotonic()
    return {stage: round(now - at, 1) for stage, at in sorted(dict(beats).items())}


def overview(
    conn: sqlite3.Connection,
    config: cfg.Config,
    ingest_paused: str = "",
    now: float | None = None,
    stages: dict[str, float] | None = None,
) -> dict[str, Any]:
    at = time.time() if now is None else now
    local = time.localtime(at)
    midnight = time.mktime((local.tm_year, local.tm_mon, local.tm_mday, 0, 0, 0, 0, 0, -1))
    today = conn.execute(
        "SELECT COUNT(*), SUM(state = 'done'), SUM(verdict = 'rescan'), "
        "COALESCE(SUM(bytes_in), 0) FROM jobs WHERE created_at >= ?",
        (midnight,),
    ).fetchone()
    hour = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(bytes_in), 0), COALESCE(AVG(seconds), 0) FROM jobs "
        "WHERE state = 'done' AND finished_at >= ?",
        (at - 3600,),
    ).fetchone()
    stats = queries.stats(conn)
    dests = destinations(conn, config, stats)
    disk: dict[str, float | None]
    try:
        usage = shutil.disk_usage(config.slides_dir)
        disk = {"used_fraction": round(1 - usage.free / usage.total, 4), "free_bytes": usage.free}
    except OSError:
        disk = {"used_fraction": None, "free_bytes": None}
    counts = job_counts(conn)
    alerts = []
    if ingest_paused:
        alerts.append(f"Ingest paused: {ingest_paused}")
    high = config.storage.high_water
    used = disk["used_fraction"]
    if used is not None and used >= high:
        alerts.append(f"Disk {used:.0%} full (high-water mark {high:.0%})")
    for stage, age in (stages or {}).items():
        if age > SILENT_S:
            alerts.append(f"Stage {stage} silent for {age:.0f} s (stuck?)")
    for d in dests:
        if d["failing"]:
            alerts.append(f"Destination {d['name']} failing: {d['last_error']}")
    if counts["quarantined"] + counts["failed"]:
        alerts.append(
            f"{counts['quarantined'] + counts['failed']} slide(s) need attention "
            "(failed or quarantined)"
        )
    return {
        "jobs": counts,
        "today": {
            "slides": int(today[0]),
            "done": int(today[1] or 0),
            "rescan": int(today[2] or 0),
            "bytes_in": int(today[3]),
        },
        "last_hour": {
            "slides": int(hour[0]),
            "bytes_in": int(hour[1]),
            "mean_seconds": round(float(hour[2]), 2),
        },
        "outbox": stats,
        "destinations": dests,
        "disk": disk,
        "backend": latest_backend(conn),
        "ingest_paused": ingest_paused,
        "stages": stages or {},
        "alerts": alerts,
    }
