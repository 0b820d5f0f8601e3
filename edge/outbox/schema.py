"""The outbox database: versioned migrations, and opening it safely.

Migrations are a list of SQL scripts; `PRAGMA user_version` records how many have run. A
database from a newer release (more versions than this code knows) is refused, and so is one
whose pages fail `PRAGMA quick_check`: sending from a damaged queue could send twice or lose
track of what was sent, so the daemon stops and a person restores or rebuilds it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge.errors import EdgeError

LOGGER = logging.getLogger(__name__)

DATABASE = "outbox.sqlite"  # the state database's file name under [storage] state_dir

STATES = ("queued", "sending", "delivered", "failed", "parked")

MIGRATIONS: tuple[str, ...] = (
    # 1: instances to send, one delivery row per (instance, destination), and an audit trail.
    """
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL UNIQUE,
        transfer_syntax_uid TEXT NOT NULL,
        size INTEGER NOT NULL,
        study_uid TEXT NOT NULL,
        series_uid TEXT NOT NULL,
        slide_key TEXT NOT NULL,
        priority INTEGER NOT NULL,
        enqueued_at REAL NOT NULL,
        purged_at REAL
    );
    CREATE INDEX instances_slide ON instances(slide_key);
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        instance_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
        destination TEXT NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('queued', 'sending', 'delivered', 'failed', 'parked')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        last_error TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        delivered_at REAL,
        UNIQUE (instance_id, destination)
    );
    CREATE INDEX deliveries_due ON deliveries(destination, state, next_attempt_at);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        destination TEXT NOT NULL DEFAULT '',
        instance_id INTEGER,
        event TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX events_instance ON events(instance_id);
    """,
    # 2: slides the daemon found (one row per version of a scanner file), through conversion.
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        fingerprint TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('queued', 'running', 'done', 'failed', 'quarantined')),
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        output TEXT NOT NULL DEFAULT '',
        study_uid TEXT NOT NULL DEFAULT '',
        series_uid TEXT NOT NULL DEFAULT '',
        verdict TEXT NOT NULL DEFAULT '',
        reasons TEXT NOT NULL DEFAULT '[]',
        stain TEXT NOT NULL DEFAULT '',
        priority INTEGER NOT NULL DEFAULT 0,
        unmatched INTEGER NOT NULL DEFAULT 0,
        instances INTEGER NOT NULL DEFAULT 0,
        bytes_in INTEGER NOT NULL DEFAULT 0,
        seconds REAL NOT NULL DEFAULT 0,
        report TEXT NOT NULL DEFAULT '',
        error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX jobs_state ON jobs(state, created_at);
    """,
    # 3: why a slide is unmatched (no worklist entry, several, worklist down), for the technician.
    """
    ALTER TABLE jobs ADD COLUMN note TEXT NOT NULL DEFAULT ''
    """,
    # 4: the audit trail (who did what, when, to which slide), append-only, and how far each
    # syslog collector has received it.
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('success', 'failure')),
        job_id INTEGER,
        destination TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_job ON audit(job_id);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
    CREATE TABLE audit_export (
        collector TEXT PRIMARY KEY,
        last_id INTEGER NOT NULL
    );
    """,
    # 5: a person marked a slide's QC result reviewed on the dashboard (latest mark per job).
    """
    CREATE TABLE reviews (
        job_id INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
        reviewed_by TEXT NOT NULL,
        reviewed_at REAL NOT NULL,
        note TEXT NOT NULL DEFAULT ''
    );
    """,
    # 6: destinations a person paused from the dashboard (absent: enabled); survives restarts.
    """
    CREATE TABLE destination_pauses (
        destination TEXT PRIMARY KEY,
        paused_by TEXT NOT NULL,
        paused_at REAL NOT NULL
    );
    """,
    # 7: the hub role (edge/hub): every instance a site sent, and each site's last contact.
    """
    CREATE TABLE hub_instances (
        id INTEGER PRIMARY KEY,
        site TEXT NOT NULL,
        study_uid TEXT NOT NULL,
        series_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        path TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        received_at REAL NOT NULL,
        UNIQUE (site, sop_instance_uid)
    );
    CREATE INDEX hub_instances_received ON hub_instances(site, received_at);
    CREATE INDEX hub_instances_series ON hub_instances(site, series_uid);
    CREATE TABLE hub_sites (
        site TEXT PRIMARY KEY,
        last_contact_at REAL NOT NULL,
        last_address TEXT NOT NULL DEFAULT '',
        last_status INTEGER NOT NULL DEFAULT 0,
        requests INTEGER NOT NULL DEFAULT 0
    );
    """,
)


class DatabaseCorrupt(EdgeError):
    """The outbox database failed its integrity check; the daemon must not run on it."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(
            f"{self.path}: outbox database is damaged ({problem}); refusing to run rather than "
            "send twice or lose track of sent data: restore it from a backup or move it aside"
        )


class SchemaTooNew(EdgeError):
    """The database was written by a newer release with migrations this code does not know."""


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, FULL sync."""
    if readonly:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    else:
        conn = sqlite3.connect(str(path), isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        _set_wal(conn)
    # FULL: a commit survives a power cut (WAL's NORMAL could lose the last transactions and
    # so re-send instances already acknowledged).
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def _set_wal(conn: sqlite3.Connection, patience_s: float = 10.0) -> None:
    """Switching a new database to WAL takes an exclusive lock that busy_timeout does not wait
    for; a second process opening it at that instant retries rather than failing."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """Raise DatabaseCorrupt when `PRAGMA quick_check` finds damage."""
    try:
        rows = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        raise DatabaseCorrupt(path, str(exc)) from exc
    if rows != ["ok"]:
        raise DatabaseCorrupt(path, "; ".join(rows[:5]))


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """Split a script into statements; a trigger's body keeps its inner semicolons."""
    found, buffer = [], ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \n;"):
                found.append(buffer.strip())
            buffer = ""
    return found


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Run the migrations not yet applied, each in its own transaction; return the version.

    The version is read inside each write transaction: two processes opening a new database
    at once (the daemon and `edge send`, say) must not both run the same migration."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise SchemaTooNew(
                    f"{path}: outbox schema version {version}, this release knows up to "
                    f"{len(MIGRATIONS)}; run the newer release or restore an older database"
                )
            if version == len(MIGRATIONS):
                conn.execute("COMMIT")
                return version
            for statement in _statements(MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        LOGGER.info("outbox schema migrated to version %d", version + 1)


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating and migrating when needed) the outbox database for writing.

    The returned connection belongs to the thread that opened it (sqlite3's
    check_same_thread): it is the single writer. Raises DatabaseCorrupt or SchemaTooNew.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = connect(path)
    except sqlite3.DatabaseError as exc:
        raise DatabaseCorrupt(path, str(exc)) from exc
    try:
        quick_check(conn, path)
        migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn
