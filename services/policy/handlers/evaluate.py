"""Evaluating policies: build each environment's view from MongoDB, decide, record, and ask envmgr to act.

Triggered by every `policy.tick` (all environments with a policy) and by `vm.metrics` (the environment whose guest
pushed), so a reaction takes the policy's sustain time plus well under a second rather than a fixed loop period.
The engine (`services.policy.engine`) is pure; this module is its I/O shell:

- the view: live VM slots counted by health (MISSING, UNKNOWN, FAILED), `avgcpu`/`avgmem` from zone monitoring
  over RUNNING VMs, guest-pushed metrics averaged over the VMs that reported within `metric_max_age` (stale
  samples are ignored), whether an operation runs, and the failover partners;
- the state (`policy_state` collection) is written with compare-and-set, so two replicas evaluating the same
  environment at once cannot both count a tick;
- decisions: every action, and every "none" whose reason changed, goes to the `decisions` collection and to
  `policy.decision`; the environment's latest decisions are kept on its state for `oneenv policy <envid>`;
- actions become commands for envmgr (`env.scale`, `env.recreate`, `env.failover`, `env.failback`), one at a time:
  envmgr refuses a second operation while one runs, whoever asks.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from libs.common.bus import Delivery
from libs.common.messages import (EnvFailback, EnvFailover, EnvRecreate, EnvScale, Message, PolicyDecision,
                                  PolicyTick, VmMetrics, utcnow)
from libs.common.runner import ServiceContext
from services.policy.engine import Decision, EnvironmentPolicy, EnvironmentView, Partner, PolicyState, VmRef, decide
from services.policy.settings import Settings

log = logging.getLogger("carina.policy")

DECISIONS = Counter("carina_policy_decisions_total", "Policy decisions, by policy and action", ["policy", "action"])
EVAL_SECONDS = Histogram("carina_policy_tick_duration_seconds", "Evaluating every environment on one tick",
                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
UNHEALTHY = {"MISSING": "MISSING", "DONE": "MISSING", "UNKNOWN": "UNKNOWN", "FAILED": "FAILED"}
EVALUATED = ("READY", "ACTIVE", "PASSIVE", "FAILED")
KEEP_RECENT = 20


class Evaluator:
    def __init__(self, ctx: ServiceContext, settings: Settings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.store = ctx.store
        self._locks: dict[int, asyncio.Lock] = {}

    async def on_tick(self, msg: PolicyTick, delivery: Delivery) -> None:
        with EVAL_SECONDS.time():
            await self.evaluate_all()

    async def on_metrics(self, msg: VmMetrics, delivery: Delivery) -> None:
        await self.evaluate(msg.envid)

    async def evaluate_all(self) -> int:
        """Evaluate every environment that has a policy. Returns how many were evaluated."""
        query = {"active": True, "policy_status": {"$in": list(EVALUATED)},
                 "$or": [{"spec.config.elasticity_policy": {"$ne": None}},
                         {"spec.config.availability_policy": {"$ne": None}}]}
        envids = [int(e["_id"]) async for e in self.store.envs.find(query, {"_id": 1})]
        semaphore = asyncio.Semaphore(self.settings.concurrency)

        async def one(envid: int) -> None:
            async with semaphore:
                try:
                    await self.evaluate(envid)
                except Exception:  # noqa: BLE001 - one broken environment must not stop the others
                    log.exception("policy evaluation failed", extra={"envid": envid})

        await asyncio.gather(*(one(e) for e in envids))
        return len(envids)

    async def evaluate(self, envid: int) -> list[Decision]:
        lock = self._locks.setdefault(envid, asyncio.Lock())
        async with lock:
            env = await self.store.envs.find_one({"_id": envid})
            if env is None or not env.get("active") or env.get("policy_status") not in EVALUATED:
                return []
            config = env["spec"]["config"]
            try:
                policy = EnvironmentPolicy.from_config(config)
            except ValidationError as exc:
                log.warning("invalid policy ignored", extra={"envid": envid, "reason": str(exc)[:300]})
                return []
            if policy.elasticity is None and policy.availability is None:
                return []
            view = await self._view(env)
            state_doc = await self.store["policy_state"].find_one({"_id": envid}) or {"version": 0}
            now = utcnow()
            decisions, state = decide(view, policy, PolicyState.from_dict(state_doc.get("state")), now)
            recent = _recent(state_doc, decisions)
            fields = {"state": state.to_dict(), "recent": recent, "updated_at": now, "envid": envid}
            if state_doc.get("_id") is None:
                try:
                    await self.store["policy_state"].insert_one({"_id": envid, "version": 1, **fields})
                except Exception:  # noqa: BLE001 - another replica inserted first: its evaluation counts
                    return []
            elif not await self.store.cas_update("policy_state", envid, int(state_doc["version"]), fields):
                return []  # another replica evaluated this tick
            await self._record(env, state_doc, decisions)
            await self._act(env, decisions, now)
            return decisions

    async def _view(self, env: dict[str, Any]) -> EnvironmentView:
        envid = int(env["_id"])
        slots = [s async for s in self.store.slots.find({"envid": envid, "live": True})]
        counts = {"MISSING": 0, "UNKNOWN": 0, "FAILED": 0}
        unhealthy: list[VmRef] = []
        cpus: list[float] = []
        mems: list[float] = []
        for slot in slots:
            lifecycle = slot.get("lifecycle")
            health = UNHEALTHY.get(str(lifecycle))
            if health is not None and slot.get("one_id") is not None:
                counts[health] += 1
                unhealthy.append(VmRef(role=slot["role"], state=health, vmid=slot.get("one_id"), slot=slot["_id"],
                                       index=None if slot["role"] == "master" else slot["index"]))
            if lifecycle == "RUNNING":
                if slot.get("cpu") is not None:
                    cpus.append(float(slot["cpu"]))
                if slot.get("memory") is not None:
                    mems.append(float(slot["memory"]))
        metrics: dict[str, float] = {}
        if cpus:
            metrics["avgcpu"] = sum(cpus) / len(cpus)
        if mems:
            metrics["avgmem"] = sum(mems) / len(mems)
        metrics.update(await self._guest_metrics(envid, {s["_id"] for s in slots}))
        group = ((env["spec"]["config"].get("availability_policy") or {}).get("failover_group"))
        partners: list[Partner] = []
        if group:
            async for other in self.store.envs.find(
                {"service": env["service"], "active": True, "_id": {"$ne": envid},
                 "spec.config.availability_policy.failover_group": group},
                {"policy_status": 1, "spec.config.availability_policy.failover_role": 1},
            ):
                role = ((other.get("spec") or {}).get("config", {}).get("availability_policy") or {}).get(
                    "failover_role")
                partners.append(Partner(envid=int(other["_id"]), role=role, policy_status=other["policy_status"]))
        return EnvironmentView(
            envid=envid, policy_status=env["policy_status"], num_vms=len(slots),
            nummissing=counts["MISSING"], numunknown=counts["UNKNOWN"], numfailed=counts["FAILED"],
            unhealthy=tuple(unhealthy), metrics=metrics, busy=env.get("op") is not None,
            partners=tuple(partners), base_vms=1 + int(env["spec"]["config"].get("num_slaves", 0)),
        )

    async def _guest_metrics(self, envid: int, live_slots: set[str]) -> dict[str, float]:
        cutoff = utcnow() - timedelta(seconds=self.settings.metric_max_age)
        sums: dict[str, list[float]] = {}
        async for doc in self.store["metrics"].find({"envid": envid, "at": {"$gte": cutoff}}):
            if doc["_id"] not in live_slots:
                continue
            for key, value in (doc.get("values") or {}).items():
                sums.setdefault(key, []).append(float(value))
        out: dict[str, float] = {}
        for key, values in sums.items():
            mean = round(sum(values) / len(values), 2)
            out[key] = mean
            out[f"m.{key}"] = mean
        return out

    async def _record(self, env: dict[str, Any], state_doc: dict[str, Any], decisions: list[Decision]) -> None:
        previous = {(d.get("policy"), d.get("source")): d.get("reason") for d in state_doc.get("recent", [])[:4]}
        for decision in decisions:
            DECISIONS.labels(policy=decision.policy, action=decision.action).inc()
            unchanged = previous.get((decision.policy, decision.source)) == decision.reason
            if not decision.is_action and unchanged:
                continue
            doc = decision.to_dict()
            doc["at"] = decision.at
            await self.store["decisions"].insert_one({**doc, "service": env["service"]})
            await self.ctx.bus.publish(PolicyDecision(
                envid=decision.envid, policy=decision.policy, action=decision.action, reason=decision.reason[:2000],
                inputs=dict(decision.inputs), expressions=dict(decision.expressions),
                recommend_only=decision.recommend_only, at=decision.at))

    async def _act(self, env: dict[str, Any], decisions: list[Decision], now: Any) -> None:
        envid = int(env["_id"])
        stamp = now.strftime("%Y%m%dT%H%M%S%f")
        commands: list[Message] = []
        for decision in decisions:
            if decision.action in ("scaleup", "scaledown"):
                commands.append(EnvScale(envid=envid, direction="up" if decision.action == "scaleup" else "down",
                                         requested_by="policy", reason=decision.reason[:500],
                                         request_id=f"policy-{stamp}"))
            elif decision.action == "recreate" and decision.vm is not None:
                commands.append(EnvRecreate(envid=envid, vmid=decision.vm.vmid, slot=decision.vm.slot,
                                            requested_by="policy", request_id=f"policy-{stamp}"))
            elif decision.action == "failover":
                group = env["spec"]["config"]["availability_policy"]["failover_group"]
                commands.append(EnvFailover(envid=envid, group=group, reason=decision.reason[:500],
                                            request_id=f"policy-{stamp}"))
            elif decision.action == "failback":
                group = env["spec"]["config"]["availability_policy"]["failover_group"]
                commands.append(EnvFailback(envid=envid, group=group, reason=decision.reason[:500],
                                            request_id=f"policy-{stamp}"))
            if commands:
                break  # one operation per environment at a time
        for command in commands:
            await self.ctx.bus.publish(command)


def _recent(state_doc: dict[str, Any], decisions: list[Decision]) -> list[dict[str, Any]]:
    fresh = [d.to_dict() for d in decisions]
    return (fresh + list(state_doc.get("recent") or []))[:KEEP_RECENT]
