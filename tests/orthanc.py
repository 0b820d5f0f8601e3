"""A real Orthanc PACS (Debian `orthanc` + `orthanc-dicomweb`) on free loopback ports.

`orthanc_server(...)` writes a config JSON into a temp folder, runs ``Orthanc cfg.json`` with
its log in that folder, waits for ``GET /system`` and yields an `Orthanc` handle with helpers
(instances, file, stop/start on the same storage for outage tests). The `orthanc` fixture is
one module-scoped server without authentication.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import need

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
WORKLIST_PLUGIN = Path("/usr/share/orthanc/plugins/libModalityWorklists.so")
START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Orthanc:
    root: Path
    http_port: int
    dicom_port: int
    users: dict[str, str] = field(default_factory=dict)  # RegisteredUsers; empty: no auth
    worklists: Path | None = None  # a folder of .wl files served by the worklist plugin
    process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    @property
    def log(self) -> Path:
        return self.root / "orthanc.log"

    def config(self) -> dict[str, Any]:
        return {
            "Name": "edge-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            # A worklist answers only modalities it knows, as a hospital's would.
            "DicomModalities": {"edge": ["EDGE", "127.0.0.1", 104]} if self.worklists else {},
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True,
            "OverwriteInstances": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "Plugins": [str(DICOMWEB_PLUGIN)] + ([str(WORKLIST_PLUGIN)] if self.worklists else []),
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "Worklists": {"Enable": bool(self.worklists), "Database": str(self.worklists or "")},
            "StableAge": 1,
        }

    def client(self) -> httpx.Client:
        auth = next(iter(self.users.items()), None)
        return httpx.Client(base_url=self.http_url, auth=auth, timeout=30)

    def start(self) -> None:
        assert self.process is None, "Orthanc already running"
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(ORTHANC), str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=self.root
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        with self.client() as client:
            while True:
                if self.process.poll() is not None:
                    self.process = None
                    raise RuntimeError(f"Orthanc exited at start; log:\n{self.tail()}")
                try:
                    if client.get("/system").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Orthanc did not answer /system; log:\n{self.tail()}")
                time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------ REST helpers

    def _ids(self) -> dict[str, str]:
        """SOP Instance UID -> Orthanc instance id."""
        with self.client() as client:
            response = client.post(
                "/tools/find",
                json={"Level": "Instance", "Query": {}, "Expand": True},
            )
            response.raise_for_status()
            return {
                str(entry["MainDicomTags"]["SOPInstanceUID"]): str(entry["ID"])
                for entry in response.json()
            }

    def instances(self) -> list[str]:
        """The SOP Instance UIDs Orthanc holds (one entry per stored copy)."""
        with self.client() as client:
            response = client.post(
                "/tools/find", json={"Level": "Instance", "Query": {}, "Expand": True}
            )
            response.raise_for_status()
            return [str(entry["MainDicomTags"]["SOPInstanceUID"]) for entry in response.json()]

    def count(self) -> int:
        with self.client() as client:
            response = client.get("/statistics")
            response.raise_for_status()
            return int(response.json()["CountInstances"])

    def file(self, sop_uid: str) -> bytes:
        ident = self._ids()[sop_uid]
        with self.client() as client:
            response = client.get(f"/instances/{ident}/file")
            response.raise_for_status()
            return response.content

    def clear(self) -> None:
        with self.client() as client:
            for patient in client.get("/patients").json():
                client.delete(f"/patients/{patient}").raise_for_status()


def need_orthanc() -> None:
    need(ORTHANC.is_file(), f"{ORTHANC} not found (install the Debian package `orthanc`)")
    need(
        DICOMWEB_PLUGIN.is_file(),
        f"{DICOMWEB_PLUGIN} not found (install the Debian package `orthanc-dicomweb`)",
    )


@contextmanager
def orthanc_server(
    root: Path, users: dict[str, str] | None = None, worklists: Path | None = None
) -> Iterator[Orthanc]:
    need_orthanc()
    if worklists is not None:
        need(WORKLIST_PLUGIN.is_file(), f"{WORKLIST_PLUGIN} not found (Debian package `orthanc`)")
    root.mkdir(parents=True, exist_ok=True)
    server = Orthanc(root, free_port(), free_port(), dict(users or {}), worklists)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with orthanc_server(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
