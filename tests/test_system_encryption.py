"""At-rest encryption check: a fabricated sysfs block stack (this sandbox has no
device-mapper to build a real LUKS volume) and the real file system of the test machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edge.system.encryption import AtRest, check, check_devno, main


def _dev(
    sys_root: Path, name: str, devno: str, dm_uuid: str = "", slaves: tuple[str, ...] = ()
) -> None:
    d = sys_root / "devices" / "virtual" / "block" / name
    (d / "slaves").mkdir(parents=True)
    if dm_uuid:
        (d / "dm").mkdir()
        (d / "dm" / "uuid").write_text(dm_uuid + "\n")
    for s in slaves:
        (d / "slaves" / s).symlink_to(sys_root / "devices" / "virtual" / "block" / s)
    link = sys_root / "dev" / "block" / devno
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(d)


def _stack(tmp_path: Path) -> Path:
    s = tmp_path / "sys"
    _dev(s, "sda2", "8:2")
    _dev(s, "sdb1", "8:17")
    _dev(s, "sdc1", "8:33")
    _dev(s, "dm-0", "253:0", "CRYPT-LUKS2-1b2c-luks-root", ("sda2",))  # LUKS on sda2
    _dev(s, "dm-1", "253:1", "LVM-abc", ("dm-0",))  # LVM on LUKS
    _dev(s, "dm-2", "253:2", "LVM-def", ("sdb1",))  # LVM on a plain partition
    _dev(s, "dm-3", "253:3", "CRYPT-PLAIN-x", ("sdc1",))
    _dev(s, "dm-4", "253:4", "LVM-mixed", ("dm-3", "sda2"))  # spans a crypt and a plain PV
    return s


def test_block_stacks(tmp_path: Path) -> None:
    s = _stack(tmp_path)
    assert check_devno(253, 1, s).state is AtRest.ENCRYPTED  # LVM on LUKS
    assert check_devno(253, 0, s).state is AtRest.ENCRYPTED
    assert check_devno(8, 2, s).state is AtRest.PLAIN
    assert check_devno(253, 2, s).state is AtRest.PLAIN
    mixed = check_devno(253, 4, s)
    assert mixed.state is AtRest.PLAIN and mixed.device == "dm-4"
    assert check_devno(9, 9, s).state is AtRest.UNKNOWN


def test_real_file_system_gets_a_verdict(tmp_path: Path) -> None:
    v = check(tmp_path)
    assert v.state in set(AtRest) and v.reason
    st = os.stat(tmp_path).st_dev
    if os.major(st) != 0 and Path(f"/sys/dev/block/{os.major(st)}:{os.minor(st)}").exists():
        assert v.state is not AtRest.UNKNOWN


def test_tmpfs_is_reported_as_memory(tmp_path: Path) -> None:
    if not Path("/dev/shm").is_dir():
        return
    v = check("/dev/shm")
    assert v.state is AtRest.UNKNOWN and "memory" in v.reason


def test_cli_exit_codes(tmp_path: Path) -> None:
    code = main([str(tmp_path)])
    assert code in (0, 1, 2)
    out = subprocess.run(
        [sys.executable, "-m", "edge.system.encryption", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert out.returncode == code and out.stdout.startswith(f"{tmp_path}: ")


def test_credentials_lookup(tmp_path: Path) -> None:
    import pytest

    from edge.system.credentials import CredentialError, credential_path, read_credential

    (tmp_path / "edge_site-secret").write_bytes(b"s3cret")
    (tmp_path / "stow-token").write_bytes(b"tok")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert read_credential("site-secret", env) == b"s3cret"
    assert read_credential("stow-token", env) == b"tok"  # a drop-in's bare ID
    assert read_credential("missing", env) is None
    assert credential_path("site-secret", {}) is None  # not under systemd
    with pytest.raises(CredentialError, match=r"\.\./etc"):
        credential_path("../etc/shadow", env)
    if os.geteuid() != 0:  # root reads through mode 000; only a non-root run can check this
        (tmp_path / "edge_locked").write_bytes(b"x")
        (tmp_path / "edge_locked").chmod(0)
        with pytest.raises(CredentialError, match="cannot read credential 'locked'"):
            read_credential("locked", env)
