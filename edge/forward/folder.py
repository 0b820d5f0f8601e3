"""Folder destination: <root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm.

Each file is copied to a temporary name in the target folder, fsynced, renamed over the final
name with os.replace and the folder fsynced, so a reader never sees a partial file and a crash
leaves at most a stray temporary. Sending the same bytes again is DELIVERED without copying;
different bytes under the same SOP Instance UID are PARK (a person must look).
"""

from __future__ import annotations

import errno
import logging
import os
import uuid
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from edge.forward.protocol import Item, Outcome, Verdict
from edge.forward.throttle import TokenBucket

LOGGER = logging.getLogger(__name__)
CHUNK = 1 << 20


class FolderDestination:
    def __init__(self, name: str, path: Path, bucket: TokenBucket | None = None) -> None:
        self.name = name
        self.path = Path(path)
        self.bucket = bucket  # bandwidth cap on the copy (a folder on a network mount)

    def send(self, items: list[Item]) -> list[Outcome]:
        return [self._deliver(item) for item in items]

    def close(self) -> None:
        """Nothing is held open."""

    def target(self, item: Item) -> Path:
        """Where `item` goes; reads the study and series UIDs from the file's header."""
        header = dcmread(
            item.path,
            stop_before_pixels=True,
            specific_tags=["StudyInstanceUID", "SeriesInstanceUID"],
        )
        study = str(header.get("StudyInstanceUID", "") or "")
        series = str(header.get("SeriesInstanceUID", "") or "")
        if not study or not series:
            raise InvalidDicomError("StudyInstanceUID or SeriesInstanceUID is missing")
        return self.path / study / series / f"{item.sop_instance_uid}.dcm"

    def _deliver(self, item: Item) -> Outcome:
        try:
            target = self.target(item)
        except FileNotFoundError:
            return Outcome(item.id, Verdict.PARK, f"queued file missing: {item.path}")
        except (InvalidDicomError, ValueError, KeyError) as exc:
            return Outcome(item.id, Verdict.PARK, f"queued file {item.path} is unusable: {exc}")
        except OSError as exc:
            return Outcome(item.id, Verdict.RETRY, f"cannot read {item.path}: {exc}")
        try:
            if target.exists():
                if same_bytes(item.path, target):
                    return Outcome(item.id, Verdict.DELIVERED, f"already present at {target}")
                return Outcome(
                    item.id,
                    Verdict.PARK,
                    f"conflict: {target} exists with different content for this SOP Instance UID",
                )
            copy_atomically(item.path, target, self.bucket)
        except FileNotFoundError as exc:
            if not item.path.exists():
                return Outcome(item.id, Verdict.PARK, f"queued file missing: {item.path}")
            return Outcome(item.id, Verdict.RETRY, f"copy to {target} failed: {exc}")
        except OSError as exc:
            return Outcome(item.id, Verdict.RETRY, f"copy to {target} failed: {_describe(exc)}")
        return Outcome(item.id, Verdict.DELIVERED, f"copied to {target}")


def same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            chunk = fa.read(CHUNK)
            if chunk != fb.read(CHUNK):
                return False
            if not chunk:
                return True


def copy_atomically(source: Path, target: Path, bucket: TokenBucket | None = None) -> None:
    """Copy `source` to `target` via a temporary name, fsync, os.replace and a folder fsync."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with source.open("rb") as src, temp.open("wb") as dst:
            while chunk := src.read(CHUNK):
                if bucket is not None:
                    bucket.take(len(chunk))
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{exc} [{name}]" if name else str(exc)
