"""Which site a request comes from: its bearer token against each site's token file.

Token files are re-read when their modification time or size changes, so a rotated token
takes effect without a restart (the site's `BearerFile` re-reads its copy on every request
too). Comparison is constant-time per site (hmac.compare_digest) and every site is compared,
so the answer's timing says nothing about which token was close. Tokens are never logged.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from edge.secrets import SecretError, read_secret

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Cached:
    stamp: tuple[int, int]  # (st_mtime_ns, st_size)
    token: bytes


class TokenFiles:
    """Name -> token file; `match(token)` gives the name whose file holds that token."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = dict(files)
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def _token(self, name: str) -> bytes | None:
        path = self.files[name]
        try:
            info = os.stat(path)
        except OSError:
            return None
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and cached.stamp == stamp:
                return cached.token
        try:
            token = read_secret(path, f"token file of {name}")
        except SecretError as exc:
            # A token made readable by others (or emptied) stops working until fixed.
            LOGGER.error("hub: %s", exc)
            return None
        with self._lock:
            self._cache[name] = _Cached(stamp, token)
        return token

    def match(self, presented: bytes) -> str | None:
        found = None
        for name in self.files:
            token = self._token(name)
            if token is not None and hmac.compare_digest(token, presented) and found is None:
                found = name
        return found


def bearer(authorization: str | None) -> bytes | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("utf-8", "surrogateescape")
