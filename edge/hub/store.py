"""Where a received part ends up: checked, then linked to <site>/<study>/<series>/<sop>.dcm.

A part arrives as a temp file under `<store_dir>/.incoming` (same file system, fsynced by the
receiver). `check` reads its header only (pydicom `stop_before_pixels`), so a 1 GB part costs
a few kilobytes of reading. `place` links it to its final name with `os.link`, which never
replaces an existing file: two requests racing with the same instance cannot overwrite each
other, and an instance whose UID is taken by different bytes is refused, never replaced.

Failure codes (FailureReason, PS3.18 10.5 / PS3.4 B.2.3) are chosen for what the sending
appliance does with them (edge.forward.status): 0xC000 and 0x01xx park (a person must look),
0xA700 retries (the hub's disk, not the instance, is the problem).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

LOGGER = logging.getLogger(__name__)

CANNOT_UNDERSTAND = 0xC000  # not DICOM Part 10, or its header cannot be read
MISSING_ATTRIBUTE = 0x0120  # a UID the hub needs is absent
INVALID_VALUE = 0x0106  # a UID is not a UID (it would make a path)
INVALID_INSTANCE = 0x0117  # the SOP Instance UID is taken by different bytes at this hub
WRONG_STUDY = 0xA900  # the instance is not of the study the request URL names
OUT_OF_RESOURCES = 0xA700  # the hub cannot write (disk full, permissions): retried

INCOMING = ".incoming"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class PartProblem(Exception):
    """A part that cannot be stored; `code` is its FailureReason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Checked:
    """What the hub needs from an instance's header."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    study_uid: str
    series_uid: str


def is_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and _UID.match(value) is not None


def check(path: Path, study: str | None = None) -> Checked:
    """The header of the part in `path`; PartProblem when it is not a storable instance."""
    with path.open("rb") as fh:
        head = fh.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise PartProblem(CANNOT_UNDERSTAND, "not a DICOM Part 10 file (no DICM preamble)")
    try:
        # defer_size: a huge element before the pixels (a site's private blob) stays on disk.
        ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size="1 MB")
    except (InvalidDicomError, ValueError, KeyError, EOFError, OSError) as exc:
        raise PartProblem(CANNOT_UNDERSTAND, f"unreadable DICOM header: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on damaged headers
        raise PartProblem(CANNOT_UNDERSTAND, f"unreadable DICOM header: {exc}") from exc
    meta = ds.file_meta
    values = {
        "MediaStorageSOPClassUID": str(meta.get("MediaStorageSOPClassUID", "") or ""),
        "MediaStorageSOPInstanceUID": str(meta.get("MediaStorageSOPInstanceUID", "") or ""),
        "TransferSyntaxUID": str(meta.get("TransferSyntaxUID", "") or ""),
        "StudyInstanceUID": str(ds.get("StudyInstanceUID", "") or ""),
        "SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "") or ""),
    }
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise PartProblem(MISSING_ATTRIBUTE, f"the header lacks {', '.join(missing)}")
    bad = [name for name, value in values.items() if not is_uid(value)]
    if bad:
        raise PartProblem(INVALID_VALUE, f"not a valid UID: {', '.join(bad)}")
    own = str(ds.get("SOPInstanceUID", "") or "")
    if own and own != values["MediaStorageSOPInstanceUID"]:
        raise PartProblem(INVALID_VALUE, "SOPInstanceUID differs from the File Meta's")
    if study is not None and values["StudyInstanceUID"] != study:
        raise PartProblem(WRONG_STUDY, "the instance is not of the study in the request URL")
    return Checked(
        sop_class_uid=values["MediaStorageSOPClassUID"],
        sop_instance_uid=values["MediaStorageSOPInstanceUID"],
        transfer_syntax_uid=values["TransferSyntaxUID"],
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
    )


def final_path(store_dir: Path, site: str, checked: Checked) -> Path:
    return (
        store_dir
        / site
        / checked.study_uid
        / checked.series_uid
        / f"{checked.sop_instance_uid}.dcm"
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(root: Path, folder: Path) -> None:
    """mkdir -p, fsyncing each parent of a folder created so the new names survive a crash."""
    missing = []
    current = folder
    while not current.is_dir():
        missing.append(current)
        if current == root or current.parent == current:
            break
        current = current.parent
    for created in reversed(missing):
        try:
            created.mkdir(mode=0o700)
        except FileExistsError:
            continue
        _fsync_dir(created.parent)


def place(temp: Path, sha256: str, store_dir: Path, site: str, checked: Checked) -> bool:
    """Link the fsynced temp file to its final name and remove the temp name. True when it was
    placed now, False when identical bytes were there already; PartProblem when different
    bytes hold the name (INVALID_INSTANCE) or the hub cannot write (OUT_OF_RESOURCES)."""
    target = final_path(store_dir, site, checked)
    try:
        _make_dirs(store_dir, target.parent)
        try:
            os.link(temp, target)
        except FileExistsError:
            if file_sha256(target) != sha256:
                raise PartProblem(
                    INVALID_INSTANCE,
                    "this hub holds different bytes under the same SOP Instance UID",
                ) from None
            return False
        _fsync_dir(target.parent)
        return True
    except OSError as exc:
        code = OUT_OF_RESOURCES
        LOGGER.error("hub: cannot store an instance of %s: %s", site, exc.strerror or exc)
        reason = "the hub cannot store the instance now"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            reason += " (its disk is full)"
        raise PartProblem(code, reason) from exc
    finally:
        temp.unlink(missing_ok=True)
