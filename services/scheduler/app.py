"""Scheduler wiring (global capacity arbitration, DESIGN.md §7).

Requests (`pool.request`, `pool.release`, `pool.cancel`) are recorded in the `requests` ledger by whichever replica
receives them; allocation passes run only on the replica holding the allocator lease, so nothing is granted twice.
"""

from __future__ import annotations

from libs.common import subjects as s
from libs.common.bus import ConsumerSpec
from libs.common.messages import PoolCancel, PoolRelease, PoolRequest
from libs.common.runner import ServiceContext
from services.scheduler.handlers.ledger import LedgerHandlers
from services.scheduler.settings import Settings


async def setup(ctx: ServiceContext) -> None:
    settings: Settings = ctx.settings
    ledger = LedgerHandlers(ctx, settings)
    await ctx.bus.consume(ConsumerSpec("scheduler-pool-request", s.POOL_REQUEST, PoolRequest), ledger.request)
    await ctx.bus.consume(ConsumerSpec("scheduler-pool-release", s.POOL_RELEASE, PoolRelease), ledger.release)
    await ctx.bus.consume(ConsumerSpec("scheduler-pool-cancel", s.POOL_CANCEL, PoolCancel), ledger.cancel)
    ctx.spawn(ledger.allocation_loop, "allocator")
