"""Guest callbacks over real HTTP: token checks, what is published, notifications, rate limiting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from gateway_helpers import ADMIN_TOKEN, Collector, plant_running_env

from libs.common.auth import guest_token, new_nonce
from libs.common.bus import Bus
from libs.common.db import Store
from services.envmgr.reconcile import env_event


async def _state(store: Store, envid: int) -> tuple[Any, list[Any]]:
    env = await store.envs.find_one({"_id": envid})
    slots = [s async for s in store.slots.find({"envid": envid}).sort("_id", 1)]
    return env, slots


def _vmstatus(vm: dict[str, Any], token: str | None, **extra: str) -> dict[str, str]:
    params = {"service": "alpha", "vmid": str(vm["one_id"]), "envid": str(vm["envid"]), "newip": "10.9.9.9",
              "name": "tomcat-m", **extra}
    if token is not None:
        params["token"] = token
    return params


async def test_carina_callbacks_need_this_vms_token(client: httpx.AsyncClient, store: Store,
                                                   collector: Collector) -> None:
    await collector.subscribe("guest.report")
    planted = await plant_running_env(store, 7001, "alpha", slaves=1)
    master, slave = planted["slots"]
    tokens = planted["tokens"]
    before = await _state(store, 7001)

    resp = await client.get("/cgi-bin/updatevmstatus.sh", params=_vmstatus(master, None))
    assert resp.status_code == 401
    rejected = {
        "wrong token": _vmstatus(master, "not-the-token"),
        "other VM's token": _vmstatus(master, tokens[slave["_id"]]),
        "other environment": _vmstatus(master, tokens[master["_id"]], envid="7002"),
        "other service": _vmstatus(master, tokens[master["_id"]], service="beta"),
    }
    for why, params in rejected.items():
        resp = await client.get("/cgi-bin/updatevmstatus.sh", params=params)
        assert resp.status_code == 403, why
    # A user's bearer token is no guest credential.
    resp = await client.get("/cgi-bin/updateappstatus.sh", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                            params={"vmid": str(master["one_id"]), "envid": "7001", "status": "MASTER_INIT_DONE"})
    assert resp.status_code == 401
    for bad in ({"vmid": "12a", "envid": "7001"}, {"vmid": str(master["one_id"]), "envid": "x"}, {"envid": "7001"}):
        resp = await client.get("/cgi-bin/updateappstatus.sh", params={**bad, "status": "X", "token": "t"})
        assert resp.status_code == 400, bad
    await asyncio.sleep(0.3)
    assert collector.messages == []
    assert await _state(store, 7001) == before  # rejections change nothing

    resp = await client.get("/cgi-bin/updatevmstatus.sh", params=_vmstatus(master, tokens[master["_id"]]))
    assert resp.status_code == 200 and resp.content == b""
    assert resp.headers["content-type"].startswith("text/html")
    report = await collector.wait_for(lambda s, p: p["kind"] == "vmstatus")
    assert report["slot"] == master["_id"] and report["envid"] == 7001 and report["incarnation"] == 1
    assert report["one_id"] == master["one_id"] and report["params"] == {"newip": "10.9.9.9", "name": "tomcat-m"}

    # Without `.sh`, with the token in a header, a status with a reason after ':'.
    params = {"vmid": str(slave["one_id"]), "envid": "7001", "status": "SLAVE_0_INIT_FAIL:NO DISK"}
    resp = await client.get("/cgi-bin/updateappstatus", headers={"X-Carina-Token": tokens[slave["_id"]]},
                            params=params)
    assert resp.status_code == 200
    report = await collector.wait_for(lambda s, p: p["kind"] == "appstatus")
    assert report["slot"] == slave["_id"] and report["params"] == {"status": "SLAVE_0_INIT_FAIL:NO DISK"}


async def test_replaced_vm_and_removed_environment_tokens_are_refused(client: httpx.AsyncClient,
                                                                      store: Store) -> None:
    planted = await plant_running_env(store, 7101, "alpha", slaves=1)
    master, slave = planted["slots"]
    old_token = planted["tokens"][slave["_id"]]
    # envmgr recreated the slave: same OpenNebula id reused by chance, new incarnation, new nonce.
    await store.slots.update_one({"_id": slave["_id"]}, {"$set": {"live": False}})
    nonce = new_nonce()
    await store.slots.insert_one({**slave, "_id": "7101:slave:0:2", "incarnation": 2, "nonce": nonce})
    params = {"vmid": str(slave["one_id"]), "envid": "7101", "status": "SLAVE_0_INIT_DONE"}
    resp = await client.get("/cgi-bin/updateappstatus.sh", params={**params, "token": old_token})
    assert resp.status_code == 403
    new_token = guest_token("test-token-secret-0123456789abcdef", "7101:slave:0:2", 2, nonce)
    assert (await client.get("/cgi-bin/updateappstatus.sh", params={**params, "token": new_token})).status_code == 200

    # The environment is being removed: envmgr's first pass retires every slot (it is marked inactive only once
    # every VM is gone). From then on its VMs' tokens are refused.
    await store.slots.update_many({"envid": 7101}, {"$set": {"live": False, "terminating": True}})
    resp = await client.get("/cgi-bin/updateappstatus.sh", params={**params, "token": new_token})
    assert resp.status_code == 403
    resp = await client.put("/vm", content="CPU_LOAD = 3\n",
                            headers={"X-ONEGATE-VMID": str(master["one_id"]),
                                     "X-ONEGATE-TOKEN": planted["tokens"][master["_id"]]})
    assert resp.status_code == 403


async def test_onegate_metrics(client: httpx.AsyncClient, store: Store, collector: Collector) -> None:
    await collector.subscribe("guest.report")
    planted = await plant_running_env(store, 7201, "alpha", slaves=1)
    slave = planted["slots"][1]
    headers = {"X-ONEGATE-VMID": str(slave["one_id"]), "X-ONEGATE-TOKEN": planted["tokens"][slave["_id"]]}
    resp = await client.put("/vm", content="CPU_LOAD = 55.5\nMEM_LOAD=\"20\"\n\n# comment\n", headers=headers)
    assert resp.status_code == 200, resp.text
    report = await collector.wait_for(lambda s, p: p["kind"] == "metrics")
    assert report["slot"] == slave["_id"] and report["params"] == {"CPU_LOAD": "55.5", "MEM_LOAD": "20.0"}
    # The same values again are a new sample, not a duplicate.
    assert (await client.put("/vm", content="CPU_LOAD = 55.5\nMEM_LOAD=\"20\"\n", headers=headers)).status_code == 200
    await collector.wait_for(lambda s, p: len(collector.matching(lambda s2, p2: p2["kind"] == "metrics")) == 2)
    resp = await client.put("/vm", data={"data": "CPU_LOAD = 7"}, headers=headers)
    assert resp.status_code == 200
    resp = await client.put("/vm", content="CPU_LOAD = 1\nREADY = YES\n", headers=headers)
    assert resp.status_code == 400 and "line 2" in resp.json()["detail"] and "READY" in resp.json()["detail"]
    for bad in ({"X-ONEGATE-TOKEN": "t"}, {"X-ONEGATE-VMID": "abc", "X-ONEGATE-TOKEN": "t"}):
        assert (await client.put("/vm", content="A = 1", headers=bad)).status_code == 400
    assert (await client.put("/vm", content="A = 1", headers={"X-ONEGATE-VMID": "5"})).status_code == 401


async def test_master_pulls_and_acknowledges_notifications(client: httpx.AsyncClient, store: Store,
                                                           collector: Collector) -> None:
    await collector.subscribe("guest.report")
    notify = {"master_incarnation": 1, "seq": 3, "items": [
        {"seq": 1, "op": "add", "ip": "10.0.0.5", "data": "8080", "slot": "7301:slave:0:1"},
        {"seq": 3, "op": "delete", "ip": "10.0.0.5", "data": "", "slot": "7301:slave:0:1"},
        {"seq": 2, "op": "add", "ip": "10.0.0.6", "data": "8080", "slot": "7301:slave:1:1"},
    ]}
    planted = await plant_running_env(store, 7301, "alpha", slaves=1, notify=notify)
    master, slave = planted["slots"]
    await store.slots.update_one({"_id": master["_id"]}, {"$set": {"guest.acked_seq": 1}})
    headers = {"X-ONEGATE-VMID": str(master["one_id"]), "X-ONEGATE-TOKEN": planted["tokens"][master["_id"]]}
    resp = await client.get("/guest/v1/notifications", headers=headers)
    assert resp.status_code == 200
    assert resp.json() == {"notifications": [{"seq": 2, "op": "add", "ip": "10.0.0.6", "data": "8080"},
                                             {"seq": 3, "op": "delete", "ip": "10.0.0.5", "data": ""}]}
    slave_headers = {"X-ONEGATE-VMID": str(slave["one_id"]), "X-ONEGATE-TOKEN": planted["tokens"][slave["_id"]]}
    assert (await client.get("/guest/v1/notifications", headers=slave_headers)).status_code == 403
    assert (await client.get("/guest/v1/notifications",
                             headers={**headers, "X-ONEGATE-TOKEN": "forged"})).status_code == 403

    assert (await client.post("/guest/v1/notifications/ack", json={"seq": 9}, headers=headers)).status_code == 400
    assert (await client.post("/guest/v1/notifications/ack", json={"seq": "x"}, headers=headers)).status_code == 400
    resp = await client.post("/guest/v1/notifications/ack", json={"seq": 3}, headers=headers)
    assert resp.status_code == 200
    report = await collector.wait_for(lambda s, p: p["kind"] == "notify_ack")
    assert report["slot"] == master["_id"] and report["params"] == {"seq": "3"}

    # A master replaced by a new incarnation: the old one no longer receives anything.
    await store.envs.update_one({"_id": 7301}, {"$set": {"notify.master_incarnation": 2}})
    assert (await client.get("/guest/v1/notifications", headers=headers)).status_code == 403


async def test_a_waiting_master_is_answered_when_envmgr_tells_it_something(client: httpx.AsyncClient, store: Store,
                                                                          bus: Bus) -> None:
    planted = await plant_running_env(store, 7351, "alpha", slaves=1)
    master = planted["slots"][0]
    headers = {"X-ONEGATE-VMID": str(master["one_id"]), "X-ONEGATE-TOKEN": planted["tokens"][master["_id"]]}
    started = time.monotonic()
    poll = asyncio.create_task(client.get("/guest/v1/notifications", params={"wait": 20}, headers=headers))
    await asyncio.sleep(0.5)
    assert not poll.done(), "nothing pending: the request is held"
    env = await store.envs.find_one({"_id": 7351})
    assert env is not None
    # A progress event that does not touch the notifications leaves the master waiting...
    await bus.publish(env_event(env, "something else happened"))
    await asyncio.sleep(0.3)
    assert not poll.done()
    # ...envmgr appending an `add` (as it does: write, then publish the event) answers it.
    item = {"seq": 1, "op": "add", "ip": "10.0.0.9", "data": "8080", "slot": "7351:slave:0:1"}
    await store.envs.update_one({"_id": 7351}, {"$set": {"notify.seq": 1, "notify.items": [item]}})
    env = await store.envs.find_one({"_id": 7351})
    assert env is not None
    await bus.publish(env_event(env, "master told: add 10.0.0.9 8080"))
    resp = await asyncio.wait_for(poll, timeout=10)
    assert resp.status_code == 200
    assert resp.json() == {"notifications": [{"seq": 1, "op": "add", "ip": "10.0.0.9", "data": "8080"}]}
    assert time.monotonic() - started < 15, "answered by the event, not by the end of the wait"


async def test_a_looping_guest_is_rate_limited(client: httpx.AsyncClient, store: Store) -> None:
    planted = await plant_running_env(store, 7401, "alpha", slaves=0)
    master = planted["slots"][0]
    params = {"vmid": str(master["one_id"]), "envid": "7401", "status": "APP_INSTALL_START",
              "token": planted["tokens"][master["_id"]]}
    started = time.monotonic()
    answers = [await client.get("/cgi-bin/updateappstatus.sh", params=params) for _ in range(40)]
    elapsed = time.monotonic() - started
    codes = [a.status_code for a in answers]
    assert codes[0] == 200 and set(codes) == {200, 429}
    # The bucket (burst 20, 5 per second) lets through no more than it holds plus what refilled meanwhile.
    assert codes.count(200) <= 20 + 5 * elapsed + 1
    limited = next(a for a in answers if a.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    # Another VM is not affected.
    other = await client.get("/cgi-bin/updateappstatus.sh", params={**params, "vmid": "1"})
    assert other.status_code == 403
