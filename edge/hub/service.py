"""The hub's work behind the HTTP layer: which site, where parts go, records, forwarding.

Database work (the per-site records and the outbox) runs on one thread of its own: sqlite3
connections belong to the thread that opened them, and the state database has a single
writer per connection anyway. Placing a part (header check, link, directory fsync) runs
there too, so two requests carrying the same instance are decided one after the other.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edge import config as cfg
from edge.hub import records
from edge.hub.store import (
    CANNOT_UNDERSTAND,
    INCOMING,
    INVALID_INSTANCE,
    Checked,
    PartProblem,
    check,
    final_path,
    place,
)
from edge.hub.tokens import TokenFiles
from edge.outbox.schema import DATABASE, open_database, write_transaction
from edge.outbox.store import Outbox

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Received:
    """One part of a request, written to a temp file and fsynced."""

    temp: Path
    size: int
    sha256: str
    content_type: str = ""


@dataclass(frozen=True)
class Result:
    """What became of one part: stored (failure None) or not, and why."""

    sop_class_uid: str
    sop_instance_uid: str
    failure: int | None = None
    reason: str = ""
    new: bool = False  # stored by this request (not a repeat of identical bytes)


class HubService:
    def __init__(self, config: cfg.Config) -> None:
        self.config = config
        self.store_dir = config.hub_store_dir
        self.incoming = self.store_dir / INCOMING
        self.sites = [s.name for s in config.hub.site]
        self.tokens = TokenFiles({s.name: Path(s.token_file) for s in config.hub.site})
        status_file = config.hub.status_token_file
        self.status_tokens = TokenFiles({"status": Path(status_file)}) if status_file else None
        self.destinations = [d.name for d in config.destinations] if config.hub.forward else []
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-db")
        self._local = threading.local()
        self._opened: list[Outbox | sqlite3.Connection] = []
        self._closed = False

    # ---- life cycle ----

    def prepare(self) -> None:
        """Create the folders; remove temp files a crash left (their requests got no answer,
        so their senders will send them again)."""
        self.incoming.mkdir(parents=True, exist_ok=True, mode=0o700)
        stale = list(self.incoming.glob("*.part"))
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            LOGGER.info("hub: removed %d unfinished upload(s) left by a stop", len(stale))
        self.call(self._conn)  # opens (and migrates) the database now

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def close_all() -> None:
            for opened in self._opened:
                opened.close()
            self._opened.clear()

        self._db.submit(close_all).result()
        self._db.shutdown(wait=True)

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn on the database thread and wait for it (from any thread)."""
        return self._db.submit(fn).result()

    def submit(self, fn: Callable[[], T]) -> Any:
        """fn on the database thread; a concurrent Future (wrap with asyncio.wrap_future)."""
        return self._db.submit(fn)

    def _conn(self) -> sqlite3.Connection:
        """The database thread's own connection (the hub's records)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = open_database(self.config.state_dir / DATABASE)
            self._local.conn = conn
            self._opened.append(conn)
        return conn

    def _outbox(self) -> Outbox:
        """The database thread's outbox (queueing for the destinations)."""
        outbox: Outbox | None = getattr(self._local, "outbox", None)
        if outbox is None:
            outbox = Outbox(self.config.state_dir / DATABASE)
            self._local.outbox = outbox
            self._opened.append(outbox)
        return outbox

    # ---- on the database thread ----

    def accept(self, site: str, parts: list[Received], study: str | None) -> list[Result]:
        """Check, place, forward and record each part; never raises for a bad part."""
        conn = self._conn()
        results: list[Result] = []
        fresh: list[tuple[Checked, Received, Path]] = []
        for part in parts:
            try:
                results.append(self._one(conn, site, part, study, fresh))
            except PartProblem as exc:
                results.append(Result("", "", exc.code, exc.reason))
            finally:
                part.temp.unlink(missing_ok=True)
        if fresh and self.destinations:
            by_series: dict[str, list[Path]] = {}
            for checked, _, path in fresh:
                by_series.setdefault(checked.series_uid, []).append(path)
            # Queued before the records are written: a crash in between leaves an instance
            # without a record, which the site's re-send completes (queueing is idempotent).
            for series, paths in by_series.items():
                self._outbox().enqueue(paths, self.destinations, f"{site}/{series}")
        now = time.time()
        with write_transaction(conn):
            for checked, part, path in fresh:
                records.record_instance(conn, site, checked, str(path), part.size, part.sha256, now)
        return results

    def _one(
        self,
        conn: sqlite3.Connection,
        site: str,
        part: Received,
        study: str | None,
        fresh: list[tuple[Checked, Received, Path]],
    ) -> Result:
        media = part.content_type.split(";")[0].strip().lower()
        if media and media != "application/dicom":
            raise PartProblem(CANNOT_UNDERSTAND, f"a part of type {media}, not application/dicom")
        checked = check(part.temp, study)
        try:
            known = records.known_sha256(conn, site, checked.sop_instance_uid)
            if known is not None:
                if known != part.sha256:
                    raise PartProblem(
                        INVALID_INSTANCE,
                        "this hub holds different bytes under the same SOP Instance UID",
                    )
                return Result(checked.sop_class_uid, checked.sop_instance_uid)
            new = place(part.temp, part.sha256, self.store_dir, site, checked)
        except PartProblem as exc:
            return Result(checked.sop_class_uid, checked.sop_instance_uid, exc.code, exc.reason)
        fresh.append((checked, part, final_path(self.store_dir, site, checked)))
        return Result(checked.sop_class_uid, checked.sop_instance_uid, new=new)

    def contact(self, site: str, address: str, status: int) -> None:
        with write_transaction(self._conn()) as conn:
            records.record_contact(conn, site, address, status, time.time())

    def status(self) -> list[records.SiteStatus]:
        return records.status(self._conn(), self.sites, time.time())
