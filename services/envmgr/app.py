"""envmgr wiring: consumers for its subjects, the resync loop and the gauges.

envmgr owns environments, VM slots and jobs (DESIGN.md §2). Several replicas may run: they share the durable
consumers, and compare-and-set on the environment document keeps them from stepping on each other.
"""

from __future__ import annotations

from libs.common import subjects as s
from libs.common.bus import ConsumerSpec
from libs.common.messages import (
    EnvCreate,
    EnvFailback,
    EnvFailover,
    EnvReconcile,
    EnvRecover,
    EnvRecreate,
    EnvRemove,
    EnvScale,
    PoolGrant,
    PoolReclaim,
    VmGuest,
    VmStatus,
    VmUsage,
)
from libs.common.runner import ServiceContext
from services.envmgr.handlers.capacity import CapacityHandlers
from services.envmgr.handlers.commands import CommandHandlers
from services.envmgr.handlers.vm_events import VmEventHandlers
from services.envmgr.settings import Settings
from services.envmgr.worker import Reconciler


async def setup(ctx: ServiceContext) -> None:
    settings: Settings = ctx.settings
    reconciler = Reconciler(ctx.store, ctx.bus, settings.timing(), account_creates=settings.account_creates,
                            max_creates_in_flight=settings.max_creates_in_flight)
    commands = CommandHandlers(reconciler)
    vms = VmEventHandlers(reconciler)
    n = settings.concurrency
    await ctx.bus.consume(ConsumerSpec("envmgr-env-create", s.ENV_CREATE, EnvCreate, concurrency=n),
                          commands.env_create)
    await ctx.bus.consume(ConsumerSpec("envmgr-env-scale", s.ENV_SCALE, EnvScale, concurrency=n), commands.env_scale)
    await ctx.bus.consume(ConsumerSpec("envmgr-env-remove", s.ENV_REMOVE, EnvRemove, concurrency=n),
                          commands.env_remove)
    await ctx.bus.consume(ConsumerSpec("envmgr-env-recreate", s.ENV_RECREATE, EnvRecreate, concurrency=n),
                          commands.env_recreate)
    await ctx.bus.consume(ConsumerSpec("envmgr-env-recover", s.ENV_RECOVER, EnvRecover, concurrency=n),
                          commands.env_recover)
    await ctx.bus.consume(ConsumerSpec("envmgr-env-reconcile", s.ENV_RECONCILE, EnvReconcile, concurrency=n),
                          commands.env_reconcile)
    await ctx.bus.consume(ConsumerSpec("envmgr-env-failover", s.ENV_FAILOVER, EnvFailover), commands.env_failover)
    await ctx.bus.consume(ConsumerSpec("envmgr-env-failback", s.ENV_FAILBACK, EnvFailback), commands.env_failback)
    capacity = CapacityHandlers(reconciler)
    await ctx.bus.consume(ConsumerSpec("envmgr-pool-grant", s.POOL_GRANT + ".>", PoolGrant), capacity.grant)
    await ctx.bus.consume(ConsumerSpec("envmgr-pool-reclaim", s.POOL_RECLAIM + ".>", PoolReclaim), capacity.reclaim)
    await ctx.bus.consume(ConsumerSpec("envmgr-vm-status", s.VM_STATUS, VmStatus, concurrency=n), vms.vm_status)
    await ctx.bus.consume(ConsumerSpec("envmgr-vm-guest", s.VM_GUEST, VmGuest, concurrency=n), vms.vm_guest)
    await ctx.bus.consume(ConsumerSpec("envmgr-vm-usage", s.VM_USAGE, VmUsage), vms.vm_usage)

    async def resync_loop() -> None:
        # At start-up first (kopf's "list everything on start"), then periodically: the safety net that makes a
        # lost message or a crash cost latency only.
        quiet_for: float | None = None  # everything at start-up; later only what has not moved for a period
        while True:
            await reconciler.resync_once(quiet_for=quiet_for)
            quiet_for = settings.resync_interval
            await reconciler.refresh_gauges()
            if not await ctx.sleep(settings.resync_interval):
                return

    ctx.spawn(resync_loop, "resync")

    async def close() -> None:
        reconciler.close()

    ctx.cleanups.append(close)
