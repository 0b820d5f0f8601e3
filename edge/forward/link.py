"""Link awareness: what recent requests say about the link, and what the next ones should be.

A `LinkEstimator` is fed one `Observation` per STOW-RS request (bytes, seconds, how it ended,
when) and one `end_round` per wave of concurrent requests. It keeps:

- the throughput of one successful request, as an EWMA (alpha 0.3: a handful of requests
  follow a change of link, one odd request does not swing it),
- the transport failures (reset, timeout, refused) of the last hour, failures less than 1 s
  apart counted as one drop (a drop resets every connection in flight at once), and from them
  the mean gap between drops: the time the link was in use in the window (wall time covered
  by requests, in one-minute buckets) divided by the drops in it. Idle time does not count:
  a link nobody used for an hour has not shown that it stopped dropping,
- the response wait: seconds from the last byte of a body to the response headers (round
  trip plus the server's work), as an EWMA; shown, not used by the rules.

A request refused by the peer (HTTP 4xx/5xx) says nothing about the link and is not counted.

Request size, `request_bytes(floor, ceiling)`: with no drop in the window, the ceiling (the
destination's `max_request_bytes`: on a link that does not drop, big requests cost least).
Otherwise the bytes one request moves in a target duration of mean gap / 4, clamped to
2..60 s (no throughput measured yet: the floor). Why: with drops at random (Poisson, mean gap
G) a request of d seconds survives with probability exp(-d/G) and a failed one is sent again
from zero, so the useful fraction of the link is d / (G (exp((d + c)/G) - 1)), c being the
fixed cost of a request (round trip and the server's work, about 0.5 s). That fraction is flat
near its best (d of 2..8 s for G of 8..60 s) and falls fast above G/2; G/4 keeps most requests
whole (78 %) while each still carries seconds of data. Below 2 s the fixed cost would take a
fifth of every request or more; above 60 s a rare drop wastes a minute of link. Clamped to
[floor, ceiling].

Concurrency, `parallel(limit)`: additive increase, multiplicative (to 1) decrease. Start
with 1; after a round (as many requests as were in flight when it began) with no transport
failure whose throughput (bytes of its successful requests over its wall time) rose by at
least 10 % over the previous round's (the first round, or the first after a drop, has none to
beat: it always adds one, a probe), one more request in flight, up to `limit`; a round with a
transport failure goes back to 1 (a drop kills every request in flight, and more requests in
flight means more to resend). 10 % is above the round-to-round noise on a steady link and
below what a second request gains where latency, not bandwidth, bounds one request (a round
trip and the server's work per request).

Pure but for `load`/`save` (which write the state atomically under the state folder): times
are given by the caller; `to_json`/`from_json` carry the state across restarts.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.fileio import write_atomic

LOGGER = logging.getLogger(__name__)

WINDOW_S = 3600.0  # drops older than this are forgotten
SAME_DROP_S = 1.0  # transport failures closer than this are one drop
ALPHA = 0.3  # EWMA weight of the newest sample
MIN_TARGET_S = 2.0
MAX_TARGET_S = 60.0
GAP_FRACTION = 0.25  # target request duration = mean gap between drops * this
RISE = 1.10  # a round must beat the previous one by 10 % to add a request in flight
VERSION = 1


class Ending(enum.Enum):
    OK = "ok"  # a response came back (2xx, or 202/409 with per-instance results)
    TRANSPORT = "transport"  # no response: reset, timeout, refused: the link's doing
    PEER = "peer"  # the peer answered 4xx/5xx: not a link problem


@dataclass(frozen=True)
class Observation:
    bytes: int  # the request body's length
    seconds: float  # from the start of the request to its response (or failure)
    ending: Ending
    at: float  # when it ended (Unix time)
    response_s: float | None = None  # last body byte -> response headers, when known


@dataclass(frozen=True)
class Estimate:
    """What the status pages show."""

    throughput_bps: float | None  # bytes/s of one successful request (None: none yet)
    drops_last_hour: int
    mean_gap_s: float | None  # None: no drop in the window
    response_s: float | None
    request_bytes: int
    parallel: int
    updated_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "throughput_mbit_s": None
            if self.throughput_bps is None
            else round(self.throughput_bps * 8 / 1e6, 3),
            "drops_last_hour": self.drops_last_hour,
            "mean_gap_s": None if self.mean_gap_s is None else round(self.mean_gap_s, 1),
            "response_s": None if self.response_s is None else round(self.response_s, 3),
            "request_bytes": self.request_bytes,
            "parallel": self.parallel,
            "updated_at": self.updated_at,
        }


class LinkEstimator:
    """The link's recent history for one destination. Thread-safe (one lock): requests in
    flight on several threads report here."""

    def __init__(self) -> None:
        self.throughput_bps: float | None = None
        self.response_s: float | None = None
        self.drops: list[float] = []  # times of drops in the window, oldest first
        self.busy: dict[int, float] = {}  # minute (Unix time // 60) -> seconds in use
        self.updated_at: float | None = None
        self.level = 1  # requests in flight
        self.last_round_bps: float | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ feeding

    def observe(self, obs: Observation) -> None:
        with self._lock:
            # the wall time this request covered beyond what earlier ones did (requests in
            # flight together overlap)
            covered = obs.seconds
            if self.updated_at is not None:
                covered = min(covered, max(0.0, obs.at - self.updated_at))
            minute = int(obs.at // 60)
            self.busy[minute] = self.busy.get(minute, 0.0) + covered
            self.updated_at = max(obs.at, self.updated_at or obs.at)
            if obs.ending is Ending.OK and obs.seconds > 0 and obs.bytes > 0:
                rate = obs.bytes / obs.seconds
                self.throughput_bps = _ewma(self.throughput_bps, rate)
                if obs.response_s is not None:
                    self.response_s = _ewma(self.response_s, obs.response_s)
            elif obs.ending is Ending.TRANSPORT and (
                not self.drops or obs.at - self.drops[-1] >= SAME_DROP_S
            ):
                self.drops.append(obs.at)
            self._forget(obs.at)

    def end_round(self, ok_bytes: int, seconds: float, transport_failures: int) -> int:
        """A wave of concurrent requests is over; returns the new number in flight."""
        with self._lock:
            if transport_failures:
                self.level = 1
                self.last_round_bps = None  # the next round starts a new comparison
                return self.level
            if seconds <= 0 or ok_bytes <= 0:
                return self.level
            rate = ok_bytes / seconds
            if self.last_round_bps is None or rate >= RISE * self.last_round_bps:
                self.level += 1  # parallel() clamps to the caller's limit
            self.last_round_bps = rate
            return self.level

    # ------------------------------------------------------------------ deciding

    def mean_gap_s(self, now: float) -> float | None:
        with self._lock:
            return self._mean_gap(now)

    def drops_in_window(self, now: float) -> int:
        with self._lock:
            return sum(1 for t in self.drops if now - t <= WINDOW_S)

    def request_bytes(self, floor: int, ceiling: int, now: float) -> int:
        """How large a request should be to usually finish between drops (module docstring)."""
        with self._lock:
            gap = self._mean_gap(now)
            if gap is None:
                return ceiling
            if self.throughput_bps is None:
                return max(1, min(floor, ceiling))
            target = min(MAX_TARGET_S, max(MIN_TARGET_S, gap * GAP_FRACTION))
            wanted = int(self.throughput_bps * target)
            return max(min(floor, ceiling), min(ceiling, wanted))

    def has_estimate(self, now: float) -> bool:
        """True when drops were seen in the window and a throughput is known: only then does
        request_bytes() say something other than the ceiling."""
        with self._lock:
            return self.throughput_bps is not None and self._mean_gap(now) is not None

    def parallel(self, limit: int) -> int:
        with self._lock:
            self.level = max(1, min(self.level, limit))
            return self.level

    def estimate(self, floor: int, ceiling: int, limit: int, now: float) -> Estimate:
        return Estimate(
            throughput_bps=self.throughput_bps,
            drops_last_hour=self.drops_in_window(now),
            mean_gap_s=self.mean_gap_s(now),
            response_s=self.response_s,
            request_bytes=self.request_bytes(floor, ceiling, now),
            parallel=self.parallel(limit),
            updated_at=self.updated_at,
        )

    # ------------------------------------------------------------------ state

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "version": VERSION,
                "throughput_bps": self.throughput_bps,
                "response_s": self.response_s,
                "drops": list(self.drops),
                "busy": {str(k): v for k, v in self.busy.items()},
                "updated_at": self.updated_at,
                "parallel": self.level,
                "last_round_bps": self.last_round_bps,
            }

    @classmethod
    def from_json(cls, data: Any) -> LinkEstimator:
        """Raises ValueError on anything but what to_json writes."""
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError("not a link estimate (version 1)")
        est = cls()
        est.throughput_bps = _number(data.get("throughput_bps"))
        est.response_s = _number(data.get("response_s"))
        drops = data.get("drops", [])
        if not isinstance(drops, list):
            raise ValueError("drops must be a list of times")
        est.drops = sorted(float(t) for t in drops if _number(t) is not None)
        busy = data.get("busy", {})
        if not isinstance(busy, dict):
            raise ValueError("busy must map minutes to seconds")
        est.busy = {int(k): float(v) for k, v in busy.items() if _number(v) is not None}
        est.updated_at = _number(data.get("updated_at"))
        level = data.get("parallel", 1)
        est.level = level if isinstance(level, int) and level >= 1 else 1
        est.last_round_bps = _number(data.get("last_round_bps"))
        return est

    # ------------------------------------------------------------------ internals

    def _forget(self, now: float) -> None:
        self.drops = [t for t in self.drops if now - t <= WINDOW_S]
        oldest = int((now - WINDOW_S) // 60)
        self.busy = {m: v for m, v in self.busy.items() if m >= oldest}

    def _mean_gap(self, now: float) -> float | None:
        drops = [t for t in self.drops if now - t <= WINDOW_S]
        if not drops:
            return None
        oldest = int((now - WINDOW_S) // 60)
        observed = sum(v for m, v in self.busy.items() if m >= oldest)
        return max(observed, 1e-3) / len(drops)


def state_path(state_dir: Path, destination: str) -> Path:
    """Where a destination's estimate lives (one small JSON file each)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in destination)
    return Path(state_dir) / "link" / f"{safe}.json"


