"""The HTML pages: overview, slides, slide detail (with actions), destinations, audit, login."""

from __future__ import annotations

import logging
import secrets
import sqlite3
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, Response

from edge.errors import EdgeError
from edge.web import actions, data, images, probe, tiles
from edge.web.security import LOGIN_COOKIE, SESSION_COOKIE, Caller, actor, admin, viewer

LOGGER = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
PAGE = 50

Text = Annotated[str, Query(max_length=200)]
JobId = Annotated[int, PathParam(ge=1, le=2**62)]


def render(request: Request, name: str, who: Caller, **context: Any) -> Response:
    sessions = request.app.state.sessions
    context.update(
        caller=who,
        csrf=sessions.csrf(who.cookie) if who.cookie else "",
        heatmap_classes=data.HEATMAP_CLASSES,
        colour_of=images.colour_of,
        paused=_paused(request),
    )
    response: Response = request.app.state.templates.TemplateResponse(request, name, context)
    response.headers["Cache-Control"] = "no-store"
    return response


def _paused(request: Request) -> str:
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


@router.get("/")
def overview(request: Request, who: Annotated[Caller, Depends(viewer)]) -> Response:
    with data.reader(request.app.state.config) as conn:
        found = data.overview(
            conn,
            request.app.state.config,
            _paused(request),
            stages=data.stage_ages(request.app.state.health),
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
    )


@router.get("/slides/{job_id}/image/{name}")
def image(
    request: Request, job_id: JobId, name: str, who: Annotated[Caller, Depends(viewer)]
) -> Response:
    """The mosaic ('slide') or a class heatmap: names from a fixed list, never a path."""
    if name != "slide" and name not in data.HEATMAP_CLASSES:
        choices = ", ".join(("slide", *data.HEATMAP_CLASSES))
        raise HTTPException(404, f"no image {name!r}; images are: {choices}")
    job = job_or_404(request, job_id)
    path = data.heatmap_file(job, name, request.app.state.roots)
    if path is None:
        raise HTTPException(404, f"slide {job_id} has no {name} image (no QC output)")
    headers = {"Cache-Control": "private, max-age=300"}
    if name == "slide":
        return Response(path.read_bytes(), media_type="image/jpeg", headers=headers)
    return Response(images.overlay_png(path, name), media_type="image/png", headers=headers)


def _pyramid(request: Request, job_id: int) -> list[tiles.Level]:
    job = job_or_404(request, job_id)
    folder = data.output_folder(job, request.app.state.roots)
    if folder is None:
        raise HTTPException(404, f"slide {job_id} has no DICOM output to view")
    try:
        found = tiles.levels(folder)
    except tiles.TileError as exc:
        raise HTTPException(404, f"slide {job_id} cannot be viewed: {exc.args[0]}") from exc
    if not found:
        raise HTTPException(404, f"slide {job_id} has no pyramid levels (delivered and removed?)")
    return found


@router.get("/slides/{job_id}/view")
def viewer_page(
    request: Request, job_id: JobId, who: Annotated[Caller, Depends(viewer)]
) -> Response:
    job = job_or_404(request, job_id)
    found = _pyramid(request, job_id)
    return render(request, "view.html", who, job=job, levels=[lv.public() for lv in found])


@router.get("/slides/{job_id}/tiles/{level}/{column}/{row}.jpg")
def tile(
    request: Request,
    job_id: JobId,
    level: Annotated[int, PathParam(ge=0, lt=tiles.MAX_LEVELS)],
    column: Annotated[int, PathParam(ge=0, le=1_000_000)],
    row: Annotated[int, PathParam(ge=0, le=1_000_000)],
    who: Annotated[Caller, Depends(viewer)],
) -> Response:
    """One tile of one level: every part of the URL is a number, never a path."""
    found = _pyramid(request, job_id)
    if level >= len(found):
        raise HTTPException(404, f"slide {job_id} has levels 0..{len(found) - 1}")
    lv = found[level]
    if column >= lv.columns or row >= lv.rows:
        raise HTTPException(
            404, f"level {level} has {lv.columns} x {lv.rows} tiles; no tile {column}, {row}"
        )
    try:
        body = tiles.tile(lv, column, row)
    except (tiles.TileError, OSError) as exc:
        raise HTTPException(404, f"tile unreadable: {exc}") from exc
    return Response(
        body, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
    )


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
    with data.reader(request.app.state.config) as conn:
        ids = data.delivery_ids(conn, job_id, destination or None, ("failed", "parked"))
    if not ids:
        raise HTTPException(409, f"slide {job_id} has no failed or parked sends to retry")
    n = actions.retry_deliveries(request.app.state.database, job_id, ids, who.name)
    return _back(job_id, f"{n} send(s) queued again")


