"""The hub's HTTP side (Starlette): STOW-RS in from sites, and the status for the hub's staff.

- `POST /dicom-web/studies[/{study}]`, `multipart/related; type="application/dicom"`,
  `Authorization: Bearer <site token>`. The body is split as it arrives (edge.hub.multipart)
  into temp files, hashed on the way; nothing larger than one network chunk is held in memory.
  The answer is DICOM JSON (PS3.18 10.5.3): ReferencedSOPSequence for what is stored,
  FailedSOPSequence with a FailureReason for what is not; 200 all stored, 202 some failed,
  409 none stored, 400 a malformed body, 401 no or a wrong token, 413 over max_request_bytes,
  415 not multipart/related of application/dicom.
- `GET /hub/status`, `Authorization: Bearer <status token>`: per site, as JSON.

A request refused before its body is read (401, 413 by Content-Length, 415) still has its
body read and discarded up to DRAIN_BYTES, so the sender, which writes the whole body before
it reads, sees the answer rather than a reset connection; beyond that the connection closes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge.hub.multipart import (
    MultipartError,
    PartData,
    PartEnd,
    PartStart,
    Splitter,
    content_type_params,
)
from edge.hub.service import HubService, Received, Result
from edge.hub.tokens import bearer

LOGGER = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
DRAIN_BYTES = 64 << 20  # read and discard at most this much of a refused request's body
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
RETRIEVE_URL = "00081190"


def store_response(results: list[Result], retrieve_url: str = "") -> tuple[int, dict[str, Any]]:
    """The HTTP status and DICOM JSON body of a STOW-RS answer (PS3.18 10.5.3). Pure."""
    stored = [r for r in results if r.failure is None]
    failed = [r for r in results if r.failure is not None]
    body: dict[str, Any] = {}
    if retrieve_url:
        body[RETRIEVE_URL] = {"vr": "UR", "Value": [retrieve_url]}
    if stored:
        body[REFERENCED_SOP_SEQUENCE] = {
            "vr": "SQ",
            "Value": [
                {
                    REFERENCED_SOP_CLASS_UID: {"vr": "UI", "Value": [r.sop_class_uid]},
                    REFERENCED_SOP_INSTANCE_UID: {"vr": "UI", "Value": [r.sop_instance_uid]},
                }
                for r in stored
            ],
        }
    if failed:
        entries = []
        for r in failed:
            entry: dict[str, Any] = {}
            if r.sop_class_uid:
                entry[REFERENCED_SOP_CLASS_UID] = {"vr": "UI", "Value": [r.sop_class_uid]}
            if r.sop_instance_uid:
                entry[REFERENCED_SOP_INSTANCE_UID] = {"vr": "UI", "Value": [r.sop_instance_uid]}
            entry[FAILURE_REASON] = {"vr": "US", "Value": [r.failure]}
            entries.append(entry)
        body[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": entries}
    if not results:
        return 400, body
    code = 200 if not failed else 202 if stored else 409
    return code, body


def _dicom_json(code: int, body: dict[str, Any]) -> Response:
    return JSONResponse(body, status_code=code, media_type=DICOM_JSON)


def _problem(code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=code, headers=headers)


async def _drain(request: Request) -> None:
    """Read and discard the body (up to DRAIN_BYTES) so the sender can read our answer."""
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > DRAIN_BYTES:
                return
    except ClientDisconnect:
        return


def _address(request: Request) -> str:
    return request.client.host if request.client is not None else ""


class _Upload:
    """The temp files of one request, removed unless handed over."""

    def __init__(self, folder: Path, site: str) -> None:
        self.folder = folder
        self.site = site
        self.parts: list[Received] = []
        self._fh: Any = None
        self._path: Path | None = None
        self._hash: Any = None
        self._size = 0
        self._type = ""

    def start(self, headers: dict[str, str]) -> None:
        fd, name = tempfile.mkstemp(dir=self.folder, prefix=f"{self.site}-", suffix=".part")
        self._fh = os.fdopen(fd, "wb")
        self._path = Path(name)
        self._hash = hashlib.sha256()
        self._size = 0
        self._type = headers.get("content-type", "")

    def write(self, data: bytes) -> None:
        self._fh.write(data)
        self._hash.update(data)
        self._size += len(data)

    async def end(self) -> None:
        fh, path = self._fh, self._path
        assert fh is not None and path is not None
        fh.flush()
        await asyncio.to_thread(os.fsync, fh.fileno())  # durable before we answer
        fh.close()
        self._fh, self._path = None, None
        self.parts.append(Received(path, self._size, self._hash.hexdigest(), self._type))

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._path is not None:  # a part cut off mid-way
            self._path.unlink(missing_ok=True)
            self._path = None
        for part in self.parts:
            part.temp.unlink(missing_ok=True)
        self.parts = []


def create_app(service: HubService) -> Starlette:
    hub = service.config.hub

    async def run(fn: Any) -> Any:
        return await asyncio.wrap_future(service.submit(fn))

    async def contact(site: str, request: Request, code: int) -> None:
        try:
            await run(lambda: service.contact(site, _address(request), code))
        except Exception:  # the records must not turn a stored answer into an error
            LOGGER.exception("hub: cannot record the contact of %s", site)

    async def stow(request: Request) -> Response:
        presented = bearer(request.headers.get("authorization"))
        site = service.tokens.match(presented) if presented is not None else None
        if site is None:
            LOGGER.warning(
                "hub: %s token from %s refused",
                "no" if presented is None else "an unknown",
                _address(request),
            )
            error = "" if presented is None else ', error="invalid_token"'
            await _drain(request)
            return _problem(
                401,
                "a site's bearer token is required" if presented is None else "token refused",
                {"WWW-Authenticate": f'Bearer realm="edge-hub"{error}'},
            )
        study = request.path_params.get("study")
        response = await _receive(request, site, study)
        await contact(site, request, response.status_code)
        return response

    async def _receive(request: Request, site: str, study: str | None) -> Response:
        media, params = content_type_params(request.headers.get("content-type", ""))
        kind = params.get("type", "").lower()
        if media != "multipart/related" or kind not in ("", "application/dicom"):
            await _drain(request)
            return _problem(
                415,
                'expected Content-Type multipart/related; type="application/dicom", found '
                f"{request.headers.get('content-type', 'none')!r}",
            )
        length = request.headers.get("content-length", "")
        too_large = _problem(
            413, f"request larger than this hub's max_request_bytes ({hub.max_request_bytes})"
        )
        if length.isdigit() and int(length) > hub.max_request_bytes:
            await _drain(request)
            return too_large
        try:
            splitter = Splitter(params.get("boundary", ""))
        except MultipartError as exc:
            await _drain(request)
            return _problem(400, str(exc))
        upload = _Upload(service.incoming, site)
        seen = 0
        try:
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > hub.max_request_bytes:  # a body longer than announced, or chunked
                    return too_large
                for event in splitter.feed(chunk):
                    if isinstance(event, PartData):
                        upload.write(event.data)
                    elif isinstance(event, PartStart):
                        upload.start(event.headers)
                    elif isinstance(event, PartEnd):
                        await upload.end()
            splitter.finish()
            parts, upload.parts = upload.parts, []
        except MultipartError as exc:
            return _problem(400, f"malformed multipart body: {exc}")
        except ClientDisconnect:
            LOGGER.info("hub: %s disconnected during a request", site)
            return _problem(400, "the client disconnected")
        except OSError as exc:
            LOGGER.error("hub: cannot write an upload of %s: %s", site, exc.strerror or exc)
            return _problem(503, "the hub cannot store uploads now", {"Retry-After": "60"})
        finally:
            upload.discard()
        try:
            results = await run(lambda: service.accept(site, parts, study))
        finally:
            for part in parts:
                part.temp.unlink(missing_ok=True)
        code, body = store_response(results)
        for r in results:
            if r.failure is not None:  # the reason names no patient data: codes and UIDs only
                LOGGER.warning("hub: %s: instance refused (0x%04X): %s", site, r.failure, r.reason)
        stored = sum(1 for r in results if r.failure is None)
        new = sum(1 for r in results if r.new)
        LOGGER.info(
            "hub: %s sent %d instance(s): %d stored (%d new), %d failed",
            site,
            len(results),
            stored,
            new,
            len(results) - stored,
        )
        return _dicom_json(code, body)

    async def status(request: Request) -> Response:
        if service.status_tokens is None:
            return _problem(404, "no status_token_file is configured in [hub]")
        presented = bearer(request.headers.get("authorization"))
        if presented is None or service.status_tokens.match(presented) is None:
            return _problem(
                401, "the status token is required", {"WWW-Authenticate": 'Bearer realm="edge-hub"'}
            )
        sites = await run(service.status)
        return JSONResponse({"sites": [s.as_dict() for s in sites]})

    return Starlette(
        routes=[
            Route("/dicom-web/studies", stow, methods=["POST"]),
            Route("/dicom-web/studies/{study}", stow, methods=["POST"]),
            Route("/hub/status", status, methods=["GET"]),
        ]
    )
