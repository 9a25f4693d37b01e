"""Evaluating policies: build each environment's view from MongoDB, decide, record, and ask envmgr to act.

Triggered by every `policy.tick` (all environments with a policy) and by `vm.metrics` (the environment whose guest
pushed), so a reaction takes the policy's sustain time plus well under a second rather than a fixed loop period.
The engine (`services.policy.engine`) is pure; this module is its I/O shell:

- the view: live VM slots counted by health (MISSING, UNKNOWN, FAILED), `avgcpu`/`avgmem` from zone monitoring
  over RUNNING VMs and guest-pushed metrics averaged over the VMs that reported, both within `metric_max_age`
  (stale samples are ignored), whether an operation runs (or a command we sent is not yet visible), the failover
  partners, and the scheduler's headroom for one more slave (`libs.common.capacity`) when it arbitrates the
  service, so that a scale-up never asks beyond what it would grant;
- sharing: each tick comes as `tick_shards` messages (environments by envid modulo) that the replicas share;
- evaluation periods: a policy's `period` counts ticks (Carina: "true on more than `period` evaluations, one every
  60 s"). Metric arrivals evaluate at once, but all evaluations that fall in the same tick period replace each
  other — each starts again from the state the period began with — so a burst of metric pushes reacts sooner
  without counting as extra ticks. Once an evaluation in a period has acted, the rest of that period is left alone;
- the state (`policy_state` collection: `state`, `base`, `slot`, `acted`, `awaiting`, `plan`, `recent`, `latest`) is
  written with compare-and-set, so two replicas evaluating the same environment at once cannot both count a tick
  or both act;
- decisions: every action, and every "none" whose kind of reason changed, goes to the `decisions` collection, to
  `policy.decision` and to the state's `recent` list (newest first); `latest` keeps the last decision of each policy
  (elasticity, availability) however unremarkable, for `oneenv policy <envid>`;
- actions become commands for envmgr (`env.scale`, `env.recreate`, `env.failover`, `env.failback`), one at a time:
  envmgr runs one operation per environment and one slave per scaling job, so a OneFlow change of several VMs is
  kept as a `plan` and carried out one VM per evaluation, counted as `outstanding` so that nothing asks twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from pymongo.errors import DuplicateKeyError

from libs.common.bus import Delivery
from libs.common.capacity import headroom
from libs.common.globalconfig import GLOBAL_CONFIG_ID, GlobalConfig, GlobalConfigError
from libs.common.messages import (
    EnvFailback,
    EnvFailover,
    EnvRecover,
    EnvRecreate,
    EnvScale,
    Message,
    PolicyDecision,
    PolicyTick,
    VmMetrics,
    utcnow,
)
from libs.common.runner import ServiceContext
from services.policy.engine import Decision, EnvironmentPolicy, EnvironmentView, Partner, PolicyState, VmRef, decide
from services.policy.settings import Settings

log = logging.getLogger("carina.policy")

DECISIONS = Counter("carina_policy_decisions_total", "Policy decisions, by policy and action", ["policy", "action"])
EVAL_SECONDS = Histogram("carina_policy_tick_duration_seconds", "Evaluating one shard of a tick",
                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
SKIPPED_TICKS = Counter("carina_policy_ticks_skipped_total", "Ticks not evaluated because a newer one was due")
UNHEALTHY = {"MISSING": "MISSING", "DONE": "MISSING", "UNKNOWN": "UNKNOWN", "FAILED": "FAILED"}
EVALUATED = ("READY", "ACTIVE", "PASSIVE", "FAILED")
KEEP_RECENT = 20
BATCH = 500
SLOT_FIELDS = {"envid": 1, "role": 1, "index": 1, "lifecycle": 1, "one_id": 1, "cpu": 1, "memory": 1, "usage_at": 1,
               "observed_at": 1}
REQUEST_FIELDS = {"status": 1, "service": 1, "pool": 1, "vcpus": 1, "memory": 1, "kind": 1}
Trigger = Literal["tick", "metrics", "manual"]

_NUMBERS = re.compile(r"\d+(\.\d+)?")


@dataclass
class Prefetched:
    """Documents of one environment read in a batch by `evaluate_all`."""

    env: dict[str, Any]
    slots: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    state: dict[str, Any] | None
    partners: list[dict[str, Any]]
    capacity: Capacity


@dataclass
class _Batch:
    slots: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    metrics: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    states: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Capacity:
    """The scheduler's configuration and active ledger entries, as read for headroom (None: no configuration)."""

    config: GlobalConfig | None = None
    requests: tuple[dict[str, Any], ...] = ()


