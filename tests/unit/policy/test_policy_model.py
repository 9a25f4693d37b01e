"""Policy blocks at upload: good Carina and OneFlow policies load, bad ones are refused with a clear reason."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from libs.common.policy_model import AvailabilityPolicy, ElasticityPolicy, format_validation_error

SEED_TIME_BASED = {
    ":mode": "time-based",
    ":windows": {
        "morn": {":spec": "Mon-Fri 0900-1300", ":min": 6},
        "aft": {":spec": "Mon-Fri 1300-1700", ":min": 4},
        "night": {":spec": "Mon-Fri 0000-0859 1700-2359", ":min": 2},
    },
}
SEED_AUTO = {"mode": "auto", "min": 2, "max": 4, "priority": 10, "period": 3,
             "scaleup_expr": "avgcpu > 50", "scaledown_expr": "avgcpu < 20"}
SEED_ACTIVE = {"period": 3, "recreate_expr": "nummissing > 0 || numunknown > 0 || numfailed > 0",
               "failover_role": "active", "failover_group": "tomcat-ha",
               "failover_expr": "(numunknown + nummissing + numfail)/numvms > 0.50",
               "failback_expr": "numunknown == 0"}
ONEFLOW = {"min_vms": 1, "max_vms": 5, "elasticity_policies": [
    {"expression": "ATT > 50", "type": "CHANGE", "adjust": 2, "period_number": 3, "period": 10},
    {"expression": "ATT < 20", "type": "PERCENTAGE_CHANGE", "adjust": -10, "min_adjust_step": 2}],
    "scheduled_policies": [{"type": "CARDINALITY", "adjust": 6, "recurrence": "0 9 * * mon,tue,wed,thu,fri"},
                           {"type": "CARDINALITY", "adjust": 2, "start_time": "2026-05-01 22:30:00"}]}


def refusal(data: dict[str, Any], model: type[ElasticityPolicy] | type[AvailabilityPolicy] = ElasticityPolicy) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return "\n".join(format_validation_error(caught.value, "elasticity_policy"))


def test_seed_policies_load_with_ruby_symbol_keys() -> None:
    timed = ElasticityPolicy.model_validate(SEED_TIME_BASED)
    assert timed.style == "time-based"
    assert list(timed.windows) == ["morn", "aft", "night"]  # order matters: the first match wins
    assert timed.windows["aft"].min == 4
    auto = ElasticityPolicy.model_validate(SEED_AUTO)
    assert (auto.style, auto.min, auto.max, auto.period) == ("auto", 2, 4, 3)
    assert (auto.cooldown_up, auto.cooldown_down, auto.recommend_only) == (0, 300, False)
    active = AvailabilityPolicy.model_validate(SEED_ACTIVE)
    assert active.failover_role == "active"
    passive = AvailabilityPolicy.model_validate(
        {"period": 3, "failover_role": "passive", "failover_group": "tomcat-ha"}
    )
    assert passive.failover_role == "passive"


def test_oneflow_policy_loads() -> None:
    policy = ElasticityPolicy.model_validate(ONEFLOW)
    assert policy.style == "oneflow"
    assert policy.elasticity_policies[1].min_adjust_step == 2
    assert policy.scheduled_policies[0].recurrence is not None


@pytest.mark.parametrize("spelling", ["time_based", "Time-Based", "TIME-BASED"])
def test_mode_spellings(spelling: str) -> None:
    assert ElasticityPolicy.model_validate({**SEED_TIME_BASED, ":mode": spelling}).mode == "time-based"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({**SEED_AUTO, "scaleup_expr": "avgcpuu > 50"},
         "elasticity_policy.scaleup_expr: unknown variable 'avgcpuu' at column 1"),
        ({**SEED_AUTO, "scaledown_expr": "avgcpu < 20)"}, "scaledown_expr: unexpected token ')' at column 12"),
        ({**SEED_AUTO, "min": 5}, "min (5) must not be greater than max (4)"),
        ({k: v for k, v in SEED_AUTO.items() if k != "scaledown_expr"},
         "requires both scaleup_expr and scaledown_expr"),
        ({"mode": "auto", "scaleup_expr": "avgcpu > 50", "scaledown_expr": "avgcpu < 20"}, "requires min and max"),
        ({"mode": "time-based"}, "requires windows"),
        ({"mode": "time-based", "windows": {"a": {"spec": "Mon-Fri 0900-1300", "min": 2},
                                            "b": {"spec": "Fri 1200-1400", "min": 3}}},
         "windows 'a' (Mon-Fri 0900-1300) and 'b' (Fri 1200-1400) overlap, e.g. at Fri 12:00"),
        ({"mode": "time-based", "windows": {"a": {"spec": "Mon-Fry", "min": 2}}},
         "elasticity_policy.windows.a.spec: unknown day 'Fry' at column 5"),
        ({"mode": "time-based", "windows": {"a": {"spec": "Mon", "min": 0}}}, "windows.a.min"),
        ({"mode": "sometimes"}, "mode: 'sometimes' is not one of manual, time-based, auto"),
        ({"mode": "auto", **{k: v for k, v in SEED_AUTO.items() if k != "mode"}, "min_vms": 1},
         "cannot be combined with OneFlow keys (min_vms)"),
        ({"elasticity_policies": ONEFLOW["elasticity_policies"]}, "require both min_vms and max_vms"),
        ({"min_vms": 4, "max_vms": 2}, "min_vms (4) must not be greater than max_vms (2)"),
        ({"min_vms": 1, "max_vms": 3, "scheduled_policies": [{"type": "CARDINALITY", "adjust": 2}]},
         "exactly one of start_time or recurrence"),
        ({"min_vms": 1, "max_vms": 3, "scheduled_policies": [
            {"type": "CARDINALITY", "adjust": 2, "recurrence": "0 9 * * *", "start_time": "2026-01-01 00:00:00"}]},
         "exactly one of start_time or recurrence"),
        ({"min_vms": 1, "max_vms": 3, "scheduled_policies": [{"type": "CARDINALITY", "adjust": 2,
                                                               "recurrence": "every morning"}]},
         "not a valid cron expression"),
        ({"min_vms": 1, "max_vms": 3, "scheduled_policies": [{"type": "CARDINALITY", "adjust": 2,
                                                               "start_time": "tomorrow"}]},
         "neither epoch seconds nor a date"),
        ({"min_vms": 1, "max_vms": 3, "elasticity_policies": [{"type": "CHANGE", "adjust": 0,
                                                                "expression": "CPU > 1"}]},
         "adjustment of 0"),
        ({"min_vms": 1, "max_vms": 3, "elasticity_policies": [{"type": "SOMETIMES", "adjust": 1,
                                                                "expression": "CPU > 1"}]},
         "elasticity_policies.0.type"),
        ({"min_vms": 1, "max_vms": 3, "elasticity_policies": [{"type": "CHANGE", "adjust": 1,
                                                                "expression": "cpu > 1"}]},
         "unknown variable 'cpu'"),
        ({**SEED_AUTO, "scaleup_threshold": 3}, "elasticity_policy.scaleup_threshold: unknown key"),
        ({**SEED_AUTO, "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"windows": {"a": {"spec": "Mon", "min": 2}}}, "only used by mode 'time-based'"),
    ],
)
def test_bad_elasticity_policies_are_refused(data: dict[str, Any], expected: str) -> None:
    assert expected in refusal(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"failover_expr": "numunknown > 0"}, "failover_expr requires failover_role and failover_group"),
        ({"failover_role": "active", "failover_expr": "numunknown > 0"}, "requires failover_role and failover_group"),
        ({"failover_role": "passive"}, "failover_role requires failover_group"),
        ({"failover_role": "standby", "failover_group": "g"}, "failover_role"),
        ({"recreate_expr": "numsick > 0"}, "recreate_expr: unknown variable 'numsick' at column 1"),
        ({"recreate_expr": "avgcpu > 0"}, "unknown variable 'avgcpu'"),
        ({"recreate_expr": "m.health < 1"}, "unknown variable 'm.health'"),
        ({"failover_role": "passive", "failover_group": "g", "failover_expr": "numunknown > 1"},
         "only evaluated for failover_role 'active'"),
        ({"period": -1}, "period"),
    ],
)
def test_bad_availability_policies_are_refused(data: dict[str, Any], expected: str) -> None:
    assert expected in refusal(data, AvailabilityPolicy)


def test_availability_plugins_unlock_m_metrics() -> None:
    policy = AvailabilityPolicy.model_validate({"recreate_expr": "m.mysqlHealth < 1", "metric_plugins": "MySqlHealth"})
    assert policy.metric_plugins == ["MySqlHealth"]


def test_duplicate_keys_after_folding_are_refused() -> None:
    assert "given twice" in refusal({"mode": "manual", ":mode": "auto"})
