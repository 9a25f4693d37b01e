"""The environment event stream (server-sent events) over real HTTP, fed by real NATS and MongoDB."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from gateway_helpers import Accounts, plant_running_env

from libs.common.bus import Bus
from libs.common.db import Store
from libs.common.messages import EnvEvent, utcnow


async def _events(resp: httpx.Response, into: list[tuple[str, dict[str, Any]]]) -> None:
    event, data = "message", ""
    async for line in resp.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif line == "" and data:
            into.append((event, json.loads(data)))
            event, data = "message", ""


async def _until(check: Any, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_stream_relays_events_and_ends_with_the_job(client: httpx.AsyncClient, accounts: Accounts,
                                                          store: Store, bus: Bus) -> None:
    op = {"jobid": 88001, "type": "SCALEUP", "phase": "slave", "started_at": utcnow()}
    await plant_running_env(store, 8001, "alpha", op=op)
    await store.jobs.insert_one({"_id": 88001, "envid": 8001, "service": "alpha", "name": "tomcat", "type": "SCALEUP",
                                 "status": "RUNNING", "submit": utcnow(), "reason": None})
    received: list[tuple[str, dict[str, Any]]] = []
    async with client.stream("GET", "/api/v1/environments/8001/events", params={"until": "done"},
                             headers=accounts.headers("a")) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        reader = asyncio.create_task(_events(resp, received))
        await _until(lambda: received)
        kind, first = received[0]
        assert kind == "snapshot"
        assert first["status"] == "SLAVE_0_INIT_DONE" and first["job"]["jobid"] == 88001
        assert first["job"]["phase"] == "slave" and first["job"]["status"] == "RUNNING"

        await bus.publish(EnvEvent(envid=8001, seq=4, status="SLAVE_1_INIT_DONE", policy_status="ACTIVE",
                                   message="slave 1 ready", jobid=88001, job_status="RUNNING"))
        await _until(lambda: any(k == "progress" for k, _ in received))
        progress = next(d for k, d in received if k == "progress")
        assert progress["message"] == "slave 1 ready" and progress["status"] == "SLAVE_1_INIT_DONE"

        # A change envmgr made without (or with a lost) event still reaches the watcher.
        await store.envs.update_one({"_id": 8001}, {"$set": {"info": "waiting for slave 1"}})
        await _until(lambda: any(d.get("info") == "waiting for slave 1" for _, d in received))

        await store.jobs.update_one({"_id": 88001}, {"$set": {"status": "DONE"}})
        await store.envs.update_one({"_id": 8001}, {"$set": {"op": None}})
        await asyncio.wait_for(reader, timeout=5)
    assert received[-1] == ("end", {"jobid": 88001, "status": "DONE", "reason": None})


async def test_stream_without_a_running_job_ends_at_once(client: httpx.AsyncClient, accounts: Accounts,
                                                          store: Store) -> None:
    await plant_running_env(store, 8101, "alpha")
    await store.jobs.insert_one({"_id": 88101, "envid": 8101, "service": "alpha", "name": "tomcat", "type": "CREATE",
                                 "status": "FAIL", "submit": utcnow(), "reason": "MASTER_INIT_FAIL:NO_DISK"})
    resp = await client.get("/api/v1/environments/8101/events", params={"until": "done"},
                            headers=accounts.headers("a"))
    assert resp.status_code == 200
    assert "event: snapshot" in resp.text
    assert resp.text.rstrip().endswith('"reason":"MASTER_INIT_FAIL:NO_DISK"}')
    resp = await client.get("/api/v1/environments/8101/events", params={"until": "done", "jobid": 1},
                            headers=accounts.headers("a"))
    assert resp.status_code == 404
    resp = await client.get("/api/v1/environments/8101/events", params={"timeout": "0.5"},
                            headers=accounts.headers("a"))
    assert resp.status_code == 200 and '"status":"TIMEOUT"' in resp.text
