"""`Test connection` for a configured destination: C-ECHO for a PACS, a QIDO-RS query for a
DICOMweb store, a write check for a folder. Sends no data; returns what a person can act on."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from edge import config as cfg
from edge.forward.factory import tls_context

VERIFICATION = "1.2.840.10008.1.1"
MAX_WAIT_S = 15.0  # a person is waiting at the page


@dataclass(frozen=True)
class Probe:
    ok: bool
    message: str
    seconds: float


def probe(dest: cfg.Destination) -> Probe:
    started = time.monotonic()
    try:
        ok, message = {"cstore": _echo, "stowrs": _qido, "folder": _folder}[dest.kind](dest)
    except cfg.ConfigError as exc:
        ok, message = False, str(exc)
    return Probe(ok, message, round(time.monotonic() - started, 3))


def _echo(dest: cfg.Destination) -> tuple[bool, str]:
    from pynetdicom import AE

    ae = AE(ae_title=dest.calling_aet)
    ae.add_requested_context(VERIFICATION)
    wait = min(dest.timeout_s, MAX_WAIT_S)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = wait
    ae.connection_timeout = wait
    tls_args = (tls_context(dest), dest.host) if dest.tls else None
    where = f"{dest.called_aet}@{dest.host}:{dest.port}"
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.called_aet, tls_args=tls_args)
    if assoc.is_rejected:
        return False, f"{where} rejected the association (check the AE titles)"
    if not assoc.is_established:
        return False, f"{where}: no DICOM association (host down, port closed or TLS refused)"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code == 0:
        return True, f"C-ECHO to {where} answered"
    if code == -1:
        return False, f"{where} accepted the association but did not answer the C-ECHO"
    return False, f"{where} answered C-ECHO with status 0x{code:04X}"


def _qido(dest: cfg.Destination) -> tuple[bool, str]:
    headers = {"Accept": "application/dicom+json"}
    if dest.token_file:
        try:
            headers["Authorization"] = "Bearer " + Path(dest.token_file).read_text().strip()
        except OSError as exc:
            return False, f"cannot read token file {dest.token_file}: {exc.strerror or exc}"
    url = dest.url.rstrip("/") + "/studies"
    verify = tls_context(dest) if dest.url.startswith("https://") else True
    try:
        response = httpx.get(
            url,
            params={"limit": 1},
            headers=headers,
            verify=verify,
            timeout=min(dest.timeout_s, MAX_WAIT_S),
        )
    except httpx.HTTPError as exc:
        return False, f"QIDO-RS {url}: {type(exc).__name__}: {exc}"
    if response.status_code in (200, 204):
        return True, f"QIDO-RS {url} answered {response.status_code}"
    if response.status_code in (401, 403):
        return False, f"QIDO-RS {url}: {response.status_code}, the token was refused"
    return False, f"QIDO-RS {url}: HTTP {response.status_code}"


def _folder(dest: cfg.Destination) -> tuple[bool, str]:
    folder = Path(dest.path)
    if not folder.is_dir():
        return False, f"folder {folder} does not exist (it is made at the first send)"
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".edge-probe-"):
            pass
    except OSError as exc:
        return False, f"folder {folder} is not writable: {exc.strerror or exc}"
    free = os.statvfs(folder)
    return True, f"folder {folder} writable, {free.f_bavail * free.f_frsize / 1e9:.1f} GB free"
