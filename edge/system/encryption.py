"""Is the state directory encrypted at rest (dm-crypt / LUKS)?

Slides and the outbox hold patient data, so the appliance's /var/lib/edge belongs on an
encrypted volume (docs/system.md). This check walks the block-device stack in sysfs under
the file system holding a path: the data is encrypted when every path from that device down
to the disks passes through a dm-crypt mapping (device-mapper UUID "CRYPT-..."), whatever
sits in between (LVM on LUKS, LUKS on RAID). `python -m edge.system.encryption PATH` prints
the verdict; the installer and `edge doctor` can warn on it.
"""

from __future__ import annotations

import enum
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

SYS = Path("/sys")
MOUNTINFO = Path("/proc/self/mountinfo")


class AtRest(enum.Enum):
    ENCRYPTED = "encrypted"
    PLAIN = "plain"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Verdict:
    state: AtRest
    device: str  # the block device found ("dm-1", "sda2") or the mount source
    reason: str


def _dm_uuid(dev_dir: Path) -> str:
    try:
        return (dev_dir / "dm" / "uuid").read_text().strip()
    except OSError:
        return ""


def _all_paths_crypt(dev_dir: Path, depth: int = 0) -> bool:
    """True when this device is dm-crypt or every device under it is (recursively)."""
    if depth > 16:  # a cycle would be a sysfs bug; do not loop forever
        return False
    if _dm_uuid(dev_dir).startswith("CRYPT-"):
        return True
    slaves = dev_dir / "slaves"
    below = sorted(slaves.iterdir()) if slaves.is_dir() else []
    if not below:
        return False  # a disk or partition reached without crypt on the way
    return all(_all_paths_crypt(s.resolve(), depth + 1) for s in below)


def check_devno(major: int, minor: int, sys_root: Path = SYS) -> Verdict:
    """The verdict for one block device number (pure over a sysfs tree)."""
    link = sys_root / "dev" / "block" / f"{major}:{minor}"
    if not link.exists():
        return Verdict(AtRest.UNKNOWN, f"{major}:{minor}", "not a block device in sysfs")
    dev_dir = link.resolve()
    name = dev_dir.name
    if _all_paths_crypt(dev_dir):
        return Verdict(AtRest.ENCRYPTED, name, "on a dm-crypt (LUKS) mapping")
    return Verdict(AtRest.PLAIN, name, "no dm-crypt mapping between the file system and disk")


def _mount_source(path: Path, mountinfo: Path) -> tuple[str, str]:
    """(file system type, source) of the mount holding `path` (longest mount point)."""
    best = ("", "", "")
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        point = fields[4].replace("\\040", " ")
        inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, tail[0], tail[1])
    return best[1], best[2]


def check(
    path: str | os.PathLike[str], sys_root: Path = SYS, mountinfo: Path = MOUNTINFO
) -> Verdict:
    """The verdict for the file system holding `path`."""
    p = Path(path).resolve()
    dev = os.stat(p).st_dev
    if os.major(dev) != 0:
        return check_devno(os.major(dev), os.minor(dev), sys_root)
    # Anonymous device (btrfs subvolume, overlay, tmpfs): ask the mount table for the source.
    fstype, source = _mount_source(p, mountinfo)
    if fstype in ("tmpfs", "ramfs"):
        return Verdict(AtRest.UNKNOWN, source, f"{fstype}: held in memory, lost at power off")
    try:
        st = os.stat(source)
    except OSError:
        return Verdict(
            AtRest.UNKNOWN,
            source or "?",
            f"{fstype or 'unknown'} file system; "
            "its backing device cannot be determined (check it by hand)",
        )
    if not stat.S_ISBLK(st.st_mode):
        return Verdict(AtRest.UNKNOWN, source, f"{fstype} on {source}, not a block device")
    return check_devno(os.major(st.st_rdev), os.minor(st.st_rdev), sys_root)


def main(argv: list[str] | None = None) -> int:
    """Print the verdict; exit 0 encrypted, 1 plain, 2 unknown (the installer warns on 1, 2)."""
    args = sys.argv[1:] if argv is None else argv
    target = args[0] if args else "/var/lib/edge"
    v = check(target)
    print(f"{target}: {v.state.value} ({v.device}: {v.reason})")
    return {AtRest.ENCRYPTED: 0, AtRest.PLAIN: 1, AtRest.UNKNOWN: 2}[v.state]


if __name__ == "__main__":
    raise SystemExit(main())
