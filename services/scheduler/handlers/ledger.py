"""The scheduler's I/O shell: the durable request ledger in MongoDB and the allocation loop around `Allocator`.

Any replica receives `pool.request` / `pool.release` / `pool.cancel` and records them in the `requests`
collection (a new request as PEND; a release or cancel as a flag on the request) marked `dirty`. Only the replica
holding the allocator lease (NATS KV) runs allocation passes: when it becomes leader it rebuilds the `Allocator`
from the ledger (Carina's scheduler did the same from Redis on start), then on every pass it applies the dirty
entries, steps, writes the changed requests back, and publishes grants and reclaims. A standby takes over within
the lease TTL; because the ledger is written before grants are published and grants carry the request id, a
grant re-published after a takeover is deduplicated (same `Nats-Msg-Id`) and never granted twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from libs.common.bus import Delivery, Lease
from libs.common.globalconfig import GLOBAL_CONFIG_ID, GlobalConfig
from libs.common.messages import PoolCancel, PoolGrant, PoolReclaim, PoolRelease, PoolRequest, utcnow
from libs.common.runner import ServiceContext
from services.scheduler import metrics
from services.scheduler.allocator import Allocator, Grant, Reclaim, Request, RequestKind, RequestStatus
from services.scheduler.settings import Settings

log = logging.getLogger("carina.scheduler")



class LedgerHandlers:
    def __init__(self, ctx: ServiceContext, settings: Settings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.requests = ctx.store["requests"]
        self.allocator: Allocator | None = None
        self.config_revision: int | None = None
        self._renewed_at = 0.0

    # --- message handlers (any replica) ------------------------------------------------------------------------

    async def request(self, msg: PoolRequest, delivery: Delivery) -> None:
        req = Request(reqid=msg.reqid, service=msg.service, envid=msg.envid, vcpus=msg.vcpus, memory=msg.memory,
                      zone=msg.zone, target_pool=msg.pool, kind=RequestKind(msg.kind))
        doc = {k: v for k, v in req.to_dict().items() if v is not None}
        doc["submitted_at"] = utcnow().timestamp()
        await self.requests.update_one({"_id": msg.reqid}, {"$setOnInsert": {**doc, "dirty": True, "dirty_seq": 1}},
                                       upsert=True)

    async def release(self, msg: PoolRelease, delivery: Delivery) -> None:
        await self.requests.update_one({"_id": msg.reqid}, {"$set": {"release_requested": True, "dirty": True},
                                                            "$inc": {"dirty_seq": 1}})

    async def cancel(self, msg: PoolCancel, delivery: Delivery) -> None:
        await self.requests.update_many({"service": msg.service, "envid": msg.envid},
                                        {"$set": {"cancel_requested": True, "dirty": True}, "$inc": {"dirty_seq": 1}})

    # --- allocation (lease holder only) ------------------------------------------------------------------------

    async def _load_config(self) -> GlobalConfig | None:
        doc = await self.ctx.store.configs.find_one({"_id": GLOBAL_CONFIG_ID})
        if doc is None:
            return None
        revision = int(doc.get("revision", 0))
        config = GlobalConfig.model_validate(doc["doc"])
        if self.allocator is not None and revision != self.config_revision:
            await self._persist_effects(self.allocator.update_config(config))
        self.config_revision = revision
        return config

    async def _become_leader(self, config: GlobalConfig) -> Allocator:
        persisted: list[Request] = []
        async for doc in self.requests.find({"status": {"$in": ["PEND", "ALLOCATED"]}}):
            persisted.append(Request.from_dict(_request_fields(doc)))
        allocator = Allocator.restore(config, persisted, lease_ttl=self.settings.grant_ttl,
                                      reclaim_window=self.settings.reclaim_throttle)
        log.info("allocator lease acquired; ledger restored", extra={"requests": len(persisted)})
        return allocator

    async def allocation_loop(self) -> None:
        lease = Lease(self.ctx.bus, "scheduler.allocator", self.ctx.instance, ttl=self.settings.lease_ttl)
        try:
            while not self.ctx.stopping.is_set():
                if not await lease.try_acquire_or_renew():
                    self.allocator = None
                    await self.ctx.sleep(min(1.0, self.settings.lease_ttl / 3))
                    continue
                config = await self._load_config()
                if config is not None:
                    if self.allocator is None:
                        self.allocator = await self._become_leader(config)
                    await self._pass(self.allocator)
                await self.ctx.sleep(self.settings.interval)
        finally:
            await lease.release()

    async def _pass(self, allocator: Allocator) -> None:
        known = {r.reqid for r in allocator.requests()}
        async for doc in self.requests.find({"dirty": True}):
            reqid = int(doc["_id"])
            if doc.get("cancel_requested"):
                allocator.cancel(doc["service"], int(doc["envid"]))
            elif doc.get("release_requested"):
                allocator.release(reqid)
            elif doc.get("status", "PEND") == "PEND" and reqid not in known:
                allocator.submit(Request.from_dict(_request_fields(doc)))
            # Only clear the flag if nothing new arrived meanwhile (a release racing with this pass).
            await self.requests.update_one({"_id": reqid, "dirty_seq": doc.get("dirty_seq")},
                                           {"$set": {"dirty": False}})
        await self._renew(allocator)
        await self._persist_effects(allocator.step())
        self._export(allocator)

    async def _renew(self, allocator: Allocator) -> None:
        """Grants are leases: those of environments still active are renewed; a holder that disappeared (its
        environment removed without a release reaching us) lets its grants lapse, so capacity never leaks."""
        if time.monotonic() - self._renewed_at < self.settings.grant_ttl / 3:
            return
        self._renewed_at = time.monotonic()
        holders = {(r.service, r.envid) for r in allocator.requests(RequestStatus.ALLOCATED)}
        if not holders:
            return
        alive = {int(e["_id"]) async for e in self.ctx.store.envs.find(
            {"_id": {"$in": sorted({envid for _, envid in holders})}, "active": True}, {"_id": 1})}
        for service, envid in holders:
            if envid in alive:
                allocator.renew(service, envid)

    @staticmethod
    def _export(allocator: Allocator) -> None:
        for pool in allocator.pool_usage():
            labels = {"pool": pool.name, "zone": pool.zone, "class": pool.service_class.label}
            metrics.POOL_CAPACITY_VCPUS.labels(**labels).set(pool.vcpus)
            metrics.POOL_ALLOCATED_VCPUS.labels(**labels).set(pool.vcpus_allocated)
            metrics.POOL_CAPACITY_MEMORY.labels(**labels).set(pool.memory)
            metrics.POOL_ALLOCATED_MEMORY.labels(**labels).set(pool.memory_allocated)
        for service in allocator.service_usage():
            metrics.SERVICE_ALLOCATED_VCPUS.labels(service=service.name).set(service.vcpus_allocated)
        counts: dict[str, int] = {}
        for req in allocator.requests():
            counts[str(req.status)] = counts.get(str(req.status), 0) + 1
        for state in ("PEND", "ALLOCATED", "RELEASED", "CANCELLED", "REJECTED"):
            metrics.REQUESTS.labels(state=state).set(counts.get(state, 0))

    async def _persist_effects(self, effects: list[Any]) -> None:
        allocator = self.allocator
        if allocator is None:
            return
        for req in allocator.drain_changes():
            await self.requests.update_one({"_id": req.reqid}, {"$set": req.to_dict()}, upsert=True)
        for effect in effects:
            metrics.EFFECTS.labels(effect=type(effect).__name__.lower()).inc()
            if isinstance(effect, Grant):
                await self.ctx.bus.publish(PoolGrant(reqid=effect.reqid, service=effect.service, envid=effect.envid,
                                                     pool=effect.pool, vcpus=effect.vcpus, memory=effect.memory))
            elif isinstance(effect, Reclaim):
                await self.ctx.bus.publish(PoolReclaim(reqid=effect.reqid, service=effect.service,
                                                       envid=effect.envid, for_reqid=effect.for_reqid))
            else:
                log.info("ledger effect", extra={"effect": type(effect).__name__, "detail": repr(effect)})


def _request_fields(doc: dict[str, Any]) -> dict[str, Any]:
    known = {"reqid", "service", "envid", "vcpus", "memory", "zone", "target_pool", "kind", "submitted_at", "status",
             "pool", "lease_expires_at", "granted_at", "reclaimed_at", "ended_at", "reason"}
    out = {k: v for k, v in doc.items() if k in known}
    out["reqid"] = int(doc["_id"])
    out.setdefault("status", RequestStatus.PEND.value)
    return out
