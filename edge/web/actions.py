"""What a person can do from the dashboard, each a short write transaction of its own.

Writes go through the daemon's own stores (JobStore.retry, Outbox.retry/park), opened per
request and closed at once, plus an audit event naming who asked ("web:<action>").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edge.audit.trail import record as audit_record
from edge.jobs import JobStore
from edge.outbox.schema import open_database, write_transaction
from edge.outbox.store import Outbox


def _audit(database: Path, job_id: int, action: str, detail: str, user: str) -> None:
    record(database, action, f"job {job_id}: {detail}", actor=user, job_id=job_id)


# Dashboard actions -> the audit trail's actions (edge.audit.trail.ACTIONS); others stay events.
_AUDITED = {"retry": "retry", "resend": "retry", "park": "park", "reviewed": "review",
            "login": "login", "logout": "logout", "pause": "config-change",
            "resume": "config-change"}  # fmt: skip


def record(
    database: Path,
    action: str,
    detail: str,
    destination: str = "",
    *,
    actor: str = "",
    job_id: int | None = None,
    outcome: str = "success",
) -> None:
    """An event `web:<action>` (the job's history finds it by "job N:" in detail) and, for
    the actions the audit trail covers, an audit record naming who (`web:<user>`).
    Nothing when the daemon has not made the database yet: the dashboard never creates it."""
    if not database.is_file():
        return
    conn = open_database(database)
    try:
        at = time.time()
        with write_transaction(conn):
            conn.execute(
                "INSERT INTO events (at, destination, instance_id, event, detail) "
                "VALUES (?, ?, NULL, ?, ?)",
                (at, destination, f"web:{action}", detail),
            )
            if action in _AUDITED:
                audit_record(
                    conn,
                    _AUDITED[action],
                    actor=f"web:{actor}" if actor else "web",
                    outcome=outcome,
                    job_id=job_id,
                    destination=destination,
                    detail=detail,
                    at=at,
                )
    finally:
        conn.close()


def retry_job(database: Path, job_id: int, user: str) -> bool:
    """A failed or quarantined job back to the queue; False when it is in another state."""
    with JobStore(database) as jobs:
        done = jobs.retry(job_id)
    if done:
        _audit(database, job_id, "retry", f"slide retry by {user}", user)
    return done


def retry_deliveries(database: Path, job_id: int, ids: list[int], user: str) -> int:
    with Outbox(database) as outbox:
        changed = outbox.retry(ids)
    if changed:
        _audit(database, job_id, "resend", f"{changed} delivery(ies) retried by {user}", user)
    return changed


def park_deliveries(database: Path, job_id: int, ids: list[int], user: str) -> int:
    with Outbox(database) as outbox:
        changed = outbox.park(ids, f"parked on the dashboard by {user}")
    if changed:
        _audit(database, job_id, "park", f"{changed} delivery(ies) parked by {user}", user)
    return changed


def mark_reviewed(database: Path, job_id: int, user: str, note: str = "") -> None:
    conn = open_database(database)
    try:
        at = time.time()
        with write_transaction(conn):
            conn.execute(
                "INSERT INTO reviews (job_id, reviewed_by, reviewed_at, note) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET reviewed_by = excluded.reviewed_by, "
                "reviewed_at = excluded.reviewed_at, note = excluded.note",
                (job_id, user, at, note),
            )
            detail = f"job {job_id}: QC reviewed by {user}" + (f" ({note})" if note else "")
            conn.execute(
                "INSERT INTO events (at, destination, instance_id, event, detail) "
                "VALUES (?, '', NULL, 'web:reviewed', ?)",
                (at, detail),
            )
            audit_record(conn, "review", actor=f"web:{user}", job_id=job_id, detail=detail, at=at)
    finally:
        conn.close()


def pause_destination(database: Path, name: str, paused: bool, user: str) -> bool:
    """Stop or restart sending to a destination; queued data stays queued. Audited."""
    with Outbox(database) as outbox:
        changed = outbox.set_paused(name, paused, user)
    if changed:
        verb = "paused" if paused else "resumed"
        record(
            database,
            "pause" if paused else "resume",
            f"sending to {name} {verb} by {user}",
            destination=name,
            actor=user,
        )
    return changed


# What a person may do to a slide's sends, and which delivery states each act applies to.
SEND_ACTS = {"resend": ("failed", "parked"), "park": ("queued", "failed")}


def act_on_sends(
    config: Any, database: Path, job_id: int, destination: str, act: str, user: str
) -> int:
    """Resend (failed/parked) or park (queued/failed) a slide's deliveries, to one destination
    or all; returns how many changed (0: nothing in those states)."""
    from edge.web import data

    with data.reader(config) as conn:
        ids = data.delivery_ids(conn, job_id, destination or None, SEND_ACTS[act])
    if not ids:
        return 0
    if act == "resend":
        return retry_deliveries(database, job_id, ids, user)
    return park_deliveries(database, job_id, ids, user)
