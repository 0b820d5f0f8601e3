"""One destination's send loop: claim due instances, send a batch, record the outcomes.

The loop owns no state of its own beyond the circuit breaker: everything durable is in the
outbox, so a kill at any instant leaves rows `sending` that `Outbox.recover()` re-queues
(at-least-once; the destinations make a re-send idempotent).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge.forward.protocol import Destination, Outcome, Verdict
from edge.forward.windows import Window, is_open, next_open
from edge.outbox.retry import CircuitBreaker
from edge.outbox.store import Outbox

LOGGER = logging.getLogger(__name__)


@dataclass
class DrainResult:
    """What a drain did, for `edge send` and the logs."""

    delivered: int = 0
    retried: int = 0
    parked: int = 0
    batches: int = 0
    pending: int = 0  # still queued or waiting for a retry when the drain stopped
    reasons: list[str] = field(default_factory=list)  # parked: why (most recent first)
    next_window: float | None = None  # outside the send windows at the end: when the next opens


def window_wait(windows: tuple[Window, ...], t: float, tz: dt.tzinfo | None = None) -> float:
    """Seconds from `t` (epoch) until a send window is open (0 when one is). Pure but for
    the local time zone when `tz` is None."""
    if not windows:
        return 0.0
    moment = dt.datetime.fromtimestamp(t, tz)
    if is_open(windows, moment):
        return 0.0
    return max(1.0, next_open(windows, moment).timestamp() - t)


def drain(
    outbox: Outbox,
    destination: Destination,
    *,
    batch_size: int = 20,
    breaker: CircuitBreaker | None = None,
    deadline: float | None = None,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[DrainResult], None] | None = None,
    windows: tuple[Window, ...] = (),
    tz: dt.tzinfo | None = None,
) -> DrainResult:
    """Send until nothing is pending for `destination` (or `deadline`, a `now()` time, passes).

    Waits for retries when everything left is failing; the breaker stops hammering a
    destination that fails batch after batch. With `windows` (local times of day, in `tz`;
    None: the system's zone), nothing is sent outside them: the drain waits for the next
    window (or stops at the deadline, reporting it in `next_window`). A batch started inside
    a window is finished.
    """
    breaker = breaker or CircuitBreaker()
    result = DrainResult()
    name = destination.name
    while True:
        t = now()
        if deadline is not None and t >= deadline:
            break
        closed = window_wait(windows, t, tz)
        if closed > 0:
            if outbox.pending(name)[0] == 0:
                break
            result.next_window = t + closed
            LOGGER.info(
                "%s: outside the send windows; next opens at %s",
                name,
                dt.datetime.fromtimestamp(t + closed, tz).isoformat(timespec="minutes"),
            )
            if deadline is not None and t + closed >= deadline:
                break  # nothing may be sent before the deadline: say when, do not wait
            sleep(closed)
            continue
        result.next_window = None
        if not breaker.allow(t):
            wake = breaker.retry_at() or t + 1.0
            sleep(max(0.0, min(wake, deadline or wake) - t))
            continue
        items = outbox.claim(name, batch_size, t)
        if not items:
            waiting, due = outbox.pending(name)
            if waiting == 0:
                break
            wake = due if due is not None else t + 1.0
            sleep(max(0.05, min(wake, deadline or wake) - t))
            continue
        sendable = outbox.check_files(items, t)
        outcomes = destination.send(sendable) if sendable else []
        answered = {o.item_id for o in outcomes}
        outcomes += [
            Outcome(i.id, Verdict.RETRY, "no answer from the destination")
            for i in sendable
            if i.id not in answered
        ]
        counts = outbox.record(name, outcomes, now())
        result.batches += 1
        result.delivered += counts.get(Verdict.DELIVERED, 0)
        result.retried += counts.get(Verdict.RETRY, 0)
        result.parked += counts.get(Verdict.PARK, 0) + len(items) - len(sendable)
        result.reasons[:0] = [o.reason for o in outcomes if o.verdict is Verdict.PARK]
        if outcomes and all(o.verdict is Verdict.RETRY for o in outcomes):
            breaker.record_failure(now())
            LOGGER.warning("%s: batch of %d failed: %s", name, len(outcomes), outcomes[0].reason)
        else:
            breaker.record_success(now())
        if progress is not None:
            progress(result)
    result.pending = outbox.pending(name)[0]
    return result
