"""What the pages and the API show, read from the state database on a read-only connection.

Every function takes a connection opened by `reader()` (its own, read-only: the daemon's
writers are never blocked) and returns plain dicts, so the HTML pages and the JSON API show
the same numbers.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import config as cfg
from edge.analysis.outputs import CLASSES
from edge.jobs import JOB_STATES
from edge.outbox import queries
from edge.outbox.schema import DATABASE, STATES, connect

VERDICTS = ("pass", "review", "rescan")
HEATMAP_CLASSES = CLASSES  # the only names a heatmap URL may carry


class NotReady(Exception):
    """The state database is missing or unreadable (the daemon has not created it yet)."""


@dataclass(frozen=True)
class JobFilter:
    q: str = ""  # part of the slide name
    state: str = ""
    verdict: str = ""
    stain: str = ""
    limit: int = 50
    offset: int = 0
    min_priority: int = 0  # triage priority at least this (0-100)
    since: str = ""  # one of SINCE: found today, in the last 24 hours, in the last 7 days


SINCE = ("today", "24h", "7d")


def since_time(since: str, now: float | None = None) -> float | None:
    at = time.time() if now is None else now
    if since == "today":
        local = time.localtime(at)
        return time.mktime((local.tm_year, local.tm_mon, local.tm_mday, 0, 0, 0, 0, 0, -1))
    return {"24h": at - 86400, "7d": at - 7 * 86400}.get(since)


@contextmanager
def reader(config: cfg.Config) -> Iterator[sqlite3.Connection]:
    path = config.state_dir / DATABASE
    if not path.is_file():
        raise NotReady(f"no state database at {path} yet (is the daemon running?)")
    try:
        conn = connect(path, readonly=True)
    except sqlite3.Error as exc:
        raise NotReady(f"{path}: cannot open the state database: {exc}") from exc
    try:
        yield conn
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise NotReady(f"{path}: schema not migrated yet ({exc})") from exc
        raise
    finally:
        conn.close()


def _job(row: sqlite3.Row) -> dict[str, Any]:
    found = dict(row)
    try:
        found["reasons"] = json.loads(found.get("reasons") or "[]")
    except ValueError:
        found["reasons"] = []
    found["unmatched"] = bool(found.get("unmatched"))
    found["has_report"] = bool(found.get("report"))
    return found


_JOB_COLUMNS = (
    "j.id, j.name, j.state, j.attempts, j.created_at, j.updated_at, j.started_at, "
    "j.finished_at, j.verdict, j.reasons, j.stain, j.priority, j.unmatched, j.instances, "
    "j.bytes_in, j.seconds, j.report, j.error, j.study_uid, j.series_uid, j.output, "
    "r.reviewed_by, r.reviewed_at"
)


def list_jobs(conn: sqlite3.Connection, f: JobFilter) -> tuple[list[dict[str, Any]], int]:
    """A page of jobs, newest first, and how many match in all."""
    where: list[str] = []
    args: list[Any] = []
    if f.q:
        where.append("j.name LIKE ? ESCAPE '\\'")
        escaped = f.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        args.append(f"%{escaped}%")
    for column, value in (("j.state", f.state), ("j.verdict", f.verdict), ("j.stain", f.stain)):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    if f.min_priority:
        where.append("j.priority >= ?")
        args.append(f.min_priority)
    start = since_time(f.since)
    if start is not None:
        where.append("j.created_at >= ?")
        args.append(start)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    total = int(conn.execute(f"SELECT COUNT(*) FROM jobs j {clause}", args).fetchone()[0])
    rows = conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs j LEFT JOIN reviews r ON r.job_id = j.id {clause} "
        "ORDER BY j.id DESC LIMIT ? OFFSET ?",
        (*args, f.limit, f.offset),
    )
    return [_job(r) for r in rows], total


def stains(conn: sqlite3.Connection) -> list[str]:
    return [str(r[0]) for r in conn.execute("SELECT DISTINCT stain FROM jobs WHERE stain != ''")]


def get_job(conn: sqlite3.Connection, job_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs j LEFT JOIN reviews r ON r.job_id = j.id WHERE j.id = ?",
        (job_id,),
    ).fetchone()
    return _job(row) if row is not None else None


def slide_key(job_id: int) -> str:
    return f"job-{job_id}"  # as the daemon enqueues a job's instances


def deliveries_of(conn: sqlite3.Connection, job_id: int) -> list[dict[str, Any]]:
    """Per destination: counts per state, last delivery, last error, the row ids."""
    per: dict[str, dict[str, Any]] = {}
    for row in conn.execute(
        "SELECT d.id, d.destination, d.state, d.last_error, d.updated_at, d.delivered_at "
        "FROM deliveries d JOIN instances i ON i.id = d.instance_id WHERE i.slide_key = ? "
        "ORDER BY d.id",
        (slide_key(job_id),),
    ):
        entry = per.setdefault(
            row["destination"],
            {
                "destination": row["destination"],
                "counts": dict.fromkeys(STATES, 0),
                "last_delivered_at": None,
                "last_error": "",
                "last_error_at": None,
                "ids": [],
            },
        )
        entry["counts"][row["state"]] += 1
        entry["ids"].append(int(row["id"]))
        if row["delivered_at"] and (entry["last_delivered_at"] or 0) < row["delivered_at"]:
            entry["last_delivered_at"] = row["delivered_at"]
        if row["last_error"] and (entry["last_error_at"] or 0) <= row["updated_at"]:
            entry["last_error"], entry["last_error_at"] = row["last_error"], row["updated_at"]
    for entry in per.values():  # "overview sent 14:02, 38% of full resolution"
        entry["progress"] = queries.slide_progress(conn, slide_key(job_id), entry["destination"])
    return list(per.values())


def delivery_ids(
    conn: sqlite3.Connection, job_id: int, destination: str | None, states: tuple[str, ...]
) -> list[int]:
    sql = (
        "SELECT d.id FROM deliveries d JOIN instances i ON i.id = d.instance_id "
        f"WHERE i.slide_key = ? AND d.state IN ({', '.join('?' * len(states))})"
    )
    args: list[Any] = [slide_key(job_id), *states]
    if destination:
        sql += " AND d.destination = ?"
        args.append(destination)
    return [int(r[0]) for r in conn.execute(sql, args)]


def history(conn: sqlite3.Connection, job_id: int, limit: int = 200) -> list[dict[str, Any]]:
    """The job's own events (found, started, done, retry, web actions) and its instances'
    send events, newest first."""
    rows = conn.execute(
        "SELECT * FROM events WHERE detail LIKE ? ESCAPE '\\' OR instance_id IN "
        "(SELECT id FROM instances WHERE slide_key = ?) ORDER BY id DESC LIMIT ?",
        (f"job {job_id}:%", slide_key(job_id), limit),
    )
    return [dict(r) for r in rows]


def audit(
    conn: sqlite3.Connection, limit: int = 100, before: int | None = None, q: str = ""
) -> list[dict[str, Any]]:
    where: list[str] = []
    args: list[Any] = []
    if before is not None:
        where.append("id < ?")
        args.append(before)
    if q:
        where.append("(event LIKE ? OR detail LIKE ? OR destination LIKE ?)")
        args.extend([f"%{q}%"] * 3)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(f"SELECT * FROM events {clause} ORDER BY id DESC LIMIT ?", (*args, limit))
    return [dict(r) for r in rows]


def audit_trail(conn: sqlite3.Connection, limit: int = 100, q: str = "") -> list[dict[str, Any]]:
    """The append-only audit trail (edge.audit), newest first: who did what, when."""
    where, args = "", []
    if q:
        where = "WHERE " + " OR ".join(
            f"{column} LIKE ? ESCAPE '\\'" for column in ("actor", "action", "detail")
        )
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        args = [pattern] * 3
    try:
        rows = conn.execute(
            f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?", (*args, limit)
        ).fetchall()
    except sqlite3.OperationalError:  # a database from before the audit trail
        return []
    return [dict(r) for r in rows]


def read_report(path: str) -> dict[str, Any] | None:
    """report.json of a job (the path comes from the database, never from a request)."""
    if not path:
        return None
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def heatmap_file(job: dict[str, Any], name: str, roots: tuple[Path, ...]) -> Path | None:
    """heatmaps/<name>.png (or slide.jpg for name 'slide') of a job's QC folder, only when the
    name is a known class and the file lies under one of the data folders."""
    if name != "slide" and name not in HEATMAP_CLASSES:
        return None
    if not job.get("report"):
        return None
    folder = Path(job["report"]).parent / "heatmaps"
    path = folder / ("slide.jpg" if name == "slide" else f"{name}.png")
    try:
        resolved = path.resolve(strict=True)
    except OSError:
        return None
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        return None
    return resolved


def output_folder(job: dict[str, Any], roots: tuple[Path, ...]) -> Path | None:
    """The job's DICOM folder, only when it lies under one of the data folders."""
    if not job.get("output"):
        return None
    try:
        resolved = Path(job["output"]).resolve(strict=True)
    except OSError:
        return None
    if not resolved.is_dir():
        return None
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        return None
    return resolved