class Evaluator:
    """Evaluates environments' policies and turns decisions into envmgr commands (shared by all replicas)."""

    def __init__(self, ctx: ServiceContext, settings: Settings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.store = ctx.store
        self._locks: dict[int, asyncio.Lock] = {}
        self._scheduler_config: GlobalConfig | None = None
        self._config_read_at = 0.0

    # --- triggers ---------------------------------------------------------------------------------------------------

    async def on_tick(self, msg: PolicyTick, delivery: Delivery) -> None:
        """`policy.tick`: evaluate the tick's shard of the environments, unless a newer tick is already due."""
        if utcnow() - msg.at > timedelta(seconds=self.settings.tick_interval * 1.5):
            SKIPPED_TICKS.inc()
            return

        async def keep_alive() -> None:
            # A long evaluation (many environments) must not be redelivered to another replica meanwhile.
            while True:
                await asyncio.sleep(10)
                with contextlib.suppress(Exception):
                    await delivery.in_progress()

        heartbeat = asyncio.create_task(keep_alive())
        try:
            with EVAL_SECONDS.time():
                await self.evaluate_all(shard=msg.shard, shards=msg.shards)
        finally:
            heartbeat.cancel()

    async def on_metrics(self, msg: VmMetrics, delivery: Delivery) -> None:
        """`vm.metrics`: a guest pushed metrics; evaluate its environment now."""
        await self.evaluate(msg.envid, trigger="metrics")

    async def evaluate_all(self, now: datetime | None = None, shard: int = 0, shards: int = 1) -> int:
        """Evaluate every environment of a shard that has a policy. Returns how many were evaluated.

        Args:
            now: the evaluation time (tests); defaults to the current time.
            shard: which environments: those whose envid modulo `shards` is `shard`.
            shards: into how many parts the tick was split.

        Reads in batches (environments, their slots, metrics and policy states, `batch` environments per query)
        so that a tick costs a few queries per batch plus one compare-and-set per environment whose state changed.
        """
        query: dict[str, Any] = {"active": True, "policy_status": {"$in": list(EVALUATED)},
                                 "$or": [{"spec.config.elasticity_policy": {"$ne": None}},
                                         {"spec.config.availability_policy": {"$ne": None}}]}
        if shards > 1:
            query["_id"] = {"$mod": [shards, shard]}
        envs = [e async for e in self.store.envs.find(query)]
        # Failover partners may sit in other shards: the members of every group are read whole (groups are few).
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        if any(_group_of(env) for env in envs):
            members = self.store.envs.find({"active": True, "spec.config.availability_policy.failover_group":
                                            {"$nin": [None, ""]}}, {"service": 1, "policy_status": 1, "spec": 1})
            async for member in members:
                groups.setdefault((member["service"], str(_group_of(member))), []).append(member)
        semaphore = asyncio.Semaphore(self.settings.concurrency)
        evaluated = 0
        for first in range(0, len(envs), BATCH):
            batch = envs[first:first + BATCH]
            prefetched = await self._prefetch([int(e["_id"]) for e in batch])
            capacity = await self.capacity()  # after the slots: every VM they show has its grant in this ledger
            await asyncio.gather(*(self._evaluate_known(env, prefetched, groups, capacity, semaphore, now)
                                   for env in batch))
            evaluated += len(batch)
        return evaluated

    async def _evaluate_known(self, env: dict[str, Any], prefetched: _Batch,
                              groups: dict[tuple[str, str], list[dict[str, Any]]], capacity: Capacity,
                              semaphore: asyncio.Semaphore, now: datetime | None) -> None:
        envid = int(env["_id"])
        group = _group_of(env)
        partners = [p for p in groups.get((env["service"], group), []) if p["_id"] != envid] if group else []
        known = Prefetched(env=env, slots=prefetched.slots.get(envid, []), metrics=prefetched.metrics.get(envid, []),
                           state=prefetched.states.get(envid), partners=partners, capacity=capacity)
        async with semaphore:
            try:
                # One environment whose command cannot be published (broker trouble, a missing permission) must
                # not hold the whole tick: its state says the command is awaited, so it is retried later.
                await asyncio.wait_for(self.evaluate(envid, trigger="tick", now=now, known=known),
                                       timeout=self.settings.evaluation_timeout)
            except TimeoutError:
                log.warning("policy evaluation timed out", extra={"envid": envid,
                                                                  "timeout_s": self.settings.evaluation_timeout})
            except Exception:  # noqa: BLE001 - one broken environment must not stop the others
                log.exception("policy evaluation failed", extra={"envid": envid})

    async def capacity(self, service: str | None = None, zone: str | None = None) -> Capacity:
        """The scheduler's configuration and its active ledger entries (of `service` and of `zone`'s pools, if given).

        The ledger is read fresh every time and must be read after the slots it is compared with: a VM is created
        only once its grant is in the ledger, so the headroom never counts a VM's capacity as free. The
        configuration changes rarely and is reused for `scheduler_config_cache_seconds`.
        """
        now = time.monotonic()
        config = self._scheduler_config
        if not self._config_read_at or now - self._config_read_at >= self.settings.scheduler_config_cache_seconds:
            config = None
            doc = await self.store.configs.find_one({"_id": GLOBAL_CONFIG_ID})
            if doc is not None:
                try:
                    config = GlobalConfig.parse(doc.get("doc"))
                except GlobalConfigError as exc:
                    log.warning("stored scheduler configuration unreadable; no headroom applied",
                                extra={"reason": str(exc)[:300]})
            self._scheduler_config, self._config_read_at = config, now
        if config is None or not config.services or (service is not None and service not in config.services):
            return Capacity(config=config)
        query: dict[str, Any] = {"status": {"$in": ["PEND", "ALLOCATED"]}}
        if service is not None:
            pools = [name for name, pool in config.pools.items() if zone is None or pool.zone == zone]
            query["$or"] = [{"service": service}, {"pool": {"$in": pools}}]
        requests = tuple([r async for r in self.store["requests"].find(query, REQUEST_FIELDS)])
        return Capacity(config=config, requests=requests)

    async def _prefetch(self, envids: list[int]) -> _Batch:
        batch = _Batch()
        async for slot in self.store.slots.find({"envid": {"$in": envids}, "live": True}, SLOT_FIELDS):
            batch.slots.setdefault(int(slot["envid"]), []).append(slot)
        cutoff = utcnow() - timedelta(seconds=self.settings.metric_max_age)
        async for doc in self.store["metrics"].find({"envid": {"$in": envids}, "at": {"$gte": cutoff}}):
            batch.metrics.setdefault(int(doc["envid"]), []).append(doc)
        async for doc in self.store["policy_state"].find({"_id": {"$in": envids}}):
            batch.states[int(doc["_id"])] = doc
        return batch

    # --- one environment --------------------------------------------------------------------------------------------

    async def evaluate(self, envid: int, trigger: Trigger = "manual", now: datetime | None = None,
                       known: Prefetched | None = None) -> list[Decision]:
        """Evaluate one environment's policies now; record the decisions and send the resulting command.

        Args:
            envid: the environment.
            trigger: what asked (recorded with the decisions).
            now: the evaluation time (tests); defaults to the current time.
            known: documents already read for it (a tick reads them in batches); None reads them now.

        Returns:
            The decisions taken (empty when the environment has no policy, is not evaluated in its status, was
            already acted on in this tick period, or another replica evaluated it at the same moment).
        """
        # Evaluations of one environment in this process run one after the other (a tick and a metric push).
        # Documents read in a batch may be a moment old: if a metric push evaluated the environment meanwhile, the
        # compare-and-set on its policy state fails and this evaluation is dropped (that one counted).
        async with self._locks.setdefault(envid, asyncio.Lock()):
            return await self._evaluate(envid, trigger, now or utcnow(), known)

    async def _evaluate(self, envid: int, trigger: Trigger, now: datetime, known: Prefetched | None) -> list[Decision]:
        env = known.env if known is not None else await self.store.envs.find_one({"_id": envid})
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
        if known is not None:
            state_doc = known.state or {}
        else:
            state_doc = await self.store["policy_state"].find_one({"_id": envid}) or {}
        slot = int(now.timestamp() // self.settings.tick_interval)
        same_period = state_doc.get("slot") == slot
        if same_period and state_doc.get("acted"):
            return []  # this tick period already produced a command: the next period looks again
        # Every evaluation of a tick period starts from the state the period began with, so it counts once.
        base = state_doc.get("base") if same_period else state_doc.get("state")
        awaiting = _still_awaiting(state_doc.get("awaiting"), env, now, self.settings.command_timeout)
        plan = _live_plan(state_doc.get("plan"), env, now, self.settings.command_timeout)
        view = await self._view(env, busy_extra=awaiting is not None, plan=plan, known=known)
        decisions, state = decide(view, policy, PolicyState.from_dict(base), now)

        commands, plan = self._commands(env, view, decisions, plan, now)
        if commands and any(isinstance(c, (EnvScale, EnvRecreate, EnvRecover)) for c in commands):
            awaiting = {"env_version": int(env.get("version", 0)), "at": now,
                        "command": type(commands[0]).__name__}
        noteworthy = _noteworthy(state_doc, decisions)
        new_state = state.to_dict()
        updated_at = state_doc.get("updated_at")
        if (state_doc and not commands and not noteworthy and _steady(state_doc.get("state"), new_state)
                and plan == state_doc.get("plan") and awaiting == state_doc.get("awaiting")
                and isinstance(updated_at, datetime)
                and now - updated_at < timedelta(seconds=self.settings.refresh_interval)):
            # Nothing moved (no counter, no decision worth recording): skip the write; the stored state is as good
            # as a new one for the next evaluation, and `latest` is refreshed every `refresh_interval`.
            return decisions
        latest = dict(state_doc.get("latest") or {})
        for decision in decisions:
            latest[decision.policy] = {**decision.to_dict(), "trigger": trigger}
        fields = {
            "state": new_state,
            "base": base,
            "slot": slot,
            "acted": bool(commands),
            "awaiting": awaiting,
            "plan": plan,
            "recent": ([{**d.to_dict(), "trigger": trigger} for d in noteworthy]
                       + list(state_doc.get("recent") or []))[:KEEP_RECENT],
            "latest": latest,
            "updated_at": now,
            "evaluated_by": self.ctx.instance,
            "envid": envid,
            "service": env.get("service"),
        }
        if not state_doc:
            try:
                await self.store["policy_state"].insert_one({"_id": envid, "version": 1, **fields})
            except DuplicateKeyError:
                return []  # another replica evaluated it first: its evaluation counts
        elif not await self.store.cas_update("policy_state", envid, int(state_doc.get("version", 0)), fields):
            return []  # another replica evaluated it at the same moment
        await self._record(env, noteworthy, trigger)
        for command in commands:
            await self.ctx.bus.publish(command)
        return decisions

    async def _view(self, env: dict[str, Any], busy_extra: bool = False, plan: dict[str, Any] | None = None,
                    known: Prefetched | None = None) -> EnvironmentView:
        envid = int(env["_id"])
        if known is not None:
            slots = known.slots
        else:
            slots = [s async for s in self.store.slots.find({"envid": envid, "live": True}, SLOT_FIELDS)]
        usage_cutoff = utcnow() - timedelta(seconds=self.settings.metric_max_age)
        counts, unhealthy, metrics = _health_and_usage(slots, usage_cutoff)
        live = {s["_id"] for s in slots}
        if known is not None:
            metrics.update(_average_metrics(known.metrics, live))
        else:
            metrics.update(await self._guest_metrics(envid, live))
        group = _group_of(env)
        partners: list[Partner] = []
        if group:
            if known is not None:
                others = known.partners
            else:
                others = [o async for o in self.store.envs.find(
                    {"service": env["service"], "active": True, "_id": {"$ne": envid},
                     "spec.config.availability_policy.failover_group": group},
                    {"policy_status": 1, "spec": 1})]
            for other in others:
                role = ((other.get("spec") or {}).get("config", {}).get("availability_policy") or {}).get(
                    "failover_role")
                partners.append(Partner(envid=int(other["_id"]), role=role, policy_status=other["policy_status"]))
        outstanding = int(plan["remaining"]) if plan and plan.get("direction") == "up" else 0
        capacity = known.capacity if known is not None else await self.capacity(env["service"], env.get("zone"))
        slave = env["spec"].get("slave") or env["spec"]["master"]
        room = headroom(capacity.config, capacity.requests, str(env["service"]), str(env.get("zone", "")),
                        float(slave.get("cpu") or 0), int(slave.get("memory") or 0))
        return EnvironmentView(
            envid=envid, policy_status=env["policy_status"], num_vms=len(slots),
            nummissing=counts["MISSING"], numunknown=counts["UNKNOWN"], numfailed=counts["FAILED"],
            unhealthy=tuple(unhealthy), metrics=metrics, busy=env.get("op") is not None or busy_extra,
            outstanding=outstanding, headroom=room, partners=tuple(partners),
            base_vms=1 + int(env["spec"]["config"].get("num_slaves", 0) or 0),
            failed_operation=(env.get("failed") or {}).get("type"),
        )

    async def _guest_metrics(self, envid: int, live_slots: set[str]) -> dict[str, float]:
        cutoff = utcnow() - timedelta(seconds=self.settings.metric_max_age)
        docs = [d async for d in self.store["metrics"].find({"envid": envid, "at": {"$gte": cutoff}})]
        return _average_metrics(docs, live_slots)

    # --- output -----------------------------------------------------------------------------------------------------

    async def _record(self, env: dict[str, Any], decisions: list[Decision], trigger: Trigger) -> None:
        if not decisions:
            return
        docs = []
        for decision in decisions:
            DECISIONS.labels(policy=decision.policy, action=decision.action).inc()
            doc = decision.to_dict()
            docs.append({**doc, "at": decision.at, "service": env["service"], "trigger": trigger})
        await self.store["decisions"].insert_many(docs)
        for decision in decisions:
            await self.ctx.bus.publish(PolicyDecision(
                envid=decision.envid, policy=decision.policy, action=decision.action, reason=decision.reason[:2000],
                inputs=dict(decision.inputs), expressions=dict(decision.expressions),
                recommend_only=decision.recommend_only, at=decision.at))

    def _commands(self, env: dict[str, Any], view: EnvironmentView, decisions: list[Decision],
                  plan: dict[str, Any] | None, now: datetime) -> tuple[list[Message], dict[str, Any] | None]:
        """The command to send for this evaluation (at most one) and the multi-VM plan left to carry out."""
        envid = int(env["_id"])
        stamp = now.strftime("%Y%m%dT%H%M%S%f")
        group = (env["spec"]["config"].get("availability_policy") or {}).get("failover_group") or ""
        for decision in decisions:
            if decision.action in ("scaleup", "scaledown"):
                direction: Literal["up", "down"] = "up" if decision.action == "scaleup" else "down"
                # envmgr adds or removes one slave per job: the rest of a multi-VM change waits in the plan.
                remaining = decision.count - 1
                new_plan = None if remaining <= 0 else {
                    "direction": direction, "remaining": remaining, "source": decision.source,
                    "target": view.num_vms + (decision.count if direction == "up" else -decision.count),
                    "reason": decision.reason[:400], "at": now}
                return [EnvScale(envid=envid, direction=direction, requested_by="policy",
                                 reason=decision.reason[:500], request_id=f"policy-{stamp}")], new_plan
            if decision.action == "recreate" and decision.vm is not None:
                return [EnvRecreate(envid=envid, vmid=decision.vm.vmid, slot=decision.vm.slot,
                                    requested_by="policy", request_id=f"policy-{stamp}")], plan
            if decision.action == "recover":
                return [EnvRecover(envid=envid, request_id=f"policy-{stamp}")], None
            if decision.action == "failover":
                return [EnvFailover(envid=envid, group=group, reason=decision.reason[:500],
                                    request_id=f"policy-{stamp}")], None
            if decision.action == "failback":
                return [EnvFailback(envid=envid, group=group, reason=decision.reason[:500],
                                    request_id=f"policy-{stamp}")], None
        if plan is None or view.busy or view.policy_status != "ACTIVE":
            return [], None if view.policy_status != "ACTIVE" else plan
        # Carry the plan on: one more VM towards its target.
        direction = plan["direction"]
        reached = view.num_vms >= plan["target"] if direction == "up" else view.num_vms <= plan["target"]
        if reached or int(plan["remaining"]) <= 0:
            return [], None
        remaining = int(plan["remaining"]) - 1
        return [EnvScale(envid=envid, direction=direction, requested_by="policy",
                         reason=f"continuing {plan['source']}: {plan['reason']}"[:500],
                         request_id=f"policy-{stamp}")], ({**plan, "remaining": remaining} if remaining else None)


def _health_and_usage(slots: list[dict[str, Any]], usage_cutoff: datetime
                      ) -> tuple[dict[str, int], list[VmRef], dict[str, float]]:
    """The live slots counted by health, the unhealthy ones, and `avgcpu`/`avgmem` from zone monitoring.

    Usage is averaged over RUNNING VMs whose sample is not older than `usage_cutoff`: a zone that stopped
    answering must not leave a VM's last CPU reading steering the elasticity policy.
    """
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
        sampled_at = slot.get("usage_at") or slot.get("observed_at")
        if lifecycle == "RUNNING" and isinstance(sampled_at, datetime) and sampled_at >= usage_cutoff:
            if slot.get("cpu") is not None:
                cpus.append(float(slot["cpu"]))
            if slot.get("memory") is not None:
                mems.append(float(slot["memory"]))
    metrics: dict[str, float] = {}
    if cpus:
        metrics["avgcpu"] = round(sum(cpus) / len(cpus), 2)
    if mems:
        metrics["avgmem"] = round(sum(mems) / len(mems), 2)
    return counts, unhealthy, metrics


def _group_of(env: dict[str, Any]) -> str | None:
    """The environment's failover group, if it has one."""
    group = ((env.get("spec") or {}).get("config", {}).get("availability_policy") or {}).get("failover_group")
    return str(group) if group else None


def _still_awaiting(awaiting: dict[str, Any] | None, env: dict[str, Any], now: datetime,
                    timeout: float) -> dict[str, Any] | None:
    """A command we sent that envmgr has not yet picked up (the environment document is unchanged since)."""
    if not awaiting:
        return None
    if int(env.get("version", 0)) != int(awaiting.get("env_version", -1)):
        return None
    at = awaiting.get("at")
    if not isinstance(at, datetime) or now - at > timedelta(seconds=timeout):
        return None
    return awaiting


def _live_plan(plan: dict[str, Any] | None, env: dict[str, Any], now: datetime,
               timeout: float) -> dict[str, Any] | None:
    """A multi-VM change still being carried out; dropped when stale or when the environment left ACTIVE."""
    if not plan or env.get("policy_status") != "ACTIVE":
        return None
    at = plan.get("at")
    # A plan advances one VM per operation; one that has not moved for a long time was overtaken by events.
    if not isinstance(at, datetime) or now - at > timedelta(seconds=max(600.0, 20 * timeout)):
        return None
    return plan


def _average_metrics(docs: list[dict[str, Any]], live_slots: set[str]) -> dict[str, float]:
    """Guest metrics averaged over the live VMs that reported (fresh samples only: the caller filters by age)."""
    sums: dict[str, list[float]] = {}
    for doc in docs:
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


def _steady(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    """The state did not change except for the time of its last evaluation."""
    if before is None:
        return False
    return {k: v for k, v in before.items() if k != "last_eval"} == {k: v for k, v in after.items()
                                                                       if k != "last_eval"}


def _reason_kind(reason: str) -> str:
    """A reason without its numbers: 'avgcpu[55.1] > 50 held on 2 ...' and '... on 3 ...' are the same kind."""
    return _NUMBERS.sub("#", reason)


def _noteworthy(state_doc: dict[str, Any], decisions: list[Decision]) -> list[Decision]:
    """Actions always; a 'none' only when its kind of reason differs from the last one recorded for that policy."""
    previous = {policy: (d.get("action"), d.get("source"), _reason_kind(str(d.get("reason", ""))))
                for policy, d in (state_doc.get("latest") or {}).items()}
    out = []
    for decision in decisions:
        same = previous.get(decision.policy) == (decision.action, decision.source, _reason_kind(decision.reason))
        if decision.is_action or decision.recommended is not None or not same:
            out.append(decision)
    return out
