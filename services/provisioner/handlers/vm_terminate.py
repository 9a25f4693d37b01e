"""`vm.terminate`: make sure a retired slot's VM is gone (idempotent: a VM already gone is success).

A retired slot that never got its VM id may still have a VM (a crash after allocate): it is looked up by name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from libs.common.bus import Bus, Delivery
from libs.common.db import Store
from libs.common.errors import PermanentError
from libs.common.messages import VmStatus, VmTerminate
from services.provisioner.handlers.vm_provision import status_of
from services.provisioner.one_client import ZoneActionRefused, ZoneNotFound
from services.provisioner.settings import Settings
from services.provisioner.zones import ZoneRegistry

log = logging.getLogger("carina.provisioner")


class TerminateHandler:
    def __init__(self, store: Store, bus: Bus, zones: ZoneRegistry, settings: Settings,
                 on_change: Callable[[str, str], None] | None = None) -> None:
        self.on_change = on_change
        self.store = store
        self.bus = bus
        self.zones = zones
        self.settings = settings

    async def __call__(self, msg: VmTerminate, delivery: Delivery) -> None:
        slot = await self.store.slots.find_one({"_id": msg.slot})
        if slot is None or slot.get("live") or slot.get("gone"):
            return
        env = await self.store.envs.find_one({"_id": msg.envid}, {"service": 1})
        service = (env or {}).get("service") or slot["service"]
        try:
            zone = await self.zones.client(service, slot["endpoint"])
        except PermanentError as exc:
            await self._report_missing(msg, slot, f"zone unknown: {exc}")
            return
        vmid = slot.get("one_id")
        if vmid is None:
            found = await zone.find_by_name(slot["name"])
            if not found:
                await self._report_missing(msg, slot, None)
                return
            vmid = min(v.id for v in found)
        try:
            await zone.action(self.settings.terminate_action, int(vmid))
        except ZoneNotFound:
            await self._report_missing(msg, slot, None)
            return
        except ZoneActionRefused:
            # Terminate is refused in some states (e.g. a failed deployment): the hard variant always applies.
            try:
                await zone.action("terminate-hard", int(vmid))
            except ZoneNotFound:
                await self._report_missing(msg, slot, None)
                return
        if self.on_change is not None:
            self.on_change(service, slot["endpoint"])
        try:
            vm = await zone.info(int(vmid))
        except ZoneNotFound:
            await self._report_missing(msg, slot, None)
            return
        await self.bus.publish(status_of(msg.envid, slot, slot["zone"], vm))

    async def _report_missing(self, msg: VmTerminate, slot: dict[str, object], error: str | None) -> None:
        await self.bus.publish(VmStatus(envid=msg.envid, slot=msg.slot, incarnation=msg.incarnation,
                                        zone=str(slot["zone"]), one_id=slot.get("one_id"),
                                        lifecycle="MISSING", error=error))
