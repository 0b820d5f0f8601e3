"""The outbox store: every instance to send, per destination, durable in SQLite.

Threading: an `Outbox` owns the single write connection and must be used from the thread
that created it (sqlite3 enforces this); the daemon wraps it in its writer thread. Every
write is one `BEGIN IMMEDIATE` transaction. Other threads read through `OutboxReader`.

Delivery is at-least-once: a row is `sending` while a destination has it; after a crash,
`recover()` puts those rows back to `queued` and they are sent again. Destinations make that
idempotent (a peer that already has the SOP Instance UID answers success), and enqueuing
the same SOP Instance UID again is a no-op here.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from edge.forward.protocol import Item, Outcome, Verdict
from edge.outbox import queries
from edge.outbox.header import read_header
from edge.outbox.priority import instance_priority
from edge.outbox.retry import RetryPolicy
from edge.outbox.schema import open_database, write_transaction

LOGGER = logging.getLogger(__name__)

_ITEM_COLUMNS = "d.id, i.path, i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid, i.size"


def _item(row: sqlite3.Row) -> Item:
    return Item(
        id=int(row["id"]),
        path=Path(row["path"]),
        sop_class_uid=row["sop_class_uid"],
        sop_instance_uid=row["sop_instance_uid"],
        transfer_syntax_uid=row["transfer_syntax_uid"],
        size=int(row["size"]),
    )


def _marks(ids: Sequence[int]) -> str:
    return ",".join("?" * len(ids))


class Outbox:
    """The writer side of the outbox. Times (`now`) are Unix seconds; omitted = the clock."""

    def __init__(
        self,
        path: Path,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.path = Path(path)
        self.policy = policy or RetryPolicy()
        self.rng = rng or random.Random()
        self._conn = open_database(self.path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        return write_transaction(self._conn)

    def _event(
        self, at: float, destination: str, instance_id: int | None, event: str, detail: str = ""
    ) -> None:
        self._conn.execute(
            "INSERT INTO events (at, destination, instance_id, event, detail) "
            "VALUES (?, ?, ?, ?, ?)",
            (at, destination, instance_id, event, detail),
        )

    def _delivery_events(self, ids: Sequence[int], at: float, event: str, detail: str) -> None:
        for row in self._conn.execute(
            f"SELECT destination, instance_id FROM deliveries WHERE id IN ({_marks(ids)})", ids
        ).fetchall():
            self._event(at, row[0], row[1], event, detail)

    def enqueue(
        self,
        paths: Iterable[Path],
        destinations: Sequence[str],
        slide_key: str,
        boost: int = 0,
        now: float | None = None,
    ) -> list[int]:
        """Queue each DICOM file for each destination; return the delivery ids (path-major).

        Idempotent by (SOP Instance UID, destination): an instance already queued keeps its
        row, state, path and priority, and its existing id is returned. Headers are read
        before the transaction, so a bad file raises InputError and queues nothing."""
        if not destinations:
            raise ValueError("enqueue: need at least one destination")
        at = time.time() if now is None else now
        headers = [read_header(Path(p)) for p in paths]
        ids: list[int] = []
        with self.transaction() as conn:
            for h in headers:
                priority = instance_priority(h.sop_class_uid, h.image_type, h.pixels, boost)
                conn.execute(
                    "INSERT OR IGNORE INTO instances (path, sop_class_uid, sop_instance_uid, "
                    "transfer_syntax_uid, size, study_uid, series_uid, slide_key, priority, "
                    "enqueued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        str(h.path),
                        h.sop_class_uid,
                        h.sop_instance_uid,
                        h.transfer_syntax_uid,
                        h.size,
                        h.study_uid,
                        h.series_uid,
                        slide_key,
                        priority,
                        at,
                    ),
                )
                instance_id = int(
                    conn.execute(
                        "SELECT id FROM instances WHERE sop_instance_uid = ?",
                        (h.sop_instance_uid,),
                    ).fetchone()[0]
                )
                for destination in destinations:
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO deliveries (instance_id, destination, state, "
                        "updated_at) VALUES (?, ?, 'queued', ?)",
                        (instance_id, destination, at),
                    )
                    if cursor.rowcount:
                        self._event(at, destination, instance_id, "queued", str(h.path))
                    ids.append(
                        int(
                            conn.execute(
                                "SELECT id FROM deliveries WHERE instance_id = ? "
                                "AND destination = ?",
                                (instance_id, destination),
                            ).fetchone()[0]
                        )
                    )
        return ids

    def claim(self, destination: str, limit: int, now: float | None = None) -> list[Item]:
        """Atomically move up to `limit` due rows to `sending`, in send order, and return them.

        Due: queued, or failed whose next attempt time has come."""
        at = time.time() if now is None else now
        with self.transaction() as conn:
            rows = conn.execute(
                f"SELECT {_ITEM_COLUMNS} FROM deliveries d JOIN instances i "
                "ON i.id = d.instance_id WHERE d.destination = ? AND (d.state = 'queued' OR "
                "(d.state = 'failed' AND d.next_attempt_at <= ?)) "
                "ORDER BY i.priority, i.enqueued_at, d.id LIMIT ?",
                (destination, at, max(0, limit)),
            ).fetchall()
            items = [_item(row) for row in rows]
            ids = [item.id for item in items]
            if ids:
                conn.execute(
                    f"UPDATE deliveries SET state = 'sending', updated_at = ? "
                    f"WHERE id IN ({_marks(ids)})",
                    (at, *ids),
                )
                self._delivery_events(ids, at, "sending", "")
        return items

    def record(
        self, destination: str, outcomes: Iterable[Outcome], now: float | None = None
    ) -> dict[Verdict, int]:
        """Apply a destination's outcomes; return how many rows each verdict changed.

        Only rows of this destination that are `sending` change (DELIVERED also from any
        other not-yet-delivered state: the peer has it). Outcomes for other rows (a late
        answer after recover(), a wrong id) are logged and ignored."""
        at = time.time() if now is None else now
        counts = dict.fromkeys(Verdict, 0)
        with self.transaction() as conn:
            for outcome in outcomes:
                row = conn.execute(
                    "SELECT instance_id, state, attempts FROM deliveries "
                    "WHERE id = ? AND destination = ?",
                    (outcome.item_id, destination),
                ).fetchone()
                if row is None:
                    LOGGER.warning(
                        "outcome for unknown item %d at %s", outcome.item_id, destination
                    )
                    continue
                instance_id, state, attempts = int(row[0]), str(row[1]), int(row[2])
                if outcome.verdict is Verdict.DELIVERED and state != "delivered":
                    conn.execute(
                        "UPDATE deliveries SET state = 'delivered', delivered_at = ?, "
                        "updated_at = ?, next_attempt_at = NULL, last_error = '' WHERE id = ?",
                        (at, at, outcome.item_id),
                    )
                elif outcome.verdict is Verdict.RETRY and state == "sending":
                    delay = self.policy.next_delay(attempts + 1, self.rng)
                    conn.execute(
                        "UPDATE deliveries SET state = 'failed', attempts = ?, "
                        "next_attempt_at = ?, last_error = ?, updated_at = ? WHERE id = ?",
                        (attempts + 1, at + delay, outcome.reason, at, outcome.item_id),
                    )
                elif outcome.verdict is Verdict.PARK and state == "sending":
                    conn.execute(
                        "UPDATE deliveries SET state = 'parked', attempts = ?, "
                        "next_attempt_at = NULL, last_error = ?, updated_at = ? WHERE id = ?",
                        (attempts + 1, outcome.reason, at, outcome.item_id),
                    )
                else:
                    LOGGER.info(
                        "ignored %s for item %d in state %s",
                        outcome.verdict.value,
                        outcome.item_id,
                        state,
                    )
                    continue
                counts[outcome.verdict] += 1
                self._event(at, destination, instance_id, outcome.verdict.value, outcome.reason)
        return counts

    def recover(self, now: float | None = None) -> int:
        """At start-up: rows left `sending` by a crash go back to `queued` (sent again)."""
        at = time.time() if now is None else now
        with self.transaction() as conn:
            ids = [
                int(r[0]) for r in conn.execute("SELECT id FROM deliveries WHERE state = 'sending'")
            ]
            if ids:
                self._delivery_events(ids, at, "recovered", "was sending at shutdown or crash")
                conn.execute(
                    "UPDATE deliveries SET state = 'queued', updated_at = ? "
                    "WHERE state = 'sending'",
                    (at,),
                )
        if ids:
            LOGGER.warning("outbox: %d deliveries were in flight at shutdown; re-queued", len(ids))
        return len(ids)

    def check_files(self, items: Sequence[Item], now: float | None = None) -> list[Item]:
        """Park items whose file is gone or changed size; return the items still sendable."""
        good: list[Item] = []
        for item in items:
            try:
                size = item.path.stat().st_size
            except FileNotFoundError:
                self.park([item.id], f"queued file deleted: {item.path}", now)
                continue
            if size < item.size:
                self.park([item.id], f"truncated: {size} bytes, expected {item.size}", now)
            elif size != item.size:
                self.park([item.id], f"file changed: {size} bytes, expected {item.size}", now)
            else:
                good.append(item)
        return good

    def retry(self, ids: Sequence[int], now: float | None = None) -> int:
        """A person's retry: failed or parked rows go back to queued (attempts reset)."""
        at = time.time() if now is None else now
        if not ids:
            return 0
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE deliveries SET state = 'queued', attempts = 0, next_attempt_at = NULL, "
                f"updated_at = ? WHERE state IN ('failed', 'parked') AND id IN ({_marks(ids)}) "
                "RETURNING id",
                (at, *ids),
            )
            changed = [int(r[0]) for r in cursor.fetchall()]
            if changed:
                self._delivery_events(changed, at, "retry", "requested")
        return len(changed)

    def park(self, ids: Sequence[int], reason: str, now: float | None = None) -> int:
        """Park rows that are not delivered, with the reason a person will read."""
        at = time.time() if now is None else now
        if not ids:
            return 0
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE deliveries SET state = 'parked', next_attempt_at = NULL, last_error = ?, "
                f"updated_at = ? WHERE state != 'delivered' AND id IN ({_marks(ids)}) RETURNING id",
                (reason, at, *ids),
            )
            changed = [int(r[0]) for r in cursor.fetchall()]
            if changed:
                self._delivery_events(changed, at, "parked", reason)
        return len(changed)

    def purge_delivered(self, older_than_s: float, now: float | None = None) -> list[Path]:
        """Delete files delivered to every destination they were queued for, the last of them
        at least `older_than_s` ago. Rows stay (marked purged) so a re-enqueue stays a no-op.
        Unsent data is never deleted. Returns the paths removed."""
        at = time.time() if now is None else now
        with self.transaction() as conn:
            rows = conn.execute(
                "SELECT i.id, i.path FROM instances i JOIN deliveries d ON d.instance_id = i.id "
                "WHERE i.purged_at IS NULL GROUP BY i.id "
                "HAVING SUM(d.state != 'delivered') = 0 AND MAX(d.delivered_at) <= ?",
                (at - older_than_s,),
            ).fetchall()
            removed: list[Path] = []
            for row in rows:
                path = Path(row[1])
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    LOGGER.warning("purge: cannot remove %s: %s", path, exc)
                    continue
                removed.append(path)
                conn.execute("UPDATE instances SET purged_at = ? WHERE id = ?", (at, row[0]))
                self._event(at, "", int(row[0]), "purged", str(path))
        return removed

    def is_paused(self, destination: str) -> bool:
        return bool(
            self._conn.execute(
                "SELECT 1 FROM destination_pauses WHERE destination = ?", (destination,)
            ).fetchone()
        )

    def set_paused(self, destination: str, paused: bool, by: str) -> bool:
        """Pause or resume sending to a destination (queued data stays queued); returns
        whether anything changed."""
        with self.transaction() as conn:
            if paused:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO destination_pauses (destination, paused_by, paused_at) "
                    "VALUES (?, ?, ?)",
                    (destination, by, time.time()),
                )
            else:
                cursor = conn.execute(
                    "DELETE FROM destination_pauses WHERE destination = ?", (destination,)
                )
        return bool(cursor.rowcount)

    def stats(self) -> dict[str, Any]:
        return queries.stats(self._conn)

    def pending(self, destination: str) -> tuple[int, float | None]:
        """(rows still to send, earliest retry time among failed rows) for a destination."""
        return queries.pending(self._conn, destination)

    def events(self, instance_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return queries.events(self._conn, instance_id, limit)

    def slide_progress(self, slide_key: str, destination: str) -> dict[str, Any]:
        return queries.slide_progress(self._conn, slide_key, destination)

    def slide_keys(self, limit: int = 20, slide_key: str | None = None) -> list[tuple[str, str]]:
        return queries.slide_keys(self._conn, limit, slide_key)

    def list(self, **filters: Any) -> list[dict[str, Any]]:
        """Rows for the CLI: destination, state, slide_key, limit, offset filters."""
        return queries.list_deliveries(self._conn, **filters)
