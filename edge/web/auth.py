"""Dashboard users, passwords, sessions and CSRF tokens.

Users live in a small JSON file (`[web] users_file`, default <state_dir>/web-users.json, mode
0600): name -> role and an scrypt hash of the password, never the password. API tokens for
IT are stored as SHA-256 digests (a token is 32 random bytes, so a fast hash is enough).

A session is a cookie `name|role|expiry|nonce|signature` signed with HMAC-SHA256 under a
random key kept beside the users file (<file>.key, 0600). The CSRF token of a session is
another HMAC of the same cookie, so it needs no server-side storage and changes at each login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.fileio import write_atomic

ROLES = ("technician", "admin")
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 8
# scrypt at n=2**14, r=8: ~16 MB and ~50 ms per check; slow for guessing, fine for a login.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1


class AuthError(EdgeError):
    """A user, password or users file problem (the message never contains a password)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        found = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=32,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(found, base64.b64decode(digest))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Users:
    """The users file; re-read when it changes, so `edge web adduser` needs no restart."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._data: dict[str, Any] = {"users": {}, "tokens": {}}

    def _load(self) -> dict[str, Any]:
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._stamp, self._data = None, {"users": {}, "tokens": {}}
                return self._data
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                try:
                    data = json.loads(self.path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise AuthError(f"{self.path}: unreadable users file: {exc}") from exc
                if not isinstance(data, dict) or not isinstance(data.get("users"), dict):
                    raise AuthError(f"{self.path}: users file must hold an object with 'users'")
                data.setdefault("tokens", {})
                self._stamp, self._data = stamp, data
            return self._data

    def _save(self, data: dict[str, Any]) -> None:
        write_atomic(self.path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
        os.chmod(self.path, 0o600)

    def names(self) -> list[str]:
        return sorted(self._load()["users"])

    def add(self, name: str, role: str, password: str) -> None:
        """Add a user or replace their password and role."""
        if not NAME.match(name):
            raise AuthError(f"user name {name!r}: use 1-64 letters, digits, _ . @ -")
        if role not in ROLES:
            raise AuthError(f"role {role!r}: choose one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise AuthError(f"password too short: at least {MIN_PASSWORD} characters")
        data = json.loads(json.dumps(self._load()))
        data["users"][name] = {"role": role, "password": hash_password(password)}
        self._save(data)

    def add_token(self, name: str, role: str) -> str:
        """A new API token for name (returned once; only its digest is kept)."""
        if not NAME.match(name):
            raise AuthError(f"token name {name!r}: use 1-64 letters, digits, _ . @ -")
        if role not in ROLES:
            raise AuthError(f"role {role!r}: choose one of {', '.join(ROLES)}")
        token = secrets.token_urlsafe(32)
        data = json.loads(json.dumps(self._load()))
        data["tokens"][token_digest(token)] = {"name": name, "role": role}
        self._save(data)
        return token

    def login(self, name: str, password: str) -> User | None:
        entry = self._load()["users"].get(name)
        if not isinstance(entry, dict):
            hash_password(password)  # the same time for unknown names as for wrong passwords
            return None
        if not check_password(password, str(entry.get("password", ""))):
            return None
        return User(name, str(entry.get("role", "technician")))

    def by_token(self, token: str) -> User | None:
        entry = self._load()["tokens"].get(token_digest(token))
        if not isinstance(entry, dict):
            return None
        return User(f"token:{entry.get('name', '?')}", str(entry.get("role", "technician")))

    def role_of(self, name: str) -> str | None:
        entry = self._load()["users"].get(name)
        return str(entry.get("role")) if isinstance(entry, dict) else None


class Sessions:
    """Signed session cookies and their CSRF tokens."""

    def __init__(self, key: bytes, lifetime_s: float) -> None:
        self._key = key
        self.lifetime_s = lifetime_s

    @classmethod
    def from_key_file(cls, path: Path, lifetime_s: float) -> Sessions:
        """The signing key from path, created (random, 0600) on first use."""
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            key = secrets.token_bytes(32)
            write_atomic(path, key)
            os.chmod(path, 0o600)
        if len(key) < 16:
            raise AuthError(f"{path}: session key too short; delete it to make a new one")
        return cls(key, lifetime_s)

    def _sign(self, payload: str, purpose: str) -> str:
        mac = hmac.new(self._key, f"{purpose}|{payload}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    def issue(self, user: User, now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + self.lifetime_s)
        payload = f"{user.name}|{user.role}|{expiry}|{secrets.token_hex(8)}"
        return f"{payload}|{self._sign(payload, 'session')}"

    def verify(self, cookie: str, now: float | None = None) -> User | None:
        parts = cookie.split("|")
        if len(parts) != 5:
            return None
        payload, signature = "|".join(parts[:4]), parts[4]
        if not hmac.compare_digest(signature, self._sign(payload, "session")):
            return None
        name, role, expiry = parts[0], parts[1], parts[2]
        if not expiry.isdigit() or int(expiry) < (time.time() if now is None else now):
            return None
        return User(name, role)

    def csrf(self, cookie: str) -> str:
        return self._sign(cookie, "csrf")

    def check_csrf(self, cookie: str, token: str) -> bool:
        return bool(token) and hmac.compare_digest(token, self.csrf(cookie))


class Throttle:
    """Failed logins per user name and per client address: after `limit` failures within
    `window_s`, further tries wait until the oldest failure leaves the window (in memory:
    a restart forgives, which is fine for a bench-side box)."""

    def __init__(self, limit: int = 5, window_s: float = 300.0, max_keys: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, keys: tuple[str, ...], now: float | None = None) -> float:
        """Seconds to wait before another try (0: go ahead)."""
        at = time.monotonic() if now is None else now
        with self._lock:
            wait = 0.0
            for key in keys:
                recent = [t for t in self._fails.get(key, []) if at - t < self.window_s]
                if recent:
                    self._fails[key] = recent
                else:
                    self._fails.pop(key, None)
                if len(recent) >= self.limit:
                    wait = max(wait, recent[0] + self.window_s - at)
            return wait

    def failed(self, keys: tuple[str, ...], now: float | None = None) -> None:
        at = time.monotonic() if now is None else now
        with self._lock:
            if len(self._fails) >= self.max_keys:
                self._fails.clear()  # a flood of names: forget rather than grow
            for key in keys:
                self._fails.setdefault(key, []).append(at)

    def succeeded(self, keys: tuple[str, ...]) -> None:
        with self._lock:
            for key in keys:
                self._fails.pop(key, None)
