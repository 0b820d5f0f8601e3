"""Read-only queries over the outbox, shared by the writer and by reader connections.

A reader (the dashboard, the CLI) opens its own connection with `OutboxReader`; in WAL mode
it reads the last committed state while the writer holds a transaction.
"""

from __future__ import annotations

import builtins
import sqlite3
from pathlib import Path
from typing import Any

from edge.outbox.schema import STATES, connect

_LIST_COLUMNS = (
    "d.id, d.destination, d.state, d.attempts, d.next_attempt_at, d.last_error, d.updated_at, "
    "d.delivered_at, i.id AS instance_id, i.path, i.sop_class_uid, i.sop_instance_uid, "
    "i.size, i.study_uid, i.series_uid, i.slide_key, i.priority, i.enqueued_at, i.purged_at"
)


def stats(conn: sqlite3.Connection) -> dict[str, Any]:
    """Counts per destination and state, unsent bytes, instance totals."""
    per: dict[str, dict[str, int]] = {}
    for row in conn.execute(
        "SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state"
    ):
        counts = per.setdefault(row[0], dict.fromkeys(STATES, 0))
        counts[row[1]] = int(row[2])
    unsent = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM instances WHERE id IN "
        "(SELECT instance_id FROM deliveries WHERE state != 'delivered')"
    ).fetchone()
    total = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(size), 0), COUNT(purged_at) FROM instances"
    ).fetchone()
    return {
        "destinations": per,
        "instances": int(total[0]),
        "bytes": int(total[1]),
        "purged": int(total[2]),
        "unsent_instances": int(unsent[0]),
        "unsent_bytes": int(unsent[1]),
    }


def pending(conn: sqlite3.Connection, destination: str) -> tuple[int, float | None]:
    """(deliveries not yet delivered or parked, earliest retry time among failed ones)."""
    row = conn.execute(
        "SELECT COUNT(*), MIN(CASE WHEN state = 'failed' THEN next_attempt_at END) "
        "FROM deliveries WHERE destination = ? AND state IN ('queued', 'sending', 'failed')",
        (destination,),
    ).fetchone()
    return int(row[0]), (None if row[1] is None else float(row[1]))


def list_deliveries(
    conn: sqlite3.Connection,
    destination: str | None = None,
    state: str | None = None,
    slide_key: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Delivery rows joined with their instance, in send order."""
    if state is not None and state not in STATES:
        raise ValueError(f"state {state!r}: choose one of {', '.join(STATES)}")
    where, args = [], []
    for column, value in (("d.destination", destination), ("d.state", state)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if slide_key is not None:
        where.append("i.slide_key = ?")
        args.append(slide_key)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"SELECT {_LIST_COLUMNS} FROM deliveries d JOIN instances i ON i.id = d.instance_id "
        f"{clause} ORDER BY i.priority, i.enqueued_at, d.id LIMIT ? OFFSET ?",
        (*args, limit, offset),
    )
    return [dict(row) for row in rows]


def events(
    conn: sqlite3.Connection, instance_id: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The audit trail, newest first."""
    if instance_id is None:
        rows = conn.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
    else:
        rows = conn.execute(
            "SELECT * FROM events WHERE instance_id = ? ORDER BY id DESC LIMIT ?",
            (instance_id, limit),
        )
    return [dict(row) for row in rows]


def paused(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Destinations paused from the dashboard: name -> {"by", "at"}."""
    return {
        str(r[0]): {"by": str(r[1]), "at": float(r[2])}
        for r in conn.execute("SELECT destination, paused_by, paused_at FROM destination_pauses")
    }


class OutboxReader:
    """A read-only connection of its own, for any thread that is not the writer."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn = connect(self.path, readonly=True)

    def stats(self) -> dict[str, Any]:
        return stats(self._conn)

    def list(self, **filters: Any) -> list[dict[str, Any]]:
        return list_deliveries(self._conn, **filters)

    def events(
        self, instance_id: int | None = None, limit: int = 100
    ) -> builtins.list[dict[str, Any]]:
        return events(self._conn, instance_id, limit)

    def close(self) -> None:
        self._conn.close()
