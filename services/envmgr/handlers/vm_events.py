"""Handlers of what was observed about VMs: `vm.status` (provisioner) and `vm.guest` (callback).

`vm.status` is recorded on the slot it names — only if it is newer than what the slot already shows, since
messages from several provisioner replicas or redeliveries may arrive out of order — then the environment is
reconciled. `vm.guest` carries no state of its own: the callback service already wrote the guest's report on the
slot, so the message only wakes the environment up.
"""

from __future__ import annotations

from typing import Any

from libs.common.bus import Delivery
from libs.common.messages import VmGuest, VmStatus
from services.envmgr.worker import Reconciler


class VmEventHandlers:
    def __init__(self, reconciler: Reconciler) -> None:
        self.r = reconciler
        self.store = reconciler.store

    async def vm_status(self, msg: VmStatus, delivery: Delivery) -> None:
        fields: dict[str, Any] = {"lifecycle": msg.lifecycle, "observed_at": msg.at, "zone": msg.zone}
        for key in ("state", "lcm_state", "ip", "host", "cpu", "memory", "one_id", "error"):
            value = getattr(msg, key)
            if value is not None:
                fields[key] = value
        if msg.lifecycle == "RUNNING":
            fields["running_seen_at"] = msg.at
        if msg.cpu is not None or msg.memory is not None:
            fields["usage_at"] = msg.at  # the policy service ignores a usage sample older than its metric_max_age
        result = await self.store.slots.update_one(
            {"_id": msg.slot, "incarnation": msg.incarnation,
             "$or": [{"observed_at": None}, {"observed_at": {"$lte": msg.at}}]},
            {"$set": fields},
        )
        if result.matched_count:
            await self.r.reconcile(msg.envid)

    async def vm_guest(self, msg: VmGuest, delivery: Delivery) -> None:
        await self.r.reconcile(msg.envid)
