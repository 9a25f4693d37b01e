"""Carina's REST routes (oneenvd, oneenvd-gs) on the live gateway: golden JSON shapes, Carina's auth, proper errors.

Documents are planted in the test database exactly as envmgr, the scheduler and the policy service write them; each
answer is compared with the whole JSON document a Carina script would receive.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx
from gateway_helpers import ADMIN_TOKEN, CONFIG_YAML, CREDENTIALS, TEMPLATE_VM, Accounts, plant_running_env

from libs.common.db import Store

REPO = Path(__file__).resolve().parents[3]
CARINA = {"endpoint": "zone1", "authinfo": CREDENTIALS}  # what Carina's oneenv sends: first endpoint + its oneauth
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BETA_CONFIG = CONFIG_YAML.replace(CREDENTIALS, "beta-user:other-secret")


async def _configure(client: httpx.AsyncClient, accounts: Accounts, beta_config: str = BETA_CONFIG) -> None:
    for who, config in (("a", CONFIG_YAML), ("b", beta_config)):
        headers = accounts.headers(who)
        assert (await client.put("/api/v1/templates/small.vm", content=TEMPLATE_VM,
                                 headers={**headers, "Content-Type": "text/plain"})).status_code == 200
        resp = await client.put("/api/v1/config", content=config,
                                headers={**headers, "Content-Type": "application/yaml"})
        assert resp.status_code == 200, resp.text


async def test_carina_credentials_map_onto_the_service(client: httpx.AsyncClient, accounts: Accounts,
                                                       store: Store) -> None:
    await _configure(client, accounts)
    await plant_running_env(store, 7101, "alpha", slaves=0)
    await plant_running_env(store, 7102, "beta", slaves=0)

    # endpoint + authinfo (query string for reads, form body for writes) act as the service that owns them.
    listed = (await client.get("/envs", params=CARINA)).json()
    assert [e["envid"] for e in listed] == ["7101"]
    beta = (await client.get("/envs", params={"endpoint": "zone1", "authinfo": "beta-user:other-secret"})).json()
    assert [e["envid"] for e in beta] == ["7102"]
    # A bearer token works on every Carina route too; the administrator sees every service.
    assert [e["envid"] for e in (await client.get("/envs", headers=accounts.headers("b"))).json()] == ["7102"]
    assert {e["envid"] for e in (await client.get("/envs", headers=ADMIN)).json()} == {"7101", "7102"}

    for params in ({"endpoint": "zone1", "authinfo": "oneadmin:wrong"}, {"endpoint": "nosuch", "authinfo": CREDENTIALS},
                   {"endpoint": "zone1", "authinfo": CREDENTIALS, "service": "beta"}):
        resp = await client.get("/envs", params=params)
        assert resp.status_code == 401, params
        assert resp.json() == {"detail": "Not authorized to use this service"}
    resp = await client.put("/envs/7101/scaleup", data={"endpoint": "zone1", "authinfo": "nope"})
    assert resp.status_code == 401
    assert await store.envs.find_one({"_id": 7101, "op": None}) is not None  # nothing started
    missing = await client.get("/jobs")
    assert missing.status_code == 401 and "authinfo" in missing.json()["detail"]
    assert (await client.get("/envs", headers={"Authorization": "Bearer not-a-token"})).status_code == 401

    # Another service's environment is as unknown as a missing one.
    assert (await client.get("/envs/7102/vms", params=CARINA)).status_code == 404
    assert (await client.put("/envs/7102/scaleup", data=CARINA)).status_code == 404
    assert (await client.delete("/envs/7102", params=CARINA)).status_code == 404

    # Two services with the same endpoint name and credentials: `service` chooses, without it the answer says so.
    await _configure(client, accounts, beta_config=CONFIG_YAML)
    ambiguous = await client.get("/envs", params=CARINA)
    assert ambiguous.status_code == 400 and "service=" in ambiguous.json()["detail"]
    chosen = await client.get("/envs", params={**CARINA, "service": "beta"})
    assert [e["envid"] for e in chosen.json()] == ["7102"]


async def test_golden_shapes_of_the_oneenvd_reads(client: httpx.AsyncClient, accounts: Accounts, store: Store) -> None:
    await _configure(client, accounts)
    planted = await plant_running_env(store, 7201, "alpha", slaves=1)
    await store.slots.update_one({"_id": "7201:slave:0:1"}, {"$set": {"cpu": 40}})
    await store.envs.update_one({"_id": 7201}, {"$set": {"info": "POLICY_STATUS: Scale up counter 1"}})
    await plant_running_env(store, 7202, "beta", slaves=0)
    await store["requests"].insert_many([
        {"_id": 501, "reqid": 501, "service": "alpha", "envid": 7201, "status": "ALLOCATED", "vcpus": 1, "memory": 512},
        {"_id": 502, "reqid": 502, "service": "alpha", "envid": 7201, "status": "PEND", "vcpus": 1, "memory": 512},
        {"_id": 503, "reqid": 503, "service": "alpha", "envid": 7201, "status": "RELEASED", "vcpus": 1, "memory": 512},
    ])
    t0, t1 = datetime(2024, 5, 1, 9, 30), datetime(2024, 5, 1, 9, 35, 7)
    await store.jobs.insert_many([
        {"_id": 9201, "envid": 7201, "service": "alpha", "name": "tomcat", "type": "CREATE", "status": "DONE",
         "submit": t0, "start": t0, "end": t1, "reason": None, "requested_by": "api", "groupid": None,
         "predjob": None},
        {"_id": 9202, "envid": 7201, "service": "alpha", "name": "tomcat", "type": "SCALEUP", "status": "READY",
         "submit": t1, "start": None, "end": None, "reason": None, "requested_by": "policy"},
        {"_id": 9203, "envid": 7202, "service": "beta", "name": "tomcat", "type": "CREATE", "status": "DONE",
         "submit": t0, "start": t0, "end": t1},
    ])

    assert (await client.get("/configs", params=CARINA)).json() == [
        {"endpoint": "zone1", "name": "db", "desc": "A database", "type": "data"},
        {"endpoint": None, "name": "stack", "desc": "db then tomcat", "type": "group"},
        {"endpoint": "zone1", "name": "tomcat", "desc": "Load-balanced Tomcat", "type": "compute"},
    ]
    assert (await client.get("/envs", params=CARINA)).json() == [{
        "envid": "7201", "name": "tomcat", "status": "SLAVE_0_INIT_DONE", "policy_status": "ACTIVE",
        "url": "http://10.0.201.1:8080/", "numVMs": 2, "metrics": "avgcpu[26]", "gsTokens": ["501"],
        "gsOutStandingReqs": 1, "info": "POLICY_STATUS: Scale up counter 1", "groupid": "-1",
    }]
    master, slave = planted["slots"]
    expected_vms = [
        {"vmid": str(master["one_id"]), "envid": "7201", "hostname": "tomcat-7201-m", "ipaddress": master["ip"],
         "status": "master_init_done", "cpu": 12.5},
        {"vmid": str(slave["one_id"]), "envid": "7201", "hostname": "tomcat-7201-s0", "ipaddress": slave["ip"],
         "status": "slave_0_init_done", "cpu": 40},
    ]
    assert (await client.get("/envs/7201/vms", params=CARINA)).json() == expected_vms
    assert (await client.get("/vms", params=CARINA)).json() == expected_vms
    assert (await client.get("/jobs", params=CARINA)).json() == [
        {"jobid": "9201", "name": "tomcat", "pid": "-1", "envid": "7201", "type": "CREATE", "predjob": "",
         "group": "", "groupid": "", "submit": "2024-05-01 09:30:00 +0000", "start": "2024-05-01 09:30:00 +0000",
         "end": "2024-05-01 09:35:07 +0000", "dependstr": "", "status": "DONE", "priority": 0},
        {"jobid": "9202", "name": "tomcat", "pid": "-1", "envid": "7201", "type": "SCALEUP", "predjob": "",
         "group": "", "groupid": "", "submit": "2024-05-01 09:35:07 +0000", "start": 0, "end": 0, "dependstr": "",
         "status": "READY", "priority": 0},
    ]
    unknown = await client.get("/envs/424242/vms", params=CARINA)
    assert unknown.status_code == 404 and unknown.json() == {"detail": "Environment 424242 not found"}


async def test_env_log_tells_the_environments_history(client: httpx.AsyncClient, accounts: Accounts,
                                                      store: Store) -> None:
    await _configure(client, accounts)
    await plant_running_env(store, 7301, "alpha", slaves=1)
    t0, t1, t2 = datetime(2024, 5, 1, 9, 30), datetime(2024, 5, 1, 9, 31), datetime(2024, 5, 1, 9, 40)
    await store.jobs.insert_many([
        {"_id": 9301, "envid": 7301, "service": "alpha", "name": "tomcat", "type": "CREATE", "status": "DONE",
         "submit": t0, "start": t0, "end": t1, "requested_by": "api"},
        {"_id": 9302, "envid": 7301, "service": "alpha", "name": "tomcat", "type": "SCALEUP", "status": "FAIL",
         "submit": t2, "start": t2, "end": t2, "reason": "SLAVE_CREATE_FAIL: no capacity", "requested_by": "policy"},
    ])
    await store["decisions"].insert_one({"envid": 7301, "service": "alpha", "policy": "elasticity",
                                         "action": "scaleup", "reason": "avgcpu > 50 held for 2 periods",
                                         "source": "auto", "at": datetime(2024, 5, 1, 9, 39, 59)})
    resp = await client.get("/logs/env.log.7301", params=CARINA)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    lines = resp.text.splitlines()
    assert lines[:6] == [
        "2024-05-01 09:30:00 +0000 job 9301 CREATE submitted by api",
        "2024-05-01 09:30:00 +0000 job 9301 CREATE started",
        "2024-05-01 09:31:00 +0000 job 9301 CREATE DONE",
        "2024-05-01 09:39:59 +0000 policy elasticity scaleup: avgcpu > 50 held for 2 periods",
        "2024-05-01 09:40:00 +0000 job 9302 SCALEUP submitted by policy",
        "2024-05-01 09:40:00 +0000 job 9302 SCALEUP started",
    ]
    assert "2024-05-01 09:40:00 +0000 job 9302 SCALEUP FAIL: SLAVE_CREATE_FAIL: no capacity" in lines
    assert lines[-1].startswith("now: status SLAVE_0_INIT_DONE, policy status ACTIVE")
    for name in ("oneenvd", "env.log.424242", "env.log.7301.bak"):
        assert (await client.get(f"/logs/{name}", params=CARINA)).status_code == 404, name


async def test_carina_uploads_create_scale_and_remove(client: httpx.AsyncClient, accounts: Accounts,
                                                      store: Store) -> None:
    # The very first upload needs the bearer token: before it, no credentials exist to check authinfo against.
    bearer = accounts.headers("a")
    for name in ("example.vm", "cassandra.vm"):
        resp = await client.post("/configs", headers=bearer, data={"type": "vm", "name": name},
                                 files={"upload": (name, TEMPLATE_VM.encode(), "application/octet-stream")})
        assert resp.status_code == 200 and resp.text == "OK", resp.text
    config_rb = (REPO / "examples" / "config.rb").read_text()
    resp = await client.post("/configs", headers=bearer, data={"type": "config", "name": "config.rb"},
                             files={"upload": ("config.rb", config_rb.encode(), "application/octet-stream")})
    assert resp.status_code == 200 and resp.text == "OK", resp.text
    stored = await store.configs.find_one({"_id": "alpha:config"})
    assert stored is not None and stored["doc"]["endpoints"]["zone1"]["credentials"] == "oneadmin:onesim"

    # From here on, Carina's credentials from that config.rb are enough.
    creds = {"endpoint": "zone1", "authinfo": "oneadmin:onesim"}
    names = {c["name"] for c in (await client.get("/configs", params=creds)).json()}
    assert {"tomcat", "cassandra", "analytics"} <= names

    broken = config_rb.replace("'tomcat' => {", "'tomcat' => {{", 1)
    resp = await client.post("/configs", data={**creds, "type": "config", "name": "config.rb"},
                             files={"upload": ("config.rb", broken.encode(), "application/octet-stream")})
    assert resp.status_code == 422 and "line" in resp.json()["detail"] and "column" in resp.json()["detail"]
    assert await store.configs.find_one({"_id": "alpha:config", "revision": 1}) is not None  # unchanged
    resp = await client.post("/configs", data={**creds, "type": "plugin", "name": "Balance.rb"},
                             files={"upload": ("Balance.rb", b"class Balance; end", "application/octet-stream")})
    assert resp.status_code == 422 and resp.json()["detail"].startswith("metric plugins are not supported")

    created = await client.post("/configs/tomcat", data=creds)
    assert created.status_code == 200
    body = created.json()
    assert set(body) == {"envid", "jobid"} and all(isinstance(v, str) and v.isdigit() for v in body.values())
    env = await store.envs.find_one({"_id": int(body["envid"])})
    assert env is not None and env["service"] == "alpha" and env["op"]["jobid"] == int(body["jobid"])
    missing = await client.post("/configs/nosuch", data=creds)
    assert missing.status_code == 404 and missing.json()["detail"].startswith("Cannot find configuration for nosuch")
    busy = await client.put(f"/envs/{body['envid']}/scaleup", data=creds)
    assert busy.status_code == 409 and "in progress" in busy.json()["detail"]

    await plant_running_env(store, 7401, "alpha", slaves=1)
    up = await client.put("/envs/7401/scaleup", data=creds)
    assert up.status_code == 200 and set(up.json()) == {"jobid"}
    assert await store.jobs.find_one({"_id": int(up.json()["jobid"]), "type": "SCALEUP"}) is not None
    await store.envs.update_one({"_id": 7401}, {"$set": {"op": None}})
    down = await client.put("/envs/7401/scaledown", data=creds)
    assert await store.jobs.find_one({"_id": int(down.json()["jobid"]), "type": "SCALEDOWN"}) is not None
    removed = await client.delete("/envs/7401", params=creds)
    assert removed.status_code == 200
    job = await store.jobs.find_one({"_id": int(removed.json()["jobid"])})
    assert job is not None and (job["type"], job["envid"]) == ("REMOVE", 7401)

    group = (await client.post("/configs/analytics", data=creds)).json()
    members = [m async for m in store.envs.find({"groupid": int(group["envid"])})]
    assert len(members) >= 2
    resp = await client.delete(f"/envs/-{group['envid']}", params=creds)
    assert resp.status_code == 200
    jobids = [int(j) for j in resp.json()["jobid"].split(",")]
    removals = {(j["type"], j["envid"]) async for j in store.jobs.find({"_id": {"$in": jobids}})}
    assert removals == {("REMOVE", int(m["_id"])) for m in members}
    assert (await client.delete("/envs/-424242", params=creds)).status_code == 404


async def test_golden_shapes_of_the_global_scheduler(client: httpx.AsyncClient, accounts: Accounts,
                                                     store: Store) -> None:
    await _configure(client, accounts)
    assert (await client.get("/pools", params=CARINA)).status_code == 404  # no scheduler configured yet
    global_yaml = ("pools:\n  zone1: {zone: zone1, vcpus: 16, memory: 32768, class: gold}\n"
                   "  cheap: {zone: zone1, vcpus: 4.5, memory: 4096, class: bronze}\n"
                   "services:\n  alpha: {class: gold, max_vcpus: 12, max_memory: 24576}\n"
                   "  beta: {class: bronze, max_vcpus: 4, max_memory: 8192}\n")
    resp = await client.put("/api/v1/scheduler/config", content=global_yaml,
                            headers={**ADMIN, "Content-Type": "application/yaml"})
    assert resp.status_code == 200, resp.text
    await plant_running_env(store, 7501, "alpha", slaves=0)
    await store["requests"].insert_many([
        {"_id": 601, "reqid": 601, "service": "alpha", "envid": 7501, "vcpus": 2, "memory": 2048, "zone": "zone1",
         "target_pool": "zone1", "kind": "scaleup", "status": "ALLOCATED", "pool": "zone1",
         "submitted_at": 1714555800.0, "granted_at": 1714555801.0},
        {"_id": 602, "reqid": 602, "service": "beta", "envid": 7599, "vcpus": 1, "memory": 1024, "zone": "zone1",
         "target_pool": "zone1", "kind": "scaleup", "status": "ALLOCATED", "pool": "cheap",
         "submitted_at": 1714555860.0},
        {"_id": 603, "reqid": 603, "service": "alpha", "envid": 7501, "vcpus": 2, "memory": 2048, "zone": "zone1",
         "target_pool": "zone1", "kind": "scaleup", "status": "PEND", "submitted_at": 1714555920.0},
    ])
    assert (await client.get("/pools", params=CARINA)).json() == [
        {"@name": "cheap", "@zone": "zone1", "@vcpus": 4.5, "@mem": 4096, "@availvcpus": 3.5, "@availmem": 3072,
         "@priclass": "bronze", "@status": "AVAILABLE"},
        {"@name": "zone1", "@zone": "zone1", "@vcpus": 16, "@mem": 32768, "@availvcpus": 14, "@availmem": 30720,
         "@priclass": "gold", "@status": "AVAILABLE"},
    ]
    # A service sees its own entry and requests; the administrator sees every one.
    assert (await client.get("/services", params=CARINA)).json() == [
        {"@name": "alpha", "@zone": "zone1", "@maxcpus": 12, "@maxmemory": 24576, "@priclass": "gold",
         "@clientList": [{"@name": "alpha", "@zone": "zone1", "@host": "127.0.0.1", "@port": 8080}],
         "@vcpusallocated": 2, "@memallocated": 2048},
    ]
    assert [s["@name"] for s in (await client.get("/services", headers=ADMIN)).json()] == ["alpha", "beta"]
    assert (await client.get("/requests", params=CARINA)).json() == [
        {"@type": "ALLOCATE", "@zone": "zone1", "@submittime": "2024-05-01 09:30:00 +0000", "@vcpus": 2,
         "@mem": 2048, "@env": "tomcat", "@envid": "7501", "@service": "alpha", "@reqid": "601",
         "@status": "ALLOCATED", "@pool": "zone1"},
        {"@type": "ALLOCATE", "@zone": "zone1", "@submittime": "2024-05-01 09:32:00 +0000", "@vcpus": 2,
         "@mem": 2048, "@env": "tomcat", "@envid": "7501", "@service": "alpha", "@reqid": "603",
         "@status": "PEND", "@pool": "zone1"},
    ]
    assert {r["@reqid"] for r in (await client.get("/requests", headers=ADMIN)).json()} == {"601", "602", "603"}
