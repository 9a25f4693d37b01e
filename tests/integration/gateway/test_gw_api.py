"""The REST API v1 over real HTTP against real NATS and MongoDB: auth, uploads, environments, operations, jobs."""

from __future__ import annotations

import json

import httpx
from gateway_helpers import (
    ADMIN_TOKEN,
    CONFIG_YAML,
    CREDENTIALS,
    TEMPLATE_VM,
    Accounts,
    Collector,
    ServerThread,
    plant_running_env,
    upload_basics,
)

from libs.common.db import Store

YAML = {"Content-Type": "application/yaml"}


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json()["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"mongodb": True, "nats": True}


async def test_missing_or_invalid_token_is_401(client: httpx.AsyncClient, accounts: Accounts) -> None:
    for headers in ({}, {"Authorization": "Bearer nope-not-a-token"}, {"Authorization": "Basic Zm9vOmJhcg=="}):
        resp = await client.get("/api/v1/environments", headers=headers)
        assert resp.status_code == 401, headers
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert resp.json()["detail"]


async def test_services_only_see_their_own_environments(client: httpx.AsyncClient, accounts: Accounts,
                                                        store: Store) -> None:
    await upload_basics(client, accounts.headers("a"))
    await upload_basics(client, accounts.headers("b"))
    created_a = (await client.post("/api/v1/environments", json={"config": "tomcat"},
                                   headers=accounts.headers("a"))).json()
    created_b = (await client.post("/api/v1/environments", json={"config": "db"},
                                   headers=accounts.headers("b"))).json()
    env_a, env_b = created_a["envid"], created_b["envid"]

    # B cannot see, touch or even detect A's environment and jobs: 404 exactly like an unknown id.
    for method, path in (("GET", f"/api/v1/environments/{env_a}"), ("GET", f"/api/v1/environments/{env_a}/vms"),
                         ("POST", f"/api/v1/environments/{env_a}/scaleup"), ("DELETE", f"/api/v1/environments/{env_a}"),
                         ("GET", f"/api/v1/jobs/{created_a['jobid']}"),
                         ("GET", f"/api/v1/environments/{env_a}/events")):
        resp = await client.request(method, path, headers=accounts.headers("b"))
        assert resp.status_code == 404, (method, path, resp.text)
    listed_b = (await client.get("/api/v1/environments", headers=accounts.headers("b"))).json()
    assert [e["envid"] for e in listed_b] == [env_b]
    assert (await client.get("/api/v1/environments", params={"service": "alpha"},
                             headers=accounts.headers("b"))).status_code == 404
    jobs_b = (await client.get("/api/v1/jobs", headers=accounts.headers("b"))).json()
    assert {j["envid"] for j in jobs_b} == {env_b}

    # The administrator sees everything, and can narrow to one service.
    every = (await client.get("/api/v1/environments", headers=accounts.headers("admin"))).json()
    assert {e["envid"] for e in every} == {env_a, env_b}
    only_a = (await client.get("/api/v1/environments", params={"service": "alpha"},
                               headers=accounts.headers("admin"))).json()
    assert [(e["envid"], e["service"]) for e in only_a] == [(env_a, "alpha")]
    assert (await client.get(f"/api/v1/environments/{env_a}", headers=accounts.headers("admin"))).status_code == 200

    # Admin-only routes refuse a service token; creating for a service needs the admin to name it.
    assert (await client.get("/api/v1/services", headers=accounts.headers("a"))).status_code == 403
    resp = await client.post("/api/v1/environments", json={"config": "db"}, headers=accounts.headers("admin"))
    assert resp.status_code == 422
    resp = await client.post("/api/v1/environments", json={"config": "db", "service": "beta"},
                             headers=accounts.headers("admin"))
    assert resp.status_code == 202
    stored_env = await store.envs.find_one({"_id": resp.json()["envid"]})
    assert stored_env is not None and stored_env["service"] == "beta"


async def test_config_upload_is_versioned_and_never_returns_credentials(client: httpx.AsyncClient,
                                                                       accounts: Accounts, store: Store) -> None:
    headers = accounts.headers("a")
    bodies: list[str] = []
    resp = await client.put("/api/v1/templates/small.vm", content=TEMPLATE_VM,
                            headers={**headers, "Content-Type": "text/plain"})
    assert resp.status_code == 200 and resp.json()["revision"] == 1
    resp = await client.put("/api/v1/config", content=CONFIG_YAML, headers={**headers, **YAML})
    bodies.append(resp.text)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"service": "alpha", "revision": 1, "environments": ["db", "stack", "tomcat"], "warnings": []}

    # Carina-style multipart upload and JSON are accepted too; each upload is a new revision.
    resp = await client.put("/api/v1/config", files={"upload": ("config.yaml", CONFIG_YAML, "application/yaml")},
                            headers=headers)
    bodies.append(resp.text)
    assert resp.status_code == 200 and resp.json()["revision"] == 2, resp.text
    import yaml

    resp = await client.put("/api/v1/config", content=json.dumps(yaml.safe_load(CONFIG_YAML)),
                            headers={**headers, "Content-Type": "application/json"})
    assert resp.status_code == 200 and resp.json()["revision"] == 3, resp.text
    history = [d["revision"] async for d in store["config_history"].find({"service": "alpha"})]
    assert sorted(history) == [1, 2]

    stored = await client.get("/api/v1/config", headers=headers)
    bodies.append(stored.text)
    assert stored.json()["revision"] == 3
    assert stored.json()["config"]["endpoints"]["zone1"]["credentials"] == "********"
    configs = await client.get("/api/v1/configs", headers=headers)
    bodies.append(configs.text)
    rows = {r["name"]: r for r in configs.json()}
    assert rows["stack"]["type"] == "group" and rows["stack"]["endpoint"] == "-"
    assert rows["tomcat"] == {"name": "tomcat", "type": "compute", "endpoint": "zone1", "zone": "zone1",
                              "description": "Load-balanced Tomcat"}
    templates = (await client.get("/api/v1/templates", headers=headers)).json()
    assert [(t["name"], t["size"]) for t in templates] == [("small.vm", len(TEMPLATE_VM))]
    created = await client.post("/api/v1/environments", json={"config": "tomcat"}, headers=headers)
    bodies.append(created.text)
    bodies.append((await client.get(f"/api/v1/environments/{created.json()['envid']}", headers=headers)).text)
    bodies.append((await client.get("/api/v1/environments", headers=headers)).text)
    for body in bodies:
        assert CREDENTIALS not in body and "zone-pass" not in body
    # The stored document keeps them (envmgr and the provisioner need them).
    doc = await store.configs.find_one({"_id": "alpha:config"})
    assert doc is not None and doc["doc"]["endpoints"]["zone1"]["credentials"] == CREDENTIALS


