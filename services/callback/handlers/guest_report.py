"""`guest.report`: record what a guest said on its slot, then tell envmgr (when it matters) and the policy service.

The gateway has already checked the guest's token; the report is re-checked against the slot here (same
incarnation, still live) because the VM may have been replaced between the check and now. The callback service
owns the `guest.*` fields of slots and the `metrics` collection; the writes are idempotent (set, or max for the
acknowledged notification number), so a redelivered report changes nothing.
"""

from __future__ import annotations

import re
from typing import Any

from libs.common.bus import Bus, Delivery
from libs.common.crashpoints import crashpoint
from libs.common.db import Store, slot_ip
from libs.common.messages import GuestReport, VmGuest, VmMetrics

_EMPTY_SLAVE_ID = re.compile(r"^SLAVE__(INIT_DONE|INIT_FAIL.*)$")


def normalise_status(status: str, slot: dict[str, Any]) -> str:
    """Carina's sample scripts sent `SLAVE__INIT_DONE` when SLAVE_ID was unset; name the slave instead."""
    status = status.strip()[:256]
    match = _EMPTY_SLAVE_ID.match(status)
    if match and slot.get("role") == "slave":
        return f"SLAVE_{slot['index']}_{match.group(1)}"
    return status


class GuestReportHandler:
    def __init__(self, store: Store, bus: Bus) -> None:
        self.store = store
        self.bus = bus

    async def __call__(self, msg: GuestReport, delivery: Delivery) -> None:
        # Each write is conditioned on the slot still being this live incarnation, so that the check and the write
        # are one round trip; a report for a replaced or removed VM matches nothing and is dropped.
        match = {"_id": msg.slot, "incarnation": msg.incarnation, "live": True}
        if msg.kind == "vmstatus":
            fields = {"guest.vm_status": "NET_CONFIG_DONE", "guest.vmstatus_at": msg.at}
            if msg.params.get("newip"):
                fields["guest.ip"] = msg.params["newip"][:64]
            if msg.params.get("name"):
                fields["guest.hostname"] = msg.params["name"][:255]
            before = await self.store.slots.find_one_and_update(match, {"$set": fields},
                                                                 projection={"ip": 1, "guest.ip": 1})
            # envmgr only needs to hear of it when the VM's address as it sees it changes (the guest's word wins over
            # the zone's); mostly the zone reported the same address already. A redelivery always tells, in case the
            # first attempt stopped between the write and the publish.
            if before is not None and (delivery.num_delivered > 1
                                       or slot_ip(before) != (fields.get("guest.ip") or slot_ip(before))):
                await self.bus.publish(VmGuest(envid=msg.envid, slot=msg.slot, incarnation=msg.incarnation,
                                               kind="vmstatus", ip=fields.get("guest.ip"),
                                               hostname=fields.get("guest.hostname"), at=msg.at))
        elif msg.kind == "appstatus":
            status = msg.params.get("status", "")
            if _EMPTY_SLAVE_ID.match(status.strip()):
                slot = await self.store.slots.find_one(match, {"role": 1, "index": 1})
                if slot is None:
                    return
                status = normalise_status(status, slot)
            status = status.strip()[:256]
            if await self._record(match, {"$set": {"guest.status": status, "guest.status_at": msg.at}}):
                crashpoint("callback.after_record")
                await self.bus.publish(VmGuest(envid=msg.envid, slot=msg.slot, incarnation=msg.incarnation,
                                               kind="appstatus", status=status, at=msg.at))
        elif msg.kind == "notify_ack":
            seq = int(msg.params.get("seq", "0") or 0)
            if await self._record(match, {"$max": {"guest.acked_seq": seq}, "$set": {"guest.acked_at": msg.at}}):
                await self.bus.publish(VmGuest(envid=msg.envid, slot=msg.slot, incarnation=msg.incarnation,
                                               kind="notify_ack", seq=seq, at=msg.at))
        elif msg.kind == "metrics":
            if await self.store.slots.find_one(match, {"_id": 1}) is None:
                return
            values = {k: float(v) for k, v in msg.params.items()}
            await self.store["metrics"].update_one(
                {"_id": msg.slot},
                {"$set": {"envid": msg.envid, "one_id": msg.one_id, "at": msg.at,
                          **{f"values.{k}": v for k, v in values.items()}}},
                upsert=True,
            )
            await self.bus.publish(VmMetrics(envid=msg.envid, slot=msg.slot, one_id=msg.one_id, values=values,
                                             at=msg.at))

    async def _record(self, match: dict[str, Any], update: dict[str, Any]) -> bool:
        """Apply `update` to the slot if it is still the reporting incarnation; whether it was."""
        result = await self.store.slots.update_one(match, update)
        return bool(result.matched_count)
