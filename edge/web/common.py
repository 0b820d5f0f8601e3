"""What every HTML page shares: rendering with the session's CSRF token, parameter types,
choice checks, the job lookup."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response

from edge.web import data, images
from edge.web.security import Caller

PAGE = 50  # slides per page

Text = Annotated[str, Query(max_length=200)]
JobId = Annotated[int, PathParam(ge=1, le=2**62)]


def render(request: Request, name: str, who: Caller, **context: Any) -> Response:
    sessions = request.app.state.sessions
    context.update(
        caller=who,
        csrf=sessions.csrf(who.cookie) if who.cookie else "",
        heatmap_classes=data.HEATMAP_CLASSES,
        colour_of=images.colour_of,
        paused=paused(request),
    )
    response: Response = request.app.state.templates.TemplateResponse(request, name, context)
    response.headers["Cache-Control"] = "no-store"
    return response


def paused(request: Request) -> str:
    health = request.app.state.health
    return str(getattr(health, "ingest_paused", "") or "")


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value and value not in allowed:
        raise HTTPException(400, f"{name} {value!r}: choose one of {', '.join(allowed)}")
    return value


def job_or_404(request: Request, job_id: int) -> dict[str, Any]:
    with data.reader(request.app.state.config) as conn:
        job = data.get_job(conn, job_id)
    if job is None:
        raise HTTPException(404, f"no slide with id {job_id}")
    return job