@router.post("/slides/{job_id}/park")
def park(
    request: Request,
    job_id: JobId,
    who: Annotated[Caller, Depends(admin)],
    destination: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    job_or_404(request, job_id)
    with data.reader(request.app.state.config) as conn:
        ids = data.delivery_ids(conn, job_id, destination or None, ("queued", "failed"))
    if not ids:
        raise HTTPException(409, f"slide {job_id} has nothing waiting to send")
    n = actions.park_deliveries(request.app.state.database, job_id, ids, who.name)
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


@router.get("/destinations")
def destinations(request: Request, who: Annotated[Caller, Depends(viewer)]) -> Response:
    with data.reader(request.app.state.config) as conn:
        found = data.destinations(conn, request.app.state.config)
    return render(request, "destinations.html", who, destinations=found)


@router.post("/destinations/{name}/test")
def test_destination(
    request: Request,
    name: Annotated[str, PathParam(max_length=200)],
    who: Annotated[Caller, Depends(actor)],
) -> Response:
    result = probe_destination(request, name, who.name)
    query = urlencode({"done": result.message, "ok": int(result.ok), "name": name})
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


@router.get("/audit")
def audit(
    request: Request,
    who: Annotated[Caller, Depends(viewer)],
    q: Text = "",
    before: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    with data.reader(request.app.state.config) as conn:
        rows = data.audit(conn, 100, before, q)
    return render(request, "audit.html", who, rows=rows, q=q)


# ---- login ----


def _safe_next(target: str) -> str:
    """Only a local path: never an open redirect to another site."""
    local = target.startswith("/") and not target.startswith(("//", "/\\"))
    return target if local and "\\" not in target and "\n" not in target else "/"


@router.get("/login")
def login_form(request: Request, next: Text = "/") -> Response:
    token = secrets.token_urlsafe(16)
    response = render(
        request, "login.html", Caller(None), login_token=token, next=_safe_next(next), error=""
    )
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", path="/login")
    return response


@router.post("/login")
def login(
    request: Request,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    login_token: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=200)] = "/",
) -> Response:
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, login_token):
        raise HTTPException(403, "the login form expired: reload the page and try again")
    # Per name (5 tries) and per client (30: the bench kiosk is one client for everyone).
    throttles = request.app.state.throttles
    keys = (f"user:{username}", f"client:{request.client.host if request.client else ''}")
    wait = max(t.wait_s((k,)) for t, k in zip(throttles, keys, strict=True))
    if wait > 0:
        raise HTTPException(429, f"too many failed logins: try again in {wait:.0f} s")
    user = request.app.state.users.login(username, password)
    database = request.app.state.database
    if user is None:
        for t, k in zip(throttles, keys, strict=True):
            t.failed((k,))
        known = request.app.state.users.role_of(username) is not None
        # Only a real user's name goes to the audit trail: a mistyped name may be a password.
        _record_login(database, f"login failed for {username if known else 'an unknown name'}")
        token = secrets.token_urlsafe(16)
        response = render(
            request,
            "login.html",
            Caller(None),
            login_token=token,
            next=_safe_next(next),
            error="Wrong user name or password.",
        )
        response.status_code = 401
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", path="/login")
        return response
    throttles[0].succeeded(keys[:1])
    _record_login(database, f"{user.name} ({user.role}) logged in")
    sessions = request.app.state.sessions
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        sessions.issue(user),
        max_age=int(sessions.lifetime_s),
        httponly=True,
        samesite="strict",
        secure=bool(request.app.state.config.web.tls_cert_file),
        path="/",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


def _record_login(database: Path, detail: str) -> None:
    try:
        actions.record(database, "login", detail)
    except (sqlite3.Error, EdgeError) as exc:  # no database yet: logging in still works
        LOGGER.warning("login not audited: %s", exc)


@router.post("/logout")
def logout(request: Request, who: Annotated[Caller, Depends(actor)]) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
