"""Handlers of what was observed about VMs: `vm.status` (provisioner) and `vm.guest` (callback).

`vm.status` is recorded on the slot it names — only if it is newer than what the slot already shows, since
messages from several provisioner replicas or redeliveries may arrive out of order — then the environment is
reconciled, unless only the VM's usage changed (the periodic CPU and memory reports of every running VM would
otherwise each cost a reconcile pass). `vm.usage` carries the load of many VMs at once and is written in one bulk
update, without a pass. `vm.guest` carries no state of its own: the callback service already wrote
the guest's report on the slot, so the message only wakes the environment up.
"""

from __future__ import annotations

from typing import Any

from pymongo import UpdateOne

from libs.common.bus import Delivery
from libs.common.messages import VmGuest, VmStatus, VmUsage
from services.envmgr.worker import Reconciler

# What envmgr's plan reads of a VM's observed state; usage (cpu, memory) is for the policy service only, and the
# OpenNebula state numbers and host are shown to users but decide nothing.
PLAN_FIELDS = ("lifecycle", "ip", "one_id", "error", "zone")
# A VM on its way up: the plan waits alike in each of these (its deadline runs from the phase, not the state).
ON_THE_WAY_UP = {"REQUESTED", "PENDING", "HOLD", "PROLOG", "BOOT"}


def changes_the_plan(before: dict[str, Any], fields: dict[str, Any]) -> bool:
    """Whether recording `fields` over `before` (the slot's previous values) can change envmgr's plan."""
    for key in PLAN_FIELDS:
        if key not in fields or before.get(key) == fields[key]:
            continue
        if key == "lifecycle" and (before.get(key) or "REQUESTED") in ON_THE_WAY_UP and fields[key] in ON_THE_WAY_UP:
            continue
        return True
    return False


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
        before = await self.store.slots.find_one_and_update(
            {"_id": msg.slot, "incarnation": msg.incarnation,
             "$or": [{"observed_at": None}, {"observed_at": {"$lte": msg.at}}]},
            {"$set": fields},
            projection=dict.fromkeys(PLAN_FIELDS, 1),
        )
        if before is None:
            return  # stale (older than what the slot shows) or for a replaced slot
        if delivery.num_delivered == 1 and not changes_the_plan(before, fields):
            # Only CPU and memory moved (most messages of a large zone), or a booting VM took one more step: nothing
            # the plan decides on changed. A redelivery reconciles anyway, in case the first attempt stopped between
            # the write and the reconcile.
            return
        await self.r.reconcile(msg.envid)

    async def vm_usage(self, msg: VmUsage, delivery: Delivery) -> None:
        """Record many VMs' load in one round trip; a sample older than what a slot shows is skipped."""
        await self.store.slots.bulk_write([
            UpdateOne({"_id": sample.slot, "incarnation": sample.incarnation,
                       "$or": [{"usage_at": None}, {"usage_at": {"$lte": msg.at}}]},
                      {"$set": {"cpu": sample.cpu, "memory": sample.memory, "usage_at": msg.at}})
            for sample in msg.samples
        ], ordered=False)

    async def vm_guest(self, msg: VmGuest, delivery: Delivery) -> None:
        await self.r.reconcile(msg.envid)
