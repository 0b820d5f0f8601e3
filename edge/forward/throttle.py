"""Bandwidth cap: a token bucket shared by everything one destination sends.

`take(n)` blocks until n more bytes may go out. The bucket holds at most `burst` bytes (a
tenth of a second's worth by default), so an idle destination cannot save up and then
flood the link. Pure arithmetic in `TokenBucket.delay`; the clock and sleep are injectable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

PIECE = 64 * 1024  # bytes per take() when throttling a stream: smooth, cheap enough


class TokenBucket:
    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be above 0 bytes/s")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(PIECE, rate / 10))
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._at = clock()
        self._lock = threading.Lock()

    def delay(self, n: int, tokens: float) -> float:
        """Seconds to wait before n bytes may go, with `tokens` in the bucket. Pure."""
        return max(0.0, (n - tokens) / self.rate)

    def take(self, n: int) -> None:
        """Wait until n bytes may be sent (n may exceed the burst: the debt is waited out)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            wait = self.delay(n, self._tokens)
            self._tokens -= n  # may go negative: the next caller waits for the debt too
        if wait > 0:
            self._sleep(wait)


def throttled(chunks: Iterable[bytes], bucket: TokenBucket | None) -> Iterator[bytes]:
    """The same bytes, in pieces of at most PIECE, each let through by the bucket."""
    for chunk in chunks:
        if bucket is None:
            yield chunk
            continue
        view = memoryview(chunk)
        for start in range(0, len(view), PIECE):
            piece = view[start : start + PIECE]
            bucket.take(len(piece))
            yield bytes(piece)
