"""The FastAPI application: pages, /api/v1, /metrics, /healthz, /readyz.

Bad requests end as 4xx with a sentence saying what was wrong (an HTML page for the browser,
JSON for the API), never as a 500: unknown ids are 404, a query string over MAX_QUERY bytes
is 414, a missing login is a redirect (pages) or 401 (API), a missing CSRF token is 403.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge import __version__
from edge import config as cfg
from edge.outbox.schema import DATABASE
from edge.web import api, login, metrics, page_actions, pages, zoom
from edge.web.auth import AuthError, Sessions, Throttle, Users
from edge.web.data import NotReady
from edge.web.security import Forbidden, LoginRequired

LOGGER = logging.getLogger(__name__)
HERE = Path(__file__).parent
MAX_QUERY = 2048  # bytes of query string; filters never need more
MAX_BODY = 64 * 1024  # bytes of a request body; forms and action bodies are tiny
# Everything from this server: no CDN, no inline script (style attributes carry the class
# colours of the heatmap toggles).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def users_path(config: cfg.Config) -> Path:
    return (
        Path(config.web.users_file)
        if config.web.users_file
        else config.state_dir / ("web-users.json")
    )


def _wants_json(request: Request) -> bool:
    path = request.url.path
    return path.startswith(("/api/", "/metrics", "/healthz", "/readyz")) or (
        "application/json" in request.headers.get("accept", "")
    )


def create_app(config: cfg.Config, health: Any = None) -> FastAPI:
    """The app over config's state database; health is the daemon's Health when embedded."""
    app = FastAPI(
        title="edge appliance",
        version=__version__,
        description="Slides, QC verdicts and the outbox of the scanner-side edge appliance.",
        docs_url=None,  # Swagger UI loads from a CDN: not on a clinical appliance
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    users_file = users_path(config)
    app.state.config = config
    app.state.health = health
    app.state.database = config.state_dir / DATABASE
    app.state.users = Users(users_file)
    app.state.sessions = Sessions.from_key_file(
        users_file.with_name(users_file.name + ".key"), config.web.session_hours * 3600
    )
    app.state.roots = (config.slides_dir, config.state_dir)
    app.state.throttles = (Throttle(limit=5), Throttle(limit=30))  # per user name, per client
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["when"] = _when
    templates.env.filters["ago"] = _ago
    templates.env.filters["size"] = _size
    app.state.templates = templates

    @app.middleware("http")
    async def limits(request: Request, call_next: Any) -> Response:
        if len(request.url.query) > MAX_QUERY:
            return _error(request, 414, f"query string longer than {MAX_QUERY} bytes")
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            return _error(request, 413, f"request body over {MAX_BODY} bytes (or a bad length)")
        response: Response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy", CSP)
        return response

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        if _wants_json(request):
            return JSONResponse(
                {"detail": "log in first, or send an API token (Authorization: Bearer ...)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        target = request.url.path if request.method == "GET" else "/"
        return RedirectResponse(f"/login?next={target}", status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return _error(request, 403, exc.reason)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> Response:
        return _error(request, 503, str(exc))

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> Response:
        LOGGER.error("dashboard: %s", exc)
        return _error(request, 503, "the users file cannot be read; see the service log")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "the request body cannot be parsed: send JSON in UTF-8 (or nothing)"
        return _error(request, exc.status_code, detail)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return _error(request, 422, f"invalid request: {problems}")

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(pages.router)
    app.include_router(zoom.router)
    app.include_router(page_actions.router)
    app.include_router(login.router)
    app.include_router(api.router)
    app.include_router(metrics.router)
    return app


def _error(request: Request, status: int, message: str) -> Response:
    if _wants_json(request):
        return JSONResponse({"detail": message}, status_code=status)
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "message": message, "caller": None, "csrf": ""},
        status_code=status,
    )


def _when(value: float | None) -> str:
    if not value:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(value)))


def _ago(value: float | None) -> str:
    if not value:
        return "never"
    seconds = max(0.0, time.time() - float(value))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _size(value: float | None) -> str:
    number = float(value or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if number < 1000:
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1000
    return f"{number:.1f} TB"
