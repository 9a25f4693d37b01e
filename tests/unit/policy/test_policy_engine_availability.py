"""Availability decisions: recreate (master first, counters that reset), failover to the passive twin, failback."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from policy_world import World

from services.policy.engine import (
    EnvironmentPolicy,
    EnvironmentView,
    Partner,
    PolicyState,
    VmRef,
    decide,
)

MONDAY_NOON = datetime(2026, 1, 5, 12, tzinfo=UTC)
MINUTE = timedelta(minutes=1)

RECREATE = {"period": 2, "recreate_expr": "nummissing > 0 || numunknown > 0 || numfailed > 0"}
MASTER_DOWN = VmRef(role="master", state="UNKNOWN", vmid=1604, slot="9:master")
SLAVE_FAILED = VmRef(role="slave", state="FAILED", vmid=1606, slot="9:slave:1", index=1)


def availability(block: Mapping[str, object], elasticity: Mapping[str, object] | None = None) -> EnvironmentPolicy:
    config: dict[str, object] = {"availability_policy": block}
    if elasticity is not None:
        config["elasticity_policy"] = elasticity
    return EnvironmentPolicy.from_config(config)


def unhealthy_env() -> EnvironmentView:
    return EnvironmentView(envid=9, policy_status="ACTIVE", num_vms=3, numunknown=1, numfailed=1,
                           unhealthy=(SLAVE_FAILED, MASTER_DOWN))


def test_recreate_master_first_then_slave_and_counter_restarts(world: World) -> None:
    world.add(unhealthy_env(), availability(RECREATE))
    recreated = []
    for minute in range(8):
        for decision in world.tick(MONDAY_NOON + minute * MINUTE):
            if decision.action == "recreate":
                recreated.append((minute, decision.vm))
    # period 2: the 3rd consecutive true evaluation acts; the counter restarts after each recreate.
    assert recreated == [(2, MASTER_DOWN), (5, SLAVE_FAILED)]
    assert world.views[9].unhealthy == ()
    last = world.log[-1]
    assert last.action == "none" and "is false" in last.reason
    assert world.states[9].recreate_counter == 0


def test_recreate_counter_resets_when_the_expression_turns_false(world: World) -> None:
    # Carina never reset this counter, so two short blips could add up to a recreate; here they cannot.
    world.add(unhealthy_env(), availability(RECREATE))
    healthy = {"numunknown": 0, "numfailed": 0, "unhealthy": ()}
    sick = {"numunknown": 1, "numfailed": 1, "unhealthy": (SLAVE_FAILED, MASTER_DOWN)}
    actions = []
    for minute, changes in enumerate([sick, sick, healthy, sick, sick, sick]):
        world.set(9, **changes)
        actions += [(minute, d.action) for d in world.tick(MONDAY_NOON + minute * MINUTE) if d.is_action]
    assert actions == [(5, "recreate")]


def test_recreate_waits_for_a_running_operation_and_is_not_lost() -> None:
    policy = availability(RECREATE)
    state = PolicyState()
    busy = EnvironmentView(**{**unhealthy_env().__dict__, "busy": True})
    for minute in range(5):
        decisions, state = decide(busy, policy, state, MONDAY_NOON + minute * MINUTE)
        assert decisions[0].action == "none"
    assert "operation is running" in decisions[0].reason
    decisions, state = decide(unhealthy_env(), policy, state, MONDAY_NOON + 5 * MINUTE)
    assert decisions[0].action == "recreate" and decisions[0].vm == MASTER_DOWN


def test_recreate_with_nothing_to_recreate_says_so() -> None:
    policy = availability({"period": 0, "recreate_expr": "numvms < 3"})
    view = EnvironmentView(envid=9, policy_status="ACTIVE", num_vms=2)
    decision = decide(view, policy, PolicyState(), MONDAY_NOON)[0][0]
    assert decision.action == "none" and "nothing to recreate" in decision.reason


SEED_ACTIVE = {"period": 3, "recreate_expr": "nummissing > 0 || numunknown > 0 || numfailed > 0",
               "failover_role": "active", "failover_group": "tomcat-ha",
               "failover_expr": "(numunknown + nummissing + numfail)/numvms > 0.50",
               "failback_expr": "numunknown == 0"}
SEED_PASSIVE = {"period": 3, "failover_role": "passive", "failover_group": "tomcat-ha"}
PASSIVE_ELASTICITY = {"mode": "time-based", "windows": {"all": {"spec": "Mon-Fri 0000-2359", "min": 4}}}


def test_failover_and_failback_between_the_seed_pair(world: World) -> None:
    world.add(EnvironmentView(envid=1, policy_status="READY", num_vms=3, base_vms=3,
                              partners=(Partner(2, "passive", "READY"),)),
              availability(SEED_ACTIVE))
    world.add(EnvironmentView(envid=2, policy_status="READY", num_vms=1, base_vms=1,
                              partners=(Partner(1, "active", "READY"),)),
              availability(SEED_PASSIVE, PASSIVE_ELASTICITY))
    now = MONDAY_NOON

    def tick() -> list[str]:
        nonlocal now
        happened = [f"{d.envid}:{d.action}" for d in world.tick(now) if d.is_action]
        now += MINUTE
        return happened

    # READY environments are promoted by role; the passive one stays at its master only.
    assert tick() == ["1:promote", "2:promote"]
    assert (world.views[1].policy_status, world.views[2].policy_status) == ("ACTIVE", "PASSIVE")
    assert world.views[2].num_vms == 1

    # The active zone loses two of three VMs; its recreate jobs hang (busy), which must not block failover.
    world.set(1, numunknown=2, busy=True, unhealthy=(MASTER_DOWN, SLAVE_FAILED))
    assert [tick() for _ in range(3)] == [[], [], []]
    # Environment 2 is evaluated after 1 in the same tick, so it already sees itself ACTIVE and starts to grow.
    assert tick() == ["1:failover", "2:scaleup"]
    failover = next(d for d in world.log if d.action == "failover")
    assert dict(failover.status_changes) == {1: "FAILED", 2: "ACTIVE"}
    assert failover.partner == 2
    assert failover.expressions["failover_expr"].startswith("(numunknown[2.0] + nummissing[0.0] + numfail[0.0])")
    assert (world.views[1].policy_status, world.views[2].policy_status) == ("FAILED", "ACTIVE")

    # The passive twin scales out to its time-based minimum, one VM per tick.
    for _ in range(2):
        assert tick() == ["2:scaleup"]
    assert world.views[2].num_vms == 4
    assert tick() == []

    # The original zone heals: failback after more than `period` evaluations of failback_expr.
    world.set(1, numunknown=0, busy=False, unhealthy=())
    assert [tick() for _ in range(3)] == [[], [], []]
    assert tick() == ["1:failback", "2:scaledown"]
    failback = next(d for d in world.log if d.action == "failback")
    assert dict(failback.status_changes) == {1: "ACTIVE", 2: "PASSIVE"}
    # The twin shrinks back to the VMs it was created with, one per tick.
    assert [tick() for _ in range(2)] == [["2:scaledown"]] * 2
    assert world.views[2].num_vms == 1
    assert tick() == []


def test_failover_without_a_passive_partner_still_marks_the_environment_failed() -> None:
    view = EnvironmentView(envid=1, policy_status="ACTIVE", num_vms=2, numunknown=2)
    policy = availability({**SEED_ACTIVE, "period": 0})
    decision = decide(view, policy, PolicyState(), MONDAY_NOON)[0][0]
    assert decision.action == "failover"
    assert dict(decision.status_changes) == {1: "FAILED"}
    assert "no passive partner" in decision.reason


def test_failover_counter_resets_when_the_expression_turns_false() -> None:
    policy = availability(SEED_ACTIVE)
    state = PolicyState()
    bad = EnvironmentView(envid=1, policy_status="ACTIVE", num_vms=3, numunknown=2)
    good = EnvironmentView(envid=1, policy_status="ACTIVE", num_vms=3)
    for view in (bad, bad, bad, good, bad, bad, bad):
        decisions, state = decide(view, policy, state, MONDAY_NOON)
        assert all(d.action != "failover" for d in decisions)
    assert state.failover_counter == 3


def test_init_environment_is_left_alone() -> None:
    view = EnvironmentView(envid=1, policy_status="INIT", num_vms=1, numunknown=1)
    decisions, state = decide(view, availability({**SEED_ACTIVE, "period": 0}), PolicyState(), MONDAY_NOON)
    assert [d.action for d in decisions] == ["none"]
    assert state.failover_counter == 0 and state.recreate_counter == 0


def test_every_decision_explains_itself_with_its_inputs() -> None:
    view = unhealthy_env()
    decisions, _ = decide(view, availability(RECREATE), PolicyState(), MONDAY_NOON)
    decision = decisions[0]
    assert decision.reason
    assert decision.inputs["numunknown"] == 1.0 and decision.inputs["recreate_counter"] == 1
    payload = decision.to_dict()
    assert payload["expressions"]["recreate_expr"].startswith("nummissing[0.0] > 0")
    assert payload["at"] == MONDAY_NOON.isoformat()


# --- recover after a failed recreate -------------------------------------------------------------------------------


def test_a_failed_recreate_is_followed_by_one_recovery_after_the_period() -> None:
    # The master was recreated but envmgr could not finish (the slaves broke too): the environment is recovered
    # (every broken VM at once) after more than `period` quiet ticks, instead of one failing recreate per VM.
    policy = availability(RECREATE)
    view = EnvironmentView(envid=9, policy_status="ACTIVE", num_vms=3, numfailed=1, unhealthy=(SLAVE_FAILED,),
                           failed_operation="RECREATE")
    state = PolicyState(recreate_counter=5)
    actions = []
    for tick in range(6):
        decisions, state = decide(view, policy, state, MONDAY_NOON + tick * MINUTE)
        actions.append(decisions[0].action)
    assert actions == ["none", "none", "recover", "none", "none", "recover"]
    recover = decide(view, policy, PolicyState(recover_counter=2), MONDAY_NOON)[0][0]
    assert recover.count == 1 and "slave 1 vm 1606 (FAILED)" in recover.reason
    assert recover.inputs["failed_operation"] == "RECREATE"


def test_recovery_waits_while_an_operation_runs_and_does_not_count_it() -> None:
    policy = availability(RECREATE)
    busy = EnvironmentView(envid=9, policy_status="ACTIVE", num_vms=3, failed_operation="RECREATE", busy=True)
    decisions, state = decide(busy, policy, PolicyState(recover_counter=1), MONDAY_NOON)
    assert decisions[0].action == "none" and state.recover_counter == 1


def test_no_recovery_without_a_recreate_policy_or_after_other_failures() -> None:
    failover_only = availability({"period": 0, "failover_role": "passive", "failover_group": "g"})
    for policy, failed in ((failover_only, "RECREATE"), (availability(RECREATE), "SCALEUP")):
        view = EnvironmentView(envid=9, policy_status="ACTIVE", num_vms=3, failed_operation=failed)
        state = PolicyState()
        for tick in range(5):
            decisions, state = decide(view, policy, state, MONDAY_NOON + tick * MINUTE)
            assert all(d.action != "recover" for d in decisions)
        assert state.recover_counter == 0
