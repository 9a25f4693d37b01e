"""The scheduler and policy routes of the v1 API on the live gateway (real MongoDB, planted ledger and decisions)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx
from gateway_helpers import ADMIN_TOKEN, Accounts, plant_running_env

from libs.common.db import Store
from libs.common.globalconfig import GlobalConfig

REPO = Path(__file__).resolve().parents[3]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
YAML = {"Content-Type": "application/yaml"}
GLOBAL_YAML = """\
pools:
  gold1: {zone: zone1, vcpus: 10, memory: 20480, class: gold}
  bronze1: {zone: zone1, vcpus: 4, memory: 8192, class: bronze}
services:
  alpha: {class: gold, max_vcpus: 8, max_memory: 16384}
  beta: {class: bronze, max_vcpus: 4, max_memory: 8192}
"""


async def test_scheduler_configuration_upload(client: httpx.AsyncClient, accounts: Accounts, store: Store) -> None:
    assert (await client.get("/api/v1/scheduler/pools", headers=accounts.headers("a"))).status_code == 404
    refused = await client.put("/api/v1/scheduler/config", content=GLOBAL_YAML,
                               headers={**accounts.headers("a"), **YAML})
    assert refused.status_code == 403
    resp = await client.put("/api/v1/scheduler/config", content=GLOBAL_YAML, headers={**ADMIN, **YAML})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"revision": 1, "pools": ["bronze1", "gold1"], "services": ["alpha", "beta"],
                           "warnings": []}
    # Stored where and how the scheduler service reads it.
    stored = await store.configs.find_one({"_id": "global:config"})
    assert stored is not None
    assert (stored["kind"], stored["name"], stored["service"], stored["revision"]) == ("global", "global", "*", 1)
    assert GlobalConfig.model_validate(stored["doc"]).pools["gold1"].vcpus == 10
    assert stored["doc"]["services"]["beta"] == {"class": "bronze", "max_vcpus": 4.0, "max_memory": 8192}

    # Carina's global.rb is converted; the previous revision is kept in the history.
    resp = await client.put("/api/v1/scheduler/config", content=(REPO / "examples" / "global.rb").read_text(),
                            headers={**ADMIN, "Content-Type": "text/x-ruby"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["revision"] == 2 and resp.json()["services"] == ["batch", "demo"]
    assert await store["config_history"].find_one({"_id": "global:1"}) is not None
    shown = (await client.get("/api/v1/scheduler/config", headers=ADMIN)).json()
    assert shown["revision"] == 2 and shown["config"]["pools"]["zone1"] == {
        "zone": "zone1", "vcpus": 16.0, "memory": 32768, "class": "gold"}
    assert (await client.get("/api/v1/scheduler/config", headers=accounts.headers("a"))).status_code == 403

    # Bad input names the problem and changes nothing.
    for text, kind, fragment in (
        ("pools:\n  p: {zone: z, vcpus: 0, memory: 1, class: gold}\n", YAML, "pools.p.vcpus"),
        ("pools:\n  p: {zone: z, vcpus: 1, memory: 1, class: diamond}\n", YAML, "diamond"),
        ("pools: [\n", YAML, "YAML"),
        ("SHAREDPOOLS = {\n  'p' => { :zone => 'z', \n", {"Content-Type": "text/x-ruby"}, "line"),
        ("SHAREDPOOLS = { 'p' => { :zone => 'z' } }\nSERVICES = {}\n", {"Content-Type": "text/x-ruby"},
         "allocateable_cpus"),
    ):
        bad = await client.put("/api/v1/scheduler/config", content=text, headers={**ADMIN, **kind})
        assert bad.status_code == 422, text
        assert fragment in bad.json()["detail"], bad.json()
    assert await store.configs.find_one({"_id": "global:config", "revision": 2}) is not None


async def test_pools_services_and_requests_from_the_ledger(client: httpx.AsyncClient, accounts: Accounts,
                                                           store: Store) -> None:
    assert (await client.put("/api/v1/scheduler/config", content=GLOBAL_YAML,
                             headers={**ADMIN, **YAML})).status_code == 200
    await plant_running_env(store, 8101, "alpha", slaves=0, name="web")
    base = {"zone": "zone1", "target_pool": "gold1", "kind": "scaleup", "submitted_at": 1714555800.0}
    await store["requests"].insert_many([
        {**base, "_id": 701, "reqid": 701, "service": "alpha", "envid": 8101, "vcpus": 2, "memory": 4096,
         "status": "ALLOCATED", "pool": "gold1", "granted_at": 1714555805.0, "lease_expires_at": 1714555925.0},
        {**base, "_id": 702, "reqid": 702, "service": "beta", "envid": 8199, "vcpus": 1, "memory": 1024,
         "status": "ALLOCATED", "pool": "gold1"},
        {**base, "_id": 703, "reqid": 703, "service": "beta", "envid": 8199, "vcpus": 1, "memory": 1024,
         "status": "ALLOCATED", "pool": "bronze1"},
        {**base, "_id": 704, "reqid": 704, "service": "alpha", "envid": 8101, "vcpus": 2, "memory": 4096,
         "status": "PEND"},
        {**base, "_id": 705, "reqid": 705, "service": "alpha", "envid": 8101, "vcpus": 2, "memory": 4096,
         "status": "RELEASED", "pool": "gold1", "reason": "released"},
    ])
    pools = (await client.get("/api/v1/scheduler/pools", headers=accounts.headers("a"))).json()
    assert pools == [
        {"name": "bronze1", "zone": "zone1", "class": "bronze", "vcpus": 4.0, "memory": 8192, "allocated_vcpus": 1.0,
         "allocated_memory": 1024, "available_vcpus": 3.0, "available_memory": 7168, "pending": 1},
        {"name": "gold1", "zone": "zone1", "class": "gold", "vcpus": 10.0, "memory": 20480, "allocated_vcpus": 3.0,
         "allocated_memory": 5120, "available_vcpus": 7.0, "available_memory": 15360, "pending": 1},
    ]
    mine = (await client.get("/api/v1/scheduler/services", headers=accounts.headers("a"))).json()
    assert mine == [{"name": "alpha", "class": "gold", "max_vcpus": 8.0, "max_memory": 16384, "allocated_vcpus": 2.0,
                     "allocated_memory": 4096, "pending": 1, "zones": []}]
    every = (await client.get("/api/v1/scheduler/services", headers=ADMIN)).json()
    assert [(s["name"], s["allocated_vcpus"], s["allocated_memory"]) for s in every] == [
        ("alpha", 2.0, 4096), ("beta", 2.0, 2048)]
    assert (await client.get("/api/v1/scheduler/services", params={"service": "beta"},
                             headers=accounts.headers("a"))).status_code == 404

    own = (await client.get("/api/v1/scheduler/requests", headers=accounts.headers("a"))).json()
    assert [r["reqid"] for r in own] == [705, 704, 701]  # newest first, only alpha's
    assert own[2] == {"reqid": 701, "envid": 8101, "env": "web", "service": "alpha", "vcpus": 2.0, "memory": 4096,
                      "zone": "zone1", "target_pool": "gold1", "kind": "scaleup", "status": "ALLOCATED",
                      "pool": "gold1", "submitted_at": "2024-05-01T09:30:00Z", "granted_at": "2024-05-01T09:30:05Z",
                      "lease_expires_at": "2024-05-01T09:32:05Z", "reason": None}
    pending = (await client.get("/api/v1/scheduler/requests", params={"status": "PEND"}, headers=ADMIN)).json()
    assert [r["reqid"] for r in pending] == [704]
    betas = (await client.get("/api/v1/scheduler/requests", params={"service": "beta"}, headers=ADMIN)).json()
    assert [r["reqid"] for r in betas] == [703, 702]
    assert (await client.get("/api/v1/scheduler/requests", params={"status": "LOST"},
                             headers=ADMIN)).status_code == 422


async def test_policy_status_counters_and_decisions(client: httpx.AsyncClient, accounts: Accounts,
                                                    store: Store) -> None:
    await plant_running_env(store, 8201, "alpha", slaves=1)
    policy = {"mode": "auto", "min": 2, "max": 4, "scaleup_expr": "avgcpu > 50"}
    await store.envs.update_one({"_id": 8201}, {"$set": {"spec.config.elasticity_policy": policy,
                                                         "info": "POLICY_STATUS: scale up counter 1"}})
    # Before the policy service evaluated anything: the policy, and empty history.
    first = (await client.get("/api/v1/environments/8201/policy", headers=accounts.headers("a"))).json()
    assert (first["elasticity"], first["availability"], first["state"], first["recent"], first["decisions"]) == (
        policy, None, {}, [], [])

    older = {"envid": 8201, "service": "alpha", "policy": "elasticity", "action": "none", "source": "auto",
             "reason": "avgcpu > 50 is false", "count": 0, "inputs": {"avgcpu": 20.0},
             "expressions": {"avgcpu > 50": False}, "recommend_only": False, "at": datetime(2024, 5, 1, 9, 0)}
    newer = {**older, "action": "scaleup", "reason": "avgcpu > 50 held for 2 periods", "count": 2,
             "inputs": {"avgcpu": 75.0}, "expressions": {"avgcpu > 50": True}, "at": datetime(2024, 5, 1, 9, 2)}
    await store["decisions"].insert_many([older, newer])
    state = {"scale_counter": 2, "scale_direction": "up", "recreate_counter": 0, "failover_counter": 0,
             "failback_counter": 0, "cooldown_until": "2024-05-01T09:07:00+00:00"}
    recent = [{**{k: v for k, v in newer.items() if k != "service"}, "at": "2024-05-01T09:02:00+00:00"}]
    await store["policy_state"].insert_one({"_id": 8201, "version": 3, "envid": 8201, "state": state,
                                            "recent": recent, "updated_at": datetime(2024, 5, 1, 9, 2, 1)})
    view = (await client.get("/api/v1/environments/8201/policy", headers=accounts.headers("a"))).json()
    assert (view["envid"], view["policy_status"], view["info"]) == (8201, "ACTIVE", "POLICY_STATUS: scale up counter 1")
    assert view["state"] == state and view["updated_at"] == "2024-05-01T09:02:01Z"
    assert [(d["action"], d["reason"], d["at"]) for d in view["decisions"]] == [
        ("scaleup", "avgcpu > 50 held for 2 periods", "2024-05-01T09:02:00Z"),
        ("none", "avgcpu > 50 is false", "2024-05-01T09:00:00Z")]
    assert view["decisions"][0]["inputs"] == {"avgcpu": 75.0}
    assert view["decisions"][0]["expressions"] == {"avgcpu > 50": True}
    assert [(d["action"], d["at"]) for d in view["recent"]] == [("scaleup", "2024-05-01T09:02:00Z")]
    limited = (await client.get("/api/v1/environments/8201/policy", params={"limit": 1},
                                headers=accounts.headers("a"))).json()
    assert len(limited["decisions"]) == 1
    assert (await client.get("/api/v1/environments/8201/policy", headers=accounts.headers("b"))).status_code == 404
    assert (await client.get("/api/v1/environments/424242/policy", headers=ADMIN)).status_code == 404
