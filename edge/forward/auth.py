"""Request authentication for STOW-RS: bearer token file, HTTP basic, Google service account,
AWS SigV4.

Each profile turns a request about to be sent into the headers it needs (`headers`), and can
be told the peer refused them (`refresh`: re-read the secret, fetch a new token). The sender
retries once after a refresh; a second refusal is PARK for the profiles whose secret we hold
(basic, google, aws-sigv4: the same key will be refused again, so a person must fix it) and
RETRY for a bearer token file, which another program rotates on its own schedule.

Secrets are never logged nor put in a reason; files holding them must not be readable by group
or others (checked when read). The cloud libraries are imported only when their profile is
used, so a box without them runs every other destination.
"""

from __future__ import annotations

import base64
import configparser
import datetime as dt
import json
import logging
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx

from edge.config import ConfigError

LOGGER = logging.getLogger(__name__)

GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-healthcare",)
REFRESH_MARGIN_S = 60.0  # refresh a cloud token this long before it expires ...
REFRESH_SHARE = 0.2  # ... or this share of its lifetime, when that is shorter


class AuthError(Exception):
    """Credentials could not be produced. `permanent`: a person must fix them (PARK)."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class RequestAuth(Protocol):
    label: str  # the profile, for reasons: "bearer", "basic", "google", "aws-sigv4"
    park_on_reject: bool  # a refusal after a refresh is PARK (True) or RETRY (False)
    needs_payload_hash: bool  # headers() wants the body's SHA-256 (hex)

    def headers(self, method: str, url: str, payload_sha256: str | None) -> dict[str, str]:
        """Headers to add to this request; raises AuthError."""
        ...

    def refresh(self) -> None:
        """The peer refused the credentials: get fresh ones; raises AuthError."""
        ...


def read_secret_file(path: Path, what: str) -> str:
    """A secret file's text, stripped; ConfigError when missing, empty, or readable by group or
    others (the message names the file and its mode, never the content)."""
    try:
        mode = path.stat().st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise ConfigError(
                f"{what} {path} has mode {stat.S_IMODE(mode):04o}: it must not be readable by"
                " group or others (chmod 600)"
            )
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from exc
    if not text:
        raise ConfigError(f"{what} {path} is empty")
    return text


class BearerFile:
    """A bearer token read from a file at every request (another program keeps it fresh)."""

    label = "bearer"
    park_on_reject = False
    needs_payload_hash = False

    def __init__(self, token_file: Path) -> None:
        self.token_file = token_file

    def headers(self, method: str, url: str, payload_sha256: str | None) -> dict[str, str]:
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            reason = f"cannot read token file {self.token_file}: {exc.strerror or exc}"
            raise AuthError(reason, permanent=False) from exc
        if not token:
            raise AuthError(f"token file {self.token_file} is empty", permanent=False)
        return {"Authorization": f"Bearer {token}"}

    def refresh(self) -> None:
        """Nothing to do: the next headers() reads the file again."""


class Basic:
    """HTTP basic: a user name and a password, the password from a file (re-read on refusal)."""

    label = "basic"
    park_on_reject = True
    needs_payload_hash = False

    def __init__(self, username: str, password_file: Path | None, password: str = "") -> None:
        self.username = username
        self.password_file = password_file
        self._password = password
        if password_file is not None:
            self._password = read_secret_file(password_file, "password_file")

    def headers(self, method: str, url: str, payload_sha256: str | None) -> dict[str, str]:
        pair = f"{self.username}:{self._password}".encode()
        return {"Authorization": f"Basic {base64.b64encode(pair).decode('ascii')}"}

    def refresh(self) -> None:
        if self.password_file is None:
            return
        try:
            self._password = read_secret_file(self.password_file, "password_file")
        except ConfigError as exc:
            raise AuthError(str(exc), permanent=True) from exc


class GoogleServiceAccount:
    """Google Cloud Healthcare API: OAuth2 access tokens for a service account (JSON key file),
    fetched from the key's token_uri and refreshed before they expire."""

    label = "google"
    park_on_reject = True
    needs_payload_hash = False

    def __init__(
        self,
        credentials_file: Path,
        *,
        scopes: tuple[str, ...] = GOOGLE_SCOPES,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC).replace(tzinfo=None),
    ) -> None:
        try:
            from google.oauth2 import service_account
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                "auth = 'google' needs google-auth: pip install 'edge[cloud]'"
            ) from exc
        self.credentials_file = credentials_file
        self._clock = clock
        info = read_secret_file(credentials_file, "credentials_file")
        try:
            data = json.loads(info)
            self._credentials: Any = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                data, scopes=list(scopes)
            )
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"credentials_file {credentials_file} is not a service-account JSON key: {exc}"
            ) from exc
        self.token_uri = str(data.get("token_uri", ""))
        self._fetched: dt.datetime | None = None
        self.refreshes = 0  # tokens fetched (for tests and diagnostics)

    def _due(self) -> bool:
        creds = self._credentials
        if not creds.token or creds.expiry is None or self._fetched is None:
            return True
        lifetime = (creds.expiry - self._fetched).total_seconds()
        margin = min(REFRESH_MARGIN_S, max(0.0, lifetime) * REFRESH_SHARE)
        return bool(self._clock() >= creds.expiry - dt.timedelta(seconds=margin))

    def headers(self, method: str, url: str, payload_sha256: str | None) -> dict[str, str]:
        if self._due():
            self.refresh()
        return {"Authorization": f"Bearer {self._credentials.token}"}

    def refresh(self) -> None:
        from google.auth import exceptions
        from google.auth.transport.requests import Request

        where = f"token endpoint {self.token_uri}"
        try:
            fetched = self._clock()
            self._credentials.refresh(Request())
        except exceptions.RefreshError as exc:
            # invalid_grant and the like: the key is wrong, revoked or the clock is off.
            detail = str(exc.args[0]) if exc.args else str(exc)
            reason = (
                f"google auth: {where} refused the service-account key from"
                f" {self.credentials_file}: {detail}"
            )
            raise AuthError(reason, permanent=not exc.retryable) from exc
        except exceptions.GoogleAuthError as exc:  # TransportError: no answer
            reason = f"google auth: {where} unreachable: {exc}"
            raise AuthError(reason, permanent=False) from exc
        self._fetched = fetched
        self.refreshes += 1
        LOGGER.info("google auth: new access token, expires %s UTC", self._credentials.expiry)