__all__ = ["JOB_STATES", "STATES", "VERDICTS"]


QC_OBJECTS = {  # URL name -> (file in the slide folder, what it is)
    "seg": ("qc-seg.dcm", "Segmentation (tissue and artifact masks)"),
    "sr": ("qc-sr.dcm", "Structured report (verdict, reasons, numbers, models)"),
    "ann": ("qc-ann.dcm", "Bulk annotations (artifact outlines)"),
}


def qc_object_file(job: dict[str, Any], name: str, roots: tuple[Path, ...]) -> Path | None:
    """A QC result instance of the job (names from QC_OBJECTS only), under the data folders."""
    folder = output_folder(job, roots)
    if folder is None or name not in QC_OBJECTS:
        return None
    path = folder / QC_OBJECTS[name][0]
    return path if path.is_file() else None


def qc_objects(job: dict[str, Any], roots: tuple[Path, ...]) -> list[dict[str, Any]]:
    """The slide's QC results as DICOM, for the slide page: what, SOP Instance UID, size."""
    import pydicom

    found = []
    for name, (_file, what) in QC_OBJECTS.items():
        path = qc_object_file(job, name, roots)
        if path is None:
            continue
        try:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        except Exception:  # a damaged file is shown as such, the page still renders
            uid = "(unreadable)"
        found.append({"name": name, "what": what, "uid": uid, "size": path.stat().st_size})
    return found


def label_file(job: dict[str, Any], roots: tuple[Path, ...]) -> Path | None:
    folder = output_folder(job, roots)
    path = folder / "label.dcm" if folder is not None else None
    return path if path is not None and path.is_file() else None
