"""Elasticity decisions driven tick by tick with an injected clock: time windows, Carina auto, OneFlow rules."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from policy_world import World

from services.policy.engine import (
    EnvironmentPolicy,
    EnvironmentView,
    PolicyState,
    decide,
    new_cardinality,
)

MONDAY = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
MINUTE = timedelta(minutes=1)

SEED_TIME_BASED = {
    "mode": "time-based",
    "windows": {
        "morn": {"spec": "Mon-Fri 0900-1300", "min": 6},
        "aft": {"spec": "Mon-Fri 1300-1700", "min": 4},
        "night": {"spec": "Mon-Fri 0000-0859 1700-2359", "min": 2},
    },
}
SEED_AUTO = {"mode": "auto", "min": 2, "max": 4, "priority": 10, "period": 3,
             "scaleup_expr": "avgcpu > 50", "scaledown_expr": "avgcpu < 20"}


def elasticity(block: dict[str, Any]) -> EnvironmentPolicy:
    return EnvironmentPolicy.from_config({"elasticity_policy": block})


def hhmm(moment: datetime) -> str:
    return moment.strftime("%H%M")


# --- time-based ----------------------------------------------------------------------------------------------------


def test_carina_morning_afternoon_night_reach_6_4_2_one_vm_per_tick(world: World) -> None:
    world.add(EnvironmentView(envid=7, policy_status="ACTIVE", num_vms=2), elasticity(SEED_TIME_BASED))
    sizes: dict[str, int] = {}
    now = MONDAY.replace(hour=7)
    while now < MONDAY.replace(hour=19):
        for decision in world.tick(now):
            if decision.is_action:
                assert decision.count == 1
                assert decision.priority is None or decision.action == "scaleup"
        sizes[hhmm(now)] = world.views[7].num_vms
        now += MINUTE

    assert sizes["0858"] == 2
    assert [sizes[t] for t in ("0859", "0900", "0901", "0902", "0903")] == [2, 3, 4, 5, 6]
    assert {sizes[f"{h:02d}{m:02d}"] for h in range(9, 13) for m in range(60) if (h, m) >= (9, 3)} == {6}
    assert [sizes["1300"], sizes["1301"]] == [5, 4]
    assert {sizes[f"{h:02d}{m:02d}"] for h in range(13, 17) for m in range(60) if (h, m) >= (13, 1)} == {4}
    assert [sizes["1700"], sizes["1701"], sizes["1830"]] == [3, 2, 2]
    scaleups = [d for d in world.log if d.action == "scaleup"]
    assert all(d.source == "time-based:morn" and "window 'morn'" in d.reason for d in scaleups)


def test_minute_without_a_window_changes_nothing() -> None:
    policy = elasticity(SEED_TIME_BASED)
    view = EnvironmentView(envid=7, policy_status="ACTIVE", num_vms=5)
    decisions, _ = decide(view, policy, PolicyState(), MONDAY.replace(hour=8, minute=59))
    assert [d.action for d in decisions] == ["none"]
    assert "no window matches Mon 08:59" in decisions[0].reason
    saturday, _ = decide(view, policy, PolicyState(), MONDAY + timedelta(days=5, hours=10))
    assert saturday[0].action == "none"


def test_windows_are_read_in_the_policy_time_zone() -> None:
    policy = elasticity({**SEED_TIME_BASED, "timezone": "America/New_York"})
    view = EnvironmentView(envid=7, policy_status="ACTIVE", num_vms=2)
    # 14:00 UTC is 09:00 in New York in January: the morning window.
    decisions, _ = decide(view, policy, PolicyState(), MONDAY.replace(hour=14))
    assert decisions[0].action == "scaleup"
    assert decisions[0].inputs["window"] == "morn"
    early, _ = decide(view, policy, PolicyState(), MONDAY.replace(hour=9))  # 04:00 in New York: night, at target
    assert early[0].action == "none" and early[0].inputs["window"] == "night"


def test_time_based_counts_outstanding_requests_and_respects_headroom_and_busy() -> None:
    policy = elasticity(SEED_TIME_BASED)
    morning = MONDAY.replace(hour=10)
    pending = EnvironmentView(envid=7, policy_status="ACTIVE", num_vms=2, outstanding=4)
    assert decide(pending, policy, PolicyState(), morning)[0][0].action == "none"
    starved = EnvironmentView(envid=7, policy_status="ACTIVE", num_vms=2, headroom=0)
    decision = decide(starved, policy, PolicyState(), morning)[0][0]
    assert decision.action == "none" and "headroom" in decision.reason
    busy = EnvironmentView(envid=7, policy_status="ACTIVE", num_vms=2, busy=True)
    decision = decide(busy, policy, PolicyState(), morning)[0][0]
    assert decision.action == "none" and "operation is running" in decision.reason


def test_elasticity_only_for_active_environments() -> None:
    policy = elasticity(SEED_TIME_BASED)
    for status in ("PASSIVE", "FAILED"):
        view = EnvironmentView(envid=7, policy_status=status, num_vms=2)
        decision = decide(view, policy, PolicyState(), MONDAY.replace(hour=10))[0][0]
        assert decision.action == "none" and status in decision.reason


# --- Carina auto ---------------------------------------------------------------------------------------------------


def run_auto(world: World, loads: list[float], start: datetime = MONDAY) -> list[str]:
    """Feeds one avgcpu value per minute and returns what happened on each tick."""
    happened = []
    for minute, load in enumerate(loads):
        world.set(1, metrics={"avgcpu": load})
        actions = [d for d in world.tick(start + minute * MINUTE) if d.policy == "elasticity"]
        happened.append(actions[0].action)
    return happened


def test_auto_scales_up_after_more_than_period_true_evaluations(world: World) -> None:
    world.add(EnvironmentView(envid=1, policy_status="ACTIVE", num_vms=2), elasticity(SEED_AUTO))
    happened = run_auto(world, [70.0] * 12)
    # period 3, strictly greater: the 4th consecutive true evaluation acts, then the count restarts.
    assert happened[:8] == ["none", "none", "none", "scaleup", "none", "none", "none", "scaleup"]
    assert world.views[1].num_vms == 4  # max
    assert "already at max 4" in world.log[-1].reason
    first = next(d for d in world.log if d.action == "scaleup")
    assert first.expressions["scaleup_expr"] == "avgcpu[70.0] > 50"
    assert first.inputs["avgcpu"] == 70.0 and first.priority == 10


def test_auto_counter_restarts_when_the_condition_stops_holding(world: World) -> None:
    world.add(EnvironmentView(envid=1, policy_status="ACTIVE", num_vms=2), elasticity(SEED_AUTO))
    happened = run_auto(world, [70, 70, 70, 30, 70, 70, 70, 70])
    assert happened == ["none"] * 7 + ["scaleup"]


def test_auto_scale_down_waits_for_down_stabilization_after_a_scaling(world: World) -> None:
    world.add(EnvironmentView(envid=1, policy_status="ACTIVE", num_vms=4), elasticity(SEED_AUTO))
    happened = run_auto(world, [10.0] * 10)
    # First scale-down on the 4th tick; the next one is due on the 8th but cooldown_down (300 s) holds it to the 9th.
    assert [i for i, action in enumerate(happened) if action == "scaledown"] == [3, 8]
    held = world.log[7]
    assert "stabilizing" in held.reason and "cooldown_down 300s" in held.reason
    assert world.views[1].num_vms == 2


def test_auto_with_no_down_stabilization_scales_every_period(world: World) -> None:
    world.add(EnvironmentView(envid=1, policy_status="ACTIVE", num_vms=4),
              elasticity({**SEED_AUTO, "cooldown_down": 0}))
    assert [i for i, a in enumerate(run_auto(world, [10.0] * 10)) if a == "scaledown"] == [3, 7]


def test_auto_enforces_bounds_at_once() -> None:
    policy = elasticity(SEED_AUTO)
    low = EnvironmentView(envid=1, policy_status="ACTIVE", num_vms=1, metrics={"avgcpu": 10.0})
    decision = decide(low, policy, PolicyState(), MONDAY)[0][0]
    assert (decision.action, decision.count, decision.source) == ("scaleup", 1, "auto:min")
    high = EnvironmentView(envid=1, policy_status="ACTIVE", num_vms=6, metrics={"avgcpu": 90.0})
    decision = decide(high, policy, PolicyState(), MONDAY)[0][0]
    assert (decision.action, decision.source) == ("scaledown", "auto:max")


def test_auto_both_expressions_true_is_reported_and_does_nothing() -> None:
    policy = elasticity({**SEED_AUTO, "scaledown_expr": "avgcpu < 80"})
    view = EnvironmentView(envid=1, policy_status="ACTIVE", num_vms=3, metrics={"avgcpu": 60.0})
    state = PolicyState()
    for minute in range(6):
        decisions, state = decide(view, policy, state, MONDAY + minute * MINUTE)
        assert decisions[0].action == "none"
        assert "both true" in decisions[0].reason
    assert state.scale_counter == 0


def test_auto_without_a_metric_does_nothing_and_says_why() -> None:
    view = EnvironmentView(envid=1, policy_status="ACTIVE", num_vms=3)
    decision = decide(view, elasticity(SEED_AUTO), PolicyState(), MONDAY)[0][0]
    assert decision.action == "none"
    assert "no value for avgcpu" in decision.reason
    assert decision.expressions["scaleup_expr"] == "avgcpu[n/a] > 50"


def test_recommend_only_records_the_action_without_emitting_it(world: World) -> None:
    world.add(EnvironmentView(envid=1, policy_status="ACTIVE", num_vms=2),
              elasticity({**SEED_AUTO, "recommend_only": True}))
    happened = run_auto(world, [70.0] * 8)
    assert set(happened) == {"none"}
    assert world.views[1].num_vms == 2
    recommended = [d for d in world.log if d.recommended == "scaleup"]
    assert len(recommended) == 2  # ticks 4 and 8: the recommendation recurs at the policy's pace
    assert all(d.recommend_only and d.count == 1 and "recommend-only: would" in d.reason for d in recommended)
    assert world.states[1].last_scale_at is None


def test_headroom_holds_a_due_scale_up_until_capacity_appears(world: World) -> None:
    world.add(EnvironmentView(envid=1, policy_status="ACTIVE", num_vms=2, headroom=0), elasticity(SEED_AUTO))
    assert run_auto(world, [70.0] * 6) == ["none"] * 6
    assert "scheduler headroom of 0" in world.log[-1].reason
    world.set(1, headroom=1)
    assert run_auto(world, [70.0], start=MONDAY + 6 * MINUTE) == ["scaleup"]


# --- OneFlow -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "adjust", "step", "card", "low", "high", "expected"),
    [
        ("PERCENTAGE_CHANGE", -10, 2, 5, 1, 5, 3),  # seed: 5*10% < 1 -> 1, min_adjust_step 2 -> -2
        ("PERCENTAGE_CHANGE", -10, None, 5, 1, 5, 4),
        ("PERCENTAGE_CHANGE", 50, None, 5, 1, 10, 7),  # 2.5 truncated to 2
        ("PERCENTAGE_CHANGE", 50, 3, 5, 1, 10, 8),
        ("PERCENTAGE_CHANGE", 70, None, 5, 1, 10, 8),  # 3.5 truncated, not rounded
        ("PERCENTAGE_CHANGE", 200, None, 4, 1, 10, 10),  # capped at max
        ("PERCENTAGE_CHANGE", -90, None, 10, 3, 20, 3),  # floored at min
        ("CHANGE", 2, None, 4, 1, 5, 5),
        ("CHANGE", -3, None, 3, 2, 5, 2),
        ("CHANGE", 2, None, 7, 1, 5, 7),  # forced above max: a positive change does not move further out
        ("CHANGE", -1, None, 1, 2, 5, 2),  # below min: a negative change moves towards the range
        ("CARDINALITY", 6, None, 2, 1, 10, 6),
        ("CARDINALITY", 12, None, 2, 1, 10, 10),
        ("CARDINALITY", 1, None, 5, 2, 10, 2),  # fix: not below min_vms
    ],
)
def test_new_cardinality(kind: str, adjust: int, step: int | None, card: int, low: int, high: int,
                         expected: int) -> None:
    assert new_cardinality(kind, adjust, step, card, low, high) == expected


@given(
    kind=st.sampled_from(["CHANGE", "PERCENTAGE_CHANGE", "CARDINALITY"]),
    adjust=st.integers(-300, 300).filter(lambda a: a != 0),
    step=st.none() | st.integers(1, 10),
    card=st.integers(1, 50),
    low=st.integers(0, 20),
    span=st.integers(0, 30),
)
def test_new_cardinality_never_moves_further_outside_the_range(kind: str, adjust: int, step: int | None, card: int,
                                                                low: int, span: int) -> None:
    if kind == "CARDINALITY":
        adjust = abs(adjust)
    high = low + span
    result = new_cardinality(kind, adjust, step, card, low, high)
    assert result >= 1
    assert result <= max(card, high)
    assert result >= min(card, max(low, 1))
    if kind != "CARDINALITY" and card >= low:
        # Inside the range a rule never moves against its direction (below min_vms OneFlow floors at min_vms).
        assert (result - card) * adjust >= 0


SEED_ONEFLOW = {"min_vms": 1, "max_vms": 5, "elasticity_policies": [
    {"expression": "ATT > 50", "type": "CHANGE", "adjust": 2, "period_number": 3, "period": 10},
    {"expression": "ATT < 20", "type": "PERCENTAGE_CHANGE", "adjust": -10, "min_adjust_step": 2}]}


def test_oneflow_seed_scenario(world: World) -> None:
    world.add(EnvironmentView(envid=3, policy_status="ACTIVE", num_vms=2, metrics={"ATT": 60.0}),
              elasticity(SEED_ONEFLOW))
    second = timedelta(seconds=1)
    now = MONDAY
    # Ticks every 5 s; the rule is evaluated every 10 s and needs 3 true evaluations: +2 at t=20 s.
    actions = {}
    for _ in range(10):
        for decision in world.tick(now):
            if decision.is_action:
                actions[(now - MONDAY) // second] = (decision.action, decision.count)
        now += 5 * second
    assert actions == {20: ("scaleup", 2)}
    assert world.views[3].num_vms == 4
    assert world.states[3].cooldown_until == MONDAY + 320 * second  # default cooldown 300 s
    assert "cooling down" in world.log[-1].reason

    # After the cooldown the rule builds up again; +2 is capped at max_vms 5.
    now = MONDAY + 320 * second
    for _ in range(5):
        world.tick(now)
        now += 10 * second
    assert world.views[3].num_vms == 5

    # Load drops: -10% of 5 is less than 1 VM, min_adjust_step makes it -2.
    world.set(3, metrics={"ATT": 10.0})
    now += 400 * second
    decisions = world.tick(now)
    assert [(d.action, d.count, d.source) for d in decisions] == [("scaledown", 2, "elasticity_policies[1]")]
    assert world.views[3].num_vms == 3
    assert decisions[0].expressions["elasticity_policies[1]"] == "ATT[10.0] < 20"


def test_oneflow_true_evals_reset_when_false_and_cap_at_period_number() -> None:
    policy = elasticity(SEED_ONEFLOW)
    state = PolicyState()
    view = EnvironmentView(envid=3, policy_status="ACTIVE", num_vms=5, metrics={"ATT": 60.0})  # at max
    for tick in range(5):
        _, state = decide(view, policy, state, MONDAY + timedelta(seconds=10 * tick))
    assert state.rules["elasticity_policies[0]"].true_evals == 3
    _, state = decide(dataclasses.replace(view, metrics={"ATT": 40.0}), policy, state,
                      MONDAY + timedelta(seconds=60))
    assert state.rules["elasticity_policies[0]"].true_evals == 0


def test_oneflow_implicit_min_rule_scales_up_at_once_without_cooldown() -> None:
    policy = elasticity({"min_vms": 3, "max_vms": 6})
    view = EnvironmentView(envid=3, policy_status="ACTIVE", num_vms=1)
    decisions, state = decide(view, policy, PolicyState(), MONDAY)
    assert [(d.action, d.count, d.source) for d in decisions] == [("scaleup", 2, "min_vms")]
    assert state.cooldown_until is None


# --- scheduled -----------------------------------------------------------------------------------------------------


def scheduled(rule: dict[str, Any]) -> EnvironmentPolicy:
    return elasticity({"min_vms": 1, "max_vms": 10, "scheduled_policies": [rule]})


def test_cron_scheduled_policy_fires_at_its_time(world: World) -> None:
    world.add(EnvironmentView(envid=4, policy_status="ACTIVE", num_vms=2),
              scheduled({"type": "CARDINALITY", "adjust": 6, "recurrence": "0 9 * * mon-fri"}))
    fired = []
    now = MONDAY.replace(hour=8, minute=55)
    while now <= MONDAY.replace(hour=9, minute=30):
        fired += [(hhmm(now), d.action, d.count) for d in world.tick(now) if d.is_action]
        now += MINUTE
    assert fired == [("0900", "scaleup", 4)]
    assert world.views[4].num_vms == 6


def test_scheduled_times_before_the_first_evaluation_are_ignored(world: World) -> None:
    world.add(EnvironmentView(envid=4, policy_status="ACTIVE", num_vms=2),
              scheduled({"type": "CARDINALITY", "adjust": 6, "recurrence": "0 9 * * *"}))
    fired = []
    now = MONDAY.replace(hour=9, minute=30)  # today's 09:00 is already past when the policy is first seen
    while now <= MONDAY + timedelta(days=1, hours=9, minutes=30):
        fired += [now for d in world.tick(now) if d.is_action]
        now += 10 * MINUTE
    assert fired == [MONDAY + timedelta(days=1, hours=9)]


def test_one_off_start_time_fires_once_and_busy_defers_it(world: World) -> None:
    world.add(EnvironmentView(envid=4, policy_status="ACTIVE", num_vms=2, busy=False),
              scheduled({"type": "CHANGE", "adjust": 3, "start_time": "2026-01-05 12:00:00"}))
    fired = []
    now = MONDAY.replace(hour=11, minute=50)
    while now <= MONDAY.replace(hour=13):
        world.set(4, busy=MONDAY.replace(hour=11, minute=58) <= now <= MONDAY.replace(hour=12, minute=3))
        fired += [(hhmm(now), d.count) for d in world.tick(now) if d.is_action]
        now += MINUTE
    assert fired == [("1204", 3)]
    assert world.views[4].num_vms == 5


def test_state_survives_json_round_trip() -> None:
    policy = elasticity({**SEED_ONEFLOW, "scheduled_policies": [
        {"type": "CARDINALITY", "adjust": 3, "recurrence": "*/5 * * * *"}]})
    view = EnvironmentView(envid=3, policy_status="ACTIVE", num_vms=2, metrics={"ATT": 60.0})
    state = PolicyState()
    for tick in range(4):
        _, state = decide(view, policy, state, MONDAY + timedelta(seconds=10 * tick))
    stored = json.loads(json.dumps(state.to_dict()))
    assert PolicyState.from_dict(stored) == state
    assert PolicyState.from_dict(None) == PolicyState()
    assert PolicyState.from_dict({"scale_counter": 2, "future_field": 1}).scale_counter == 2


def test_naive_clock_is_refused() -> None:
    view = EnvironmentView(envid=3, policy_status="ACTIVE", num_vms=2)
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(view, elasticity(SEED_AUTO), PolicyState(), datetime(2026, 1, 5, 9))