def aws_credentials(path: Path, profile: str) -> tuple[str, str, str]:
    """(access key id, secret key, session token or "") from an AWS credentials INI file."""
    text = read_secret_file(path, "credentials_file")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise ConfigError(f"credentials_file {path} is not an INI file: {exc}") from exc
    if not parser.has_section(profile):
        found = ", ".join(parser.sections()) or "none"
        raise ConfigError(f"credentials_file {path} has no profile [{profile}] (found: {found})")
    section = parser[profile]
    key_id = section.get("aws_access_key_id", "").strip()
    secret = section.get("aws_secret_access_key", "").strip()
    if not key_id or not secret:
        raise ConfigError(
            f"credentials_file {path} [{profile}] needs aws_access_key_id and aws_secret_access_key"
        )
    return key_id, secret, section.get("aws_session_token", "").strip()


class AwsSigV4:
    """AWS Signature Version 4 (e.g. AWS HealthImaging, service "medical-imaging"), signed by
    botocore over the method, path, host, date and the payload's SHA-256 (hashed by the
    sender from the files before the request, so the body is signed, not UNSIGNED-PAYLOAD)."""

    label = "aws-sigv4"
    park_on_reject = True
    needs_payload_hash = True

    def __init__(
        self, credentials_file: Path, *, region: str, service: str, profile: str = "default"
    ) -> None:
        try:
            import botocore.auth  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                "auth = 'aws-sigv4' needs botocore: pip install 'edge[cloud]'"
            ) from exc
        self.credentials_file = credentials_file
        self.profile = profile
        self.region = region
        self.service = service
        self._keys = aws_credentials(credentials_file, profile)

    def headers(self, method: str, url: str, payload_sha256: str | None) -> dict[str, str]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        if payload_sha256 is None:
            raise AuthError("aws-sigv4: no payload hash to sign", permanent=True)
        host = httpx.URL(url).netloc.decode("ascii")
        request = AWSRequest(
            method=method,
            url=url,
            headers={"Host": host, "X-Amz-Content-SHA256": payload_sha256},
            data=b"",
        )
        key_id, secret, token = self._keys
        SigV4Auth(Credentials(key_id, secret, token or None), self.service, self.region).add_auth(
            request
        )
        wanted = ("Host", "X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token")
        out = {name: str(request.headers[name]) for name in wanted if name in request.headers}
        out["Authorization"] = str(request.headers["Authorization"])
        return out

    def refresh(self) -> None:
        """Re-read the credentials file (the keys may have been rotated)."""
        try:
            self._keys = aws_credentials(self.credentials_file, self.profile)
        except ConfigError as exc:
            raise AuthError(str(exc), permanent=True) from exc
