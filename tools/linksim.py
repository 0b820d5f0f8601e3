#!/usr/bin/env python3
"""A poor network link on loopback: a TCP proxy that shapes bandwidth, adds latency, drops
connections at random moments and goes down for periods (connections refused).

    python tools/linksim.py --target 127.0.0.1:8042 --listen 18042 --rate-bps 5000000 \
        --latency-ms 100 --drop-every 30-90 --down 120+20 --seed 1

Importable from tests:

    with LinkSim(("127.0.0.1", 8042), LinkSettings(rate_bps=5e6, drop_every=(30, 90))) as link:
        url = f"http://127.0.0.1:{link.port}/dicom-web"

Model: one token bucket per direction, shared by every connection through the link (a site's
uplink is one pipe, however many connections use it). Each direction of a connection is a
delay line (a reader stamps each chunk, a writer lets it out `latency` later, at the
bucket's rate). A drop resets (RST) every open connection at once; a down period closes the
listening socket (clients get ECONNREFUSED) and resets the open connections. Drop times are
drawn from a seeded random generator, so a run is repeatable up to thread scheduling.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import random
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

CHUNK = 16 * 1024


@dataclass(frozen=True)
class LinkSettings:
    rate_bps: float = 0.0  # bits per second each way (0: unshaped)
    latency_s: float = 0.0  # one-way delay added to every chunk
    drop_every: tuple[float, float] | None = None  # reset all connections every U(a, b) s
    down: tuple[tuple[float, float], ...] = ()  # (start s after start, length s): refused
    seed: int = 0


@dataclass
class LinkStats:
    up_bytes: int = 0  # client -> target, bytes that crossed the link
    down_bytes: int = 0  # target -> client
    connections: int = 0
    drops: int = 0  # drop events (each may reset several connections; a down start is one)
    reset_connections: int = 0
    refused: int = 0  # connection attempts while down (as seen by the simulator: none)
    drop_times: list[float] = field(default_factory=list)  # seconds since start


class _Bucket:
    """Token bucket in bytes; a small burst (20 ms of rate, at least one chunk)."""

    def __init__(self, rate_bytes: float) -> None:
        self.rate = rate_bytes
        self.capacity = max(CHUNK, rate_bytes * 0.02)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int, stop: threading.Event) -> bool:
        if self.rate <= 0:
            return True
        with self.lock:  # one sender at a time: the pipe is shared
            while not stop.is_set():
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n:
                    self.tokens -= n
                    return True
                stop.wait((n - self.tokens) / self.rate)
        return False


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a dropped mobile link or NAT timeout looks.

    shutdown() first: close() alone does not release a socket another thread is blocked in
    recv() on, so nothing would reach the peer until that recv returned."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sock.close()


class _Pipe:
    """Both directions of one proxied connection."""

    def __init__(self, link: LinkSim, client: socket.socket, server: socket.socket) -> None:
        self.link = link
        self.client = client
        self.server = server
        self.stop = threading.Event()
        self._ended = 0  # directions that have passed their EOF on
        self._ended_lock = threading.Lock()
        # Bounded delay lines: a real link pushes back once its bandwidth-delay product is in
        # flight; an unbounded one would take a whole upload at once and leave the client
        # waiting for an answer (and timing out) while the bytes trickle out behind it.
        settings = link.settings
        in_flight = settings.rate_bps / 8 * settings.latency_s if settings.rate_bps else 0
        slots = max(4, int((in_flight + 64 * 1024) // CHUNK) + 1)
        for src, dst, up in ((client, server, True), (server, client, False)):
            line: queue.Queue[tuple[float, bytes]] = queue.Queue(maxsize=slots)
            threading.Thread(target=self._read, args=(src, line), daemon=True).start()
            threading.Thread(target=self._write, args=(dst, line, up), daemon=True).start()

    def _read(self, src: socket.socket, line: queue.Queue[tuple[float, bytes]]) -> None:
        try:
            while not self.stop.is_set():
                data = src.recv(CHUNK)
                stamp = time.monotonic()
                while not self.stop.is_set():
                    try:
                        line.put((stamp, data), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if not data:
                    return
        except OSError:
            self.close(reset=True)

    def _write(self, dst: socket.socket, line: queue.Queue[tuple[float, bytes]], up: bool) -> None:
        bucket = self.link.up_bucket if up else self.link.down_bucket
        try:
            while not self.stop.is_set():
                try:
                    stamp, data = line.get(timeout=0.2)
                except queue.Empty:
                    continue
                wait = stamp + self.link.settings.latency_s - time.monotonic()
                if wait > 0 and self.stop.wait(wait):
                    return
                if not data:
                    dst.shutdown(socket.SHUT_WR)  # pass the half-close on
                    with self._ended_lock:
                        self._ended += 1
                        both = self._ended == 2
                    if both:
                        self.close(reset=False)
                    return
                for start in range(0, len(data), 4096):
                    piece = data[start : start + 4096]
                    if not bucket.take(len(piece), self.stop):
                        return
                    self.link.count(up, len(piece))  # first: the peer may read it at once
                    dst.sendall(piece)
        except OSError:
            self.close(reset=True)

    def close(self, reset: bool) -> None:
        if self.stop.is_set():
            return
        self.stop.set()
        for sock in (self.client, self.server):
            if reset:
                _reset(sock)
            else:
                sock.close()
        self.link.forget(self)


class LinkSim:
    """The proxy. `start()` binds a free loopback port (`port`), `stop()` ends everything."""

    def __init__(
        self, target: tuple[str, int], settings: LinkSettings, listen_port: int = 0
    ) -> None:
        self.target = target
        self.settings = settings
        self.port = listen_port
        self.stats = LinkStats()
        self.up_bucket = _Bucket(settings.rate_bps / 8)
        self.down_bucket = _Bucket(settings.rate_bps / 8)
        self._pipes: set[_Pipe] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.started = 0.0
        self._down_now = False

    # -- life cycle
    def start(self) -> LinkSim:
        self.started = time.monotonic()
        self._open_listener()
        for target in (self._accept_loop, self._chaos_loop):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._close_listener()
        self.drop_all(count=False)
        for thread in self._threads:
            thread.join(timeout=2)

    def __enter__(self) -> LinkSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state
    @property
    def is_down(self) -> bool:
        return self._down_now

    def count(self, up: bool, n: int) -> None:
        with self._lock:
            if up:
                self.stats.up_bytes += n
            else:
                self.stats.down_bytes += n

    def forget(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)

    def drop_all(self, count: bool = True) -> int:
        """Reset every open connection now; return how many."""
        with self._lock:
            pipes = list(self._pipes)
            if count:
                self.stats.drops += 1
                self.stats.reset_connections += len(pipes)
                self.stats.drop_times.append(time.monotonic() - self.started)
        for pipe in pipes:
            pipe.close(reset=True)
        return len(pipes)

    # -- listener
    def _open_listener(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # small kernel buffers on our side (accepted sockets inherit them): the shaping, not
        # loopback's megabytes of buffer, decides when a sender may go on
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._listener = listener

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            listener = self._listener
            if listener is None:
                self._stop.wait(0.05)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            for sock in (client, server):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.stats.connections += 1
                self._pipes.add(_Pipe(self, client, server))

    def _chaos_loop(self) -> None:
        """Drops at seeded random intervals; down periods on their schedule."""
        rng = random.Random(self.settings.seed)
        every = self.settings.drop_every
        next_drop = self.started + rng.uniform(*every) if every else float("inf")
        downs = sorted(self.settings.down)
        while not self._stop.wait(0.05):
            now = time.monotonic()
            elapsed = now - self.started
            down = any(start <= elapsed < start + length for start, length in downs)
            if down and not self._down_now:
                self._down_now = True
                self._close_listener()
                self.drop_all()
            elif not down and self._down_now:
                self._down_now = False
                self._open_listener()
            if now >= next_drop:
                if not self._down_now:
                    self.drop_all()
                next_drop = now + rng.uniform(*every) if every else float("inf")


def _pair(text: str, sep: str) -> tuple[float, float]:
    a, b = text.split(sep)
    return float(a), float(b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--listen", type=int, default=0, help="loopback port (0: any free)")
    parser.add_argument("--rate-bps", type=float, default=0, help="bits/s each way (0: unshaped)")
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--drop-every", help="A-B: reset connections every U(A,B) seconds")
    parser.add_argument(
        "--down", action="append", default=[], help="START+LENGTH seconds: refuse connections"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    host, port = args.target.rsplit(":", 1)
    settings = LinkSettings(
        rate_bps=args.rate_bps,
        latency_s=args.latency_ms / 1000,
        drop_every=_pair(args.drop_every, "-") if args.drop_every else None,
        down=tuple(_pair(d, "+") for d in args.down),
        seed=args.seed,
    )
    link = LinkSim((host, int(port)), settings, args.listen).start()
    print(f"linksim: 127.0.0.1:{link.port} -> {args.target} ({settings})", flush=True)
    try:
        while True:
            time.sleep(5)
            s = link.stats
            print(
                f"up {s.up_bytes} B, down {s.down_bytes} B, {s.connections} connections, "
                f"{s.drops} drops{' (down)' if link.is_down else ''}",
                flush=True,
            )
    except KeyboardInterrupt:
        link.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
