"""The policy decision engine: what should happen to one environment on this tick, and why.

Where it sits: the policy service, on every `policy.tick` (and on metric arrival), builds an `EnvironmentView` from
MongoDB (VM counts by state, averaged metrics already filtered for freshness, whether an operation is running, the
scheduler's headroom, the failover partners), loads the environment's `PolicyState`, calls `decide()`, stores the
returned state, publishes every `Decision` on `policy.decision` and turns the actionable ones into `env.scale`,
`env.recreate`, `env.failover` / `env.failback` commands. This module is pure: no I/O, no clock (`now` is passed in),
no randomness, so every behaviour below is unit-tested tick by tick.

Semantics (Carina's policy manager with its bugs fixed, plus OneFlow's elasticity rules):

* Status: INIT is left alone; READY is promoted (`promote`) to PASSIVE for `failover_role: passive`, else ACTIVE.
* Availability (any status but INIT), one decision per tick, in this order of precedence:
  - failover: ACTIVE + role active, `failover_expr` true on more than `period` consecutive ticks -> this
    environment FAILED and the first passive partner ACTIVE;
  - failback: FAILED, `failback_expr` true on more than `period` consecutive ticks -> ACTIVE, and every passive
    partner that is ACTIVE back to PASSIVE (it then shrinks back to `base_vms`, one VM per tick);
  - recreate: `recreate_expr` true on more than `period` consecutive ticks -> recreate one unhealthy VM, the master
    first. Carina never reset these counters when an expression turned false; here every counter restarts at 0.
  - recover: when the environment's last RECREATE (or RECOVER) failed — typically because other VMs of the
    environment broke too, e.g. a whole host lost — one-by-one recreation cannot finish; once that has lasted more
    than `period` ticks, the environment is recovered instead: every broken VM replaced at once and the slaves
    re-added to the master (envmgr's RECOVER). Only for policies with a `recreate_expr`.
  - passive shrink: a PASSIVE environment larger than `base_vms` scales down one VM per tick.
  Failover and failback only change statuses (no VM of this environment is touched), so they are not held back by
  a running operation: a stuck job on a dead zone must not prevent disaster recovery. Recreate and shrink are.
* Elasticity (ACTIVE only; nothing while an operation runs or when availability already acted this tick):
  - `time-based`: level-triggered; the first window (in the order written) containing `now` sets the target VM
    count (master included); one VM per tick towards it. No window -> no change.
  - `auto`: below `min` / above `max` -> one VM towards the bound at once; otherwise `scaleup_expr` /
    `scaledown_expr` must hold on more than `period` consecutive ticks (Carina's strictly-greater rule: period 3
    acts on the 4th true evaluation), one VM per action; the counter restarts when the condition stops holding,
    when the direction changes, and after an action. Both expressions true -> no action, reported as an error.
  - OneFlow (`min_vms`/`max_vms`/`elasticity_policies`/`scheduled_policies`): exactly the OneFlow role algorithm
    (scheduled rules first, then elasticity rules with `period`/`period_number`, first non-zero change wins,
    CHANGE/CARDINALITY/PERCENTAGE_CHANGE with `min_adjust_step` and OneFlow's clamping, cooldown precedence
    rule -> role -> 300 s, implicit `min_vms` rule without cooldown, scheduled times before the first evaluation
    ignored). One fix: a CARDINALITY below `min_vms` is not followed further below `min_vms`.
  - `cooldown_up` / `cooldown_down` (seconds since the last scaling action) hold back load-driven decisions
    (auto expressions, OneFlow elasticity rules); schedule-driven and bound-enforcing decisions ignore them.
  - A scale-up never goes past the policy maximum nor past the scheduler `headroom`, and counts requests still
    outstanding; a scale-down never removes the master.
  - `recommend_only`: the decision says what would be done (`recommended`, `count`) with action `none`; counters
    restart as if it had acted, so the recommendation recurs at the policy's own pace.
* Every stage returns a decision, `none` included, with a reason a person can read and the inputs it used.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from croniter import croniter

from libs.common.expr import ELASTICITY_VARIABLES, EvalResult, VariablePolicy, compile_expression
from libs.common.policy_model import (
    DEFAULT_ONEFLOW_COOLDOWN,
    AvailabilityPolicy,
    ElasticityPolicy,
    ElasticityRule,
    ScheduledRule,
)
from libs.common.timewindow import TimeWindow

__all__ = [
    "Action",
    "Decision",
    "EnvironmentPolicy",
    "EnvironmentView",
    "Partner",
    "PolicyState",
    "PolicyStatus",
    "RuleState",
    "VmRef",
    "decide",
    "new_cardinality",
]

PolicyStatus = Literal["INIT", "READY", "ACTIVE", "PASSIVE", "FAILED"]
Action = Literal["none", "scaleup", "scaledown", "recreate", "recover", "failover", "failback", "promote"]
PolicyKind = Literal["elasticity", "availability"]
Direction = Literal["up", "down"]


# --- inputs --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VmRef:
    """An unhealthy VM of the environment (a recreate target).

    Attributes:
        role: master or slave.
        state: why it is unhealthy: MISSING, UNKNOWN, FAILED or SICK.
        vmid: its OpenNebula id, if it still has one.
        slot: the slot id (e.g. "18:slave:0"), stable across recreations.
        index: the slave index (None for the master).
    """

    role: Literal["master", "slave"]
    state: str
    vmid: int | None = None
    slot: str | None = None
    index: int | None = None

    def describe(self) -> str:
        """`master vm 1604 (UNKNOWN)` style label for reasons."""
        name = "master" if self.role == "master" else f"slave {self.index if self.index is not None else '?'}"
        where = f" vm {self.vmid}" if self.vmid is not None else (f" slot {self.slot}" if self.slot else "")
        return f"{name}{where} ({self.state})"


@dataclass(frozen=True)
class Partner:
    """Another environment of the same failover group."""

    envid: int
    role: Literal["active", "passive"] | None
    policy_status: PolicyStatus


@dataclass(frozen=True)
class EnvironmentView:
    """What the engine may know about one environment on this tick (built by the caller from MongoDB).

    Attributes:
        envid: the environment id.
        policy_status: INIT, READY, ACTIVE, PASSIVE or FAILED.
        num_vms: VMs of the environment, master included, healthy or not (Carina's `numvms` and `size`).
        nummissing: VMs that vanished from the zone.
        numunknown: VMs in UNKNOWN.
        numfailed: VMs in a failure state.
        numrunning: VMs RUNNING; None lets the engine use num_vms minus the three counts above.
        unhealthy: the VMs that a recreate may target.
        metrics: averaged metrics, fresh only (`avgcpu`, `avgmem`, `m.<name>`, `CPU_LOAD`, ...).
        busy: an operation (job) is running on the environment.
        headroom: how many more VMs the scheduler lets this environment have now; None = no limit known.
        outstanding: scale-ups requested but not yet visible in num_vms (pending scheduler requests).
        partners: the other environments of its failover group.
        base_vms: VMs it was created with (master + num_slaves); a PASSIVE environment shrinks back to this.
        failed_operation: the type of the environment's last operation if it failed (RECREATE, SCALEUP, ...).
    """

    envid: int
    policy_status: PolicyStatus
    num_vms: int
    nummissing: int = 0
    numunknown: int = 0
    numfailed: int = 0
    numrunning: int | None = None
    unhealthy: tuple[VmRef, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)
    busy: bool = False
    headroom: int | None = None
    outstanding: int = 0
    partners: tuple[Partner, ...] = ()
    base_vms: int | None = None
    failed_operation: str | None = None

    def counters(self) -> dict[str, float]:
        """The availability variables."""
        running = self.numrunning
        if running is None:
            running = max(self.num_vms - self.nummissing - self.numunknown - self.numfailed, 0)
        return {
            "nummissing": float(self.nummissing),
            "numunknown": float(self.numunknown),
            "numfailed": float(self.numfailed),
            "numvms": float(self.num_vms),
            "numrunning": float(running),
        }


@dataclass(frozen=True)
class EnvironmentPolicy:
    """Both policy blocks of an environment (either may be absent)."""

    elasticity: ElasticityPolicy | None = None
    availability: AvailabilityPolicy | None = None

    @classmethod
    def from_config(cls, environment: Mapping[str, Any]) -> EnvironmentPolicy:
        """Validates the `elasticity_policy` / `availability_policy` blocks of an environment's configuration.

        Raises:
            pydantic.ValidationError: when a block is invalid.
        """
        elasticity = environment.get("elasticity_policy")
        availability = environment.get("availability_policy")
        return cls(
            elasticity=None if elasticity is None else ElasticityPolicy.model_validate(elasticity),
            availability=None if availability is None else AvailabilityPolicy.model_validate(availability),
        )


# --- persisted state -----------------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _from_iso(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


@dataclass
class RuleState:
    """OneFlow's per-rule bookkeeping (`last_eval`, `true_evals`, `expression_evaluated`).

    `key` identifies the rule it belongs to, so editing a rule starts it afresh.
    """

    key: str
    last_eval: datetime | None = None
    true_evals: int = 0
    evaluated: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-safe dict."""
        return {"key": self.key, "last_eval": _iso(self.last_eval), "true_evals": self.true_evals,
                "evaluated": self.evaluated}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuleState:
        """Reads what `to_dict` wrote (unknown keys are ignored)."""
        return cls(key=str(data.get("key", "")), last_eval=_from_iso(data.get("last_eval")),
                   true_evals=int(data.get("true_evals", 0)), evaluated=str(data.get("evaluated", "")))


@dataclass
class PolicyState:
    """Per-environment memory between ticks, stored by the policy service (MongoDB) as `to_dict()`."""

    scale_counter: int = 0
    scale_direction: Direction | None = None
    recreate_counter: int = 0
    failover_counter: int = 0
    failback_counter: int = 0
    recover_counter: int = 0
    rules: dict[str, RuleState] = field(default_factory=dict)
    scheduled: dict[str, RuleState] = field(default_factory=dict)
    first_eval: datetime | None = None
    last_eval: datetime | None = None
    last_scale_at: datetime | None = None
    last_scale_direction: Direction | None = None
    cooldown_until: datetime | None = None
    last_action: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-safe dict (datetimes as ISO 8601 text)."""
        return {
            "version": 1,
            "scale_counter": self.scale_counter,
            "scale_direction": self.scale_direction,
            "recreate_counter": self.recreate_counter,
            "failover_counter": self.failover_counter,
            "failback_counter": self.failback_counter,
            "recover_counter": self.recover_counter,
            "rules": {name: rule.to_dict() for name, rule in self.rules.items()},
            "scheduled": {name: rule.to_dict() for name, rule in self.scheduled.items()},
            "first_eval": _iso(self.first_eval),
            "last_eval": _iso(self.last_eval),
            "last_scale_at": _iso(self.last_scale_at),
            "last_scale_direction": self.last_scale_direction,
            "cooldown_until": _iso(self.cooldown_until),
            "last_action": copy.deepcopy(self.last_action),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PolicyState:
        """Reads what `to_dict` wrote; None or {} gives a fresh state, unknown keys are ignored."""
        if not data:
            return cls()
        direction = data.get("scale_direction")
        last_direction = data.get("last_scale_direction")
        return cls(
            scale_counter=int(data.get("scale_counter", 0)),
            scale_direction=direction if direction in ("up", "down") else None,
            recreate_counter=int(data.get("recreate_counter", 0)),
            failover_counter=int(data.get("failover_counter", 0)),
            failback_counter=int(data.get("failback_counter", 0)),
            recover_counter=int(data.get("recover_counter", 0)),
            rules={str(k): RuleState.from_dict(v) for k, v in (data.get("rules") or {}).items()},
            scheduled={str(k): RuleState.from_dict(v) for k, v in (data.get("scheduled") or {}).items()},
            first_eval=_from_iso(data.get("first_eval")),
            last_eval=_from_iso(data.get("last_eval")),
            last_scale_at=_from_iso(data.get("last_scale_at")),
            last_scale_direction=last_direction if last_direction in ("up", "down") else None,
            cooldown_until=_from_iso(data.get("cooldown_until")),
            last_action=copy.deepcopy(data.get("last_action")),
        )


# --- output --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One outcome of one policy stage on one tick.

    Attributes:
        envid: the environment decided about.
        policy: elasticity or availability.
        action: none, scaleup, scaledown, recreate, failover, failback or promote.
        reason: why, in words, with the numbers.
        count: VMs to add or remove (scaleup/scaledown; also what a recommendation would do).
        vm: the VM to recreate.
        status_changes: policy_status to set, by envid (promote, failover, failback).
        partner: the partner environment a failover activates or a failback deactivates.
        source: which rule decided ("time-based:morn", "auto:scaleup_expr", "elasticity_policies[0]",
            "scheduled_policies[1]", "min_vms", "recreate_expr", ...).
        inputs: the values the decision used.
        expressions: each evaluated expression rendered with its inputs (`avgcpu[55.0] > 50`).
        recommend_only: the policy is in recommend-only mode; nothing is to be executed.
        recommended: in recommend-only mode, the action that would have been taken.
        priority: Carina's `priority`, passed on with scale-ups.
        at: the tick time.
    """

    envid: int
    policy: PolicyKind
    action: Action
    reason: str
    at: datetime
    count: int = 0
    vm: VmRef | None = None
    status_changes: Mapping[int, PolicyStatus] = field(default_factory=dict)
    partner: int | None = None
    source: str = ""
    inputs: Mapping[str, Any] = field(default_factory=dict)
    expressions: Mapping[str, str] = field(default_factory=dict)
    recommend_only: bool = False
    recommended: Action | None = None
    priority: int | None = None

    @property
    def is_action(self) -> bool:
        """True when the caller has something to execute."""
        return self.action != "none"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; its envid/policy/action/reason/inputs/expressions/recommend_only/at fields match the
        `policy.decision` message."""
        return {
            "envid": self.envid,
            "policy": self.policy,
            "action": self.action,
            "reason": self.reason,
            "count": self.count,
            "vm": None if self.vm is None else {"role": self.vm.role, "state": self.vm.state, "vmid": self.vm.vmid,
                                                 "slot": self.vm.slot, "index": self.vm.index},
            "status_changes": {str(k): v for k, v in self.status_changes.items()},
            "partner": self.partner,
            "source": self.source,
            "inputs": dict(self.inputs),
            "expressions": dict(self.expressions),
            "recommend_only": self.recommend_only,
            "recommended": self.recommended,
            "priority": self.priority,
            "at": self.at.isoformat(),
        }


# --- entry point ---------------------------------------------------------------------------------------------------


def decide(
    view: EnvironmentView, policy: EnvironmentPolicy, state: PolicyState, now: datetime
) -> tuple[list[Decision], PolicyState]:
    """Decides what to do with one environment on this tick.

    Args:
        view: the environment as seen now.
        policy: its validated policy blocks.
        state: what the previous ticks remembered (not modified).
        now: the tick time; must be timezone-aware.

    Returns:
        The decisions (at least one; one per configured stage, plus `promote` for a READY environment) and the new
        state to store.

    Raises:
        ValueError: when `now` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("decide() needs a timezone-aware 'now' (windows and cron rules depend on the zone)")
    new_state = copy.deepcopy(state)
    if new_state.first_eval is None:
        new_state.first_eval = now
    new_state.last_eval = now
    tick = _Tick(view=view, policy=policy, state=new_state, now=now)
    return tick.run(), new_state


@dataclass
class _Proposal:
    """A scaling the elasticity stage wants; `_Tick._settle` applies bounds, cooldowns and recommend-only."""

    direction: Direction
    count: int
    reason: str
    source: str
    trigger: Literal["load", "schedule", "bound"]
    limit: int | None  # the policy's maximum VM count for scale-ups
    floor: int = 1  # the policy's minimum VM count for scale-downs (never below the master)
    on_commit: Callable[[], None] = lambda: None
    oneflow_cooldown: int = 0


@dataclass
class _Tick:
    view: EnvironmentView
    policy: EnvironmentPolicy
    state: PolicyState
    now: datetime
    expressions: dict[str, str] = field(default_factory=dict)

    # helpers
    def _decision(self, policy: PolicyKind, action: Action, reason: str, **extra: Any) -> Decision:
        return Decision(envid=self.view.envid, policy=policy, action=action, reason=reason, at=self.now, **extra)

    def _record(self, decision: Decision) -> Decision:
        if decision.is_action:
            self.state.last_action = {
                "action": decision.action,
                "count": decision.count,
                "source": decision.source,
                "reason": decision.reason,
                "at": self.now.isoformat(),
            }
        return decision

    def run(self) -> list[Decision]:
        view = self.view
        if view.policy_status == "INIT":
            return [self._decision("elasticity", "none", "environment is still being created (INIT): policies wait",
                                   inputs={"policy_status": "INIT"})]
        decisions: list[Decision] = []
        status: PolicyStatus = view.policy_status
        availability = self.policy.availability
        if status == "READY":
            target: PolicyStatus = (
                "PASSIVE" if availability is not None and availability.failover_role == "passive" else "ACTIVE"
            )
            decisions.append(self._record(self._decision(
                "availability", "promote", f"environment is ready: READY -> {target}", source="policy_status",
                status_changes={view.envid: target}, inputs={"policy_status": "READY"},
            )))
            status = target

        vm_operation = False
        if availability is not None:
            verdict = self._availability(availability, status)
            decisions.append(self._record(verdict))
            if verdict.action in ("failover", "failback"):
                status = verdict.status_changes.get(view.envid, status)
            vm_operation = verdict.action in ("recreate", "recover", "scaledown")

        elasticity = self.policy.elasticity
        if elasticity is not None:
            decisions.append(self._record(self._elasticity(elasticity, status, vm_operation)))
        if not decisions:
            decisions.append(self._decision("elasticity", "none", "no elasticity or availability policy configured"))
        return decisions

    # --- availability ---------------------------------------------------------------------------------------------

    def _evaluate(self, name: str, text: str, values: Mapping[str, float], allowed: VariablePolicy) -> EvalResult:
        result = compile_expression(text, allowed).evaluate(values)
        self.expressions[name] = result.rendered
        return result

    def _availability(self, policy: AvailabilityPolicy, status: PolicyStatus) -> Decision:
        view, state = self.view, self.state
        self.expressions = {}
        values: dict[str, float] = view.counters()
        if policy.metric_plugins:
            values.update({k: float(v) for k, v in view.metrics.items() if k.startswith("m.")})
        allowed = policy.variables()
        notes: list[str] = []

        def counted(name: str, text: str | None, counter: int, applies: bool) -> tuple[int, EvalResult | None]:
            if text is None or not applies:
                return 0, None
            result = self._evaluate(name, text, values, allowed)
            notes.extend(result.problems)
            return (counter + 1 if result.value else 0), result

        state.recreate_counter, recreate = counted(
            "recreate_expr", policy.recreate_expr, state.recreate_counter, True)
        state.failover_counter, failover = counted(
            "failover_expr", policy.failover_expr, state.failover_counter,
            status == "ACTIVE" and policy.failover_role == "active")
        state.failback_counter, failback = counted(
            "failback_expr", policy.failback_expr, state.failback_counter, status == "FAILED")

        inputs: dict[str, Any] = {
            **{k: v for k, v in values.items()},
            "policy_status": status,
            "period": policy.period,
            "recreate_counter": state.recreate_counter,
            "failover_counter": state.failover_counter,
            "failback_counter": state.failback_counter,
            "busy": view.busy,
        }
        resumable = policy.recreate_expr is not None and view.failed_operation in ("RECREATE", "RECOVER")
        # Counted only while nothing runs: a recovery that is itself running (or failing) is not retried at once.
        if not resumable:
            state.recover_counter = 0
        elif not view.busy:
            state.recover_counter += 1
        if resumable:
            inputs.update({"failed_operation": view.failed_operation, "recover_counter": state.recover_counter})
        common: dict[str, Any] = {"inputs": inputs, "expressions": dict(self.expressions)}
        period = policy.period

        if failover is not None and state.failover_counter > period:
            state.failover_counter = 0
            return self._failover(policy, failover, common)
        if failback is not None and state.failback_counter > period:
            state.failback_counter = 0
            return self._failback(policy, failback, common)

        if resumable:
            broken = ", ".join(vm.describe() for vm in view.unhealthy) or "none left"
            what = f"the last {view.failed_operation} failed (broken VMs: {broken})"
            if state.recover_counter <= period:
                return self._decision("availability", "none",
                                      f"{what}: recovering after more than {period} evaluation(s), "
                                      f"{state.recover_counter} so far", source="recover", **common)
            if view.busy:
                return self._decision("availability", "none", f"{what}, but an operation is running: recover waits",
                                      source="recover", **common)
            state.recover_counter = 0
            state.recreate_counter = 0
            return self._decision("availability", "recover",
                                  f"{what}: recover the environment (replace every broken VM, re-add the slaves)",
                                  count=len(view.unhealthy), source="recover", **common)

        if recreate is not None and state.recreate_counter > period:
            held = f"{recreate.rendered} held on {state.recreate_counter} consecutive evaluations (> period {period})"
            if view.busy:
                return self._decision("availability", "none", f"{held}, but an operation is running: recreate waits",
                                      source="recreate_expr", **common)
            target = _recreate_target(view.unhealthy)
            if target is None:
                return self._decision(
                    "availability", "none",
                    f"{held}, but no VM is MISSING, UNKNOWN, FAILED or SICK: nothing to recreate",
                    source="recreate_expr", **common)
            state.recreate_counter = 0
            return self._decision("availability", "recreate", f"{held}: recreate {target.describe()}",
                                  vm=target, count=1, source="recreate_expr", **common)

        if status == "PASSIVE" and view.base_vms is not None and view.num_vms > view.base_vms:
            if view.busy:
                return self._decision("availability", "none",
                                      f"passive environment has {view.num_vms} VMs (created with {view.base_vms}); "
                                      "shrinking waits for the running operation", source="passive", **common)
            return self._decision("availability", "scaledown",
                                  f"passive environment has {view.num_vms} VMs, more than the {view.base_vms} it was "
                                  "created with: release one", count=1, source="passive", **common)

        return self._decision("availability", "none", _availability_summary(policy, status, recreate, failover,
                                                                             failback, state, notes), **common)

    def _failover(self, policy: AvailabilityPolicy, result: EvalResult, common: dict[str, Any]) -> Decision:
        envid = self.view.envid
        passive = [p for p in self.view.partners if p.role == "passive" and p.policy_status not in ("INIT", "FAILED")]
        # Prefer a partner that is standing by; an already ACTIVE passive partner is acceptable ("if it isn't").
        passive.sort(key=lambda p: (p.policy_status != "PASSIVE", p.envid))
        changes: dict[int, PolicyStatus] = {envid: "FAILED"}
        held = f"{result.rendered} held on more than {policy.period} consecutive evaluations"
        if not passive:
            return self._decision("availability", "failover",
                                  f"{held}: environment FAILED; no passive partner in group "
                                  f"{policy.failover_group!r} can take over", status_changes=changes,
                                  source="failover_expr", **common)
        partner = passive[0]
        if partner.policy_status != "ACTIVE":
            changes[partner.envid] = "ACTIVE"
        return self._decision("availability", "failover",
                              f"{held}: environment FAILED, passive partner {partner.envid} of group "
                              f"{policy.failover_group!r} becomes ACTIVE", status_changes=changes,
                              partner=partner.envid, source="failover_expr", **common)

    def _failback(self, policy: AvailabilityPolicy, result: EvalResult, common: dict[str, Any]) -> Decision:
        envid = self.view.envid
        changes: dict[int, PolicyStatus] = {envid: "ACTIVE"}
        active_partners = sorted(p.envid for p in self.view.partners
                                 if p.role == "passive" and p.policy_status == "ACTIVE")
        for partner in active_partners:
            changes[partner] = "PASSIVE"
        back = (f"; partner {', '.join(map(str, active_partners))} returns to PASSIVE and shrinks"
                if active_partners else "")
        return self._decision("availability", "failback",
                              f"{result.rendered} held on more than {policy.period} consecutive evaluations: "
                              f"environment ACTIVE again{back}", status_changes=changes,
                              partner=active_partners[0] if active_partners else None, source="failback_expr",
                              **common)

    # --- elasticity -----------------------------------------------------------------------------------------------

    def _elasticity(self, policy: ElasticityPolicy, status: PolicyStatus, vm_operation: bool) -> Decision:
        view, state = self.view, self.state
        self.expressions = {}
        style = policy.style
        inputs: dict[str, Any] = {
            "style": style,
            "policy_status": status,
            "num_vms": view.num_vms,
            "outstanding": view.outstanding,
            "headroom": view.headroom,
            "busy": view.busy,
        }
        none_extra: dict[str, Any] = {"inputs": inputs, "recommend_only": policy.recommend_only}
        if style == "manual":
            return self._decision("elasticity", "none", "elasticity mode is manual: scaling only on request",
                                  **none_extra)
        if status != "ACTIVE":
            state.scale_counter, state.scale_direction = 0, None
            return self._decision("elasticity", "none",
                                  f"elasticity applies to ACTIVE environments only (this one is {status})",
                                  **none_extra)
        if vm_operation:
            return self._decision("elasticity", "none",
                                  "an availability action was decided on this tick: elasticity waits", **none_extra)
        if view.busy:
            return self._decision("elasticity", "none", "an operation is running: elasticity waits", **none_extra)

        proposal: _Proposal | Decision
        if style == "time-based":
            proposal = self._time_based(policy, inputs)
        elif style == "auto":
            proposal = self._auto(policy, inputs)
        else:
            proposal = self._oneflow(policy, inputs)
        if isinstance(proposal, Decision):
            return proposal
        return self._settle(policy, proposal, inputs)

    def _none(self, policy: ElasticityPolicy, reason: str, inputs: dict[str, Any], source: str = "") -> Decision:
        return self._decision("elasticity", "none", reason, source=source, inputs=inputs,
                              expressions=dict(self.expressions), recommend_only=policy.recommend_only)

    def _settle(self, policy: ElasticityPolicy, proposal: _Proposal, inputs: dict[str, Any]) -> Decision:
        """Applies the hard limits, the stabilization windows and recommend-only to a wanted scaling."""
        view, state, now = self.view, self.state, self.now
        count = proposal.count
        if proposal.direction == "up":
            notes: list[str] = []
            if proposal.limit is not None:
                room = proposal.limit - (view.num_vms + view.outstanding)
                if room < count:
                    notes.append(f"capped by the maximum of {proposal.limit} VMs")
                count = min(count, room)
            if view.headroom is not None:
                if view.headroom < count:
                    notes.append(f"capped by the scheduler headroom of {view.headroom}")
                count = min(count, view.headroom)
            if count <= 0:
                return self._none(policy, f"{proposal.reason}, but {' and '.join(notes) or 'no room'}: "
                                          "no scale-up", inputs, proposal.source)
        else:
            count = min(count, view.num_vms - max(proposal.floor, 1))
            notes = []
            if count <= 0:
                return self._none(policy, f"{proposal.reason}, but the environment is at its minimum: no scale-down",
                                  inputs, proposal.source)

        if proposal.trigger == "load" and state.last_scale_at is not None:
            wait = policy.cooldown_up if proposal.direction == "up" else policy.cooldown_down
            ready_at = state.last_scale_at + timedelta(seconds=wait)
            if now < ready_at:
                return self._none(policy, f"{proposal.reason}, but scaling happened at "
                                          f"{state.last_scale_at.isoformat()}: a scale-{proposal.direction} is "
                                          f"stabilizing until {ready_at.isoformat()} (cooldown_{proposal.direction} "
                                          f"{wait}s)", inputs, proposal.source)

        proposal.on_commit()
        action: Action = "scaleup" if proposal.direction == "up" else "scaledown"
        verb = "add" if action == "scaleup" else "remove"
        reason = f"{proposal.reason}: {verb} {count} VM{'s' if count != 1 else ''}"
        if notes:
            reason += f" ({'; '.join(notes)})"
        common: dict[str, Any] = {
            "count": count,
            "source": proposal.source,
            "inputs": inputs,
            "expressions": dict(self.expressions),
            "priority": policy.priority if action == "scaleup" and policy.style != "oneflow" else None,
        }
        if policy.recommend_only:
            return self._decision("elasticity", "none", f"recommend-only: would {reason}", recommend_only=True,
                                  recommended=action, **common)
        state.last_scale_at = now
        state.last_scale_direction = proposal.direction
        if proposal.oneflow_cooldown > 0:
            state.cooldown_until = now + timedelta(seconds=proposal.oneflow_cooldown)
        return self._decision("elasticity", action, reason, **common)

    # time-based

    def _time_based(self, policy: ElasticityPolicy, inputs: dict[str, Any]) -> _Proposal | Decision:
        view = self.view
        local = self.now.astimezone(policy.zone())
        inputs["local_time"] = local.strftime("%a %H:%M %Z")
        for name, window in policy.windows.items():
            if _window(window.spec).includes(local):
                target = window.min
                inputs.update({"window": name, "window_spec": window.spec, "target": target})
                source = f"time-based:{name}"
                described = f"window {name!r} ({window.spec}) wants {target} VMs"
                if view.num_vms + view.outstanding < target:
                    pending = f" + {view.outstanding} requested" if view.outstanding else ""
                    return _Proposal("up", 1, f"{described}, has {view.num_vms}{pending}", source, "schedule",
                                     limit=policy.max if policy.max is not None else target)
                if view.num_vms > target:
                    return _Proposal("down", 1, f"{described}, has {view.num_vms}", source, "schedule",
                                     limit=None, floor=target)
                return self._none(policy, f"{described}, has {view.num_vms}{_pending(view)}: nothing to do",
                                  inputs, source)
        return self._none(policy, f"no window matches {inputs['local_time']}: VM count left as it is", inputs,
                          "time-based")

    # auto (Carina load-based)

    def _auto(self, policy: ElasticityPolicy, inputs: dict[str, Any]) -> _Proposal | Decision:
        view, state = self.view, self.state
        assert policy.scaleup_expr is not None and policy.scaledown_expr is not None
        assert policy.min is not None and policy.max is not None
        values = _elasticity_values(view)
        up = self._evaluate("scaleup_expr", policy.scaleup_expr, values, ELASTICITY_VARIABLES)
        down = self._evaluate("scaledown_expr", policy.scaledown_expr, values, ELASTICITY_VARIABLES)
        inputs.update({"min": policy.min, "max": policy.max, "period": policy.period,
                       **{k: v for k, v in up.inputs.items()}, **{k: v for k, v in down.inputs.items()}})
        size = view.num_vms

        def restart() -> None:
            state.scale_counter, state.scale_direction = 0, None

        if size + view.outstanding < policy.min:
            restart()
            return _Proposal("up", 1, f"{size} VMs{_pending(view)} is below min {policy.min}", "auto:min", "bound",
                             limit=policy.max)
        if size > policy.max:
            restart()
            return _Proposal("down", 1, f"{size} VMs is above max {policy.max}", "auto:max", "bound", limit=None,
                             floor=policy.max)
        if up.value and down.value:
            restart()
            return self._none(policy, f"policy error: scaleup_expr ({up.rendered}) and scaledown_expr "
                                      f"({down.rendered}) are both true; no action", inputs, "auto")
        direction: Direction | None = None
        if up.value and size + view.outstanding < policy.max:
            direction, result, name = "up", up, "scaleup_expr"
        elif down.value and size > policy.min:
            direction, result, name = "down", down, "scaledown_expr"
        if direction is None:
            restart()
            if up.value:
                why = f"{up.rendered} but already at max {policy.max}"
            elif down.value:
                why = f"{down.rendered} but already at min {policy.min}"
            else:
                problems = sorted(set(up.problems) | set(down.problems))
                why = "neither scaleup_expr nor scaledown_expr holds" + (f" ({'; '.join(problems)})"
                                                                         if problems else "")
            return self._none(policy, why, inputs, "auto")

        if state.scale_direction != direction:
            state.scale_counter = 0
        state.scale_direction = direction
        state.scale_counter += 1
        inputs["counter"] = state.scale_counter
        held = f"{result.rendered} held on {state.scale_counter} consecutive evaluation(s)"
        if state.scale_counter <= policy.period:
            return self._none(policy, f"{held}; acting after more than {policy.period}", inputs, f"auto:{name}")
        return _Proposal(direction, 1, f"{held} (> period {policy.period})", f"auto:{name}", "load",
                         limit=policy.max, floor=policy.min, on_commit=restart)

    # OneFlow

    def _oneflow(self, policy: ElasticityPolicy, inputs: dict[str, Any]) -> _Proposal | Decision:
        view, state, now = self.view, self.state, self.now
        card = view.num_vms
        min_vms = policy.min_vms or 0
        max_vms = policy.max_vms if policy.max_vms is not None else max(card, min_vms)
        inputs.update({"cardinality": card, "min_vms": min_vms, "max_vms": max_vms})
        if state.cooldown_until is not None and now < state.cooldown_until:
            return self._none(policy, f"cooling down until {state.cooldown_until.isoformat()} after the last "
                                      "scaling", inputs, "cooldown")
        state.cooldown_until = None
        zone = policy.zone()
        skipped: list[str] = []

        def clear_true_evals() -> None:
            for rule_state in state.rules.values():
                rule_state.true_evals = 0

        def change_for(rule: ElasticityRule | ScheduledRule) -> int:
            return new_cardinality(rule.type, rule.adjust, rule.min_adjust_step, card, min_vms, max_vms) - card

        def proposal(diff: int, why: str, source: str, trigger: Literal["load", "schedule"],
                     rule_cooldown: int | None) -> _Proposal:
            cooldown = rule_cooldown if rule_cooldown is not None else policy.cooldown
            return _Proposal("up" if diff > 0 else "down", abs(diff), why, source, trigger, limit=max_vms,
                             floor=1, on_commit=clear_true_evals,
                             oneflow_cooldown=DEFAULT_ONEFLOW_COOLDOWN if cooldown is None else cooldown)

        live_scheduled: dict[str, RuleState] = {}
        found: _Proposal | None = None
        for index, scheduled_rule in enumerate(policy.scheduled_policies):
            name = f"scheduled_policies[{index}]"
            key = f"{scheduled_rule.type}:{scheduled_rule.adjust}:{scheduled_rule.start_time or ''}:" \
                  f"{scheduled_rule.recurrence or ''}"
            rule_state = state.scheduled.get(name)
            if rule_state is None or rule_state.key != key:
                rule_state = RuleState(key=key)
            live_scheduled[name] = rule_state
            if found is not None:
                continue
            if rule_state.last_eval is None:
                # First look at this rule: anything planned before now is in the past and is not replayed.
                rule_state.last_eval = now
                skipped.append(f"{name} armed")
                continue
            due = _scheduled_due(scheduled_rule, rule_state.last_eval, zone)
            rule_state.last_eval = now
            if due is not None and due <= now:
                diff = change_for(scheduled_rule)
                rule_state.evaluated = f"due at {due.isoformat()}"
                self.expressions[name] = rule_state.evaluated
                if diff != 0:
                    found = proposal(diff, f"{name} ({_describe_rule(scheduled_rule)}) was due at "
                                           f"{due.isoformat()}: {card} -> {card + diff} VMs", name, "schedule",
                                     scheduled_rule.cooldown)
        state.scheduled = live_scheduled
        if found is not None:
            return found

        live_rules: dict[str, RuleState] = {}
        for index, rule in enumerate(policy.elasticity_policies):
            name = f"elasticity_policies[{index}]"
            key = f"{rule.type}:{rule.adjust}:{rule.expression}"
            rule_state = state.rules.get(name)
            if rule_state is None or rule_state.key != key:
                rule_state = RuleState(key=key)
            live_rules[name] = rule_state
            if found is not None:
                continue
            if rule_state.last_eval is not None and now < rule_state.last_eval + timedelta(seconds=rule.period):
                skipped.append(f"{name} next evaluated after {rule.period}s")
                continue
            result = compile_expression(rule.expression, ELASTICITY_VARIABLES).evaluate(_elasticity_values(view))
            rule_state.last_eval = now
            rule_state.evaluated = result.rendered
            self.expressions[name] = result.rendered
            inputs.update({k: v for k, v in result.inputs.items()})
            needed = max(rule.period_number, 1)
            rule_state.true_evals = min(rule_state.true_evals + 1, needed) if result.value else 0
            inputs[f"{name}.true_evals"] = rule_state.true_evals
            if result.value and rule_state.true_evals >= needed:
                diff = change_for(rule)
                if diff != 0:
                    found = proposal(diff, f"{name} {result.rendered} held {rule_state.true_evals}/{needed} "
                                           f"({_describe_rule(rule)}): {card} -> {card + diff} VMs", name, "load",
                                     rule.cooldown)
                else:
                    skipped.append(f"{name} holds but {_describe_rule(rule)} leaves {card} VMs within "
                                   f"[{min_vms}, {max_vms}]")
            elif result.value:
                skipped.append(f"{name} {result.rendered} held {rule_state.true_evals}/{needed}")
            else:
                skipped.append(f"{name} {result.rendered} is false"
                               + (f" ({'; '.join(result.problems)})" if result.problems else ""))
        state.rules = live_rules
        if found is not None:
            return found

        if card + view.outstanding < min_vms:
            diff = min_vms - card - view.outstanding
            return _Proposal("up", diff, f"{card} VMs{_pending(view)} is below min_vms {min_vms}", "min_vms",
                             "bound", limit=max_vms)
        summary = "; ".join(skipped) if skipped else "no rule applies"
        return self._none(policy, f"{card} VMs within [{min_vms}, {max_vms}]: {summary}", inputs, "oneflow")


# --- pure helpers --------------------------------------------------------------------------------------------------


def new_cardinality(kind: str, adjust: int, min_adjust_step: int | None, cardinality: int, min_vms: int,
                    max_vms: int) -> int:
    """OneFlow's `calculate_new_cardinality`, with its clamping.

    CHANGE adds `adjust`; CARDINALITY sets it; PERCENTAGE_CHANGE adds `cardinality * adjust / 100`, at least one
    VM (truncated when larger) and at least `min_adjust_step`. A positive adjustment is capped at
    `max(cardinality, max_vms)`, a negative one floored at `min_vms`, so a cardinality forced outside the range never
    moves further out. Fix over OneFlow: a CARDINALITY below `min_vms` is raised to `min_vms` (or kept at the current
    cardinality if that is already below). Never below one VM (the master).

    Args:
        kind: CHANGE, CARDINALITY or PERCENTAGE_CHANGE.
        adjust: the rule's adjustment.
        min_adjust_step: PERCENTAGE_CHANGE's minimum step (None = 1).
        cardinality: current VM count.
        min_vms: the policy minimum.
        max_vms: the policy maximum.

    Returns:
        The wanted VM count.
    """
    upper = max(cardinality, max_vms)
    lower = min_vms
    if kind == "CHANGE":
        wanted = cardinality + adjust
    elif kind == "PERCENTAGE_CHANGE":
        change = cardinality * adjust / 100.0
        sign = 1 if change > 0 else -1
        magnitude = abs(change)
        steps = 1 if magnitude < 1 else int(magnitude)
        wanted = cardinality + sign * max(steps, min_adjust_step or 0)
    elif kind == "CARDINALITY":
        wanted = adjust
    else:
        raise ValueError(f"unknown adjustment type {kind!r}")
    if adjust > 0 and wanted > upper:
        wanted = upper
    elif adjust < 0 and wanted < lower:
        wanted = lower
    if wanted < lower and wanted < cardinality:
        wanted = min(cardinality, lower)
    return max(wanted, 1)


@functools.lru_cache(maxsize=512)
def _window(spec: str) -> TimeWindow:
    return TimeWindow.parse(spec)


def _scheduled_due(rule: ScheduledRule, last_eval: datetime, zone: Any) -> datetime | None:
    """The first planned time after `last_eval`, or None (a one-off start_time already passed)."""
    if rule.recurrence is not None:
        following = croniter(rule.recurrence, last_eval.astimezone(zone)).get_next(datetime)
        assert isinstance(following, datetime)
        return following
    start = rule.start_datetime(zone)
    return start if start is not None and start > last_eval else None


def _elasticity_values(view: EnvironmentView) -> dict[str, float]:
    values = {name: float(value) for name, value in view.metrics.items()}
    values.setdefault("numvms", float(view.num_vms))
    return values


def _recreate_target(unhealthy: tuple[VmRef, ...]) -> VmRef | None:
    if not unhealthy:
        return None
    # Master first: slaves re-register with a new master anyway (Carina meant this; its code compared, not assigned).
    return sorted(unhealthy, key=lambda vm: (vm.role != "master", vm.index if vm.index is not None else 1 << 30,
                                             vm.vmid if vm.vmid is not None else 1 << 30))[0]


def _pending(view: EnvironmentView) -> str:
    return f" (+{view.outstanding} requested)" if view.outstanding else ""


def _describe_rule(rule: ElasticityRule | ScheduledRule) -> str:
    if rule.type == "CARDINALITY":
        return f"= {rule.adjust}"
    if rule.type == "CHANGE":
        return f"{rule.adjust:+d}"
    step = f", at least {rule.min_adjust_step}" if rule.min_adjust_step else ""
    return f"{rule.adjust:+d}%{step}"


def _availability_summary(policy: AvailabilityPolicy, status: PolicyStatus, recreate: EvalResult | None,
                          failover: EvalResult | None, failback: EvalResult | None, state: PolicyState,
                          notes: list[str]) -> str:
    parts: list[str] = []
    period = policy.period
    for label, result, counter in (("recreate", recreate, state.recreate_counter),
                                   ("failover", failover, state.failover_counter),
                                   ("failback", failback, state.failback_counter)):
        if result is None:
            continue
        if result.value:
            parts.append(f"{label}: {result.rendered} held {counter} time(s), acting after more than {period}")
        else:
            parts.append(f"{label}: {result.rendered} is false")
    if not parts:
        parts.append(f"no availability expression applies while {status}")
    text = "; ".join(parts)
    if notes:
        text += f" ({'; '.join(dict.fromkeys(notes))})"
    return text
