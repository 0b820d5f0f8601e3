"""What a person can do from the dashboard, each a short write transaction of its own.

Writes go through the daemon's own stores (JobStore.retry, Outbox.retry/park), opened per
request and closed at once, plus an audit event naming who asked ("web:<action>").
"""

from __future__ import annotations

import time
from pathlib import Path

from edge.jobs import JobStore
from edge.outbox.schema import open_database
from edge.outbox.store import Outbox


def _audit(database: Path, job_id: int, action: str, detail: str) -> None:
    record(database, action, f"job {job_id}: {detail}")


def record(database: Path, action: str, detail: str, destination: str = "") -> None:
    """An audit event `web:<action>` (the job's history finds it by "job N:" in detail).
    Nothing when the daemon has not made the database yet: the dashboard never creates it."""
    if not database.is_file():
        return
    conn = open_database(database)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO events (at, destination, instance_id, event, detail) "
            "VALUES (?, ?, NULL, ?, ?)",
            (time.time(), destination, f"web:{action}", detail),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def retry_job(database: Path, job_id: int, user: str) -> bool:
    """A failed or quarantined job back to the queue; False when it is in another state."""
    with JobStore(database) as jobs:
        done = jobs.retry(job_id)
    if done:
        _audit(database, job_id, "retry", f"slide retry by {user}")
    return done


def retry_deliveries(database: Path, job_id: int, ids: list[int], user: str) -> int:
    with Outbox(database) as outbox:
        changed = outbox.retry(ids)
    if changed:
        _audit(database, job_id, "resend", f"{changed} delivery(ies) retried by {user}")
    return changed


def park_deliveries(database: Path, job_id: int, ids: list[int], user: str) -> int:
    with Outbox(database) as outbox:
        changed = outbox.park(ids, f"parked on the dashboard by {user}")
    if changed:
        _audit(database, job_id, "park", f"{changed} delivery(ies) parked by {user}")
    return changed


def mark_reviewed(database: Path, job_id: int, user: str, note: str = "") -> None:
    conn = open_database(database)
    try:
        at = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO reviews (job_id, reviewed_by, reviewed_at, note) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET reviewed_by = excluded.reviewed_by, "
                "reviewed_at = excluded.reviewed_at, note = excluded.note",
                (job_id, user, at, note),
            )
            conn.execute(
                "INSERT INTO events (at, destination, instance_id, event, detail) "
                "VALUES (?, '', NULL, 'web:reviewed', ?)",
                (at, f"job {job_id}: QC reviewed by {user}" + (f" ({note})" if note else "")),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()