def load(path: Path) -> LinkEstimator:
    """The saved estimate, or a fresh one when there is none; an unreadable file is logged and
    replaced (it is a cache of measurements, never worth stopping a send for)."""
    try:
        return LinkEstimator.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return LinkEstimator()
    except (OSError, ValueError, TypeError) as exc:
        LOGGER.warning("link estimate %s unreadable (%s); starting afresh", path, exc)
        return LinkEstimator()


def save(estimator: LinkEstimator, path: Path) -> None:
    """Atomically; failures are logged, not raised (a lost estimate is re-learnt)."""
    try:
        write_atomic(Path(path), json.dumps(estimator.to_json()).encode("utf-8"))
    except (OSError, EdgeError) as exc:
        LOGGER.warning("cannot save the link estimate %s: %s", path, exc)


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - ALPHA) * old + ALPHA * new


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def describe(
    state_dir: Path, destination: str, ceiling: int, floor: int, limit: int, now: float
) -> dict[str, Any] | None:
    """The saved estimate of one destination as the status pages show it (None: nothing
    measured yet). `limit`, `floor`: the destination's (stowrs.PARALLEL_LIMIT, REQUEST_FLOOR)."""
    path = state_path(state_dir, destination)
    if not path.is_file():
        return None
    return load(path).estimate(floor, ceiling, limit, now).as_dict()
