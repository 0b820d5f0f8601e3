"""JSON API under /api/v1: the pages' data for IT and scripts, with an OpenAPI schema.

Reads need what the pages need (login, token, or open view on loopback); actions need a
bearer token or a session with its CSRF token in `X-CSRF-Token`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from edge.web import actions, data, status
from edge.web.page_actions import probe_destination
from edge.web.security import Caller, actor, admin, viewer


class Error(BaseModel):
    detail: str = Field(description="what was wrong, in a sentence")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Error, "description": text}
    for code, text in (
        (400, "a body that cannot be parsed (not JSON, not UTF-8)"),
        (401, "no login or API token"),
        (403, "no CSRF token, or the role does not allow it"),
        (404, "no such slide"),
        (409, "the slide or its sends are not in a state this action applies to"),
        (413, "request body too large"),
        (414, "query string too long"),
        (422, "invalid parameters or body"),
        (503, "the state database is not readable yet"),
    )
}

router = APIRouter(prefix="/api/v1", tags=["api"], responses=ERRORS)

Text = Annotated[str, Query(max_length=200)]
JobId = Annotated[int, PathParam(ge=1, le=2**62, description="the slide's job id")]


class Job(BaseModel):
    id: int
    name: str
    state: str
    attempts: int
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    verdict: str = ""
    reasons: list[str] = []
    stain: str = ""
    priority: int = 0
    unmatched: bool = False
    instances: int = 0
    bytes_in: int = 0
    seconds: float = 0.0
    error: str = ""
    study_uid: str = ""
    series_uid: str = ""
    has_report: bool = False
    reviewed_by: str | None = None
    reviewed_at: float | None = None


class JobList(BaseModel):
    total: int
    limit: int
    offset: int
    jobs: list[Job]


class Send(BaseModel):
    destination: str
    counts: dict[str, int]
    last_delivered_at: float | None = None
    last_error: str = ""
    last_error_at: float | None = None


class JobDetail(Job):
    report: dict[str, Any] | None = None
    sends: list[Send] = []
    events: list[dict[str, Any]] = []


class Destination(BaseModel):
    name: str
    kind: str
    target: str
    tls: bool
    configured: bool
    counts: dict[str, int]
    queue: int
    last_success_at: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    failing: bool
    link: dict[str, Any] | None = Field(
        None, description="adaptive STOW-RS: the measured link (edge queue link --json)"
    )


class Done(BaseModel):
    ok: bool = True
    changed: int = Field(description="rows changed (jobs or deliveries)")
    message: str


class SendAction(BaseModel):
    destination: str = Field("", max_length=200, description="one destination; empty: all")


class ReviewAction(BaseModel):
    note: str = Field("", max_length=200)


def _job(request: Request, job_id: int) -> dict[str, Any]:
    with data.reader(request.app.state.config) as conn:
        job = data.get_job(conn, job_id)
    if job is None:
        raise HTTPException(404, f"no slide with id {job_id}")
    return job


@router.get("/jobs", response_model=JobList)
def jobs(
    request: Request,
    who: Annotated[Caller, Depends(viewer)],
    q: Text = "",
    state: Literal["", "queued", "running", "done", "failed", "quarantined"] = "",
    verdict: Literal["", "pass", "review", "rescan"] = "",
    stain: Text = "",
    priority: Annotated[int, Query(ge=0, le=100, description="at least this priority")] = 0,
    since: Literal["", "today", "24h", "7d"] = "",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> dict[str, Any]:
    f = data.JobFilter(q, state, verdict, stain, limit, offset, priority, since)
    with data.reader(request.app.state.config) as conn:
        rows, total = data.list_jobs(conn, f)
    return {"total": total, "limit": limit, "offset": offset, "jobs": rows}


@router.get("/jobs/{job_id}", response_model=JobDetail)
def job(
    request: Request,
    job_id: JobId,
    who: Annotated[Caller, Depends(viewer)],
) -> dict[str, Any]:
    found = _job(request, job_id)
    with data.reader(request.app.state.config) as conn:
        found["sends"] = data.deliveries_of(conn, job_id)
        found["events"] = data.history(conn, job_id, 100)
    found["report"] = data.read_report(found["report"])
    return found


@router.get("/destinations", response_model=list[Destination])
def destinations(request: Request, who: Annotated[Caller, Depends(viewer)]) -> list[dict[str, Any]]:
    with data.reader(request.app.state.config) as conn:
        return status.destinations(conn, request.app.state.config)


class ProbeResult(BaseModel):
    ok: bool
    message: str
    seconds: float


@router.post("/destinations/{name}/test", response_model=ProbeResult)
def test_destination(
    request: Request,
    name: Annotated[str, PathParam(max_length=200)],
    who: Annotated[Caller, Depends(actor)],
) -> dict[str, Any]:
    """Test connection: C-ECHO (cstore), QIDO-RS (stowrs), a write check (folder)."""
    result = probe_destination(request, name, who.name)
    return {"ok": result.ok, "message": result.message, "seconds": result.seconds}


@router.get("/stats")
def stats(request: Request, who: Annotated[Caller, Depends(viewer)]) -> dict[str, Any]:
    """Jobs per state, today's and the last hour's slides, outbox counts, disk, alerts."""
    health = request.app.state.health
    paused = str(getattr(health, "ingest_paused", "") or "")
    with data.reader(request.app.state.config) as conn:
        return status.overview(
            conn, request.app.state.config, paused, stages=status.stage_ages(health)
        )


@router.get("/events")
def events(
    request: Request,
    who: Annotated[Caller, Depends(viewer)],
    q: Text = "",
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    """The audit trail, newest first; page with before=<smallest id seen>."""
    with data.reader(request.app.state.config) as conn:
        return data.audit(conn, limit, before, q)


@router.post("/jobs/{job_id}/retry", response_model=Done)
def retry(
    request: Request,
    job_id: JobId,
    who: Annotated[Caller, Depends(actor)],
) -> dict[str, Any]:
    found = _job(request, job_id)
    if not actions.retry_job(request.app.state.database, job_id, who.name):
        raise HTTPException(
            409, f"slide {job_id} is {found['state']}: only failed or quarantined slides retry"
        )
    return {"changed": 1, "message": f"slide {job_id} queued again"}


@router.post("/jobs/{job_id}/resend", response_model=Done)
def resend(
    request: Request,
    job_id: JobId,
    who: Annotated[Caller, Depends(actor)],
    body: Annotated[SendAction | None, Body()] = None,
) -> dict[str, Any]:
    _job(request, job_id)
    state = request.app.state
    destination = body.destination if body else ""
    n = actions.act_on_sends(state.config, state.database, job_id, destination, "resend", who.name)
    return {"changed": n, "message": f"{n} send(s) of slide {job_id} queued again"}


@router.post("/jobs/{job_id}/park", response_model=Done)
def park(
    request: Request,
    job_id: JobId,
    who: Annotated[Caller, Depends(admin)],
    body: Annotated[SendAction | None, Body()] = None,
) -> dict[str, Any]:
    _job(request, job_id)
    state = request.app.state
    destination = body.destination if body else ""
    n = actions.act_on_sends(state.config, state.database, job_id, destination, "park", who.name)
    return {"changed": n, "message": f"{n} send(s) of slide {job_id} parked"}


@router.post("/jobs/{job_id}/review", response_model=Done)
def review(
    request: Request,
    job_id: JobId,
    who: Annotated[Caller, Depends(actor)],
    body: Annotated[ReviewAction | None, Body()] = None,
) -> dict[str, Any]:
    _job(request, job_id)
    actions.mark_reviewed(request.app.state.database, job_id, who.name, body.note if body else "")
    return {"changed": 1, "message": f"slide {job_id} marked reviewed by {who.name}"}
