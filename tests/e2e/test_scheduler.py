"""Issue #5 end to end: a bronze service borrows a gold pool; a gold scale-up reclaims one bronze slave.

Pool zone1 (gold, 4 vCPUs). `batch` (bronze) creates an environment (1 VM, charged as a create) and scales it up
twice (2 VMs borrowed from the gold pool). `demo` (gold) creates one (1 VM): the pool is full. demo scales up:
its request waits (the job is READY), the scheduler reclaims one of batch's borrowed slaves, batch scales down
and releases, and demo's request is granted — its new slave comes up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pymongo
import pytest

from libs.devstack.stack import DevStack, StackConfig
from tests.e2e.conftest import Stack

CONFIG = """
endpoints:
  zone1: {url: "%(zone1)s", credentials: "oneadmin:onesim"}
templates:
  one:
    file: example.vm
    cpu: 1
    memory: 512
    network_id: {zone1: 0}
    image_id: {zone1: 0}
environments:
  app:
    endpoint: zone1
    master_template: one
    slave_template: one
    num_slaves: 0
    app_url: "http://%%MASTER%%/"
"""

GLOBAL = {
    "pools": {"zone1": {"zone": "zone1", "vcpus": 4, "memory": 8192, "class": "gold"}},
    "services": {"demo": {"class": "gold", "max_vcpus": 4, "max_memory": 8192},
                 "batch": {"class": "bronze", "max_vcpus": 4, "max_memory": 8192}},
}


@pytest.fixture(scope="module")
def sched_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    dev = DevStack(StackConfig.for_tests(tmp_path_factory.mktemp("sched"), service_env={
        "CARINA_SCHEDULER_INTERVAL": "0.2", "CARINA_SCHEDULER_RECLAIM_THROTTLE": "5"}))
    dev.start()
    try:
        admin = httpx.Client(base_url=dev.gateway_url, timeout=30,
                             headers={"Authorization": f"Bearer {dev.secrets['admin_token']}"})
        answer = admin.put("/api/v1/scheduler/config", json=GLOBAL)
        if answer.status_code == 404:  # the admin route is not there: record the configuration as it would
            pymongo.MongoClient(dev.mongodb_url)["carina"].configs.replace_one(
                {"_id": "global:config"}, {"_id": "global:config", "kind": "global", "name": "global",
                                           "service": "*", "revision": 1, "doc": GLOBAL}, upsert=True)
        else:
            assert answer.status_code < 300, answer.text
        token = admin.post("/api/v1/services/batch/token").json()["token"]
        demo, batch = Stack(dev), Stack(dev)
        batch.token = token
        batch.http.headers["Authorization"] = f"Bearer {token}"
        for stack in (demo, batch):
            stack.upload_config(CONFIG % {"zone1": dev.zone_url(0)})
        time.sleep(5.5)  # envmgr caches which services the scheduler arbitrates for 5 s
        yield demo, batch
    finally:
        dev.stop()


def requests_of(stack: Stack, service: str) -> list[dict[str, Any]]:
    db = pymongo.MongoClient(stack.dev.mongodb_url)["carina"]
    return list(db.requests.find({"service": service}))


def test_gold_scaleup_reclaims_capacity_a_bronze_service_borrowed(sched_stack: tuple[Stack, Stack]) -> None:
    demo, batch = sched_stack
    created = batch.oneenv("create", "app", "--watch")
    assert created.returncode == 0, created.stdout + created.stderr
    bronze_env = created.stdout.split()[1]
    for _ in range(2):
        up = batch.oneenv("scaleup", bronze_env, "--watch")
        assert up.returncode == 0, up.stdout + up.stderr
    assert len(batch.json("envvms", bronze_env)) == 3
    created = demo.oneenv("create", "app", "--watch")
    assert created.returncode == 0, created.stdout + created.stderr
    gold_env = created.stdout.split()[1]
    allocated = [r for r in requests_of(demo, "batch") + requests_of(demo, "demo") if r["status"] == "ALLOCATED"]
    assert sum(r["vcpus"] for r in allocated) == 4, "the gold pool is full"

    up = demo.oneenv("scaleup", gold_env, "--watch", timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    assert len(demo.json("envvms", gold_env)) == 2, "the gold environment got its slave"
    assert len(batch.json("envvms", bronze_env)) == 2, "exactly one bronze slave was removed"
    bronze = requests_of(demo, "batch")
    assert sorted(r["status"] for r in bronze if r["kind"] == "scaleup") == ["ALLOCATED", "RELEASED"]
    gold = [r for r in requests_of(demo, "demo") if r["kind"] == "scaleup"]
    assert [r["status"] for r in gold] == ["ALLOCATED"]
    jobs = {j["type"]: j for j in batch.json("jobs") if str(j["envid"]) == bronze_env}
    assert jobs["SCALEDOWN"]["status"] == "DONE"


def test_remove_cancels_and_frees_the_capacity(sched_stack: tuple[Stack, Stack]) -> None:
    demo, batch = sched_stack
    envs = [e for e in batch.json("envs") if e["policy_status"] != "DONE"]
    for env in envs:
        assert batch.oneenv("remove", str(env["envid"]), "--watch").returncode == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(r["status"] in ("RELEASED", "CANCELLED") for r in requests_of(batch, "batch")):
            break
        time.sleep(0.5)
    assert all(r["status"] in ("RELEASED", "CANCELLED") for r in requests_of(batch, "batch"))
