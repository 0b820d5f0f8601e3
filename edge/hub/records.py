"""The hub's records in the state database (schema version 7): instances per site, and each
site's last contact. Functions over a connection; writes run inside the caller's
write_transaction. `status` is what `GET /hub/status` and `edge hub status` show."""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

from edge.hub.store import Checked

SERIES_SHOWN = 50  # per site, the series with the latest instances
HUB_SCHEMA = 7  # the state database's migration that made the hub's tables


def known_sha256(conn: sqlite3.Connection, site: str, sop_instance_uid: str) -> str | None:
    row = conn.execute(
        "SELECT sha256 FROM hub_instances WHERE site = ? AND sop_instance_uid = ?",
        (site, sop_instance_uid),
    ).fetchone()
    return None if row is None else str(row[0])


def record_instance(
    conn: sqlite3.Connection,
    site: str,
    checked: Checked,
    path: str,
    size: int,
    sha256: str,
    at: float,
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO hub_instances (site, study_uid, series_uid, sop_instance_uid, "
        "sop_class_uid, path, bytes, sha256, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            site,
            checked.study_uid,
            checked.series_uid,
            checked.sop_instance_uid,
            checked.sop_class_uid,
            path,
            size,
            sha256,
            at,
        ),
    )


def record_contact(
    conn: sqlite3.Connection, site: str, address: str, status: int, at: float
) -> None:
    conn.execute(
        "INSERT INTO hub_sites (site, last_contact_at, last_address, last_status, requests) "
        "VALUES (?, ?, ?, ?, 1) ON CONFLICT (site) DO UPDATE SET "
        "last_contact_at = excluded.last_contact_at, last_address = excluded.last_address, "
        "last_status = excluded.last_status, requests = requests + 1",
        (site, at, address, status),
    )


@dataclass(frozen=True)
class SeriesStatus:
    study_uid: str
    series_uid: str
    instances: int
    bytes: int
    last_at: float


@dataclass(frozen=True)
class SiteStatus:
    site: str
    last_contact_at: float | None
    last_address: str
    last_status: int
    requests: int
    instances_today: int
    bytes_today: int
    instances_total: int
    bytes_total: int
    series: list[SeriesStatus] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def start_of_day(now: float) -> float:
    """Local midnight before `now` (the hub's clock and time zone: "today" for its staff)."""
    local = dt.datetime.fromtimestamp(now).astimezone()
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def status(conn: sqlite3.Connection, sites: list[str], now: float) -> list[SiteStatus]:
    """Every configured site (and any other that has records), configured ones first."""
    midnight = start_of_day(now)
    contacts = {
        str(r["site"]): r
        for r in conn.execute(
            "SELECT site, last_contact_at, last_address, last_status, requests FROM hub_sites"
        )
    }
    totals = {
        str(r["site"]): r
        for r in conn.execute(
            "SELECT site, COUNT(*) AS n, COALESCE(SUM(bytes), 0) AS b, "
            "COALESCE(SUM(received_at >= ?), 0) AS n_today, "
            "COALESCE(SUM(CASE WHEN received_at >= ? THEN bytes ELSE 0 END), 0) AS b_today "
            "FROM hub_instances GROUP BY site",
            (midnight, midnight),
        )
    }
    names = list(sites) + sorted((set(contacts) | set(totals)) - set(sites))
    out = []
    for name in names:
        contact, total = contacts.get(name), totals.get(name)
        series = _latest_series(conn, name)
        out.append(
            SiteStatus(
                site=name,
                last_contact_at=None if contact is None else float(contact["last_contact_at"]),
                last_address="" if contact is None else str(contact["last_address"]),
                last_status=0 if contact is None else int(contact["last_status"]),
                requests=0 if contact is None else int(contact["requests"]),
                instances_today=0 if total is None else int(total["n_today"]),
                bytes_today=0 if total is None else int(total["b_today"]),
                instances_total=0 if total is None else int(total["n"]),
                bytes_total=0 if total is None else int(total["b"]),
                series=series,
            )
        )
    return out


def status_of_configured(
    conn: sqlite3.Connection, sites: list[str], now: float
) -> list[SiteStatus]:
    """`status`, or every site as never contacted when the database predates the hub."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version < HUB_SCHEMA:
        return [never(name) for name in sites]
    return status(conn, sites, now)


def never(name: str) -> SiteStatus:
    return SiteStatus(name, None, "", 0, 0, 0, 0, 0, 0, [])


def _latest_series(conn: sqlite3.Connection, site: str) -> list[SeriesStatus]:
    """The SERIES_SHOWN series with the latest instances: found by walking the site's
    instances newest first (index on site, received_at) until enough distinct series are
    seen, then counted by the (site, series_uid) index, so the cost follows the series shown
    rather than all that the site ever sent."""
    wanted: list[str] = []
    for row in conn.execute(
        "SELECT series_uid FROM hub_instances WHERE site = ? ORDER BY received_at DESC",
        (site,),
    ):
        if row[0] not in wanted:
            wanted.append(str(row[0]))
            if len(wanted) == SERIES_SHOWN:
                break
    if not wanted:
        return []
    marks = ",".join("?" * len(wanted))
    found = [
        SeriesStatus(
            str(r["study_uid"]), str(r["series_uid"]), int(r["n"]), int(r["b"]), float(r["last_at"])
        )
        for r in conn.execute(
            "SELECT study_uid, series_uid, COUNT(*) AS n, SUM(bytes) AS b, "
            "MAX(received_at) AS last_at FROM hub_instances "
            f"WHERE site = ? AND series_uid IN ({marks}) GROUP BY study_uid, series_uid",
            (site, *wanted),
        )
    ]
    return sorted(found, key=lambda x: -x.last_at)


def _when(at: float | None) -> str:
    if at is None:
        return "never"
    return dt.datetime.fromtimestamp(at).astimezone().strftime("%Y-%m-%d %H:%M")


def _size(n: int) -> str:
    number = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if number < 1000:
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1000
    return f"{number:.1f} TB"


def render(statuses: list[SiteStatus]) -> str:
    """Plain text for `edge hub status`."""
    lines = []
    for s in statuses:
        contact = _when(s.last_contact_at)
        if s.last_contact_at is not None:
            contact += f" from {s.last_address} (HTTP {s.last_status})"
        lines.append(
            f"{s.site}: last contact {contact}, {s.instances_today:,} instance(s) today "
            f"({_size(s.bytes_today)}), {s.instances_total:,} in total ({_size(s.bytes_total)})"
        )
        for series in s.series:
            lines.append(
                f"  series {series.series_uid}: {series.instances} instance(s), "
                f"{_size(series.bytes)}, last {_when(series.last_at)}"
            )
    return "\n".join(lines) if lines else "no sites configured and nothing received"
