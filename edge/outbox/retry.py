"""Retry schedule and per-destination circuit breaker: pure, clock passed in as `now`."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter and a ceiling.

    The n-th failure (attempts = n, from 1) waits base_s * factor**(n-1) seconds, spread by
    ±jitter (a fraction) so that many queued instances do not retry in lock-step, and never
    longer than ceiling_s.
    """

    base_s: float = 5.0
    factor: float = 2.0
    ceiling_s: float = 3600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.factor < 1 or self.ceiling_s < self.base_s:
            raise ValueError(
                f"retry policy base_s={self.base_s}, factor={self.factor}, "
                f"ceiling_s={self.ceiling_s}: need base_s > 0, factor >= 1, ceiling_s >= base_s"
            )
        if not 0 <= self.jitter < 1:
            raise ValueError(f"retry jitter {self.jitter}: need 0 <= jitter < 1")

    def next_delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `attempts`-th consecutive failure (1 = first failure)."""
        exponent = max(0, attempts - 1)
        try:
            raw = min(self.ceiling_s, self.base_s * self.factor**exponent)
        except OverflowError:
            raw = self.ceiling_s
        spread = rng.uniform(-self.jitter, self.jitter) if rng is not None else 0.0
        return min(self.ceiling_s, raw * (1.0 + spread))


class BreakerState(enum.Enum):
    CLOSED = "closed"  # sending normally
    OPEN = "open"  # the destination is down: do not even try until the cool-down ends
    HALF_OPEN = "half-open"  # one trial batch in flight; its result closes or re-opens


@dataclass
class CircuitBreaker:
    """One destination's breaker: opens after `threshold` consecutive failed batches, lets one
    trial batch through after `cooldown_s`, closes again on its success. No clock inside."""

    threshold: int = 5
    cooldown_s: float = 60.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    trial_in_flight: bool = False

    def __post_init__(self) -> None:
        if self.threshold < 1 or self.cooldown_s < 0:
            raise ValueError(
                f"circuit breaker threshold={self.threshold}, cooldown_s={self.cooldown_s}: "
                "need threshold >= 1 and cooldown_s >= 0"
            )

    def allow(self, now: float) -> bool:
        """May a batch be sent now? In half-open, only one trial batch at a time."""
        if self.state is BreakerState.OPEN and now >= self.opened_at + self.cooldown_s:
            self.state = BreakerState.HALF_OPEN
            self.trial_in_flight = False
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.HALF_OPEN and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def retry_at(self) -> float | None:
        """When an open breaker lets a trial through; None when it is not open."""
        return self.opened_at + self.cooldown_s if self.state is BreakerState.OPEN else None

    def record_success(self, now: float) -> None:
        del now  # kept for a uniform signature (and future metrics)
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.trial_in_flight = False

    def record_failure(self, now: float) -> None:
        """A whole batch failed (destination unreachable, not a per-instance rejection)."""
        self.failures += 1
        self.trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.state = BreakerState.OPEN
            self.opened_at = now
