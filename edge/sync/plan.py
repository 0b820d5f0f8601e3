"""Which files to queue for one destination: the originals, or concatenation parts of the
WSI instances larger than the destination's `max_instance_bytes`.

Over a link that drops, an instance is the unit that is retried: a 2 GB level 0 restarts from
zero at every drop and may never arrive. Parts of a few MB (edge/dicom/parts.py) lose at most
one part per drop. The send order is unchanged: parts have the level's ImageType and pixel
count, so the outbox still sends them after the overview and the smaller levels.

Parts are written under `work_dir/<source SOP Instance UID>-<cap>/` and reused when a
previous call completed them (a restart re-plans to the same files and UIDs).

On an adaptive STOW-RS destination (edge/forward/link.py) whose link has dropped lately, the
cap is the smaller of `max_instance_bytes` and the request size the link calls for now
(`part_cap`), so a slide queued on a bad link is cut smaller: a part must fit one request,
and a request should finish between two drops.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from edge.config import Destination
from edge.dicom import parts
from edge.errors import InputError
from edge.forward import link
from edge.forward.stowrs import REQUEST_FLOOR
from edge.outbox.header import read_header

LOGGER = logging.getLogger(__name__)

WSI_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
MIN_PART = 1 << 20  # the config's floor for max_instance_bytes
MULTIPART_ROOM = 4096  # request bytes left for the multipart headers (as the config checks)


def part_cap(dest: Destination, request_bytes: int | None) -> int:
    """The part size for `dest`: max_instance_bytes, made smaller (not below 1 MiB) to fit
    `request_bytes` (the link's current request size; None: no estimate) on an adaptive
    STOW-RS destination. 0 stays 0 (parts off). Pure."""
    cap = dest.max_instance_bytes
    if cap <= 0 or request_bytes is None or not (dest.adaptive and dest.kind == "stowrs"):
        return cap
    return max(MIN_PART, min(cap, request_bytes - MULTIPART_ROOM))


def link_request_bytes(dest: Destination, state_dir: Path, now: float | None = None) -> int | None:
    """The request size `dest`'s saved link estimate calls for, or None when it is not
    adaptive or has no estimate yet (no drop seen in the last hour, or no throughput)."""
    if not (dest.adaptive and dest.kind == "stowrs"):
        return None
    estimator = link.load(link.state_path(state_dir, dest.name))
    now = time.time() if now is None else now
    if not estimator.has_estimate(now):
        return None
    return estimator.request_bytes(REQUEST_FLOOR, dest.max_request_bytes, now)


def prepare_for(
    dest: Destination, files: list[Path], work_dir: Path, cap: int | None = None
) -> list[Path]:
    """Files to queue for `dest`, in the order given (parts replace their source in place).
    `cap`: the part size (default: the destination's max_instance_bytes; see `part_cap`).

    An instance that is over the cap but cannot be split (not a TILED_FULL WSI, one frame
    larger than the cap) is sent whole, with a warning: a slow send beats none. Raises
    OutputError when parts cannot be written (disk full)."""
    cap = dest.max_instance_bytes if cap is None else cap
    if cap <= 0:
        return list(files)
    out: list[Path] = []
    for path in files:
        path = Path(path)
        if path.stat().st_size <= cap:
            out.append(path)
            continue
        header = read_header(path)
        if header.sop_class_uid != WSI_CLASS:
            LOGGER.warning(
                "%s: %d bytes is over max_instance_bytes %d of %s, but only WSI images can be "
                "split; sending it whole",
                path.name,
                header.size,
                cap,
                dest.name,
            )
            out.append(path)
            continue
        folder = Path(work_dir) / f"{header.sop_instance_uid}-{cap}"
        try:
            out += parts.split(path, folder, cap)
        except InputError as exc:
            LOGGER.warning("%s: not split for %s (%s); sending it whole", path.name, dest.name, exc)
            out.append(path)
    return out
