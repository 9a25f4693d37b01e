"""`vm.provision`: make sure a slot's VM exists in its zone — adopt it if it already does.

Intent was recorded by envmgr (the slot document) before this message was sent. Here:

1. a stale message (slot replaced, retired, or already holding a VM) changes nothing;
2. look the VM up by the slot's deterministic name: after a crash between allocate and the status report, or an
   allocate whose reply was lost, the VM exists and is adopted instead of creating a second one;
3. otherwise render the template and allocate; an indeterminate failure (timeout, connection lost) is checked by
   looking the name up again before the message is retried;
4. report what the zone says (`vm.status` with the VM id): envmgr records it. A refusal the zone will repeat
   (credentials, invalid template, quota) is reported as FAILED with its reason, which fails the operation with
   that reason instead of retrying forever.

Two deliveries of the same command (a redelivery, a duplicate, two replicas) must not both find no VM and both
allocate one: a handler first claims the slot in the `provision_claims` collection (an insert on the slot id,
taken over only once the previous claim expired), so lookup-then-allocate runs once at a time per slot. A claim
whose holder died is taken over once it expired, and removed by a TTL index if nobody takes it over.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from libs.common.auth import guest_token
from libs.common.bus import Bus, Delivery
from libs.common.crashpoints import crashpoint
from libs.common.db import Store
from libs.common.errors import PermanentError, TransientError
from libs.common.messages import VmProvision, VmStatus, utcnow
from services.provisioner.one_client import VmView, ZoneClient, ZoneUnavailable
from services.provisioner.render import render_extra, render_vm
from services.provisioner.settings import Settings
from services.provisioner.zones import ZoneRegistry

log = logging.getLogger("carina.provisioner")


def status_of(envid: int, slot: dict[str, Any], zone: str, vm: VmView) -> VmStatus:
    return VmStatus(envid=envid, slot=str(slot["_id"]), incarnation=int(slot["incarnation"]),
                    zone=zone, one_id=vm.id, lifecycle=vm.lifecycle, state=vm.state,
                    lcm_state=vm.lcm_state, ip=vm.ip, host=vm.host, cpu=vm.cpu, memory=vm.memory)


class ProvisionHandler:
    def __init__(self, store: Store, bus: Bus, zones: ZoneRegistry, settings: Settings, token_secret: str,
                 owner: str = "provisioner", claim_ttl: float = 120.0,
                 on_change: Callable[[str, str], None] | None = None) -> None:
        self.on_change = on_change  # tells the zone monitor to watch the new VM at once
        self.owner = owner
        self.claim_ttl = claim_ttl
        self.store = store
        self.bus = bus
        self.zones = zones
        self.settings = settings
        self.token_secret = token_secret

    async def __call__(self, msg: VmProvision, delivery: Delivery) -> None:
        slot = await self.store.slots.find_one({"_id": msg.slot})
        if slot is None or int(slot["incarnation"]) != msg.incarnation or not slot.get("live"):
            return
        if slot.get("one_id") is not None:
            return  # already created and recorded: a redelivery
        env = await self.store.envs.find_one({"_id": msg.envid})
        if env is None:
            return
        holder = await self._claim(msg.slot)
        if holder is None:
            raise TransientError(f"slot {msg.slot} is being provisioned by another handler", delay=2.0)
        try:
            zone = await self.zones.client(env["service"], slot["endpoint"])
            vm = await self._ensure(zone, env, slot)
        except PermanentError as exc:
            log.warning("provisioning refused", extra={"reason": str(exc), "slot": msg.slot})
            await self.bus.publish(VmStatus(envid=msg.envid, slot=msg.slot, incarnation=msg.incarnation,
                                            zone=slot["zone"], lifecycle="FAILED", error=str(exc)[:2000]))
            return
        finally:
            # Released at once, success or not: a later delivery for this slot (envmgr asks again while the VM id
            # is not recorded yet) then adopts the VM by name instead of waiting for the claim to expire.
            await self._release(msg.slot, holder)
        if self.on_change is not None:
            self.on_change(env["service"], slot["endpoint"])
        await self.bus.publish(status_of(msg.envid, slot, slot["zone"], vm))

    async def _release(self, slot_id: str, holder: str) -> None:
        await self.store["provision_claims"].delete_one({"_id": slot_id, "owner": holder})

    async def _claim(self, slot_id: str) -> str | None:
        """Take the slot's provisioning claim (or one that expired: its holder died mid-call); returns its holder
        id, or None if another handler holds it."""
        now = utcnow()
        holder = f"{self.owner}:{uuid.uuid4().hex[:12]}"
        claim = {"owner": holder, "until": now + timedelta(seconds=self.claim_ttl)}
        claims = self.store["provision_claims"]
        try:
            await claims.insert_one({"_id": slot_id, **claim})
            return holder
        except DuplicateKeyError:
            taken = await claims.update_one({"_id": slot_id, "until": {"$lt": now}}, {"$set": claim})
            return holder if taken.modified_count == 1 else None

    async def _ensure(self, zone: ZoneClient, env: dict[str, Any], slot: dict[str, Any]) -> VmView:
        existing = await zone.find_by_name(str(slot["name"]))
        if existing:
            vm = min(existing, key=lambda v: v.id)
            log.info("adopted existing VM", extra={"slot": slot["_id"], "one_id": vm.id})
            return vm
        token = guest_token(self.token_secret, str(slot["_id"]), int(slot["incarnation"]),
                            str(slot["nonce"]))
        role_spec = env["spec"][slot["role"]] or env["spec"]["master"]
        crashpoint("provisioner.before_allocate")
        try:
            if role_spec.get("template_id") is not None:
                extra = render_extra(env, slot, self.settings.public_url, token, self.settings.notify_mode)
                vmid = await zone.instantiate(int(role_spec["template_id"]), str(slot["name"]), extra)
            else:
                text = render_vm(env, slot, self.settings.public_url, token, self.settings.notify_mode)
                vmid = await zone.allocate(text)
        except ZoneUnavailable:
            # Indeterminate: the zone may have created the VM and lost the reply. Look again before retrying.
            existing = await zone.find_by_name(str(slot["name"]))
            if existing:
                return min(existing, key=lambda v: v.id)
            raise
        crashpoint("provisioner.after_allocate")
        log.info("VM allocated", extra={"slot": slot["_id"], "one_id": vmid})
        return await zone.info(vmid)
