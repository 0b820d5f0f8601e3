"""Logging in and out: the login form's own token, throttling, the signed session cookie."""

from __future__ import annotations

import contextlib
import logging
import secrets
import sqlite3
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from edge.errors import EdgeError
from edge.web import actions
from edge.web.common import Text, render
from edge.web.security import LOGIN_COOKIE, SESSION_COOKIE, Caller, actor

LOGGER = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)


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
        _record_login(
            database,
            f"login failed for {username if known else 'an unknown name'}",
            username if known else "(unknown)",
            "failure",
        )
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
    _record_login(database, f"{user.name} ({user.role}) logged in", user.name, "success")
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


def _record_login(database: Path, detail: str, user: str, outcome: str) -> None:
    try:
        actions.record(database, "login", detail, actor=user, outcome=outcome)
    except (sqlite3.Error, EdgeError) as exc:  # no database yet: logging in still works
        LOGGER.warning("login not audited: %s", exc)


@router.post("/logout")
def logout(request: Request, who: Annotated[Caller, Depends(actor)]) -> Response:
    with contextlib.suppress(sqlite3.Error, EdgeError):
        actions.record(
            request.app.state.database, "logout", f"{who.name} logged out", actor=who.name
        )
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
