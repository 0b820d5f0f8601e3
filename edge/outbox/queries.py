"""Read-only queries over the outbox, shared by the writer and by reader connections.

A reader (the dashboard, the CLI) opens its own connection with `OutboxReader`; in WAL mode
it reads the last committed state while the writer holds a transaction.
"""

from __future__ import annotations

import builtins
import sqlite3
from pathlib import Path
from typing import Any

from edge.outbox.priority import BOOST_STEP, LABEL, OTHER, OVERVIEW, RESULT, THUMBNAIL, VOLUME
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

    def slide_progress(self, slide_key: str, destination: str) -> dict[str, Any]:
        return slide_progress(self._conn, slide_key, destination)

    def close(self) -> None:
        self._conn.close()


def _role(priority: int) -> str:
    """The send role of an instance from its stored priority (the boost is a whole number of
    BOOST_STEPs, so the rank is the remainder)."""
    rank = priority % BOOST_STEP
    if rank == RESULT:
        return "result"
    if rank in (THUMBNAIL, LABEL, OVERVIEW):
        return {THUMBNAIL: "thumbnail", LABEL: "label", OVERVIEW: "overview"}[rank]
    if VOLUME <= rank < OTHER:
        return "volume"
    return "other"


def _all_sent_at(rows: list[sqlite3.Row]) -> float | None:
    """When the last of these rows was delivered; None while any is not (or there are none)."""
    if not rows or any(row["state"] != "delivered" for row in rows):
        return None
    return max(float(row["delivered_at"]) for row in rows)


def slide_progress(conn: sqlite3.Connection, slide_key: str, destination: str) -> dict[str, Any]:
    """How far one slide is at one destination, for the dashboard and `edge queue progress`.

    results_sent_at / thumbnail_sent_at / overview_sent_at: when the last QC result (SR,
    SEG, ANN), the thumbnail, the overview reached the destination (None: not yet, or the
    slide has none); full_resolution: the fraction of level 0's bytes delivered (parts of a
    concatenation count one by one); state: unknown (nothing queued), queued, sending,
    preview (results and overview there, the pyramid still on its way), retrying (a send
    failed and waits for its next attempt), parked (a person must act) or complete."""
    rows = conn.execute(
        "SELECT d.state, d.delivered_at, i.size, i.priority, i.enqueued_at FROM deliveries d "
        "JOIN instances i ON i.id = d.instance_id WHERE i.slide_key = ? AND d.destination = ?",
        (slide_key, destination),
    ).fetchall()
    by_role: dict[str, list[sqlite3.Row]] = {}
    for row in rows:
        by_role.setdefault(_role(int(row["priority"])), []).append(row)
    volume = by_role.get("volume", [])
    top = max((int(r["priority"]) % BOOST_STEP for r in volume), default=None)
    level0 = [r for r in volume if int(r["priority"]) % BOOST_STEP == top]
    level0_bytes = sum(int(r["size"]) for r in level0)
    level0_sent = sum(int(r["size"]) for r in level0 if r["state"] == "delivered")
    states = {str(r["state"]) for r in rows}
    results_at = _all_sent_at(by_role.get("result", []))
    overview_at = _all_sent_at(by_role.get("overview", []))
    if not rows:
        state = "unknown"
    elif states == {"delivered"}:
        state = "complete"
    elif "parked" in states:
        state = "parked"
    elif "failed" in states:
        state = "retrying"
    elif overview_at is not None and (results_at is not None or "result" not in by_role):
        state = "preview"
    elif states & {"delivered", "sending"}:
        state = "sending"
    else:
        state = "queued"
    delivered = [r for r in rows if r["state"] == "delivered"]
    return {
        "slide_key": slide_key,
        "destination": destination,
        "state": state,
        "instances": len(rows),
        "instances_delivered": len(delivered),
        "bytes_total": sum(int(r["size"]) for r in rows),
        "bytes_delivered": sum(int(r["size"]) for r in delivered),
        "enqueued_at": min((float(r["enqueued_at"]) for r in rows), default=None),
        "results_sent_at": results_at,
        "thumbnail_sent_at": _all_sent_at(by_role.get("thumbnail", [])),
        "overview_sent_at": overview_at,
        "completed_at": _all_sent_at(rows),
        "full_resolution": round(level0_sent / level0_bytes, 4) if level0_bytes else 0.0,
    }


def slide_keys(
    conn: sqlite3.Connection, limit: int = 20, slide_key: str | None = None
) -> list[tuple[str, str]]:
    """(slide_key, destination) pairs, most recently queued first (one slide's, if given)."""
    where = "" if slide_key is None else "WHERE i.slide_key = ? "
    rows = conn.execute(
        "SELECT i.slide_key, d.destination, MAX(i.enqueued_at) AS at FROM deliveries d "
        f"JOIN instances i ON i.id = d.instance_id {where}GROUP BY i.slide_key, d.destination "
        "ORDER BY at DESC LIMIT ?",
        (limit,) if slide_key is None else (slide_key, limit),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]
