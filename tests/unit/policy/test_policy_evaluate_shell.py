"""The evaluator's pure parts: multi-VM plans, commands awaited, and which decisions are worth recording."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from services.policy.engine import Decision, EnvironmentView
from services.policy.handlers.evaluate import Evaluator, _health_and_usage, _noteworthy, _steady, _still_awaiting

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)
ENV: dict[str, Any] = {"_id": 7, "version": 4, "policy_status": "ACTIVE", "spec": {"config": {}}}


def scale(count: int, action: str = "scaledown") -> Decision:
    return Decision(envid=7, policy="elasticity", action=action, reason="ATT[10.0] < 20", at=NOW,  # type: ignore[arg-type]
                    count=count, source="elasticity_policies[1]")


def commands(view: EnvironmentView, decisions: list[Decision], plan: dict[str, Any] | None) -> Any:
    evaluator = Evaluator.__new__(Evaluator)
    return evaluator._commands(ENV, view, decisions, plan, NOW)


def test_a_change_of_several_vms_is_sent_one_vm_at_a_time() -> None:
    # OneFlow's PERCENTAGE_CHANGE with min_adjust_step 2 on 5 VMs: -2. envmgr removes one slave per job.
    view = EnvironmentView(envid=7, policy_status="ACTIVE", num_vms=5)
    sent, plan = commands(view, [scale(2)], None)
    assert [(type(c).__name__, c.direction) for c in sent] == [("EnvScale", "down")]
    assert plan is not None and (plan["remaining"], plan["target"]) == (1, 3)

    busy = EnvironmentView(envid=7, policy_status="ACTIVE", num_vms=4, busy=True)
    assert commands(busy, [], plan) == ([], plan)  # waits for the running job
    idle = EnvironmentView(envid=7, policy_status="ACTIVE", num_vms=4)
    sent, left = commands(idle, [], plan)
    assert [c.direction for c in sent] == ["down"] and left is None
    done = EnvironmentView(envid=7, policy_status="ACTIVE", num_vms=3)
    assert commands(done, [], plan) == ([], None)  # target reached: nothing more


def test_a_plan_is_dropped_when_the_environment_leaves_active() -> None:
    plan = {"direction": "up", "remaining": 2, "target": 6, "source": "x", "reason": "y", "at": NOW}
    failed = EnvironmentView(envid=7, policy_status="FAILED", num_vms=4)
    assert commands(failed, [], plan) == ([], None)


def test_a_command_is_awaited_until_envmgr_changes_the_environment_or_the_timeout() -> None:
    awaiting = {"env_version": 4, "at": NOW, "command": "EnvScale"}
    assert _still_awaiting(awaiting, ENV, NOW + timedelta(seconds=1), 15) == awaiting
    assert _still_awaiting(awaiting, {**ENV, "version": 5}, NOW + timedelta(seconds=1), 15) is None
    assert _still_awaiting(awaiting, ENV, NOW + timedelta(seconds=16), 15) is None


def test_only_actions_and_new_kinds_of_reason_are_recorded() -> None:
    held = Decision(envid=7, policy="elasticity", action="none", reason="avgcpu[55.1] > 50 held on 1", at=NOW,
                    source="auto:scaleup_expr")
    state_doc = {"latest": {"elasticity": held.to_dict()}}
    again = Decision(envid=7, policy="elasticity", action="none", reason="avgcpu[61.7] > 50 held on 2", at=NOW,
                     source="auto:scaleup_expr")
    other = Decision(envid=7, policy="elasticity", action="none", reason="an operation is running: elasticity waits",
                     at=NOW)
    assert _noteworthy(state_doc, [again]) == []
    assert _noteworthy(state_doc, [other]) == [other]
    assert _noteworthy(state_doc, [scale(1, "scaleup")]) == [scale(1, "scaleup")]


def test_a_state_is_steady_when_only_its_evaluation_time_moved() -> None:
    before = {"scale_counter": 0, "last_eval": "a"}
    assert _steady(before, {"scale_counter": 0, "last_eval": "b"})
    assert not _steady(before, {"scale_counter": 1, "last_eval": "b"})
    assert not _steady(None, {"scale_counter": 0})


def test_zone_usage_counts_only_running_vms_with_a_fresh_sample() -> None:
    fresh, stale = NOW - timedelta(seconds=5), NOW - timedelta(seconds=500)
    slots = [
        {"_id": "m", "role": "master", "index": 0, "one_id": 1, "lifecycle": "RUNNING", "cpu": 80.0, "memory": 100,
         "usage_at": fresh},
        {"_id": "s0", "role": "slave", "index": 0, "one_id": 2, "lifecycle": "RUNNING", "cpu": 40.0, "memory": 300,
         "usage_at": fresh},
        # The zone stopped reporting this one long ago: its last reading must not count.
        {"_id": "s1", "role": "slave", "index": 1, "one_id": 3, "lifecycle": "RUNNING", "cpu": 0.0, "usage_at": stale},
        {"_id": "s2", "role": "slave", "index": 2, "one_id": 4, "lifecycle": "UNKNOWN", "cpu": 99.0, "usage_at": fresh},
    ]
    counts, unhealthy, usage = _health_and_usage(slots, NOW - timedelta(seconds=120))
    assert usage == {"avgcpu": 60.0, "avgmem": 200.0}
    assert counts == {"MISSING": 0, "UNKNOWN": 1, "FAILED": 0}
    assert [(vm.slot, vm.index) for vm in unhealthy] == [("s2", 2)]
    # Nothing fresh at all: no avgcpu rather than a stale or zero one, so `avgcpu > 50` has no value to act on.
    assert _health_and_usage(slots[2:3], NOW - timedelta(seconds=120))[2] == {}
