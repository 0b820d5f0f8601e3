"""Which files to queue for one destination: the originals, or concatenation parts of the
WSI instances larger than the destination's `max_instance_bytes`.

Over a link that drops, an instance is the unit that is retried: a 2 GB level 0 restarts from
zero at every drop and may never arrive. Parts of a few MB (edge/dicom/parts.py) lose at most
one part per drop. The send order is unchanged: parts have the level's ImageType and pixel
count, so the outbox still sends them after the overview and the smaller levels.

Parts are written under `work_dir/<source SOP Instance UID>-<cap>/` and reused when a
previous call completed them (a restart re-plans to the same files and UIDs).
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge.config import Destination
from edge.dicom import parts
from edge.errors import InputError
from edge.outbox.header import read_header

LOGGER = logging.getLogger(__name__)

WSI_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage


def prepare_for(dest: Destination, files: list[Path], work_dir: Path) -> list[Path]:
    """Files to queue for `dest`, in the order given (parts replace their source in place).

    An instance that is over the cap but cannot be split (not a TILED_FULL WSI, one frame
    larger than the cap) is sent whole, with a warning: a slow send beats none. Raises
    OutputError when parts cannot be written (disk full)."""
    cap = dest.max_instance_bytes
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