async def test_rejected_config_changes_nothing(client: httpx.AsyncClient, accounts: Accounts, store: Store) -> None:
    headers = {**accounts.headers("a"), **YAML}
    # The template file is not uploaded yet: the reference is named by its key path.
    resp = await client.put("/api/v1/config", content=CONFIG_YAML, headers=headers)
    assert resp.status_code == 422
    assert ["templates.small.file"] == [p["path"] for p in resp.json()["problems"]]
    assert await store.configs.find_one({"_id": "alpha:config"}) is None

    await client.put("/api/v1/templates/small.vm", content=TEMPLATE_VM,
                     headers={**accounts.headers("a"), "Content-Type": "text/plain"})
    malformed = "endpoints:\n  zone1:\n    url: [unclosed\n"
    resp = await client.put("/api/v1/config", content=malformed, headers=headers)
    assert resp.status_code == 422
    assert "line" in resp.json()["detail"] and "column" in resp.json()["detail"]
    assert resp.json()["problems"][0]["path"].startswith("line ")

    cases = {
        "environments.tomcat.master_template": CONFIG_YAML.replace("master_template: small\n    slave_template",
                                                                   "master_template: huge\n    slave_template"),
        "environments.db.endpoint": CONFIG_YAML.replace("endpoint: zone1\n    description: A database",
                                                        "endpoint: zone9\n    description: A database"),
        "environments.tomcat.placement_policy": CONFIG_YAML.replace("placement_policy: pack",
                                                                    "placement_policy: scatter"),
    }
    for path, text in cases.items():
        resp = await client.put("/api/v1/config", content=text, headers=headers)
        assert resp.status_code == 422, path
        assert path in [p["path"] for p in resp.json()["problems"]], resp.json()
        assert CREDENTIALS not in resp.text
    assert await store.configs.find_one({"_id": "alpha:config"}) is None

    # A valid upload, then a bad one: revision 1 stays.
    assert (await client.put("/api/v1/config", content=CONFIG_YAML, headers=headers)).status_code == 200
    assert (await client.put("/api/v1/config", content=cases["environments.db.endpoint"],
                             headers=headers)).status_code == 422
    assert (await client.get("/api/v1/config", headers=accounts.headers("a"))).json()["revision"] == 1

    resp = await client.put("/api/v1/config", content=CONFIG_YAML,
                            headers={**accounts.headers("a"), "Content-Type": "image/png"})
    assert resp.status_code == 415
    resp = await client.put("/api/v1/templates/../../etc/passwd", content="x",
                            headers={**accounts.headers("a"), "Content-Type": "text/plain"})
    assert resp.status_code in (404, 422)
    resp = await client.put("/api/v1/templates/evil.sh", content="x",
                            headers={**accounts.headers("a"), "Content-Type": "text/plain"})
    assert resp.status_code == 422


