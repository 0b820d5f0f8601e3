"""Who is asking: session cookie or bearer token, the open-view rule, CSRF on every action.

Pages and the API share these FastAPI dependencies:
- `viewer`: a logged-in user, an API token, or (with `[web] open_view`) anyone on loopback;
- `actor`: a logged-in user whose request carries the session's CSRF token (form field
  `csrf` or header `X-CSRF-Token`), or an API token (no cookie, so no CSRF to forge);
- `admin`: an actor with the admin role.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from edge.web.auth import User

SESSION_COOKIE = "edge_session"
LOGIN_COOKIE = "edge_login"  # double-submit token of the login form (no session yet)
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class LoginRequired(Exception):
    """No user: pages redirect to the login form, the API answers 401."""


class Forbidden(Exception):
    """A user without the right (no CSRF token, wrong role): 403 with the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Caller:
    user: User | None
    cookie: str = ""  # the session cookie, when the user came with one
    token: bool = False  # authenticated with an API bearer token

    @property
    def name(self) -> str:
        return self.user.name if self.user else "anonymous"


def caller(request: Request) -> Caller:
    state = request.app.state
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        user = state.users.by_token(header[7:].strip())
        if user is None:
            raise LoginRequired()
        return Caller(user, token=True)
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if cookie:
        user = state.sessions.verify(cookie)
        # A removed user's session ends at once; a changed role takes effect at once.
        if user is not None:
            role = state.users.role_of(user.name)
            if role is not None:
                return Caller(User(user.name, role), cookie=cookie)
    return Caller(None)


def viewer(request: Request) -> Caller:
    found = caller(request)
    if found.user is not None:
        return found
    client = request.client.host if request.client else ""
    if request.app.state.config.web.open_view and client in LOOPBACK:
        return found
    raise LoginRequired()


async def actor(request: Request) -> Caller:
    found = caller(request)
    if found.user is None:
        raise LoginRequired()
    if found.token:
        return found
    token = request.headers.get("x-csrf-token", "")
    if not token and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        token = str(form.get("csrf", ""))
    if not request.app.state.sessions.check_csrf(found.cookie, token):
        raise Forbidden("missing or wrong CSRF token: reload the page and try again")
    return found


async def admin(request: Request) -> Caller:
    found = await actor(request)
    if found.user is None or not found.user.admin:
        raise Forbidden("this action needs the admin role")
    return found
