"""The HTML pages: overview, slides, slide detail, destinations, audit."""

from __future__ import annotations

import time
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from edge.hub import records
from edge.web import data, status
from edge.web.common import PAGE, JobId, Text, check_choice, paused, render
from edge.web.security import Caller, viewer

router = APIRouter(include_in_schema=False)


@router.get("/")
def overview(request: Request, who: Annotated[Caller, Depends(viewer)]) -> Response:
    with data.reader(request.app.state.config) as conn:
        found = status.overview(
            conn,
            request.app.state.config,
            paused(request),
            stages=status.stage_ages(request.app.state.health),
        )
        recent, _ = data.list_jobs(conn, data.JobFilter(limit=8))
    return render(request, "overview.html", who, o=found, recent=recent)


@router.get("/slides")
def slides(
    request: Request,
    who: Annotated[Caller, Depends(viewer)],
    q: Text = "",
    state: Text = "",
    verdict: Text = "",
    stain: Text = "",
    priority: Annotated[int, Query(ge=0, le=100)] = 0,
    since: Text = "",
    page: Annotated[int, Query(ge=1, le=100000)] = 1,
) -> Response:
    check_choice("state", state, data.JOB_STATES)
    check_choice("verdict", verdict, data.VERDICTS)
    check_choice("since", since, data.SINCE)
    f = data.JobFilter(q, state, verdict, stain, PAGE, (page - 1) * PAGE, priority, since)
    with data.reader(request.app.state.config) as conn:
        rows, total = data.list_jobs(conn, f)
        known_stains = data.stains(conn)
    query = {
        "q": q,
        "state": state,
        "verdict": verdict,
        "stain": stain,
        "priority": str(priority) if priority else "",
        "since": since,
    }
    return render(
        request,
        "slides.html",
        who,
        rows=rows,
        total=total,
        f=f,
        page=page,
        pages=max(1, -(-total // PAGE)),
        stains=known_stains,
        states=data.JOB_STATES,
        verdicts=data.VERDICTS,
        sinces=data.SINCE,
        query=urlencode({k: v for k, v in query.items() if v}),
    )


@router.get("/slides/{job_id}")
def slide(request: Request, job_id: JobId, who: Annotated[Caller, Depends(viewer)]) -> Response:
    with data.reader(request.app.state.config) as conn:
        job = data.get_job(conn, job_id)
        if job is None:
            raise HTTPException(404, f"no slide with id {job_id}")
        sends = data.deliveries_of(conn, job_id)
        events = data.history(conn, job_id)
    report = data.read_report(job["report"]) or {}
    roots = request.app.state.roots
    layers = [c for c in data.HEATMAP_CLASSES if data.heatmap_file(job, c, roots) is not None]
    mosaic = data.heatmap_file(job, "slide", roots) is not None
    qc_objects = data.qc_objects(job, roots)
    has_label = data.label_file(job, roots) is not None
    return render(
        request,
        "slide.html",
        who,
        job=job,
        report=report,
        sends=sends,
        events=events,
        layers=layers,
        mosaic=mosaic,
        qc_objects=qc_objects,
        has_label=has_label,
    )


@router.get("/destinations")
def destinations(request: Request, who: Annotated[Caller, Depends(viewer)]) -> Response:
    config = request.app.state.config
    with data.reader(config) as conn:
        found = status.destinations(conn, config)
        names = [s.name for s in config.hub.site]
        sites = records.status_of_configured(conn, names, time.time()) if names else []
    discovery = getattr(request.app.state, "discovery", None)
    return render(
        request,
        "destinations.html",
        who,
        destinations=found,
        discovery=discovery,
        peers=discovery.peers if discovery is not None else [],
        sites=sites,
    )


@router.get("/audit")
def audit(
    request: Request,
    who: Annotated[Caller, Depends(viewer)],
    q: Text = "",
    before: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    with data.reader(request.app.state.config) as conn:
        rows = data.audit(conn, 100, before, q)
        trail = data.audit_trail(conn, 100, q) if before is None else []
    return render(request, "audit.html", who, rows=rows, q=q, trail=trail)


# ---- login ----
