"""Issue #5: killing the active scheduler mid-allocation — the standby takes over the lease and continues from the
durable ledger; nothing is granted twice, no pool is exceeded, nothing leaks.

Two scheduler replicas share the durable consumers; only the holder of the `scheduler.allocator` lease allocates.
envmgr is stopped so that the grants stay as the scheduler made them (nobody releases them).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nats
import pymongo
import pytest

from libs.common.messages import PoolRequest
from libs.devstack.procs import Proc
from libs.devstack.stack import DevStack, StackConfig

CAPACITY = 30
REQUESTS = 45


@pytest.fixture
def two_schedulers(tmp_path: Path) -> Iterator[DevStack]:
    dev = DevStack(StackConfig.for_tests(tmp_path / "stack", service_env={
        "CARINA_SCHEDULER_INTERVAL": "0.2", "CARINA_SCHEDULER_LEASE_TTL": "3"}))
    dev.start()
    try:
        dev.procs["envmgr"].stop()
        env = dev.service_env("scheduler", 1)
        dev.procs["scheduler2"] = Proc("scheduler2", ["python", "-m", "services.scheduler"], env=env,
                                       ready_pattern="service ready", cwd=str(Path(__file__).resolve().parents[2]))
        dev.procs["scheduler2"].argv[0] = __import__("sys").executable
        dev.procs["scheduler2"].start(timeout=60)
        db = pymongo.MongoClient(dev.mongodb_url)["carina"]
        db.configs.replace_one({"_id": "global:config"}, {
            "_id": "global:config", "kind": "global", "name": "global", "service": "*", "revision": 1,
            "doc": {"pools": {"zone1": {"zone": "zone1", "vcpus": CAPACITY, "memory": 1_000_000, "class": "gold"}},
                    "services": {"demo": {"class": "gold", "max_vcpus": 1000, "max_memory": 10_000_000}}}},
            upsert=True)
        yield dev
    finally:
        dev.procs["scheduler2"].stop()
        dev.stop()


async def leader(js: nats.js.JetStreamContext) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            kv = await js.key_value("carina_leases")
            return (await kv.get("scheduler.allocator")).value.decode()  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - not created or not held yet
            await asyncio.sleep(0.2)
    raise AssertionError("no scheduler holds the allocator lease")


async def test_standby_takes_over_without_double_grants(two_schedulers: DevStack) -> None:
    dev = two_schedulers
    nc = await nats.connect(dev.operator_nats_url)
    js = nc.jetstream()
    db = pymongo.MongoClient(dev.mongodb_url)["carina"]
    first = await leader(js)
    victim = next(name for name in ("scheduler", "scheduler2") if first.endswith(f"-{dev.procs[name].popen.pid}"))  # type: ignore[union-attr]
    for reqid in range(1, REQUESTS + 1):
        request = PoolRequest(reqid=reqid, service="demo", envid=1000 + reqid, pool="zone1", zone="zone1", vcpus=1,
                              memory=512)
        await js.publish(request.subject(), request.to_bytes(), headers={"Nats-Msg-Id": request.msg_id()})
        if reqid == REQUESTS // 3:
            await asyncio.sleep(0.5)  # let it grant some
            dev.procs[victim].kill()  # the active scheduler dies mid-allocation
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = Counter(r["status"] for r in db.requests.find())
        if statuses.get("ALLOCATED", 0) == CAPACITY and sum(statuses.values()) == REQUESTS:
            break
        await asyncio.sleep(0.5)
    second = await leader(js)
    assert second != first, "the standby holds the lease now"
    statuses = Counter(r["status"] for r in db.requests.find())
    assert statuses == {"ALLOCATED": CAPACITY, "PEND": REQUESTS - CAPACITY}, statuses
    allocated = list(db.requests.find({"status": "ALLOCATED"}))
    assert sum(r["vcpus"] for r in allocated) <= CAPACITY, "the pool is never exceeded"
    # Every grant is stored once in the stream: a grant re-sent after the takeover has the same message id.
    sub = await js.subscribe("pool.grant.demo", ordered_consumer=True, deliver_policy=nats.js.api.DeliverPolicy.ALL)
    grants: Counter[int] = Counter()
    while True:
        try:
            msg = await sub.next_msg(timeout=1)
        except nats.errors.TimeoutError:
            break
        grants[json.loads(msg.data)["reqid"]] += 1
    assert set(grants) == {r["_id"] for r in allocated}, "a grant for exactly the allocated requests"
    assert max(grants.values()) == 1, f"granted twice: {[r for r, n in grants.items() if n > 1]}"
    await nc.close()
