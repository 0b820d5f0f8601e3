"""What a person does from the pages (each a POST with the CSRF token): retry, resend, park,
mark reviewed, test a destination's connection."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, Response

from edge.web import actions, probe
from edge.web.common import JobId, job_or_404
from edge.web.security import Caller, actor, admin

router = APIRouter(include_in_schema=False)


def _back(job_id: int, message: str) -> RedirectResponse:
    return RedirectResponse(f"/slides/{job_id}?{urlencode({'done': message})}", status_code=303)


@router.post("/slides/{job_id}/retry")
def retry(request: Request, job_id: JobId, who: Annotated[Caller, Depends(actor)]) -> Response:
    job = job_or_404(request, job_id)
    if not actions.retry_job(request.app.state.database, job_id, who.name):
        raise HTTPException(
            409,
            f"slide {job_id} is {job['state']}: only failed or quarantined slides can be retried",
        )
    return _back(job_id, "Slide queued again")


@router.post("/slides/{job_id}/resend")
def resend(
    request: Request,
    job_id: JobId,
    who: Annotated[Caller, Depends(actor)],
    destination: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    job_or_404(request, job_id)
    state = request.app.state
    n = actions.act_on_sends(state.config, state.database, job_id, destination, "resend", who.name)
    if not n:
        raise HTTPException(409, f"slide {job_id} has no failed or parked sends to retry")
    return _back(job_id, f"{n} send(s) queued again")


@router.post("/slides/{job_id}/park")
def park(
    request: Request,
    job_id: JobId,
    who: Annotated[Caller, Depends(admin)],
    destination: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    job_or_404(request, job_id)
    state = request.app.state
    n = actions.act_on_sends(state.config, state.database, job_id, destination, "park", who.name)
    if not n:
        raise HTTPException(409, f"slide {job_id} has nothing waiting to send")
    return _back(job_id, f"{n} send(s) parked")


@router.post("/slides/{job_id}/review")
def review(
    request: Request,
    job_id: JobId,
    who: Annotated[Caller, Depends(actor)],
    note: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    job_or_404(request, job_id)
    actions.mark_reviewed(request.app.state.database, job_id, who.name, note)
    return _back(job_id, "Marked reviewed")


@router.post("/destinations/{name}/test")
def test_destination(
    request: Request,
    name: Annotated[str, PathParam(max_length=200)],
    who: Annotated[Caller, Depends(actor)],
) -> Response:
    result = probe_destination(request, name, who.name)
    query = urlencode({"done": result.message, "ok": int(result.ok), "name": name})
    return RedirectResponse(f"/destinations?{query}", status_code=303)


@router.post("/destinations/{name}/{act}")
def pause_destination(
    request: Request,
    name: Annotated[str, PathParam(max_length=200)],
    act: Annotated[str, PathParam(pattern="^(pause|resume)$")],
    who: Annotated[Caller, Depends(admin)],
) -> Response:
    """Pause (or resume) sending to a configured destination, e.g. while its PACS is
    maintained: queued data stays queued and goes when resumed. Admins only."""
    if name not in {d.name for d in request.app.state.config.destinations}:
        raise HTTPException(404, f"no destination named {name!r}")
    paused = act == "pause"
    changed = actions.pause_destination(request.app.state.database, name, paused, who.name)
    message = f"sending {'paused' if paused else 'resumed'}" if changed else f"already {act}d"
    query = urlencode({"done": message, "ok": 1, "name": name})
    return RedirectResponse(f"/destinations?{query}", status_code=303)


def probe_destination(request: Request, name: str, user: str) -> probe.Probe:
    """Shared with the API: 404 for a name that is not configured."""
    config = request.app.state.config
    found = [d for d in config.destinations if d.name == name]
    if not found:
        names = ", ".join(d.name for d in config.destinations) or "none configured"
        raise HTTPException(404, f"no destination named {name!r} (configured: {names})")
    result = probe.probe(found[0])
    verdict = "ok" if result.ok else "failed"
    actions.record(
        request.app.state.database,
        "test",
        f"connection test by {user}: {verdict}: {result.message}",
        destination=name,
    )
    return result
