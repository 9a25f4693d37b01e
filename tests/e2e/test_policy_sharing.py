"""Issue #6: policy work shared among replicas, and scale-ups kept within what the global scheduler would grant.

A stack of its own with two policy replicas and a one-second tick split into four shards. Environments of the dev
service (not arbitrated by the scheduler) are evaluated by both replicas, each environment once per tick; when one
replica is SIGKILLed the other takes over the ticker and every shard. A `capped` service whose pool holds four
small VMs has an environment whose time window wants six: the policy grows it to four and then records that the
scheduler's headroom stops it, instead of sending scale-ups that could only wait for a grant and fail.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest

from libs.devstack.procs import Proc
from libs.devstack.stack import DevStack, StackConfig
from tests.e2e.conftest import Stack, config_text, quick_environment, running_stack, wait_for

TICK = 1.0
EVERY_DAY = "Sun-Sat 0000-2359"
GLOBAL = {
    # Four VMs of the `small` template (0.5 vCPU) fit the pool; `capped` could use more by its quota.
    "pools": {"zone1": {"zone": "zone1", "vcpus": 2.0, "memory": 8192, "class": "gold"}},
    "services": {"capped": {"class": "gold", "max_vcpus": 100, "max_memory": 100_000}},
}


def configuration(dev: DevStack) -> str:
    window = {"mode": "time-based", "windows": {"all": {"spec": EVERY_DAY, "min": 1}}}
    wide = {"mode": "time-based", "windows": {"all": {"spec": EVERY_DAY, "min": 6}}}
    return config_text(dev, {"plain": quick_environment("zone1", 0, elasticity_policy=window),
                             "wide": quick_environment("zone1", 0, elasticity_policy=wide)})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig.for_tests(tmp_path_factory.mktemp("policy-sharing"))
    config.service_env = {"CARINA_POLICY_TICK_INTERVAL": str(TICK), "CARINA_POLICY_LEASE_TTL": "3",
                          "CARINA_POLICY_TICK_SHARDS": "4", "CARINA_POLICY_REFRESH_INTERVAL": "0.5",
                          "CARINA_SCHEDULER_INTERVAL": "0.2"}
    with running_stack(config, configuration) as s:
        second = Proc("policy2", [sys.executable, "-m", "services.policy"], env=s.dev.service_env("policy", 1),
                      ready_pattern="service ready", cwd=str(Path(__file__).resolve().parents[2]))
        s.dev.procs["policy2"] = second
        second.start(timeout=60)
        try:
            yield s
        finally:
            second.stop()


@pytest.fixture(scope="module")
def db(stack: Stack) -> Iterator[Any]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(stack.dev.mongodb_url, tz_aware=True)
    yield client["carina"]
    client.close()


def create(stack: Stack, name: str) -> int:
    answer = stack.http.post("/api/v1/environments", json={"config": name})
    assert answer.status_code == 202, answer.text
    envid = int(answer.json()["envid"])
    wait_for(lambda: stack.http.get(f"/api/v1/environments/{envid}").json()["policy_status"] == "ACTIVE", 60,
             f"environment {envid} ACTIVE")
    return envid


def evaluators(db: Any, envids: list[int], seconds: float) -> set[tuple[int, str, int]]:
    """(envid, replica, tick period) of every evaluation seen while polling for `seconds`."""
    seen: set[tuple[int, str, int]] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for state in db.policy_state.find({"_id": {"$in": envids}}, {"evaluated_by": 1, "slot": 1}):
            if state.get("evaluated_by"):
                seen.add((int(state["_id"]), str(state["evaluated_by"]), int(state["slot"])))
        time.sleep(0.1)
    return seen


def test_replicas_share_each_tick_and_one_takes_over_when_the_other_dies(stack: Stack, db: Any) -> None:
    envids = [create(stack, "plain") for _ in range(4)]
    assert sorted(e % 4 for e in envids) == [0, 1, 2, 3], "four consecutive envids fall in the four shards"
    seen = evaluators(db, envids, 8 * TICK)
    replicas = {replica for _, replica, _ in seen}
    assert len(replicas) == 2, f"both replicas evaluate environments, got {replicas}"
    assert {envid for envid, _, _ in seen} == set(envids)
    # Each environment's tick period is evaluated by one replica only (its shard went to one of them).
    by_period: dict[tuple[int, int], set[str]] = {}
    for envid, replica, period in seen:
        by_period.setdefault((envid, period), set()).add(replica)
    assert all(len(r) == 1 for r in by_period.values()), by_period

    stack.dev.procs["policy"].kill()
    pid = stack.dev.procs["policy2"].popen.pid  # type: ignore[union-attr]
    survivor = {r for r in replicas if r.endswith(f"-{pid}")}
    assert len(survivor) == 1, (replicas, pid)
    time.sleep(3 + 2 * TICK)  # the ticker lease runs out; the survivor takes it over
    after = evaluators(db, envids, 5 * TICK)
    assert {envid for envid, _, _ in after} == set(envids), "every shard is still evaluated"
    late = max(period for _, _, period in after)
    assert {replica for envid, replica, period in after if period >= late - 1} == survivor
    stack.dev.procs["policy"].start(timeout=60)


def test_scale_ups_stop_at_the_scheduler_headroom(stack: Stack, db: Any) -> None:
    admin = httpx.Client(base_url=stack.dev.gateway_url, timeout=30,
                         headers={"Authorization": f"Bearer {stack.dev.secrets['admin_token']}"})
    assert admin.put("/api/v1/scheduler/config", json=GLOBAL).status_code < 300
    capped = Stack(stack.dev)
    capped.token = admin.post("/api/v1/services/capped/token").json()["token"]
    capped.http.headers["Authorization"] = f"Bearer {capped.token}"
    capped.upload_config(configuration(stack.dev))
    time.sleep(5.5)  # envmgr caches which services the scheduler arbitrates for 5 s
    envid = create(capped, "wide")

    def stopped_by_headroom() -> list[dict[str, Any]]:
        return list(db.decisions.find({"envid": envid, "reason": {"$regex": "scheduler headroom of 0"}}))

    def explain() -> str:
        env = db.envs.find_one({"_id": envid}) or {}
        newest = db.decisions.find({"envid": envid}).sort("at", -1).limit(5)
        recent = [(d.get("action"), d.get("reason"), (d.get("inputs") or {}).get("headroom")) for d in newest]
        ledger = [(r["_id"], r.get("status"), r.get("kind"), r.get("pool")) for r in db.requests.find({"envid": envid})]
        return (f"env: op={env.get('op')} failed={env.get('failed')} policy_status={env.get('policy_status')}\n"
                f"recent decisions: {recent}\nledger: {ledger}\nzone VMs: {len(capped.zone_vms(0, envid))}")

    wait_for(stopped_by_headroom, 60, "a decision that the scheduler's headroom stops the scale-up", explain=explain)
    vms = len(capped.zone_vms(0, envid))
    assert vms == 4, f"the pool holds 4 small VMs, the environment has {vms}"
    time.sleep(3 * TICK)
    assert len(capped.zone_vms(0, envid)) == 4
    jobs = capped.http.get("/api/v1/jobs", params={"envid": envid}).json()
    assert not [j for j in jobs if j["status"] in ("FAIL", "READY")], "no scale-up left waiting for a grant or failed"
    assert db.requests.count_documents({"service": "capped", "status": "PEND"}) == 0
    scaleups = db.decisions.count_documents({"envid": envid, "action": "scaleup"})
    assert scaleups == 3, f"three slaves were asked for (1 + 3 = 4 VMs), got {scaleups}"
