"""Handlers of the ENV subjects: create, scale, remove, recreate, recover, reconcile.

A command either refers to an operation the gateway already recorded (`request_id` "job-<jobid>", or the envid of
a created environment) — then it is only a nudge to reconcile — or it comes from the policy service, the scheduler
or an operator's `nats pub`, and envmgr records the operation itself through the same compare-and-set the gateway
uses (`libs.common.operations`). Either way the reconcile loop does the work; a duplicate command finds the
operation already recorded and changes nothing.
"""

from __future__ import annotations

import logging

from libs.common.bus import Delivery
from libs.common.errors import NotFoundError, OperationRefused, PermanentError
from libs.common.messages import (
    EnvCreate,
    EnvFailback,
    EnvFailover,
    EnvReconcile,
    EnvRecover,
    EnvRecreate,
    EnvRemove,
    EnvScale,
    utcnow,
)
from libs.common.operations import OpType, create_environment, start_operation
from services.envmgr.reconcile import env_event
from services.envmgr.worker import Reconciler

log = logging.getLogger("carina.envmgr")


def _job_of(request_id: str | None) -> int | None:
    if request_id and request_id.startswith("job-") and request_id[4:].isdigit():
        return int(request_id[4:])
    return None


class CommandHandlers:
    """One method per ENV subject (registered as consumers in `services.envmgr.app`)."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.r = reconciler
        self.store = reconciler.store

    async def _start_unless_recorded(self, envid: int, op: OpType, request_id: str | None, requested_by: str,
                                     params: dict[str, object] | None = None) -> None:
        env = await self.store.envs.find_one({"_id": envid}, {"op": 1, "active": 1})
        if env is None:
            raise NotFoundError(f"environment {envid} does not exist")
        jobid = _job_of(request_id)
        current = env.get("op") or {}
        if jobid is not None:
            # Recorded by the gateway: already running, or already finished (a redelivery) — just reconcile.
            await self.r.reconcile(envid)
            return
        if current.get("type") == op and op == "REMOVE":
            await self.r.reconcile(envid)
            return
        if op == "REMOVE" and not env.get("active", True):
            return  # removed already: a duplicate removal changes nothing
        try:
            await start_operation(self.store, envid, op, requested_by, params=params)
        except OperationRefused as exc:
            raise PermanentError(str(exc)) from None
        await self.r.reconcile(envid)

    async def env_create(self, msg: EnvCreate, delivery: Delivery) -> None:
        if msg.envid is not None:
            await self.r.reconcile(msg.envid)
            return
        # Typed by an operator (nats pub env.create '{"service":"svc1","config":"tomcat"}'): record it here.
        ids = await create_environment(self.store, msg.service, msg.config,
                                       request_id=msg.request_id or f"nats-{delivery.stream_seq}",
                                       requested_by="operator")
        log.info("environment created from a NATS command", extra={"envids": [e for e, _ in ids]})
        for envid, _ in ids:
            await self.r.reconcile(envid)

    async def env_scale(self, msg: EnvScale, delivery: Delivery) -> None:
        op: OpType = "SCALEUP" if msg.direction == "up" else "SCALEDOWN"
        await self._start_unless_recorded(msg.envid, op, msg.request_id, msg.requested_by,
                                          {"reqid": msg.reqid} if msg.reqid else None)

    async def env_remove(self, msg: EnvRemove, delivery: Delivery) -> None:
        await self._start_unless_recorded(msg.envid, "REMOVE", None, msg.requested_by)

    async def env_recreate(self, msg: EnvRecreate, delivery: Delivery) -> None:
        await self._start_unless_recorded(msg.envid, "RECREATE", msg.request_id, msg.requested_by,
                                          {"vmid": msg.vmid, "slot": msg.slot})

    async def env_recover(self, msg: EnvRecover, delivery: Delivery) -> None:
        await self._start_unless_recorded(msg.envid, "RECOVER", msg.request_id, msg.requested_by)

    async def env_reconcile(self, msg: EnvReconcile, delivery: Delivery) -> None:
        await self.r.reconcile(msg.envid)

    async def _set_policy_status(self, envid: int, expect: str, new: str, info: str) -> bool:
        changed = False

        def change(env: dict[str, object]) -> dict[str, object] | None:
            nonlocal changed
            if env.get("policy_status") != expect or not env.get("active"):
                return None
            changed = True
            return {"policy_status": new, "info": info, "updated_at": utcnow()}

        env = await self.store.mutate("envs", envid, change)
        if changed:
            await self.r.bus.publish(env_event(env, f"policy status {expect} → {new}: {info}"))
        return changed

    async def _group_partners(self, envid: int, group: str) -> list[dict[str, object]]:
        env = await self.store.envs.find_one({"_id": envid}, {"service": 1})
        if env is None:
            raise NotFoundError(f"environment {envid} does not exist")
        return [p async for p in self.store.envs.find(
            {"service": env["service"], "active": True, "_id": {"$ne": envid},
             "spec.config.availability_policy.failover_group": group,
             "spec.config.availability_policy.failover_role": "passive"},
            {"_id": 1, "policy_status": 1})]

    async def env_failover(self, msg: EnvFailover, delivery: Delivery) -> None:
        """The active environment FAILED; its first passive twin becomes ACTIVE (then scales out by policy)."""
        reason = msg.reason or "failover"
        if await self._set_policy_status(msg.envid, "ACTIVE", "FAILED", f"failed over: {reason}"):
            for partner in await self._group_partners(msg.envid, msg.group):
                if await self._set_policy_status(int(partner["_id"]), "PASSIVE", "ACTIVE",  # type: ignore[call-overload]
                                                 f"activated by failover of environment {msg.envid}"):
                    break

    async def env_failback(self, msg: EnvFailback, delivery: Delivery) -> None:
        """The failed environment is healthy again: ACTIVE, and its passive twins back to PASSIVE."""
        reason = msg.reason or "failback"
        if await self._set_policy_status(msg.envid, "FAILED", "ACTIVE", f"failed back: {reason}"):
            for partner in await self._group_partners(msg.envid, msg.group):
                await self._set_policy_status(int(partner["_id"]), "ACTIVE", "PASSIVE",  # type: ignore[call-overload]
                                              f"back to passive after failback of environment {msg.envid}")
