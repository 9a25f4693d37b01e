"""Carina's shapes and the scheduler/policy views built from stored documents (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.gateway import carina_views as cv
from services.gateway.routes.configs import is_config_rb
from services.gateway.routes.scheduler import is_global_rb
from services.gateway.views import decision_view, pool_views, service_views


@pytest.mark.parametrize(("value", "shown"), [
    (datetime(2024, 5, 1, 9, 30, 5), "2024-05-01 09:30:05 +0000"),                      # MongoDB's naive UTC
    (datetime(2024, 5, 1, 11, 30, 5, tzinfo=timezone(timedelta(hours=2))), "2024-05-01 09:30:05 +0000"),
    (1714555805.0, "2024-05-01 09:30:05 +0000"),                                          # the ledger's epoch
    (None, 0), ("yesterday", 0), (True, 0),                                               # Carina's "not yet"
])
def test_times_as_ruby_printed_them(value: object, shown: object) -> None:
    assert cv.ruby_time(value) == shown


def test_cpu_metric_averages_live_vms_only() -> None:
    slots: list[dict[str, object]] = [{"live": True, "cpu": 10}, {"live": True, "cpu": 25.5},
                                      {"live": True, "cpu": None}, {"live": False, "cpu": 99},
                                      {"live": True, "cpu": True}]
    assert cv.cpu_metric(slots) == "avgcpu[18]"
    assert cv.cpu_metric([]) == "avgcpu[0]"


def test_env_counts_tokens_and_outstanding_requests() -> None:
    env = {"_id": 18, "name": "tomcat", "status": None, "policy_status": "READY", "app_url": None, "groupid": 17}
    requests = [{"_id": 9, "status": "ALLOCATED"}, {"_id": 3, "status": "ALLOCATED"}, {"_id": 12, "status": "PEND"}]
    row = cv.env(env, [{"live": True, "cpu": 50}, {"live": False}], requests)
    assert row == {"envid": "18", "name": "tomcat", "status": "INIT", "policy_status": "READY", "url": "",
                   "numVMs": 1, "metrics": "avgcpu[50]", "gsTokens": ["3", "9"], "gsOutStandingReqs": 1,
                   "info": "", "groupid": "17"}


def test_config_rows_give_groups_no_endpoint() -> None:
    doc = {"environments": {"web": {"endpoint": "z1", "description": "d"}, "g": {"type": "group", "members": ["web"]}}}
    assert cv.config_rows(doc) == [{"endpoint": None, "name": "g", "desc": "", "type": "group"},
                                   {"endpoint": "z1", "name": "web", "desc": "d", "type": "compute"}]


def test_pools_and_services_count_only_allocated_capacity() -> None:
    config = {"pools": {"p1": {"zone": "z", "vcpus": 8, "memory": 4096, "class": "gold"},
                        "p2": {"zone": "y", "vcpus": 2, "memory": 1024, "class": "bronze"}},
              "services": {"s": {"class": "gold", "max_vcpus": 4, "max_memory": 2048}}}
    requests = [{"service": "s", "status": "ALLOCATED", "pool": "p1", "vcpus": 2, "memory": 1024},
                {"service": "s", "status": "PEND", "zone": "z", "vcpus": 9, "memory": 9999},
                {"service": "t", "status": "PEND", "target_pool": "p2", "vcpus": 1, "memory": 1}]
    p1, p2 = pool_views(config, requests)
    assert (p1.available_vcpus, p1.available_memory, p1.pending) == (6.0, 3072, 1)
    assert (p2.available_vcpus, p2.available_memory, p2.pending) == (2.0, 1024, 1)
    [svc] = service_views(config, requests, {"s": ["z"]})
    assert (svc.allocated_vcpus, svc.allocated_memory, svc.pending, svc.zones) == (2.0, 1024, 1, ["z"])
    assert cv.pool(p1) == {"@name": "p1", "@zone": "z", "@vcpus": 8, "@mem": 4096, "@availvcpus": 6,
                           "@availmem": 3072, "@priclass": "gold", "@status": "AVAILABLE"}
    full = pool_views(config, [{"status": "ALLOCATED", "pool": "p2", "vcpus": 2, "memory": 10}])[1]
    assert cv.pool(full)["@status"] == "FULL"


def test_decisions_from_either_store_read_the_same() -> None:
    stored = {"at": datetime(2024, 5, 1, 9, 0), "policy": "elasticity", "action": "none", "reason": "r",
              "count": True, "inputs": None}
    recent = {**stored, "at": "2024-05-01T09:00:00+00:00"}
    assert decision_view(stored) == decision_view(recent)
    assert decision_view(stored).at == datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    assert decision_view(stored).count is None and decision_view(stored).inputs == {}


def test_env_log_orders_events_and_ends_with_the_state() -> None:
    t = datetime(2024, 5, 1, 9, 0)
    env = {"_id": 5, "name": "web", "status": "MASTER_CREATE_FAIL:quota", "policy_status": "INIT", "active": True,
           "failed": {"jobid": 2, "type": "CREATE", "reason": "quota"}}
    jobs = [{"_id": 2, "type": "CREATE", "status": "FAIL", "submit": t, "start": t,
             "end": t + timedelta(seconds=5), "reason": "quota"}]
    decisions = [{"at": "not a time", "policy": "x", "action": "y"}]
    assert cv.env_log(env, jobs, decisions).splitlines() == [
        "2024-05-01 09:00:00 +0000 job 2 CREATE submitted by api",
        "2024-05-01 09:00:00 +0000 job 2 CREATE started",
        "2024-05-01 09:00:05 +0000 job 2 CREATE FAIL: quota",
        "now: status MASTER_CREATE_FAIL:quota, policy status INIT, active, last failure: job 2 CREATE: quota",
    ]


@pytest.mark.parametrize(("text", "content_type", "filename", "ruby"), [
    ("ENDPOINT = {\n  'z' => {}\n}\n", "", None, True),
    ("# comment\n  ENVIRONMENT = { }", "", None, True),
    ("endpoints:\n  z: {url: x}\n", "", None, False),
    ("endpoints: {}\n", "text/x-ruby", None, True),
    ("endpoints: {}\n", "", "config.rb", True),
    ("description: 'ENDPOINT = {'\n", "", None, False),
])
def test_config_rb_is_recognised(text: str, content_type: str, filename: str | None, ruby: bool) -> None:
    assert is_config_rb(text, content_type, filename) is ruby


def test_global_rb_is_recognised() -> None:
    assert is_global_rb("SHAREDPOOLS = {}\n") and is_global_rb("pools: {}", "application/x-ruby")
    assert not is_global_rb("pools:\n  SERVICES: 1\n")
