"""Recording and reading the audit trail (table `audit` of the state database).

Append-only: the database refuses UPDATE and DELETE on it (triggers), so the application
cannot rewrite history. `detail` never holds patient data: slides are named by job id, and
reasons are the appliance's own words and numbers.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

ACTIONS = (
    "start",  # the appliance started (detail: version, configuration hash)
    "stop",
    "config-change",  # the configuration differs from the one of the last start
    "ingest",  # a slide was found and queued
    "analyse",  # converted and analysed: the verdict
    "quarantine",  # an unreadable slide
    "fail",  # a slide failed after its retries
    "send",  # instances delivered to a destination
    "park",  # deliveries set aside (by the appliance or a person)
    "retry",  # a person asked for a job or delivery again
    "review",  # a person marked a slide reviewed
    "delete",  # delivered files removed by retention
    "login",
    "logout",
)
SYSTEM = "edge"  # the actor for what the appliance does by itself


@dataclass(frozen=True)
class Record:
    id: int
    at: float
    actor: str
    action: str
    outcome: str
    job_id: int | None
    destination: str
    detail: str


def record(
    conn: sqlite3.Connection,
    action: str,
    *,
    actor: str = SYSTEM,
    outcome: str = "success",
    job_id: int | None = None,
    destination: str = "",
    detail: str = "",
    at: float | None = None,
) -> None:
    """Append one record (inside the caller's transaction when there is one)."""
    if action not in ACTIONS:
        raise ValueError(f"audit action {action!r}; expected one of {ACTIONS}")
    conn.execute(
        "INSERT INTO audit (at, actor, action, outcome, job_id, destination, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (time.time() if at is None else at, actor, action, outcome, job_id, destination, detail),
    )


def records(
    conn: sqlite3.Connection, after_id: int = 0, limit: int = 500, job_id: int | None = None
) -> list[Record]:
    sql = "SELECT * FROM audit WHERE id > ?"
    args: list[Any] = [after_id]
    if job_id is not None:
        sql += " AND job_id = ?"
        args.append(job_id)
    sql += " ORDER BY id LIMIT ?"
    return [
        Record(
            id=int(r["id"]),
            at=float(r["at"]),
            actor=r["actor"],
            action=r["action"],
            outcome=r["outcome"],
            job_id=r["job_id"],
            destination=r["destination"],
            detail=r["detail"],
        )
        for r in conn.execute(sql, (*args, limit))
    ]
