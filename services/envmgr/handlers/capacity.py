"""Handlers of the global scheduler's answers: `pool.grant.<service>` and `pool.reclaim.<service>`.

A grant is recorded on the environment (`grants.<reqid>`), which unblocks the READY scale-up (or create) waiting
for it; a grant for an environment that no longer wants it is given back at once. A reclaim starts a scale-down of
the slave holding the reclaimed capacity (Carina: the victim scales down one slave, then releases); if another
operation runs, the reclaim is retried later — one operation per environment at a time, whoever asks.
"""

from __future__ import annotations

from typing import Any

from libs.common.bus import Delivery
from libs.common.errors import NotFoundError, OperationRefused, PermanentError, TransientError
from libs.common.messages import PoolGrant, PoolReclaim, PoolRelease, utcnow
from libs.common.operations import start_operation
from services.envmgr.worker import Reconciler


class CapacityHandlers:
    def __init__(self, reconciler: Reconciler) -> None:
        self.r = reconciler
        self.store = reconciler.store

    async def grant(self, msg: PoolGrant, delivery: Delivery) -> None:
        wanted = True

        def record(env: dict[str, Any]) -> dict[str, Any] | None:
            nonlocal wanted
            if not env.get("active", True):
                wanted = False
                return None
            if str(msg.reqid) in (env.get("grants") or {}):
                return None
            grants = {**(env.get("grants") or {}), str(msg.reqid): {"pool": msg.pool, "at": utcnow()}}
            return {"grants": grants}

        try:
            await self.store.mutate("envs", msg.envid, record)
        except NotFoundError:
            wanted = False
        if not wanted:
            await self.r.bus.publish(PoolRelease(reqid=msg.reqid, service=msg.service, envid=msg.envid))
            return
        await self.r.reconcile(msg.envid)

    async def reclaim(self, msg: PoolReclaim, delivery: Delivery) -> None:
        try:
            await start_operation(self.store, msg.envid, "SCALEDOWN", "scheduler", params={"reqid": msg.reqid})
        except OperationRefused as exc:
            if "in progress" in str(exc):
                raise TransientError(f"reclaim of request {msg.reqid} waits: {exc}", delay=5.0) from None
            # Nothing left to scale down (or removed): give the capacity back so the higher class gets it.
            await self.r.bus.publish(PoolRelease(reqid=msg.reqid, service=msg.service, envid=msg.envid))
            raise PermanentError(f"reclaim of request {msg.reqid}: {exc}") from None
        await self.r.reconcile(msg.envid)
