"""What users see of stored documents: VM status, listings, metric parsing (pure functions)."""

from __future__ import annotations

import pytest

from services.gateway.views import config_entries, env_summary, parse_metrics, status_matches, vm_row, vm_status


@pytest.mark.parametrize(("lifecycle", "guest_status", "shown"), [
    ("RUNNING", "MASTER_INIT_DONE", "master_init_done"),   # the guest's word wins while the VM runs
    ("RUNNING", None, "runn"),
    ("PENDING", None, "pend"),
    ("PROLOG", None, "prol"),
    ("BOOT", None, "boot"),
    ("UNKNOWN", "MASTER_INIT_DONE", "unkn"),               # trouble in the zone hides a stale "done"
    ("FAILED", "SLAVE_0_INIT_DONE", "fail"),
    ("MISSING", "SLAVE_0_INIT_DONE", "MISSING"),           # Carina kept MISSING upper case
    (None, None, "pend"),
])
def test_vm_status_column(lifecycle: str | None, guest_status: str | None, shown: str) -> None:
    slot = {"lifecycle": lifecycle, "guest": {"status": guest_status} if guest_status else {}}
    assert vm_status(slot) == shown


def test_vm_row_prefers_what_the_guest_reported() -> None:
    slot = {"_id": "5:slave:1:2", "envid": 5, "role": "slave", "index": 1, "incarnation": 2, "one_id": 77,
            "name": "tomcat-5-s1", "ip": "10.0.0.9", "zone": "z1", "lifecycle": "RUNNING", "cpu": float("nan"),
            "nonce": "secret-nonce", "guest": {"ip": "192.168.1.4", "hostname": "web-1", "status": "NET_CONFIG_DONE"}}
    row = vm_row(slot)
    assert (row.vmid, row.hostname, row.ipaddr, row.status, row.cpu) == (77, "web-1", "192.168.1.4",
                                                                          "net_config_done", None)
    assert "secret-nonce" not in row.model_dump_json()


def test_env_summary_hides_internals() -> None:
    env = {"_id": 18, "service": "svc1", "name": "tomcat", "zone": "zone1", "status": "MASTER_CREATE",
           "policy_status": "INIT", "app_url": "", "spec": {"config": {}}, "op": {"jobid": 51, "type": "CREATE",
                                                                                 "phase": "master"}}
    summary = env_summary(env, numvms=1)
    assert summary.job is not None and (summary.job.jobid, summary.job.phase) == (51, "master")
    assert summary.app_url is None and summary.active is True
    assert "spec" not in summary.model_dump()


@pytest.mark.parametrize(("wanted", "matches"), [
    ("MASTER_CREATE_FAIL", True), ("master_create_fail:no capacity", True), ("failed", True), ("ACTIVE", False)])
def test_status_filter(wanted: str, matches: bool) -> None:
    env = {"status": "MASTER_CREATE_FAIL:no capacity", "policy_status": "FAILED"}
    assert status_matches(env, wanted) is matches


def test_config_entries_like_carina() -> None:
    doc = {"endpoints": {"e1": {"url": "http://x:2633/RPC2", "zone": "flame"}},
           "environments": {"web": {"type": "compute", "endpoint": "e1", "description": "Web"},
                            "all": {"type": "group", "members": ["web"], "description": "Everything"}}}
    rows = [r.model_dump() for r in config_entries(doc)]
    assert rows == [{"name": "all", "type": "group", "endpoint": "-", "zone": "-", "description": "Everything"},
                    {"name": "web", "type": "compute", "endpoint": "e1", "zone": "flame", "description": "Web"}]


def test_metrics_lines() -> None:
    assert parse_metrics('CPU_LOAD = 55.0\n\n# note\nMEM_LOAD="12"\nX=1e3\n') == {
        "CPU_LOAD": 55.0, "MEM_LOAD": 12.0, "X": 1000.0}


@pytest.mark.parametrize(("body", "needle"), [
    ("CPU_LOAD = 1\nREADY = YES", "line 2: READY is not a number"),
    ("just text", "line 1: expected KEY = VALUE"),
    ("9LIVES = 3", "line 1: expected KEY = VALUE"),
    ("A = inf", "not a finite number"),
    ("\n\n", "no KEY = VALUE line"),
])
def test_metrics_refused_with_the_line(body: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_metrics(body)
