"""Audit records as DICOM audit messages (PS3.15 A.5) over syslog-TLS (RFC 5424 + 5425).

Each record becomes one RFC 5424 message (facility authpriv, severity notice, or warning for
failures; MSGID "DICOM+RFC3881") carrying the XML audit message, framed by octet counting on
a TLS connection (the collector's certificate verified; mutual TLS optional). The exporter
remembers per collector the last record it delivered, so an unreachable collector loses
nothing: it catches up when it is back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import socket
import sqlite3
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree import ElementTree as ET

from edge.audit.trail import Record, records
from edge.outbox.schema import write_transaction

LOGGER = logging.getLogger(__name__)

FACILITY_AUTHPRIV = 10
NOTICE, WARNING = 5, 4
MSGID = "DICOM+RFC3881"

# action -> (EventID code, meaning, EventActionCode, optional EventTypeCode)
_EVENTS: dict[str, tuple[str, str, str, tuple[str, str] | None]] = {
    "start": ("110100", "Application Activity", "E", ("110120", "Application Start")),
    "stop": ("110100", "Application Activity", "E", ("110121", "Application Stop")),
    "config-change": ("110113", "Security Alert", "E", ("110131", "Software Configuration")),
    "ingest": ("110107", "Import", "C", None),
    "analyse": ("110103", "DICOM Instances Accessed", "C", None),
    "quarantine": ("110103", "DICOM Instances Accessed", "R", None),
    "fail": ("110103", "DICOM Instances Accessed", "R", None),
    "send": ("110104", "DICOM Instances Transferred", "R", None),
    "park": ("110103", "DICOM Instances Accessed", "U", None),
    "retry": ("110103", "DICOM Instances Accessed", "U", None),
    "review": ("110103", "DICOM Instances Accessed", "U", None),
    "delete": ("110105", "DICOM Study Deleted", "D", None),
    "login": ("110114", "User Authentication", "E", ("110122", "Login")),
    "logout": ("110114", "User Authentication", "E", ("110123", "Logout")),
}


def _code(parent: ET.Element, tag: str, code: str, meaning: str) -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": "DCM", "originalText": meaning})


def _utc(at: float) -> str:
    stamp = dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def audit_message(record: Record, source_id: str) -> str:
    """The PS3.15 A.5 XML for one record."""
    code, meaning, action, type_code = _EVENTS[record.action]
    root = ET.Element("AuditMessage")
    event = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action,
            "EventDateTime": _utc(record.at),
            "EventOutcomeIndicator": "0" if record.outcome == "success" else "4",
        },
    )
    _code(event, "EventID", code, meaning)
    if type_code is not None:
        _code(event, "EventTypeCode", *type_code)
    ET.SubElement(root, "ActiveParticipant", {"UserID": record.actor, "UserIsRequestor": "true"})
    if record.destination:
        ET.SubElement(
            root,
            "ActiveParticipant",
            {"UserID": record.destination, "UserIsRequestor": "false"},
        )
    ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    if record.job_id is not None:
        # The slide by its job number: an audit collector is not a place for patient data.
        obj = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": f"job-{record.job_id}",
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        _code(obj, "ParticipantObjectIDTypeCode", "110180", "Study Instance UID")
        if record.detail:
            ET.SubElement(obj, "ParticipantObjectDetail", {"type": "edge", "value": record.detail})
    return ET.tostring(root, encoding="unicode")


def syslog_frame(record: Record, source_id: str, app: str = "edge") -> bytes:
    """One RFC 5424 message, RFC 5425 octet-counted."""
    severity = NOTICE if record.outcome == "success" else WARNING
    when = _utc(record.at)
    host = socket.gethostname()[:255] or "-"
    priority = FACILITY_AUTHPRIV * 8 + severity
    header = f"<{priority}>1 {when} {host} {app} - {MSGID} - "
    message = header.encode() + "\ufeff".encode() + audit_message(record, source_id).encode()
    return f"{len(message)} ".encode() + message


@dataclass(frozen=True)
class Collector:
    host: str
    port: int
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    timeout_s: float = 10.0

    @property
    def name(self) -> str:
        return f"syslog://{self.host}:{self.port}"

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file or None)
        return context


def send(collector: Collector, frames: Sequence[bytes]) -> None:
    """All frames over one TLS connection; raises OSError / ssl.SSLError on failure."""
    with (
        socket.create_connection((collector.host, collector.port), collector.timeout_s) as raw,
        collector.context().wrap_socket(raw, server_hostname=collector.host) as tls,
    ):
        for frame in frames:
            tls.sendall(frame)
        # Close with TLS close_notify and read what the server still sends (TLS 1.3 session
        # tickets): closing with unread data makes the kernel send a reset, and a collector
        # may then drop the last messages it had not read yet.
        with contextlib.suppress(ssl.SSLError, OSError):
            tls.unwrap()


def export(conn: sqlite3.Connection, collector: Collector, source_id: str, batch: int = 200) -> int:
    """Send the records the collector has not had yet; returns how many were sent."""
    row = conn.execute(
        "SELECT last_id FROM audit_export WHERE collector = ?", (collector.name,)
    ).fetchone()
    last = int(row[0]) if row else 0
    pending = records(conn, after_id=last, limit=batch)
    if not pending:
        return 0
    send(collector, [syslog_frame(r, source_id) for r in pending])
    with write_transaction(conn):
        conn.execute(
            "INSERT INTO audit_export (collector, last_id) VALUES (?, ?) "
            "ON CONFLICT (collector) DO UPDATE SET last_id = excluded.last_id",
            (collector.name, pending[-1].id),
        )
    return len(pending)
