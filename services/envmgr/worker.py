"""Applying plans: load an environment, plan, write, publish — and the timers and resync that keep it moving.

Handlers call `Reconciler.reconcile(envid)`; nothing else writes environments. Writes follow the intent-first
order of `Plan`: new slot documents are inserted before the environment's compare-and-set and before any command
is published, so a crash at any point leaves either nothing, or an intent the next pass (or the provisioner's
adoption by VM name) completes — never an unrecorded VM. A conflicting write by another replica makes us reload
and plan again. Wake-ups requested by a plan (end of master_setup_time, deadlines) are in-process timers; the
periodic resync covers them after a crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

from pymongo.errors import DuplicateKeyError

from libs.common.bus import Bus
from libs.common.crashpoints import crashpoint
from libs.common.db import Doc, Store
from libs.common.errors import TransientError
from libs.common.globalconfig import GLOBAL_CONFIG_ID
from libs.common.messages import utcnow
from libs.common.operations import OpType
from services.envmgr import metrics
from services.envmgr.reconcile import Admission, Plan, Scheduling, Timing, env_event, plan_env

log = logging.getLogger("carina.envmgr")

# Creates that started (past admission) and have not ended — but for those waiting for the global scheduler's grant,
# which cost nothing meanwhile and may wait long — and those not started yet, in arrival order by _id.
CREATES_IN_FLIGHT: Doc = {"op.type": "CREATE", "op.admitted": True, "op.phase": {"$ne": "grant_create"}}
CREATES_WAITING: Doc = {"op.type": "CREATE", "op.admitted": {"$ne": True}, "op.phase": {"$in": ["master", "queued"]}}


class Reconciler:
    """Drives environments towards their desired state.

    Args:
        store: MongoDB access.
        bus: NATS access.
        timing: deadlines.
        clock: returns the current time (None for the real clock; tests inject one).
    """

    def __init__(self, store: Store, bus: Bus, timing: Timing, clock: Any = None,
                 account_creates: bool = True, max_creates_in_flight: int = 0) -> None:
        self.store = store
        self.max_creates = max_creates_in_flight
        self._admitting = asyncio.Lock()
        self._starting: set[int] = set()  # creates let start by this process, their pass not written yet
        self.account_creates = account_creates
        self._scheduled: tuple[float, set[str]] = (0.0, set())
        self.bus = bus
        self.timing = timing
        self.clock = clock or utcnow
        self._locks: dict[int, asyncio.Lock] = {}
        self._next_pass: dict[int, asyncio.Future[None]] = {}
        self._timers: dict[int, tuple[datetime, asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _lock(self, envid: int) -> asyncio.Lock:
        lock = self._locks.get(envid)
        if lock is None:
            lock = self._locks[envid] = asyncio.Lock()
        return lock

    async def reconcile(self, envid: int) -> None:
        """Bring one environment a step (or several) closer to its desired state.

        Calls that arrive while a pass for the same environment is waiting to start share that pass, as a
        workqueue de-duplicates keys: each caller still gets a pass that begins after its call, so it sees what the
        caller wrote before calling, but ten `vm.status` messages arriving during a busy pass cost one more pass,
        not ten. A failure of the shared pass is every sharer's failure (their messages are redelivered).
        """
        waiting = self._next_pass.get(envid)
        if waiting is not None:
            await asyncio.shield(waiting)
            return
        shared: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._next_pass[envid] = shared
        try:
            async with self._lock(envid):
                # From here on this pass may have read the environment already: later callers need their own pass.
                self._stop_sharing(envid, shared)
                await self._reconcile_now(envid)
        except BaseException as exc:
            self._stop_sharing(envid, shared)
            shared.set_exception(exc if isinstance(exc, Exception)
                                 else TransientError(f"environment {envid}: reconcile interrupted"))
            shared.exception()  # marked as retrieved: nobody may be sharing this pass, and that is fine
            raise
        else:
            shared.set_result(None)
        finally:
            lock = self._locks.get(envid)
            if lock is not None and not lock.locked() and envid not in self._next_pass:
                del self._locks[envid]  # nobody waits for this environment: keep the table small

    def _stop_sharing(self, envid: int, shared: asyncio.Future[None]) -> None:
        if self._next_pass.get(envid) is shared:
            del self._next_pass[envid]

    async def _reconcile_now(self, envid: int) -> None:
        for _ in range(10):
            started = time.perf_counter()
            env = await self.store.envs.find_one({"_id": envid})
            if env is None:
                return
            slots = [s async for s in self.store.slots.find({"envid": envid, "gone": {"$ne": True}})]
            peers = await self._peers(env)
            sched = Scheduling(self.account_creates) if env["service"] in await self._scheduled_services() else None
            admission = await self._admit(env) if self._awaits_admission(env) else None
            try:
                plan = plan_env(env, slots, self.clock(), self.timing, peers, sched, admission)
                applied = await self._apply(env, plan)
            finally:
                self._starting.discard(envid)
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
            if applied:
                self._schedule(envid, plan.wake_at)
                if (env.get("op") or {}).get("type") == "CREATE" and plan.env_set.get("op", True) is None:
                    self._spawn(self.admit_waiting(), "admission")  # a create ended: the next may start
                return
            metrics.RECONCILE_CONFLICTS.inc()
        raise TransientError(f"environment {envid}: too many concurrent updates")

    # --- admission of creates -------------------------------------------------------------------------------------

    def _awaits_admission(self, env: Doc) -> bool:
        op = env.get("op") or {}
        return (self.max_creates > 0 and op.get("type") == "CREATE" and not op.get("admitted")
                and op.get("phase") in ("master", "queued"))

    async def _admit(self, env: Doc) -> Admission:
        """Whether this create may start: fewer than the limit in flight, and it is among the oldest waiting.

        Decided under a lock, counting the creates this process let start whose pass has not written that yet
        (`_starting`), so that two passes never take one free place; the pass itself runs outside the lock.
        """
        async with self._admitting:
            starting = len(self._starting)
            free = self.max_creates - starting - await self.store.envs.count_documents(CREATES_IN_FLIGHT)
            if free > 0:
                oldest = self.store.envs.find(CREATES_WAITING, {"_id": 1}).sort("_id", 1).limit(free + starting)
                if env["_id"] in [e["_id"] async for e in oldest if e["_id"] not in self._starting][:free]:
                    self._starting.add(int(env["_id"]))
                    return Admission(True, self.max_creates)
        if (env.get("op") or {}).get("phase") == "queued":
            return Admission(False, self.max_creates)  # already queued and told so
        ahead = await self.store.envs.count_documents({**CREATES_WAITING, "_id": {"$lt": env["_id"]}})
        return Admission(False, self.max_creates, ahead)

    async def admit_waiting(self) -> int:
        """Reconcile the oldest queued creates that fit under the limit now; returns how many."""
        if self.max_creates <= 0:
            return 0
        free = self.max_creates - await self.store.envs.count_documents(CREATES_IN_FLIGHT)
        if free <= 0:
            return 0
        envids = [e["_id"] async for e in self.store.envs.find(
            {**CREATES_WAITING, "op.phase": "queued"}, {"_id": 1}).sort("_id", 1).limit(free)]
        for envid in envids:
            self._spawn(self._safe_reconcile(int(envid), "admission"), "admission")
        return len(envids)

    def _spawn(self, work: Coroutine[Any, Any, Any], why: str) -> None:
        task = asyncio.create_task(work, name=why)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _scheduled_services(self) -> set[str]:
        """Services the global scheduler arbitrates (those in its configuration); cached for a few seconds."""
        loaded_at, services = self._scheduled
        if time.monotonic() - loaded_at > 5.0:
            doc = await self.store.configs.find_one({"_id": GLOBAL_CONFIG_ID}, {"doc.services": 1})
            services = set(((doc or {}).get("doc") or {}).get("services") or {})
            self._scheduled = (time.monotonic(), services)
        return services

    async def _peers(self, env: Doc) -> dict[str, Doc]:
        groupid = env.get("groupid")
        if groupid is None or not env.get("op") or env["op"].get("phase") != "waiting":
            return {}
        peers: dict[str, Doc] = {}
        async for member in self.store.envs.find({"groupid": groupid}, {"spec": 0}):
            peers[member["name"]] = member
            if member["_id"] == env["op"].get("after_envid"):
                peers["__predecessor__"] = member
        return peers

    async def _apply(self, env: Doc, plan: Plan) -> bool:
        for doc in plan.slot_inserts:
            try:
                await self.store.slots.insert_one(doc)
            except DuplicateKeyError:
                pass  # written by an earlier pass that lost its compare-and-set: the same intent
        if plan.slot_inserts:
            crashpoint("envmgr.after_intent")
        new_env = env
        if plan.env_set:
            if not await self.store.cas_update("envs", env["_id"], int(env["version"]), plan.env_set):
                return False
            new_env = {**env, **plan.env_set, "version": int(env["version"]) + 1}
        for sid, fields in plan.slot_sets.items():
            await self.store.slots.update_one({"_id": sid}, {"$set": fields})
        for jobid, fields in plan.job_sets.items():
            await self._update_job(new_env, jobid, fields, op_before=env.get("op"))
        if plan.publish:
            crashpoint("envmgr.before_publish")
            await self.bus.publish_all(plan.publish)
        if plan.events:
            job_status = next((f.get("status") for f in plan.job_sets.values() if f.get("status")), None)
            for message in plan.events:
                log.info(message, extra={"envid": env["_id"], "status": new_env.get("status")})
            await self.bus.publish_all([env_event(new_env, m, job_status) for m in plan.events])
        return True

    async def _update_job(self, env: Doc, jobid: int, fields: Doc, op_before: Doc | None = None) -> None:
        result = await self.store.jobs.update_one({"_id": jobid}, {"$set": fields})
        if result.matched_count == 0:
            # The gateway crashed between recording the operation and its job: repair the job record.
            op = env.get("op") or env.get("failed") or {}
            await self.store.jobs.update_one(
                {"_id": jobid},
                {"$set": fields, "$setOnInsert": {"envid": env["_id"], "service": env["service"], "name": env["name"],
                                                  "type": op.get("type", "UNKNOWN"), "submit": utcnow(),
                                                  "requested_by": "repair"}},
                upsert=True,
            )
        status = fields.get("status")
        if status in ("DONE", "FAIL", "ABORT"):
            op = op_before or {}
            job_type = op.get("type") if op.get("jobid") == jobid else None  # the operation this pass finished
            if job_type is None:
                job = await self.store.jobs.find_one({"_id": jobid}, {"type": 1})
                job_type = (job or {}).get("type", "?")
            metrics.JOBS_TOTAL.labels(type=job_type, result=status).inc()

    def _schedule(self, envid: int, when: datetime | None) -> None:
        if when is None:
            return
        existing = self._timers.get(envid)
        if existing is not None:
            if existing[0] <= when:
                return
            existing[1].cancel()
        delay = max(0.0, (when - datetime.now(UTC)).total_seconds()) + 0.01
        loop = asyncio.get_running_loop()
        handle = loop.call_later(delay, self._fire, envid)
        self._timers[envid] = (when, handle)

    def _fire(self, envid: int) -> None:
        self._timers.pop(envid, None)
        self._spawn(self._safe_reconcile(envid, "timer"), "timer")

    async def _safe_reconcile(self, envid: int, why: str) -> None:
        try:
            await self.reconcile(envid)
        except Exception:  # noqa: BLE001 - the resync loop will try again
            log.exception("reconcile failed", extra={"envid": envid, "trigger": why})

    async def resync_once(self, concurrency: int = 8, quiet_for: float | None = None) -> int:
        """Reconcile every environment with unfinished work (level-triggered safety net). Returns the count.

        With `quiet_for`, only those whose document has not changed for that many seconds: one that moved recently
        is being driven by its messages, and re-checking every busy environment at every resync would add a pass
        per environment per period exactly when the queues are longest (a burst of creates). After a start-up
        (`quiet_for=None`) everything unfinished is checked: in-process timers died with the previous process.
        """
        envids: set[int] = set()
        quiet: Doc = {}
        if quiet_for is not None:
            quiet = {"updated_at": {"$lt": datetime.now(UTC) - timedelta(seconds=quiet_for)}}
        # Two queries led by indexed fields rather than one `$or`/`$ne` filter, which would read every environment
        # ever made, the removed ones included. Queued creates are left to `admit_waiting`, oldest first.
        in_flight = {"op.type": {"$in": list(get_args(OpType))}, "op.phase": {"$ne": "queued"}, **quiet}
        for unfinished in (in_flight, {"policy_status": "READY", **quiet}):
            async for env in self.store.envs.find(unfinished, {"_id": 1}):
                envids.add(int(env["_id"]))
        for envid in await self.store.slots.distinct("envid", {"terminating": True}):
            envids.add(int(envid))
        semaphore = asyncio.Semaphore(concurrency)

        async def one(envid: int) -> None:
            async with semaphore:
                await self._safe_reconcile(envid, "resync")

        await asyncio.gather(*(one(e) for e in sorted(envids)))
        return len(envids) + await self.admit_waiting()

    async def refresh_gauges(self) -> None:
        counts: dict[str, int] = {}
        async for row in await self.store.envs.aggregate([{"$group": {"_id": "$policy_status", "n": {"$sum": 1}}}]):
            counts[str(row["_id"])] = int(row["n"])
        for status in ("INIT", "READY", "ACTIVE", "PASSIVE", "FAILED", "DONE"):
            metrics.ENVIRONMENTS.labels(policy_status=status).set(counts.get(status, 0))
        metrics.VMS.clear()
        async for row in await self.store.slots.aggregate([
            {"$match": {"live": True}},
            {"$group": {"_id": {"l": "$lifecycle", "z": "$zone"}, "n": {"$sum": 1}}},
        ]):
            metrics.VMS.labels(lifecycle=str(row["_id"].get("l")), zone=str(row["_id"].get("z"))).set(row["n"])

    def close(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
