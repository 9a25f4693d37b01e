"""The per-VM token bucket that keeps a looping guest from flooding the gateway."""

from __future__ import annotations

from services.gateway.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_sustained_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    assert [limiter.allow("vm:1") for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("vm:2")  # other keys have their own bucket
    assert 0 < limiter.retry_after("vm:1") <= 0.1
    clock.now += 0.1  # one token refilled
    assert limiter.allow("vm:1") and not limiter.allow("vm:1")
    clock.now += 60
    assert sum(limiter.allow("vm:1") for _ in range(20)) == 5  # never more than the burst


def test_idle_keys_are_forgotten() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1, burst=2, clock=clock, max_keys=10)
    for vm in range(10):
        limiter.allow(f"vm:{vm}")
    clock.now += 5
    limiter.allow("vm:new")
    assert len(limiter._buckets) == 1
