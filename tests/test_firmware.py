"""The appliance installer: into a temporary DESTDIR, twice; the second run changes nothing.

Runs firmware/install.sh for real (bash, install(1), useradd --root where we are root), then
checks the tree, the modes, that the site's edited config survives, and that systemd's own
tools accept what was installed (tmpfiles with --root, verify on the installed units and
their generated drop-in)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.conftest import need
from tests.test_systemd import exposure, verify

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "firmware/install.sh"

EXPECTED = {  # path below DESTDIR -> mode
    "etc/edge/edge.toml": 0o644,
    "etc/edge/credentials": 0o700,
    "etc/systemd/system/edge.service": 0o644,
    "etc/systemd/system/edge-housekeeping.service": 0o644,
    "etc/systemd/system/edge-housekeeping.timer": 0o644,
    "etc/systemd/system/edge.service.d/paths.conf": 0o644,
    "usr/lib/tmpfiles.d/edge.conf": 0o644,
    "usr/lib/sysctl.d/60-edge.conf": 0o644,
    "usr/lib/udev/rules.d/70-edge-gpu.rules": 0o644,
    "opt/edge/docs/system.md": 0o644,
}


def run_install(dest: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        ["bash", str(INSTALL), "--destdir", str(dest), "--no-venv", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if ok:
        assert out.returncode == 0, out.stderr
    return out


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path below root -> (mode, mtime_ns, content hash)."""
    snap = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        snap[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, digest)
    return snap


def test_install_twice_changes_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "image"
    first = run_install(dest, "--no-user")
    assert "done: 0 changed" not in first.stderr
    for rel, mode in EXPECTED.items():
        p = dest / rel
        assert p.exists(), f"{rel} not installed"
        assert p.stat().st_mode & 0o7777 == mode, f"{rel}: mode {oct(p.stat().st_mode)}"
    # Units are byte-identical to the repository's.
    for u in ("edge.service", "edge-housekeeping.service", "edge-housekeeping.timer"):
        assert (dest / "etc/systemd/system" / u).read_bytes() == (REPO / "systemd" / u).read_bytes()
    # Nothing outside the expected top-level folders (no venv, no state written at install).
    assert sorted(p.name for p in dest.iterdir()) == ["etc", "opt", "usr"]
    before = snapshot(dest)
    second = run_install(dest, "--no-user")
    assert "done: 0 changed" in second.stderr, second.stderr
    assert snapshot(dest) == before


def test_site_config_survives_and_watch_folders_reach_the_drop_in(tmp_path: Path) -> None:
    dest = tmp_path / "image"
    run_install(dest, "--no-user")
    conf = dest / "etc/edge/edge.toml"
    conf.write_text(conf.read_text().replace('"/srv/scanner"', '"/data/scans"'))
    out = run_install(dest, "--no-user", "--watch", "/data/scans", "--watch", "/srv/scanner")
    assert "done: 1 changed" in out.stderr, out.stderr  # only the drop-in
    assert '"/data/scans"' in conf.read_text()  # the site's edit kept
    drop_in = (dest / "etc/systemd/system/edge.service.d/paths.conf").read_text()
    assert "ReadWritePaths=-/data/scans -/srv/scanner" in drop_in
    assert "RequiresMountsFor=/data/scans /srv/scanner" in drop_in


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("relative/dir", "absolute"),
        ("/home/lab/scans", "ProtectHome"),
        ("/srv/my scans", "whitespace"),
    ],
)
def test_bad_watch_folders_are_refused(tmp_path: Path, folder: str, message: str) -> None:
    out = run_install(tmp_path / "image", "--no-user", "--watch", folder, ok=False)
    assert out.returncode == 2 and message in out.stderr
    assert not (tmp_path / "image").exists()  # refused before writing anything


def test_default_config_is_the_documented_minimum() -> None:
    data = tomllib.loads((REPO / "firmware/rootfs/etc/edge/edge.toml").read_text())
    assert data["storage"] == {"state_dir": "/var/lib/edge"}
    assert data["ingest"] == {"watch": ["/srv/scanner"]}
    assert data["web"] == {"listen": "127.0.0.1:8080"}
    assert data["destination"] == [
        {"name": "outgoing", "kind": "folder", "path": "/var/lib/edge/outgoing"}
    ]
    from edge.config import ConfigError, load

    try:
        cfg = load(REPO / "firmware/rootfs/etc/edge/edge.toml")
    except ConfigError as exc:
        if "unknown section" in str(exc) and ("ingest" in str(exc) or "web" in str(exc)):
            pytest.skip(f"this edge.config predates [ingest]/[web] (the daemon's): {exc}")
        raise
    assert cfg.state_dir == Path("/var/lib/edge")


def test_sysctl_keys_exist() -> None:
    """Each sysctl the overlay sets is a real kernel key (a typo would be silently ignored)."""
    lines = (REPO / "firmware/rootfs/usr/lib/sysctl.d/60-edge.conf").read_text().splitlines()
    keys = [ln.split("=")[0].strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert len(keys) >= 5
    missing = [k for k in keys if not Path("/proc/sys", *k.split(".")).exists()]
    # Network keys of another namespace may be hidden in a container; fs/vm are global.
    assert not [k for k in missing if not k.startswith("net.")], missing


@pytest.mark.integration
def test_image_root_with_user_tmpfiles_and_units(tmp_path: Path) -> None:
    """As root: the installer creates the edge user in the image's passwd, systemd-tmpfiles
    creates the directories with the overlay's modes and owners, and the installed units
    (with the generated drop-in) pass systemd-analyze verify and the exposure bound."""
    need(os.geteuid() == 0, "needs root (useradd --root, chown by systemd-tmpfiles)")
    need(
        shutil.which("systemd-tmpfiles") is not None, "systemd-tmpfiles not found (package systemd)"
    )
    need(shutil.which("useradd") is not None, "useradd not found (package passwd)")
    dest = tmp_path / "image"
    (dest / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        lines = Path("/etc", name).read_text().splitlines()
        (dest / "etc" / name).write_text(
            "\n".join(ln for ln in lines if ln.startswith("root:")) + "\n"
        )
    run_install(dest)
    passwd = (dest / "etc/passwd").read_text()
    entry = next(ln for ln in passwd.splitlines() if ln.startswith("edge:"))
    uid, gid, home, shell = (entry.split(":")[i] for i in (2, 3, 5, 6))
    assert int(uid) < 1000 and home == "/var/lib/edge" and shell == "/usr/sbin/nologin"
    assert "done: 0 changed" in run_install(dest).stderr  # the user is not created twice

    out = subprocess.run(
        ["systemd-tmpfiles", f"--root={dest}", "--create", "edge.conf"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    for rel, mode in {
        "var/lib/edge": 0o700,
        "var/lib/edge/outgoing": 0o700,
        "srv/scanner": 0o2770,
    }.items():
        st = (dest / rel).stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, int(uid), int(gid)), rel
    st = (dest / "etc/edge/credentials").stat()
    assert (st.st_mode & 0o7777, st.st_uid) == (0o700, 0)

    need(shutil.which("systemd-analyze") is not None, "systemd-analyze not found (package systemd)")
    (dest / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    shutil.copytree("/usr/lib/systemd/system", dest / "usr/lib/systemd/system", symlinks=True)
    stub = dest / "opt/edge/venv/bin/edge"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    res = verify(dest, "edge.service", "edge-housekeeping.service", "edge-housekeeping.timer")
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr
    assert exposure(dest, "edge.service") <= 3.0
