"""Sync experiments over the link simulator, shared by tests/test_sync_e2e.py and
`tools/bench sync`: a hub watcher (when each instance became visible at the hub), our
progressive sync (outbox + STOW-RS + concatenation parts; with `adaptive`, request size and
requests in flight follow the measured link, edge/forward/link.py) and a plain STOW-RS
baseline (the whole series in one request, retried until it goes through).

Times are seconds since the link started (`LinkSim.started`), so both senders are judged
against the same seeded drop schedule.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom

from edge.config import Destination
from edge.forward import factory
from edge.forward.stowrs import StowRsDestination
from edge.forward.worker import drain
from edge.outbox import CircuitBreaker, Outbox, RetryPolicy
from edge.outbox.schema import DATABASE
from edge.sync.plan import link_request_bytes, part_cap, prepare_for
from tools.linksim import LinkSim


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


class HubWatcher:
    """Polls the hub's REST API (directly, not through the link) for the SOP Instance UIDs it
    holds; records when each was first seen and the largest count of copies of any UID."""

    def __init__(self, http_url: str, t0: float, period_s: float = 0.25) -> None:
        self.http_url = http_url
        self.t0 = t0
        self.period_s = period_s
        self.first_seen: dict[str, float] = {}
        self.most_copies = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HubWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def poll(self) -> None:
        with httpx.Client(base_url=self.http_url, timeout=10) as client:
            response = client.post(
                "/tools/find", json={"Level": "Instance", "Query": {}, "Expand": True}
            )
            response.raise_for_status()
            now = time.monotonic() - self.t0
            uids = [str(e["MainDicomTags"]["SOPInstanceUID"]) for e in response.json()]
        for uid in uids:
            self.first_seen.setdefault(uid, now)
        if uids:
            self.most_copies = max(self.most_copies, max(uids.count(u) for u in set(uids)))

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.poll()
            except httpx.HTTPError:
                continue


@dataclass
class SyncRun:
    """What one sender did through the link."""

    name: str
    slide_bytes: int  # the original files' bytes (before any splitting)
    sent_files: list[Path] = field(default_factory=list)  # what was queued/sent
    wire_bytes: int = 0  # request bytes that crossed the link (lost ones included)
    first_seen: dict[str, float] = field(default_factory=dict)  # UID -> s since link start
    finished_s: float | None = None  # when everything was at the hub (None: never)
    attempts: int = 0  # requests (plain) or retried deliveries (progressive)
    requests: int = 0  # POSTs made
    most_in_flight: int = 1  # the most requests in flight at once
    most_copies: int = 0
    drops: int = 0

    @property
    def overhead(self) -> float:
        return self.wire_bytes / self.slide_bytes

    def seen(self, paths: list[Path]) -> float | None:
        """When the last of `paths` reached the hub (None: one never did)."""
        times = [self.first_seen.get(sop_uid(p)) for p in paths]
        return None if not times or None in times else max(t for t in times if t is not None)


def progressive(
    files: list[Path],
    link: LinkSim,
    hub_http_url: str,
    work: Path,
    *,
    max_instance_bytes: int,
    max_request_bytes: int,
    batch_size: int = 20,
    timeout_s: float = 600,
    adaptive: bool = False,
) -> SyncRun:
    """Our sync: parts for instances over the cap, the outbox's order, STOW-RS, retries.
    `adaptive`: the destination's link estimate (kept under `work`, fresh for each run) sets
    request size and requests in flight; parts are cut as the daemon cuts them."""
    name = "edge adaptive" if adaptive else "edge progressive"
    run = SyncRun(name, sum(p.stat().st_size for p in files))
    dest = Destination(
        name="hub",
        kind="stowrs",
        url=f"http://127.0.0.1:{link.port}/dicom-web",
        max_request_bytes=max_request_bytes,
        max_instance_bytes=max_instance_bytes,
        timeout_s=30,
        adaptive=adaptive,
    )
    cap = part_cap(dest, link_request_bytes(dest, work))
    run.sent_files = prepare_for(dest, files, work / "parts", cap)
    up0 = link.stats.up_bytes
    drops0 = link.stats.drops
    with (
        Outbox(work / DATABASE, policy=RetryPolicy(base_s=2.0, ceiling_s=30.0)) as outbox,
        HubWatcher(hub_http_url, link.started) as watcher,
    ):
        outbox.enqueue(run.sent_files, ["hub"], "slide")
        destination = factory.build(dest, work)
        try:
            result = drain(
                outbox,
                destination,
                batch_size=batch_size,
                breaker=CircuitBreaker(cooldown_s=10.0),
                deadline=time.time() + timeout_s,
            )
        finally:
            destination.close()
        if isinstance(destination, StowRsDestination):
            run.requests = destination.requests
            run.most_in_flight = max(1, destination.most_in_flight)
        if result.pending == 0 and result.parked == 0:
            run.finished_s = time.monotonic() - link.started
        run.attempts = result.retried
    run.first_seen = watcher.first_seen
    run.most_copies = watcher.most_copies
    run.wire_bytes = link.stats.up_bytes - up0
    run.drops = link.stats.drops - drops0
    return run


def _body(files: list[Path], boundary: str) -> Iterator[bytes]:
    for path in files:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def plain(
    files: list[Path],
    link: LinkSim,
    hub_http_url: str,
    *,
    retry_s: float = 2.0,
    timeout_s: float = 600,
) -> SyncRun:
    """The baseline: one STOW-RS request with the whole series, sent again after any
    failure (a fixed pause, no parts, no order), until it succeeds or timeout_s passes."""
    run = SyncRun("plain STOW-RS, retried", sum(p.stat().st_size for p in files))
    run.sent_files = list(files)
    boundary = uuid.uuid4().hex
    length = sum(p.stat().st_size for p in files) + len(files) * (
        len(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n") + 2
    )
    length += len(f"--{boundary}--\r\n")
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
        "Content-Length": str(length),
    }
    up0 = link.stats.up_bytes
    drops0 = link.stats.drops
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{link.port}/dicom-web/studies"
    with HubWatcher(hub_http_url, link.started) as watcher:
        while time.monotonic() < deadline:
            run.attempts += 1
            run.requests += 1
            try:
                with httpx.Client(timeout=httpx.Timeout(30.0)) as client:
                    response = client.post(url, content=_body(files, boundary), headers=headers)
                if response.status_code == 200:
                    run.finished_s = time.monotonic() - link.started
                    break
            except httpx.HTTPError:
                pass
            time.sleep(retry_s * random.uniform(0.8, 1.2))
    run.first_seen = watcher.first_seen
    run.most_copies = watcher.most_copies
    run.wire_bytes = link.stats.up_bytes - up0
    run.drops = link.stats.drops - drops0
    return run