async def test_create_is_visible_at_once_and_nudges_envmgr(client: httpx.AsyncClient, accounts: Accounts,
                                                           collector: Collector) -> None:
    await collector.subscribe("env.create")
    headers = accounts.headers("a")
    await upload_basics(client, headers)
    resp = await client.post("/api/v1/environments", json={"config": "tomcat"}, headers=headers)
    assert resp.status_code == 202, resp.text
    created = resp.json()
    envid = created["envid"]
    env = (await client.get(f"/api/v1/environments/{envid}", headers=headers)).json()
    assert env["name"] == "tomcat" and env["service"] == "alpha" and env["active"] is True
    assert env["job"]["jobid"] == created["jobid"] and env["job"]["type"] == "CREATE"
    assert env["config"]["num_slaves"] == 2
    assert "spec" not in env
    message = await collector.wait_for(lambda s, p: p.get("envid") == envid)
    assert message["service"] == "alpha" and message["config"] == "tomcat"
    job = (await client.get(f"/api/v1/jobs/{created['jobid']}", headers=headers)).json()
    assert job["type"] == "CREATE" and job["envid"] == envid and job["requested_by"] == "api"

    # Idempotency: the same key (header or body) returns the first answer.
    first = await client.post("/api/v1/environments", json={"config": "db"},
                              headers={**headers, "Idempotency-Key": "req-77"})
    again = await client.post("/api/v1/environments", json={"config": "db", "request_id": "req-77"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["envid"] == again.json()["envid"]

    group = (await client.post("/api/v1/environments", json={"config": "stack"}, headers=headers)).json()
    assert [m["name"] for m in group["members"]] == ["db", "tomcat"]
    assert group["envid"] == group["members"][0]["envid"]
    for member in group["members"]:
        await collector.wait_for(lambda s, p, e=member["envid"]: p.get("envid") == e)
        shown = (await client.get(f"/api/v1/environments/{member['envid']}", headers=headers)).json()
        assert shown["groupid"] == group["envid"]

    resp = await client.post("/api/v1/environments", json={"config": "nosuch"}, headers=headers)
    assert resp.status_code == 404 and "nosuch" in resp.json()["detail"]
    resp = await client.post("/api/v1/environments", json={"config": "db", "colour": "blue"}, headers=headers)
    assert resp.status_code == 422 and resp.json()["problems"][0]["path"] == "body.colour"


async def test_operations_one_at_a_time(client: httpx.AsyncClient, accounts: Accounts, store: Store,
                                        collector: Collector) -> None:
    await collector.subscribe("env.>")
    headers = accounts.headers("a")
    await upload_basics(client, headers)
    envid = (await client.post("/api/v1/environments", json={"config": "tomcat"}, headers=headers)).json()["envid"]
    # Still creating: everything but removal is refused.
    for op in ("scaleup", "scaledown", "recover"):
        resp = await client.post(f"/api/v1/environments/{envid}/{op}", headers=headers)
        assert resp.status_code == 409, (op, resp.text)
        assert "in progress" in resp.json()["detail"]

    planted = await plant_running_env(store, envid + 1000, "alpha", slaves=1)
    env2 = planted["env"]
    resp = await client.post(f"/api/v1/environments/{env2}/scaleup", headers=headers)
    assert resp.status_code == 202
    jobid = resp.json()["jobid"]
    scale = await collector.wait_for(lambda s, p: s == "env.scale" and p.get("envid") == env2)
    assert scale == {**scale, "direction": "up", "requested_by": "api", "request_id": f"job-{jobid}"}
    assert (await client.post(f"/api/v1/environments/{env2}/scaledown", headers=headers)).status_code == 409

    # envmgr finished the scale-up: the next operation is accepted.
    await store.envs.update_one({"_id": env2}, {"$set": {"op": None}})
    resp = await client.post(f"/api/v1/environments/{env2}/recreate", json={"vmid": 999999}, headers=headers)
    assert resp.status_code == 404
    vmid = planted["slots"][1]["one_id"]
    resp = await client.post(f"/api/v1/environments/{env2}/recreate", json={"vmid": vmid}, headers=headers)
    assert resp.status_code == 202
    recreate = await collector.wait_for(lambda s, p: s == "env.recreate" and p.get("envid") == env2)
    assert recreate["vmid"] == vmid and recreate["request_id"] == f"job-{resp.json()['jobid']}"

    await store.envs.update_one({"_id": env2}, {"$set": {"op": None}})
    assert (await client.post(f"/api/v1/environments/{env2}/recover", headers=headers)).status_code == 409
    resp = await client.post(f"/api/v1/environments/{env2}/scaledown", headers=headers)
    assert resp.status_code == 202
    await store.envs.update_one({"_id": env2}, {"$set": {"op": None}})
    resp = await client.delete(f"/api/v1/environments/{env2}", headers=headers)
    assert resp.status_code == 202
    await collector.wait_for(lambda s, p: s == "env.remove" and p.get("envid") == env2)
    again = await client.delete(f"/api/v1/environments/{env2}", headers=headers)
    assert again.status_code == 409
    jobs = (await client.get("/api/v1/jobs", params={"envid": env2}, headers=headers)).json()
    assert [j["type"] for j in jobs] == ["REMOVE", "SCALEDOWN", "RECREATE", "SCALEUP"]

    # Removal wins over a running create.
    assert (await client.delete(f"/api/v1/environments/{envid}", headers=headers)).status_code == 202


async def test_bad_ids_are_422_unknown_ids_404(client: httpx.AsyncClient, accounts: Accounts) -> None:
    headers = accounts.headers("a")
    for bad in ("0", "-3", "abc", "1.5", "99999999999999999999999"):
        resp = await client.get(f"/api/v1/environments/{bad}", headers=headers)
        assert resp.status_code == 422, bad
        assert resp.json()["problems"][0]["path"] == "path.envid"
    for method, path in (("GET", "/api/v1/environments/424242"), ("POST", "/api/v1/environments/424242/scaleup"),
                         ("DELETE", "/api/v1/environments/424242"), ("GET", "/api/v1/jobs/424242"),
                         ("DELETE", "/api/v1/groups/424242")):
        resp = await client.request(method, path, headers=headers)
        assert resp.status_code == 404, (method, path)
    resp = await client.post("/api/v1/environments/424242/recreate", json={"vmid": "x"}, headers=headers)
    assert resp.status_code == 422
    resp = await client.post("/api/v1/environments", content=b"{not json", headers={**headers,
                                                                                  "Content-Type": "application/json"})
    assert resp.status_code == 422


async def test_group_removal_removes_every_member(client: httpx.AsyncClient, accounts: Accounts,
                                                  collector: Collector) -> None:
    await collector.subscribe("env.remove")
    headers = accounts.headers("a")
    await upload_basics(client, headers)
    group = (await client.post("/api/v1/environments", json={"config": "stack"}, headers=headers)).json()
    resp = await client.delete(f"/api/v1/groups/{group['envid']}", headers=headers)
    assert resp.status_code == 202, resp.text
    assert sorted(resp.json()["envids"]) == sorted(m["envid"] for m in group["members"])
    for member in group["members"]:
        await collector.wait_for(lambda s, p, e=member["envid"]: p["envid"] == e)
    assert (await client.delete(f"/api/v1/groups/{group['envid']}", headers=headers)).status_code == 409
    assert (await client.delete(f"/api/v1/groups/{group['envid']}", headers=accounts.headers("b"))).status_code == 404


async def test_listings_show_carina_columns(client: httpx.AsyncClient, accounts: Accounts, store: Store) -> None:
    headers = accounts.headers("a")
    planted = await plant_running_env(store, 5001, "alpha", slaves=2)
    await store.slots.update_one({"_id": "5001:slave:1:1"}, {"$set": {"lifecycle": "UNKNOWN"}})
    await store.slots.insert_one({"_id": "5001:slave:2:1", "envid": 5001, "service": "alpha", "role": "slave",
                                  "index": 2, "incarnation": 1, "name": "tomcat-5001-s2", "zone": "zone1",
                                  "live": True, "nonce": "n", "one_id": None, "lifecycle": "PENDING"})
    envs = (await client.get("/api/v1/environments", headers=headers)).json()
    assert [(e["envid"], e["numvms"], e["status"], e["policy_status"]) for e in envs] == [
        (5001, 4, "SLAVE_0_INIT_DONE", "ACTIVE")]
    vms = (await client.get("/api/v1/environments/5001/vms", headers=headers)).json()
    assert [(v["vmid"], v["status"]) for v in vms] == [
        (planted["slots"][0]["one_id"], "master_init_done"), (planted["slots"][1]["one_id"], "slave_0_init_done"),
        (planted["slots"][2]["one_id"], "unkn"), (None, "pend")]
    assert (await client.get("/api/v1/vms", headers=headers)).json() == vms
    assert (await client.get("/api/v1/vms", headers=accounts.headers("b"))).json() == []
    assert [e["envid"] for e in (await client.get("/api/v1/environments", params={"status": "active"},
                                                  headers=headers)).json()] == [5001]
    assert (await client.get("/api/v1/environments", params={"status": "FAILED"}, headers=headers)).json() == []
    await store.envs.update_one({"_id": 5001}, {"$set": {"active": False}})
    assert (await client.get("/api/v1/environments", headers=headers)).json() == []
    removed = (await client.get("/api/v1/environments", params={"active": "false"}, headers=headers)).json()
    assert [e["envid"] for e in removed] == [5001]


async def test_service_tokens_are_issued_once_and_rotate(client: httpx.AsyncClient, gateway: ServerThread,
                                                         store: Store) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    first = await client.post("/api/v1/services/gamma/token", headers=admin)
    assert first.status_code == 201
    token = first.json()["token"]
    assert (await client.get("/api/v1/environments", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    second = (await client.post("/api/v1/services/gamma/token", headers=admin)).json()["token"]
    assert (await client.get("/api/v1/environments", headers={"Authorization": f"Bearer {token}"})).status_code == 401
    assert (await client.get("/api/v1/environments", headers={"Authorization": f"Bearer {second}"})).status_code == 200
    listing = await client.get("/api/v1/services", headers=admin)
    assert [a["service"] for a in listing.json()] == ["gamma"]
    assert second not in listing.text and "token_hash" not in listing.text
    stored = await store["accounts"].find_one({"_id": "gamma"})
    assert second not in json.dumps(stored, default=str)
