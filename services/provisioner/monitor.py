"""Zone monitoring: poll each zone Carina has VMs in and publish `vm.status` when something changed.

One watcher per (service, endpoint) — the service's credentials see the service's VMs — holding a lease so that
several provisioner replicas don't all poll the same zone. A watcher polls fast while any VM is booting or
terminating (so an environment moves on within a fraction of a second, not OneFlow's 30-90 s), and slowly
otherwise. It reports state, IP and host as `vm.status`, and CPU and memory — when CPU moved by `cpu_report_delta`
points, or every 30 s — as `vm.usage` batches of many VMs (one message and one write per poll, not one per VM: with
hundreds of running VMs the load reports were most of the steady traffic). It notices VMs that vanished: DONE, or
MISSING when the zone no longer knows the id — a VM deleted behind Carina's back. VMs tagged as Carina's whose
slot is unknown are counted as orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from prometheus_client import Counter, Gauge

from libs.common.bus import Lease
from libs.common.messages import MAX_USAGE_SAMPLES, UsageSample, VmStatus, VmUsage
from libs.common.runner import ServiceContext
from services.provisioner.one_client import VmView, ZoneNotFound, ZoneUnavailable
from services.provisioner.settings import Settings
from services.provisioner.zones import ZoneRegistry

log = logging.getLogger("carina.provisioner.monitor")

TRANSIENT = {"REQUESTED", "PENDING", "PROLOG", "BOOT", "SHUTDOWN", "EPILOG", "HOLD"}
# A status the slot does not show yet is sent again after this long, not at every poll: under load the first one
# is still queued for envmgr, and re-sending it every fast tick would only lengthen that queue.
REPUBLISH_AFTER = 5.0

Reported = dict[str, tuple[tuple[Any, ...], float]]  # slot id → (what was published, when)
ORPHANS = Gauge("carina_provisioner_orphan_vms", "VMs tagged CARINA_SLOT with no matching slot", ["zone"])
POLLS = Counter("carina_provisioner_zone_polls_total", "Zone polls, by zone and result", ["zone", "result"])


class ZoneMonitor:
    def __init__(self, ctx: ServiceContext, zones: ZoneRegistry, settings: Settings) -> None:
        self.ctx = ctx
        self.zones = zones
        self.settings = settings
        self._watchers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._kicks: dict[tuple[str, str], asyncio.Event] = {}

    def kick(self, service: str, endpoint: str) -> None:
        """A VM was just created or terminated in this zone: watch it at the fast pace now, not at the next poll."""
        self._kicks.setdefault((service, endpoint), asyncio.Event()).set()

    async def supervise(self) -> None:
        """Start a watcher for every zone with Carina VMs; stop watchers of zones with none left."""
        while not self.ctx.stopping.is_set():
            keys: set[tuple[str, str]] = set()
            for tracked in ({"live": True}, {"terminating": True}):
                async for row in await self.ctx.store.slots.aggregate([
                    {"$match": tracked},
                    {"$group": {"_id": {"service": "$service", "endpoint": "$endpoint"}}},
                ]):
                    keys.add((row["_id"]["service"], row["_id"]["endpoint"]))
            for key in keys - self._watchers.keys():
                self._watchers[key] = asyncio.create_task(self._watch(*key), name=f"watch-{key[0]}-{key[1]}")
            for key in set(self._watchers) - keys:
                self._watchers.pop(key).cancel()
            for key, task in list(self._watchers.items()):
                if task.done():
                    self._watchers.pop(key)
            await self.ctx.sleep(2.0)
        for task in self._watchers.values():
            task.cancel()

    async def _watch(self, service: str, endpoint: str) -> None:
        lease = Lease(self.ctx.bus, f"monitor.{service}.{endpoint}".replace(" ", "_"), self.ctx.instance, ttl=10)
        reported: Reported = {}
        cpu_reported: dict[str, tuple[float, float]] = {}
        tick = 0
        next_full = 0.0
        busy = False
        kicked = self._kicks.setdefault((service, endpoint), asyncio.Event())
        try:
            while not self.ctx.stopping.is_set():
                if not await lease.try_acquire_or_renew():
                    reported.clear()
                    await self.ctx.sleep(2.0)
                    continue
                if time.monotonic() >= next_full:
                    # The whole pool (and monitoring) at the slow pace: drift, deletions, load.
                    busy = await self._poll(service, endpoint, reported, cpu_reported, with_cpu=(tick % 3 == 0))
                    next_full = time.monotonic() + self.settings.monitor_interval
                    tick += 1
                elif busy or kicked.is_set():
                    # Only the VMs on their way up or down, one `vm.info` each, at the fast pace.
                    kicked.clear()
                    busy = await self._poll_transient(service, endpoint, reported)
                wait = self.settings.monitor_fast_interval if busy else next_full - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(kicked.wait(), timeout=max(0.01, wait))
        except asyncio.CancelledError:
            await lease.release()
            raise

    async def _slots(self, *queries: dict[str, Any]) -> list[dict[str, Any]]:
        """Slots matching any of `queries`, each a query led by an indexed field (not one `$or`, not a `gone` filter:
        either would read every slot ever made), a slot matching several listed once."""
        found: dict[str, dict[str, Any]] = {}
        for query in queries:
            async for slot in self.ctx.store.slots.find(query, {"nonce": 0, "params": 0}):
                found.setdefault(slot["_id"], slot)
        return list(found.values())

    async def _poll_transient(self, service: str, endpoint: str, reported: Reported) -> bool:
        # Booting or terminating: a transient state, or still RUNNING after envmgr retired the slot. The filter is
        # the server's, so that a zone with thousands of running VMs costs one small answer per fast tick.
        where = {"service": service, "endpoint": endpoint}
        slots = await self._slots({"lifecycle": {"$in": sorted(TRANSIENT)}, **where},
                                  {"terminating": True, "lifecycle": "RUNNING", **where})
        if not slots:
            return False
        try:
            zone = await self.zones.client(service, endpoint)
        except Exception:  # noqa: BLE001 - the full poll reports configuration problems
            return False
        busy = any(s.get("one_id") is None and s.get("live") for s in slots)

        async def one(slot: dict[str, Any]) -> bool:
            if slot.get("one_id") is None:
                return False
            try:
                vm = await zone.info(int(slot["one_id"]))
            except ZoneNotFound:
                status = VmStatus(envid=slot["envid"], slot=slot["_id"], incarnation=slot["incarnation"],
                                  zone=slot["zone"], one_id=int(slot["one_id"]), lifecycle="MISSING")
            except ZoneUnavailable:
                return True
            else:
                status = VmStatus(envid=slot["envid"], slot=slot["_id"], incarnation=slot["incarnation"],
                                  zone=slot["zone"], one_id=vm.id, lifecycle=vm.lifecycle,
                                  state=vm.state, lcm_state=vm.lcm_state, ip=vm.ip, host=vm.host)
            key = (status.lifecycle, status.ip, status.host, status.one_id)
            if _due(reported, slot, status, key):
                await self.ctx.bus.publish(status)
                reported[slot["_id"]] = (key, time.monotonic())
            return status.lifecycle in TRANSIENT or (not slot.get("live") and status.lifecycle not in
                                                     ("DONE", "MISSING"))

        results = await asyncio.gather(*(one(s) for s in slots))
        return busy or any(results)

    async def _poll(self, service: str, endpoint: str, reported: Reported,
                    cpu_reported: dict[str, tuple[float, float]], with_cpu: bool) -> bool:
        where = {"service": service, "endpoint": endpoint}
        slots = await self._slots({"live": True, **where}, {"terminating": True, **where})  # all but the gone ones
        if not slots:
            return False
        zone_name = slots[0]["zone"]
        try:
            zone = await self.zones.client(service, endpoint)
            vms = {vm.id: vm for vm in await zone.pool()}
            cpu_by_id = await zone.monitoring() if with_cpu else {}
            POLLS.labels(zone=zone_name, result="ok").inc()
        except ZoneUnavailable as exc:
            POLLS.labels(zone=zone_name, result="unavailable").inc()
            log.info("zone poll failed", extra={"zone": zone_name, "reason": str(exc)})
            return False
        except Exception as exc:  # noqa: BLE001 - a misconfigured endpoint must not kill the watcher
            POLLS.labels(zone=zone_name, result="error").inc()
            log.warning("zone poll failed", extra={"zone": zone_name, "reason": str(exc)})
            return False
        busy = False
        known_slots = {s["_id"] for s in slots}
        ORPHANS.labels(zone=zone_name).set(sum(
            1 for vm in vms.values()
            if vm.user_template.get("CARINA_SLOT") and vm.user_template.get("CARINA_SERVICE") == service
            and vm.user_template["CARINA_SLOT"] not in known_slots
            and not vm.user_template["CARINA_SLOT"].startswith(tuple(f"{s['envid']}:" for s in slots[:0]))))
        now = time.monotonic()
        usage: list[UsageSample] = []
        for slot in slots:
            lifecycle = slot.get("lifecycle") or "REQUESTED"
            if slot.get("one_id") is None:
                busy = busy or (lifecycle in TRANSIENT and bool(slot.get("live")))
                continue
            vm = vms.get(int(slot["one_id"]))
            status = await self._status(zone, slot, vm, zone_name)
            if status is None:
                continue
            if with_cpu and status.one_id in cpu_by_id:
                cpu, mem = cpu_by_id[status.one_id]
                status = status.model_copy(update={"cpu": cpu if cpu is not None else status.cpu,
                                                   "memory": mem if mem is not None else status.memory})
            key = (status.lifecycle, status.ip, status.host, status.one_id)
            busy = busy or status.lifecycle in TRANSIENT or (not slot.get("live") and status.lifecycle not in
                                                             ("DONE", "MISSING"))
            changed = _due(reported, slot, status, key)
            last_cpu = cpu_reported.get(slot["_id"])
            cpu_due = status.cpu is not None and (
                last_cpu is None or abs(last_cpu[0] - status.cpu) >= self.settings.cpu_report_delta
                or now - last_cpu[1] > 30)
            if changed:
                await self.ctx.bus.publish(status)
                reported[slot["_id"]] = (key, now)
            elif cpu_due:
                usage.append(UsageSample(slot=slot["_id"], incarnation=int(slot["incarnation"]), cpu=status.cpu,
                                         memory=status.memory))
            if (changed or cpu_due) and status.cpu is not None:
                cpu_reported[slot["_id"]] = (status.cpu, now)
        for start in range(0, len(usage), MAX_USAGE_SAMPLES):
            await self.ctx.bus.publish(VmUsage(zone=zone_name, samples=usage[start:start + MAX_USAGE_SAMPLES]))
        return busy

    async def _status(self, zone: Any, slot: dict[str, Any], vm: VmView | None, zone_name: str) -> VmStatus | None:
        base = {"envid": slot["envid"], "slot": slot["_id"], "incarnation": slot["incarnation"], "zone": zone_name,
                "one_id": int(slot["one_id"])}
        if vm is not None:
            return VmStatus(**base, lifecycle=vm.lifecycle, state=vm.state, lcm_state=vm.lcm_state, ip=vm.ip,
                            host=vm.host, cpu=vm.cpu, memory=vm.memory)
        if slot.get("lifecycle") in ("DONE", "MISSING"):
            return None  # already known to be gone
        # Not in the pool of live VMs: DONE (terminated) or deleted behind our back.
        try:
            info = await zone.info(int(slot["one_id"]))
        except ZoneNotFound:
            return VmStatus(**base, lifecycle="MISSING")
        except ZoneUnavailable:
            return None
        return VmStatus(**base, lifecycle=info.lifecycle, state=info.state, lcm_state=info.lcm_state, ip=info.ip,
                        host=info.host)


def _due(reported: Reported, slot: dict[str, Any], status: VmStatus, key: tuple[Any, ...]) -> bool:
    """Whether to publish `status`: the zone shows something new, or the slot still disagrees a while after the
    last message (it may have been lost, or the provisioner restarted and forgot what it sent)."""
    last = reported.get(slot["_id"])
    if last is None:
        # Not sent by this watcher yet: only if the slot does not show it already (the provisioning reply, or the
        # previous lease holder, recorded it) — after a burst of creates that is hundreds of messages saved.
        return (slot.get("lifecycle"), slot.get("ip"), slot.get("host"), slot.get("one_id")) != key
    if last[0] != key:
        return True
    return slot.get("lifecycle") != status.lifecycle and time.monotonic() - last[1] >= REPUBLISH_AFTER
