"""Slide jobs in the state database: found -> queued -> running -> done | failed | quarantined.

One row per version of a scanner file (its fingerprint is path, size and mtime), so a slide
found twice is one job and a rescan written over the same name is a new one. A job's UIDs
follow from the file's fingerprint (edge.dicom.uids), so a job run twice (after a crash mid-way)
writes the same instances and the outbox, keyed by SOP Instance UID, queues them once.

Each thread opens its own `JobStore` (sqlite3 connections are per thread); writes are short
`BEGIN IMMEDIATE` transactions, which SQLite serialises.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.audit.trail import SYSTEM, record
from edge.outbox.schema import open_database, write_transaction

JOB_STATES = ("queued", "running", "done", "failed", "quarantined")


@dataclass(frozen=True)
class Job:
    id: int
    source: Path
    fingerprint: str
    name: str
    state: str
    attempts: int


@dataclass(frozen=True)
class JobResult:
    output: str
    study_uid: str
    series_uid: str
    instances: int
    bytes_in: int
    seconds: float
    verdict: str = ""
    reasons: tuple[str, ...] = ()
    stain: str = ""
    priority: int = 0
    unmatched: bool = False
    report: str = ""
    note: str = ""  # why unmatched


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn = open_database(self.path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self._conn)

    def _event(self, job_id: int, event: str, detail: str, at: float) -> None:
        self._conn.execute(
            "INSERT INTO events (at, destination, instance_id, event, detail) "
            "VALUES (?, '', NULL, ?, ?)",
            (at, f"job:{event}", f"job {job_id}: {detail}"),
        )

    def add(self, source: Path, fingerprint: str, now: float | None = None) -> int | None:
        """Queue a newly found slide; None when this fingerprint already has a job."""
        at = time.time() if now is None else now
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO jobs (source, fingerprint, name, state, created_at, "
                "updated_at) VALUES (?, ?, ?, 'queued', ?, ?)",
                (str(source), fingerprint, source.name, at, at),
            )
            if not cursor.rowcount:
                return None
            job_id = int(cursor.lastrowid or 0)
            self._event(job_id, "found", source.name, at)
            record(conn, "ingest", job_id=job_id, detail=source.suffix.lower(), at=at)
        return job_id

    def fingerprints(self) -> set[str]:
        return {str(r[0]) for r in self._conn.execute("SELECT fingerprint FROM jobs")}

    def claim(self, now: float | None = None) -> Job | None:
        """The oldest queued job, now running (its attempt counted), or None."""
        at = time.time() if now is None else now
        with self._write() as conn:
            row = conn.execute(
                "SELECT * FROM jobs WHERE state = 'queued' ORDER BY created_at, id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?, "
                "updated_at = ? WHERE id = ?",
                (at, at, row["id"]),
            )
            self._event(int(row["id"]), "started", f"attempt {row['attempts'] + 1}", at)
        return Job(
            id=int(row["id"]),
            source=Path(row["source"]),
            fingerprint=row["fingerprint"],
            name=row["name"],
            state="running",
            attempts=int(row["attempts"]) + 1,
        )

    def finish(self, job_id: int, result: JobResult, now: float | None = None) -> None:
        at = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'done', finished_at = ?, updated_at = ?, output = ?, "
                "study_uid = ?, series_uid = ?, instances = ?, bytes_in = ?, seconds = ?, "
                "verdict = ?, reasons = ?, stain = ?, priority = ?, unmatched = ?, report = ?, "
                "note = ?, error = '' WHERE id = ?",
                (
                    at,
                    at,
                    result.output,
                    result.study_uid,
                    result.series_uid,
                    result.instances,
                    result.bytes_in,
                    result.seconds,
                    result.verdict,
                    json.dumps(list(result.reasons)),
                    result.stain,
                    result.priority,
                    int(result.unmatched),
                    result.report,
                    result.note,
                    job_id,
                ),
            )
            self._event(job_id, "done", result.verdict or "converted", at)
            record(conn, "analyse", job_id=job_id, detail=result.verdict or "converted", at=at)

    def quarantine(self, job_id: int, reason: str, now: float | None = None) -> None:
        """The input itself is bad (unreadable, unsupported): never retried automatically."""
        self._end(job_id, "quarantined", reason, now)

    def failed(self, job_id: int, reason: str, max_attempts: int, now: float | None = None) -> str:
        """A crash or an environment problem: queued again until max_attempts, then failed."""
        row = self._conn.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
        state = "failed" if row is None or int(row[0]) >= max_attempts else "queued"
        self._end(job_id, state, reason, now)
        return state

    def release(self, job_id: int, now: float | None = None) -> None:
        """Back to the queue without counting the attempt (the daemon is stopping)."""
        at = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), "
                "updated_at = ? WHERE id = ? AND state = 'running'",
                (at, job_id),
            )

    def _end(self, job_id: int, state: str, reason: str, now: float | None) -> None:
        at = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET state = ?, error = ?, updated_at = ?, finished_at = ? "
                "WHERE id = ?",
                (state, reason, at, at if state != "queued" else None, job_id),
            )
            self._event(job_id, state, reason, at)
            if state in ("quarantined", "failed"):
                action = "quarantine" if state == "quarantined" else "fail"
                record(conn, action, outcome="failure", job_id=job_id, detail=reason, at=at)

    def retry(self, job_id: int, now: float | None = None, actor: str = SYSTEM) -> bool:
        """A person asks for a failed or quarantined job to run again."""
        at = time.time() if now is None else now
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, error = '', updated_at = ? "
                "WHERE id = ? AND state IN ('failed', 'quarantined')",
                (at, job_id),
            )
            if cursor.rowcount:
                self._event(job_id, "retry", "asked for", at)
                record(conn, "retry", actor=actor, job_id=job_id, at=at)
        return bool(cursor.rowcount)

    def recover(self, now: float | None = None) -> int:
        """After a crash: jobs left running go back to the queue (their attempt counted)."""
        at = time.time() if now is None else now
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET state = 'queued', updated_at = ? WHERE state = 'running'", (at,)
            )
        return int(cursor.rowcount)

    def audit(self, action: str, **fields: Any) -> None:
        """One audit record in its own transaction (edge.audit.trail.record's fields)."""
        with self._write() as conn:
            record(conn, action, **fields)

    def get(self, job_id: int) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _with_delivery(self._conn, [_row(row)])[0] if row is not None else None

    def list(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql = "SELECT * FROM jobs"
        args: tuple[Any, ...] = ()
        if state:
            sql += " WHERE state = ?"
            args = (state,)
        sql += " ORDER BY id DESC LIMIT ?"
        return _with_delivery(
            self._conn, [_row(r) for r in self._conn.execute(sql, (*args, limit))]
        )

    def retired(self, finished_before: float) -> Sequence[dict[str, Any]]:
        """Done jobs finished before the given time whose output folder still holds DICOM."""
        rows = [
            _row(r)
            for r in self._conn.execute(
                "SELECT * FROM jobs WHERE state = 'done' AND finished_at < ? AND output != ''",
                (finished_before,),
            )
        ]
        rows = [r for r in rows if any(Path(r["output"]).glob("*.dcm"))]
        return _with_delivery(self._conn, rows)

    def counts(self) -> dict[str, int]:
        return job_counts(self._conn)


def job_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Jobs per state (any connection, read-only ones too)."""
    found = dict.fromkeys(JOB_STATES, 0)
    for row in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
        found[row[0]] = int(row[1])
    return found


def _with_delivery(conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each job's deliveries, all destinations together: {"total", "delivered", "parked",
    "pending"}, and "delivered": True once every one of them is delivered."""
    for row in rows:
        counts = dict.fromkeys(("total", "delivered", "parked", "pending"), 0)
        for state, n in conn.execute(
            "SELECT d.state, COUNT(*) FROM deliveries d JOIN instances i ON i.id = d.instance_id "
            "WHERE i.slide_key = ? GROUP BY d.state",
            (f"job-{row['id']}",),
        ):
            counts["total"] += int(n)
            key = state if state in ("delivered", "parked") else "pending"
            counts[key] += int(n)
        row["deliveries"] = counts
        # A running job may have sent its pyramid while its QC objects are still to come.
        row["delivered"] = (
            row.get("state") == "done"
            and counts["total"] > 0
            and counts["delivered"] == counts["total"]
        )
    return rows


def _row(row: sqlite3.Row) -> dict[str, Any]:
    found = dict(row)
    found["reasons"] = json.loads(found["reasons"] or "[]")
    found["unmatched"] = bool(found["unmatched"])
    return found
