"""Finding finished slides in scanner output folders.

A scanner writes a slide over seconds to minutes, sometimes through a temporary name, and a
DICOM-native scanner writes a folder of instances. A slide counts as finished when its
signature (size and mtime; for a DICOM folder, the count, sizes and newest mtime of its files)
has not changed for `settle_s` and no vendor lock file sits beside it; or, where a ready
marker is configured, as soon as its marker exists (the scanner has said so: settle_s is not
waited on top). Scanning is polling (it works on network shares, where inotify sees nothing);
`wake()` lets an inotify watcher cut the wait on local folders.

`scan` and `Settler` are pure over what `os.scandir` reports, so tests drive them with real
files and an explicit clock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.config import Ingest

LOGGER = logging.getLogger(__name__)

# Written while a file is incomplete, by scanners and by copy tools.
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".lock", ".json")
LOCK_SUFFIXES = (".lock", ".lck")
MAX_DEPTH = 3  # scanners file slides by date or rack; deeper trees are not scanner output
_UNREACHABLE: set[Path] = set()  # folders whose failure was already logged (one line each)


@dataclass(frozen=True)
class Candidate:
    """A slide on disk as seen by one scan."""

    path: Path
    signature: tuple[int, int, int]  # files, bytes, newest mtime (ns)

    @property
    def fingerprint(self) -> str:
        files, size, mtime = self.signature
        return f"{self.path}|{files}|{size}|{mtime}"


def _locked(entry: Path) -> bool:
    return any(entry.with_name(entry.name + s).exists() for s in LOCK_SUFFIXES) or any(
        entry.with_suffix(s).exists() for s in LOCK_SUFFIXES
    )


def _dicom_folder(folder: Path) -> Candidate | None:
    files = bytes_ = newest = 0
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_file(follow_symlinks=False) and e.name.lower().endswith(".dcm"):
                    st = e.stat(follow_symlinks=False)
                    files += 1
                    bytes_ += st.st_size
                    newest = max(newest, st.st_mtime_ns)
                elif e.name.lower().endswith(PARTIAL_SUFFIXES[:5]):
                    return None  # an instance still being written
    except OSError:
        return None
    return Candidate(folder, (files, bytes_, newest)) if files else None


def scan(
    roots: Sequence[Path], extensions: Sequence[str], ready_marker: str = ""
) -> Iterator[Candidate]:
    """Every slide-looking thing under roots (files with a slide extension; folders of .dcm
    files), skipping hidden and partial names, locked files and ones without their marker."""
    for root in roots:
        yield from _scan(Path(root), tuple(extensions), ready_marker, 0)


def _scan(
    folder: Path, extensions: tuple[str, ...], marker: str, depth: int
) -> Iterator[Candidate]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:  # a share that went away: say so once, keep scanning the others
        if folder not in _UNREACHABLE:
            _UNREACHABLE.add(folder)
            LOGGER.warning("cannot scan %s: %s", folder, exc.strerror or exc)
        return
    if folder in _UNREACHABLE:
        _UNREACHABLE.discard(folder)
        LOGGER.info("%s is reachable again", folder)
    has_dicom = False
    for entry in entries:
        name = entry.name
        lower = name.lower()
        if name.startswith(".") or lower.endswith(PARTIAL_SUFFIXES):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            if depth < MAX_DEPTH:
                yield from _scan(path, extensions, marker, depth + 1)
            continue
        if not entry.is_file(follow_symlinks=False):
            continue
        if lower.endswith(".dcm"):
            has_dicom = True
            continue
        if not lower.endswith(extensions) or (marker and lower.endswith(marker.lower())):
            continue
        if marker and not path.with_name(name + marker).exists():
            continue
        if _locked(path):
            continue
        st = entry.stat(follow_symlinks=False)
        yield Candidate(path, (1, st.st_size, st.st_mtime_ns))
    if has_dicom and depth > 0 and ".dcm" in extensions:
        if (
            marker
            and not (folder / marker.lstrip(".")).exists()
            and not Path(str(folder) + marker).exists()
        ):
            return
        found = _dicom_folder(folder)
        if found is not None and not _locked(folder):
            yield found


def folder_settle_s(ingest: Ingest) -> float:
    """How long a watched slide must stay still. With a ready marker the scanner says when a
    slide is finished, so it is taken at once: waiting settle_s more would only delay it."""
    return 0.0 if ingest.ready_marker else ingest.settle_s


class Settler:
    """Which candidates have kept the same signature for settle_s (monotonic seconds)."""

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self._since: dict[Path, tuple[tuple[int, int, int], float]] = {}

    def settled(self, seen: Sequence[Candidate], now: float) -> list[Candidate]:
        ready: list[Candidate] = []
        current: dict[Path, tuple[tuple[int, int, int], float]] = {}
        for c in seen:
            previous = self._since.get(c.path)
            since = previous[1] if previous and previous[0] == c.signature else now
            current[c.path] = (c.signature, since)
            if c.signature[1] > 0 and now - since >= self.settle_s:
                ready.append(c)
        self._since = current  # gone from disk: forgotten
        return ready
