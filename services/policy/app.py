"""Policy wiring: the ticker (one at a time, under a lease) and the evaluation workers.

The ticker publishes `policy.tick` every `tick_interval`; workers (all replicas, sharing the durable consumer)
evaluate every active environment's policies on each tick and when new metrics arrive, and record each decision.
"""

from __future__ import annotations

import time

from libs.common import subjects as s
from libs.common.bus import ConsumerSpec, Lease
from libs.common.messages import PolicyTick, VmMetrics
from libs.common.runner import ServiceContext
from services.policy.handlers.evaluate import Evaluator
from services.policy.settings import Settings


async def setup(ctx: ServiceContext) -> None:
    settings: Settings = ctx.settings
    evaluator = Evaluator(ctx, settings)
    await ctx.bus.consume(ConsumerSpec("policy-tick", s.POLICY_TICK, PolicyTick, concurrency=1, max_deliver=3),
                          evaluator.on_tick)
    await ctx.bus.consume(ConsumerSpec("policy-vm-metrics", s.VM_METRICS, VmMetrics, concurrency=4),
                          evaluator.on_metrics)

    async def ticker() -> None:
        # The tick number is the wall-clock period, so a standby that takes over mid-period re-publishes the
        # same number and JetStream stores it once.
        lease = Lease(ctx.bus, "policy.ticker", ctx.instance, ttl=settings.lease_ttl)
        next_tick = time.monotonic()
        try:
            while not ctx.stopping.is_set():
                if await lease.try_acquire_or_renew() and time.monotonic() >= next_tick:
                    await ctx.bus.publish(PolicyTick(seq=int(time.time() // settings.tick_interval)))
                    next_tick = time.monotonic() + settings.tick_interval
                wait = max(0.05, min(next_tick - time.monotonic(), settings.lease_ttl / 3))
                if not await ctx.sleep(wait):
                    return
        finally:
            await lease.release()

    ctx.spawn(ticker, "ticker")
