"""Provisioner wiring: the only service talking to OpenNebula (DESIGN.md §2).

Consumers for `vm.provision` and `vm.terminate` (double-acked: a redelivery would repeat OpenNebula calls, although
adoption makes it harmless), and the zone monitor. Calls per zone are bounded by the zone client's thread pool.
"""

from __future__ import annotations

from libs.common import subjects as s
from libs.common.bus import ConsumerSpec
from libs.common.messages import VmProvision, VmTerminate
from libs.common.runner import ServiceContext
from services.provisioner.handlers.vm_provision import ProvisionHandler
from services.provisioner.handlers.vm_terminate import TerminateHandler
from services.provisioner.monitor import ZoneMonitor
from services.provisioner.settings import Settings
from services.provisioner.zones import ZoneRegistry


async def setup(ctx: ServiceContext) -> None:
    settings: Settings = ctx.settings
    zones = ZoneRegistry(ctx.store, settings.zone_concurrency, settings.call_timeout)
    ack_wait = settings.call_timeout * 3 + 10  # a handler makes up to three zone calls
    monitor = ZoneMonitor(ctx, zones, settings)
    provision = ProvisionHandler(ctx.store, ctx.bus, zones, settings, ctx.common.token_secret, owner=ctx.instance,
                                 claim_ttl=ack_wait, on_change=monitor.kick)
    terminate = TerminateHandler(ctx.store, ctx.bus, zones, settings, on_change=monitor.kick)
    await ctx.bus.consume(ConsumerSpec("provisioner-vm-provision", s.VM_PROVISION, VmProvision, ack_wait=ack_wait,
                                       concurrency=settings.concurrency, double_ack=True), provision)
    await ctx.bus.consume(ConsumerSpec("provisioner-vm-terminate", s.VM_TERMINATE, VmTerminate, ack_wait=ack_wait,
                                       concurrency=settings.concurrency, double_ack=True), terminate)
    ctx.spawn(monitor.supervise, "zone-monitor")

    async def close() -> None:
        zones.close()

    ctx.cleanups.append(close)
