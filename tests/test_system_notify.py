"""sd_notify and the watchdog: pure rules with a fake clock, then real AF_UNIX datagrams
sent by a child process (the way systemd receives them)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.system import notify
from edge.system.notify import Heartbeats, Notifier, NotifyError, Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd's notify socket (filesystem path)."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def _messages(sock: socket.socket, until: float) -> list[str]:
    out = []
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return out
        sock.settimeout(left)
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            return out


def _child(code: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


def test_address_forms() -> None:
    assert notify.socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify.socket_address("@edge/notify") == b"\0edge/notify"
    with pytest.raises(NotifyError, match="vsock:2:1234"):
        notify.socket_address("vsock:2:1234")


def test_unusable_socket_disables_the_default_notifier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    monkeypatch.setattr(notify, "_DEFAULT", None)
    assert notify.ready("up") is False  # logged, not raised: the daemon keeps running


def test_unset_socket_is_a_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready("up") is False
    assert n.watchdog_ping() is False


def test_watchdog_interval_from_env() -> None:
    assert notify.watchdog_interval_s({}) is None
    assert notify.watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    me = os.getpid()
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(me)}
    assert notify.watchdog_interval_s(env, pid=me) == 2.0
    # Meant for another process (we inherited the environment): no watchdog for us.
    assert notify.watchdog_interval_s(env, pid=me + 1) is None
    with pytest.raises(NotifyError, match="WATCHDOG_USEC='soon'"):
        notify.watchdog_interval_s({"WATCHDOG_USEC": "soon"})
    with pytest.raises(NotifyError, match="positive"):
        notify.watchdog_interval_s({"WATCHDOG_USEC": "0"})


def test_heartbeats_pure_rule() -> None:
    hb = Heartbeats()
    hb.register("ingest", 10, now=0)
    hb.register("convert", 60, now=0)
    assert hb.stale(now=10) == []
    late = hb.stale(now=11)
    assert [s.stage for s in late] == ["ingest"] and late[0].age_s == 11
    hb.beat("ingest", now=11)
    assert hb.stale(now=11) == []
    assert [s.stage for s in hb.stale(now=75)] == ["convert", "ingest"]  # oldest first
    hb.unregister("convert")
    assert hb.stages() == ("ingest",)
    with pytest.raises(KeyError, match="convert"):
        hb.beat("convert", now=80)
    with pytest.raises(ValueError, match="max_age_s"):
        hb.register("x", 0, now=0)


def test_watchdog_pings_only_while_all_stages_alive(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    clock = Clock()
    wd = Watchdog(Notifier(path), interval_s=20, clock=clock)
    wd.register("ingest", 5)
    wd.register("convert", 30)
    assert wd.tick() is True
    assert sock.recv(100) == b"WATCHDOG=1"
    clock.now += 6  # ingest silent past its limit: no ping
    wd.beat("convert")
    assert wd.tick() is False
    wd.beat("ingest")
    assert wd.tick() is True
    assert sock.recv(100) == b"WATCHDOG=1"
    clock.now += 31  # everything hung
    assert wd.tick() is False
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(100)  # nothing was sent while stale


def test_watchdog_without_systemd_watchdog_never_pings(receiver: tuple[socket.socket, str]) -> None:
    _, path = receiver
    wd = Watchdog(Notifier(path), interval_s=None, clock=Clock())
    wd.register("ingest", 5)
    assert wd.tick() is False
    wd.start()  # no thread without an interval
    assert wd._thread is None


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_child_process_notifies_real_socket(tmp_path: Path, abstract: bool) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"edge-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        env_value = "@" + name
    else:
        env_value = str(tmp_path / "n.sock")
        sock.bind(env_value)
    try:
        _child(
            """
            from edge.system import notify
            assert notify.ready("watching 1 folder")
            assert notify.status("converting slide\\n2 of 3")
            assert notify.watchdog_ping()
            assert notify.extend_timeout(90)
            assert notify.stopping()
            """,
            {"NOTIFY_SOCKET": env_value},
        )
        got = _messages(sock, time.monotonic() + 2)
    finally:
        sock.close()
    assert got == [
        "READY=1\nSTATUS=watching 1 folder",
        "STATUS=converting slide 2 of 3",  # a newline would start a new assignment
        "WATCHDOG=1",
        "EXTEND_TIMEOUT_USEC=90000000",
        "STOPPING=1",
    ]


def test_child_watchdog_thread_stops_pinging_when_a_stage_hangs(
    receiver: tuple[socket.socket, str],
) -> None:
    """A child with WATCHDOG_USEC=0.4 s pings every 0.2 s while its stage beats, then the
    stage 'hangs' (stops beating) and the pings stop, which is what makes systemd restart it."""
    sock, path = receiver
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
            import time
            from edge.system.notify import Watchdog
            wd = Watchdog.from_env()
            wd.register("convert", 0.5)
            wd.start()
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                wd.beat("convert")
                time.sleep(0.05)
            print("hung", flush=True)
            time.sleep(2.5)
            wd.stop()
            """
            ),
        ],
        env={
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "NOTIFY_SOCKET": path,
            "WATCHDOG_USEC": "400000",
        },
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the stage stops beating
        assert line.strip() == "hung"
        before = _messages(sock, time.monotonic() + 0.01)
        # Pings may continue for up to max_age (0.5 s) + one period (0.2 s) after the hang.
        _messages(sock, time.monotonic() + 0.8)
        after = _messages(sock, time.monotonic() + 1.2)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    assert len(before) >= 3 and set(before) == {"WATCHDOG=1"}  # ~7 pings in 1.5 s
    assert after == []
