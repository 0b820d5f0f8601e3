"""Secrets handed over by systemd (LoadCredential=), never from the config file itself.

edge.service loads every file of /etc/edge/credentials (root-only) with
`LoadCredential=edge:/etc/edge/credentials`; systemd names them `edge_<file name>` in
$CREDENTIALS_DIRECTORY (a private, read-only, unswappable mount). A drop-in may also add
one under its bare name (`LoadCredential=site-secret:/path`). Outside systemd (tests,
a shell) there is no credentials directory and nothing is found.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from edge.errors import EdgeError

PREFIX = "edge_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


class CredentialError(EdgeError):
    """A credential name systemd could not have produced, or one that cannot be read."""


def credential_path(name: str, env: Mapping[str, str] | None = None) -> Path | None:
    """Where credential `name` is (edge_<name> first, then <name>), or None."""
    if not _NAME.fullmatch(name):
        raise CredentialError(f"credential name {name!r}: expected letters, digits, '.', '_', '-'")
    env = os.environ if env is None else env
    base = env.get("CREDENTIALS_DIRECTORY")
    if not base:
        return None
    for candidate in (PREFIX + name, name):
        p = Path(base) / candidate
        try:
            if p.is_file():
                return p
        except OSError as exc:  # e.g. the credentials mount is not ours to read
            raise CredentialError(
                f"{p}: cannot look up credential {name!r}: {exc.strerror}"
            ) from exc
    return None


def read_credential(name: str, env: Mapping[str, str] | None = None) -> bytes | None:
    """The bytes of credential `name`, or None when systemd did not pass it."""
    p = credential_path(name, env)
    if p is None:
        return None
    try:
        return p.read_bytes()
    except OSError as exc:
        raise CredentialError(f"{p}: cannot read credential {name!r}: {exc.strerror}") from exc
