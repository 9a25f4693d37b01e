"""Policy wiring: the ticker (one at a time, under a lease) and the evaluation workers.

The ticker publishes `policy.tick` every `tick_interval`, split into `tick_shards` messages (environments by envid
modulo); workers (all replicas, sharing the durable consumer, so they share each tick's shards) evaluate the
active environments of their shard, and an environment at once when new metrics arrive, and record each decision.
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
        # Ticks fall on wall-clock multiples of the interval and carry that period's number, which is also the
        # evaluation period the evaluator counts in: a metric push in period k counts for k, and the tick that
        # opens k+1 is the next evaluation. A standby that takes over mid-period re-publishes the same number,
        # which JetStream stores once.
        lease = Lease(ctx.bus, "policy.ticker", ctx.instance, ttl=settings.lease_ttl)
        interval, renew_every = settings.tick_interval, settings.lease_ttl / 3
        last_published, renewed_at = -1, 0.0
        try:
            while not ctx.stopping.is_set():
                period = int(time.time() // interval)
                due = period != last_published
                if due or time.monotonic() - renewed_at >= renew_every:
                    if await lease.try_acquire_or_renew():
                        renewed_at = time.monotonic()
                        if due:
                            shards = settings.tick_shards
                            for shard in range(shards):
                                await ctx.bus.publish(PolicyTick(seq=period, shard=shard, shards=shards))
                            last_published = period
                    else:
                        renewed_at = 0.0  # a standby: try again at the next period or renewal time
                until_tick = (int(time.time() // interval) + 1) * interval - time.time()
                until_renew = renewed_at + renew_every - time.monotonic()
                if not await ctx.sleep(max(0.005, min(until_tick, until_renew if renewed_at else renew_every))):
                    return
        finally:
            await lease.release()

    ctx.spawn(ticker, "ticker")
