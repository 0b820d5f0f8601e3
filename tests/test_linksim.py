"""The link simulator (tools/linksim.py) against a real TCP peer: rate, latency, drops, down."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tools.linksim import LinkSettings, LinkSim


@pytest.fixture()
def echo() -> Iterator[int]:
    """A loopback server that echoes what it receives (one thread per connection)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


def _echo_through(port: int, payload: bytes) -> bytes:
    """Send payload and read it all back, concurrently (the echo is full duplex)."""
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        while len(got) < len(payload):
            data = sock.recv(65536)
            if not data:
                break
            got += data
        sender.join()
    return bytes(got)


def test_rate_is_shaped_within_tolerance(echo: int) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    rate_bps = 4_000_000  # 500 kB/s: 1 MiB takes 2.1 s each way, overlapping
    with LinkSim(("127.0.0.1", echo), LinkSettings(rate_bps=rate_bps)) as link:
        start = time.monotonic()
        assert _echo_through(link.port, payload) == payload
        wall = time.monotonic() - start
        assert link.stats.up_bytes == link.stats.down_bytes == len(payload)
    expected = len(payload) / (rate_bps / 8)
    # upper bound loose: the build machine is shared, and thread scheduling adds delay
    assert expected * 0.9 < wall < expected * 1.35, (wall, expected)


def test_sender_is_held_back(tmp_path: object) -> None:
    """Backpressure: a sender cannot hand the link a whole upload at once (HTTP clients would
    then wait for an answer, and time out, while the bytes still trickle out)."""
    sink = socket.create_server(("127.0.0.1", 0))
    received = [0]

    def drain() -> None:
        conn, _ = sink.accept()
        with conn:
            while data := conn.recv(65536):
                received[0] += len(data)

    threading.Thread(target=drain, daemon=True).start()
    size, rate_bps = 8 << 20, 8_000_000  # 8.4 s at the link's rate
    target = ("127.0.0.1", sink.getsockname()[1])
    with LinkSim(target, LinkSettings(rate_bps=rate_bps)) as link:
        sock = socket.create_connection(("127.0.0.1", link.port))
        start = time.monotonic()
        sock.sendall(b"y" * size)
        handed_over = time.monotonic() - start
        sock.close()
    sink.close()
    # the client's own send buffer (loopback autotuning, up to 4 MB) may hold part of it
    assert handed_over > 0.4 * size / (rate_bps / 8), handed_over


def test_latency_is_added_each_way(echo: int) -> None:
    with LinkSim(("127.0.0.1", echo), LinkSettings(latency_s=0.15)) as link:
        start = time.monotonic()
        assert _echo_through(link.port, b"ping") == b"ping"
        assert time.monotonic() - start >= 0.3


def test_drops_reset_open_connections(echo: int) -> None:
    settings = LinkSettings(rate_bps=800_000, drop_every=(0.4, 0.8), seed=3)
    with LinkSim(("127.0.0.1", echo), settings) as link:
        with pytest.raises((ConnectionResetError, AssertionError, BrokenPipeError)):
            # 1 MiB at 100 kB/s would take 10 s: a drop comes first and resets it
            assert _echo_through(link.port, b"x" * (1 << 20)) == b"x" * (1 << 20)
        assert link.stats.drops >= 1
        assert link.stats.reset_connections >= 1
        # a new connection after the drop works
        assert _echo_through(link.port, b"again") == b"again"


def test_seeded_drop_times_repeat(echo: int) -> None:
    times = []
    for _ in range(2):
        with LinkSim(("127.0.0.1", echo), LinkSettings(drop_every=(0.2, 0.4), seed=7)) as link:
            time.sleep(1.3)
        times.append([round(t, 1) for t in link.stats.drop_times[:3]])
    assert len(times[0]) == 3
    assert times[0] == pytest.approx(times[1], abs=0.11)


def test_down_period_refuses_then_recovers(echo: int) -> None:
    with LinkSim(("127.0.0.1", echo), LinkSettings(down=((0.3, 1.0),))) as link:
        assert _echo_through(link.port, b"before") == b"before"
        time.sleep(0.5)
        assert link.is_down
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", link.port), timeout=2)
        time.sleep(1.0)
        assert not link.is_down
        assert _echo_through(link.port, b"after") == b"after"
