"""A loose per-key token bucket for guest callbacks (one bucket per VM id).

A guest that loops on a callback (a broken contextualization script) must not starve the others or flood the
GUEST stream; a legitimate guest sends a handful of requests a minute. The limiter is per gateway replica and in
memory: it is a guard against accidents, not an accounting system.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """Token buckets refilled at `rate` per second up to `burst`.

    Args:
        rate: sustained requests per second allowed per key.
        burst: requests allowed at once.
        clock: monotonic time source (tests pass a fake one).
        max_keys: buckets kept; beyond that the full ones (idle keys) are forgotten.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 50_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        """Take one token for `key`; False when its bucket is empty."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0 - 1e-9:  # tolerate float error: 0.1 s at 10/s is one whole token
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_keys:
            self._forget_idle(now)
        return True

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may call again."""
        tokens, _ = self._buckets.get(key, (self.burst, 0.0))
        return max(0.0, (1.0 - tokens) / self.rate)

    def _forget_idle(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
