"""One destination's send loop: claim due instances, send a batch, record the outcomes.

The loop owns no state of its own beyond the circuit breaker: everything durable is in the
outbox, so a kill at any instant leaves rows `sending` that `Outbox.recover()` re-queues
(at-least-once; the destinations make a re-send idempotent).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge.forward.protocol import Destination, Outcome, Verdict
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
) -> DrainResult:
    """Send until nothing is pending for `destination` (or `deadline`, a `now()` time, passes).

    Waits for retries when everything left is failing; the breaker stops hammering a
    destination that fails batch after batch.
    """
    breaker = breaker or CircuitBreaker()
    result = DrainResult()
    name = destination.name
    while True:
        t = now()
        if deadline is not None and t >= deadline:
            break
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
