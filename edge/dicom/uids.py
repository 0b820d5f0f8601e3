"""Deterministic UIDs: the same input and settings give the same study, series and instances.

A re-run after a crash or a second conversion of the same slide must not create a second study
in the PACS. UIDs are derived from a key (input fingerprint + settings + role) by SHA-256 and
rendered under a root: the UUID-derived "2.25" root by default (PS3.5 B.2), or a site's own.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

DEFAULT_ROOT = "2.25"
_UID_CHARS = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_HEAD_BYTES = 1 << 20


class UidError(ValueError):
    pass


def check_root(root: str) -> str:
    root = root.rstrip(".")
    if not _UID_CHARS.match(root) or len(root) > 40:
        raise UidError(
            f"UID root {root!r} is not a dotted numeric OID of at most 40 characters "
            "(e.g. 1.2.826.0.1.3680043.10.1234)"
        )
    return root


def make_uid(root: str, *key: str) -> str:
    """A UID under `root` unique to `key`; at most 64 characters as DICOM requires."""
    digest = hashlib.sha256("\x1f".join(key).encode()).digest()
    number = int.from_bytes(digest[:16], "big")  # 128 bits, as a UUID would give
    if root == DEFAULT_ROOT:
        return f"2.25.{number}"
    room = 64 - len(root) - 1
    suffix = str(number)[:room].lstrip("0") or "1"
    return f"{root}.{suffix}"


def fingerprint(path: Path) -> str:
    """A content fingerprint that does not read a whole multi-GB slide.

    Size, the first MiB (headers, IFDs) and the last MiB (where Aperio and NDPI put their
    directories) identify a scanner file; a folder (DICOM series) hashes its files' fingerprints.
    """
    h = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(child.relative_to(path).as_posix().encode())
            h.update(fingerprint(child).encode())
        return h.hexdigest()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(_HEAD_BYTES))
        if size > _HEAD_BYTES:
            fh.seek(max(_HEAD_BYTES, size - _HEAD_BYTES), os.SEEK_SET)
            h.update(fh.read(_HEAD_BYTES))
    return h.hexdigest()
