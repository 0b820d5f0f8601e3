"""Secret files (the site secret, tokens, passwords): read only when nobody else can.

A secret that group or others may read has already leaked on a shared box, so such a file
is refused rather than used. The content is never logged or put in an error message.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edge.errors import EdgeError


class SecretError(EdgeError):
    """A secret file is missing, empty, or readable by others."""


def read_secret(path: Path, what: str) -> bytes:
    """The bytes of the secret file `path` without trailing line ends.

    `what` names the setting in errors (e.g. "[privacy] secret_file"). Refused unless the
    file is a regular file, non-empty, with no permission bits for group or others."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise SecretError(f"{what}: {path}: no such file") from exc
    except OSError as exc:
        raise SecretError(f"{what}: {path}: cannot open ({exc.strerror or exc})") from exc
    with os.fdopen(fd, "rb") as fh:
        # fstat on the open file: what is checked is what is read.
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"{what}: {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise SecretError(
                f"{what}: {path} has mode {mode:04o}: group or others may access it; "
                f"it must be readable by its owner only (chmod 600 {path})"
            )
        data = fh.read().rstrip(b"\r\n")
    if not data:
        raise SecretError(f"{what}: {path} is empty")
    return data
