"""The audit trail: append-only in the database, exported as DICOM audit messages over
syslog-TLS to a real TLS listener (trustme certificates), and free of patient data."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import socket
import sqlite3
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from edge import config as cfg
from edge.audit.syslog import Collector, export
from edge.audit.trail import record
from edge.daemon import Daemon, embedded_defaults
from edge.outbox.schema import DATABASE, open_database
from edge.slide.synthetic import write_slide
from tests.helpers import run_edge

trustme = pytest.importorskip("trustme", reason="trustme not installed (pip install trustme)")

FRAME = re.compile(rb"^<(\d+)>1 (\S+) (\S+) (\S+) - (\S+) - \xef\xbb\xbf(.*)$", re.S)


@dataclasses.dataclass
class Listener:
    port: int
    ca_file: Path
    frames: list[bytes] = dataclasses.field(default_factory=list)


def _read_frames(conn: ssl.SSLSocket, into: list[bytes]) -> None:
    """RFC 5425 octet counting: 'LEN SP MSG', repeated."""
    buffer = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return
        buffer += chunk
        while b" " in buffer:
            length, _, rest = buffer.partition(b" ")
            if len(rest) < int(length):
                break
            into.append(rest[: int(length)])
            buffer = rest[int(length) :]


@contextmanager
def collector(tmp_path: Path) -> Iterator[Listener]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    listener = Listener(server.getsockname()[1], ca_file)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = server.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    _read_frames(tls, listener.frames)
            except (ssl.SSLError, OSError):
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_the_trail_is_append_only(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "state.sqlite")
    record(conn, "login", actor="alice")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit SET actor = 'mallory'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit")
    with pytest.raises(ValueError, match="audit action 'erase'"):
        record(conn, "erase")
    assert conn.execute("SELECT actor FROM audit").fetchall()[0][0] == "alice"


def test_a_slide_run_is_audited_to_a_syslog_tls_collector_without_patient_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with collector(tmp_path) as listener:
        base = embedded_defaults(tmp_path)
        config = dataclasses.replace(
            base,
            ingest=cfg.Ingest(watch=base.ingest.watch, settle_s=0.0, poll_s=0.2),
            pipeline=cfg.Pipeline(analyse=False),
            audit=cfg.Audit(
                syslog=f"127.0.0.1:{listener.port}",
                tls_ca_file=str(listener.ca_file),
                source_id="edge-test",
            ),
        )
        inbox = Path(config.ingest.watch[0])
        inbox.mkdir(parents=True)
        slide = write_slide(inbox / "s.svs", 1024, 768, "svs")
        slide.with_suffix(".json").write_text(
            json.dumps({"PatientName": "Doe^Jane", "PatientID": "MRN-4711"})
        )
        with caplog.at_level(logging.DEBUG):
            assert Daemon(config, once=True).run(timeout_s=60) == 0
        frames = list(listener.frames)

    messages = []
    for frame in frames:
        match = FRAME.match(frame)
        assert match, frame[:120]
        priority, _when, _host, app, msgid, xml = match.groups()
        assert int(priority) in (84, 85), "facility authpriv, notice or warning"
        assert (app, msgid) == (b"edge", b"DICOM+RFC3881")
        messages.append(ET.fromstring(xml))
    events = [m.find("EventIdentification/EventID").get("csd-code") for m in messages]  # type: ignore[union-attr]
    assert events[0] == "110100" and events[-1] == "110100", "application start ... stop"
    assert {"110107", "110103", "110104"} <= set(events), "import, accessed, transferred"
    sent = next(
        m for m in messages if m.find("EventIdentification/EventID").get("csd-code") == "110104"
    )  # type: ignore[union-attr]
    assert sent.find("AuditSourceIdentification").get("AuditSourceID") == "edge-test"  # type: ignore[union-attr]
    assert [p.get("UserID") for p in sent.findall("ActiveParticipant")] == ["edge", "local"]
    everything = b"".join(frames).decode() + caplog.text
    for secret in ("Doe", "MRN-4711"):
        assert secret not in everything, "patient data never leaves in audit messages or logs"


def test_an_unreachable_collector_catches_up_later(tmp_path: Path) -> None:
    conn = open_database(tmp_path / DATABASE)
    for n in range(3):
        record(conn, "ingest", job_id=n + 1)
    with collector(tmp_path) as listener:
        port, ca = listener.port, listener.ca_file
    gone = Collector("127.0.0.1", port, str(ca), timeout_s=2)
    with pytest.raises(OSError):
        export(conn, gone, "edge-test")
    with collector(tmp_path) as listener:
        back = Collector("127.0.0.1", listener.port, str(listener.ca_file))
        assert export(conn, back, "edge-test") == 3
        record(conn, "ingest", job_id=4)
        assert export(conn, back, "edge-test") == 1, "only what the collector has not had"
        assert export(conn, back, "edge-test") == 0
        deadline = threading.Event()
        for _ in range(50):
            if len(listener.frames) == 4:
                break
            deadline.wait(0.1)
        assert len(listener.frames) == 4


def test_a_collector_with_an_unknown_certificate_is_refused(tmp_path: Path) -> None:
    conn = open_database(tmp_path / DATABASE)
    record(conn, "start")
    other_ca = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with collector(tmp_path) as listener:
        impostor = Collector("127.0.0.1", listener.port, str(other_ca), timeout_s=2)
        with pytest.raises(ssl.SSLError):
            export(conn, impostor, "edge-test")
    assert conn.execute("SELECT COUNT(*) FROM audit_export").fetchone()[0] == 0


def test_cli_retry_is_audited_with_who_asked(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    (tmp_path / "inbox").mkdir()
    config.write_text(
        f'[storage]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[ingest]\nwatch = ["{tmp_path / "inbox"}"]\nsettle_s = 0\npoll_s = 0.2\n'
    )
    (tmp_path / "inbox" / "junk.svs").write_bytes(b"junk")
    assert run_edge("run", "--config", str(config), "--once", "--timeout", "60").returncode == 0
    assert run_edge("jobs", "--config", str(config), "retry", "1").returncode == 0
    listing = run_edge("audit", "--config", str(config), "--json")
    rows = json.loads(listing.stdout)
    actions = [(r["action"], r["outcome"], r["job_id"]) for r in rows]
    assert ("quarantine", "failure", 1) in actions
    retry = next(r for r in rows if r["action"] == "retry")
    assert retry["actor"].endswith("(edge jobs)") and retry["job_id"] == 1
