"""RELIABILITY.md R1 (PR tier): creates while a random service is SIGKILLed every 5 s and restarted.

The checker compares three things once the faults stop and the system settles: the client's history (every
accepted create), MongoDB (environments and their VM slots) and the ground truth in the simulated zone (VMs
grouped by their CARINA_SLOT tag). Pass: no accepted create lost (each ends READY/ACTIVE or failed with a reason),
no duplicate VM for a slot, no orphan VM, every ready environment has exactly its desired VMs.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pymongo
import pyone
import pytest

from libs.devstack.stack import SERVICES, DevStack
from tests.chaos.checker import chaos_config, restart_dead
from tests.e2e.conftest import Stack, running_stack

CREATES = int(os.environ.get("CARINA_CHAOS_CREATES", "50"))
KILL_EVERY = 5.0


@pytest.fixture
def chaos_stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(chaos_config(tmp_path / "stack", call_timeout="5", provision_retry="10")) as stack:
        yield stack


class Killer(threading.Thread):
    """SIGKILL a random service every `every` seconds; restart it after 0.5–3 s."""

    def __init__(self, dev: DevStack, every: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.dev = dev
        self.every = every
        self.random = random.Random(seed)
        self.stop_event = threading.Event()
        self.kills: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop_event.wait(self.every):
            victim = self.random.choice(SERVICES)
            self.dev.kill_service(victim)
            self.kills.append(victim)
            time.sleep(self.random.uniform(0.5, 3.0))
            try:
                self.dev.start_service(victim)
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(f"{victim}: {exc}")


def accept_create(stack: Stack, request_id: str, deadline: float) -> int:
    """POST until the gateway accepts (a client retrying with the same idempotency key)."""
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            answer = stack.http.post(
                "/api/v1/environments", json={"config": "web", "request_id": request_id}, timeout=10
            )
            if answer.status_code == 202:
                return int(answer.json()["envid"])
            last = f"{answer.status_code} {answer.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.3)
    gateway = "\n".join(stack.dev.procs["gateway"].lines[-20:])
    raise AssertionError(f"create {request_id} never accepted; last answer: {last}\ngateway log:\n{gateway}")


def test_random_kills_lose_nothing_duplicate_nothing_orphan_nothing(chaos_stack: Stack) -> None:
    dev = chaos_stack.dev
    seed = int(os.environ.get("CARINA_CHAOS_SEED", "7"))
    killer = Killer(dev, KILL_EVERY, seed)
    killer.start()
    accepted: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 300
        for _ in range(CREATES):
            request_id = uuid.uuid4().hex
            accepted[request_id] = accept_create(chaos_stack, request_id, deadline)
            time.sleep(0.2)
        time.sleep(KILL_EVERY * 2)  # at least a couple of kills after the last create
    finally:
        killer.stop_event.set()
        killer.join(timeout=30)
    assert not killer.errors, killer.errors
    restart_dead(dev)  # every service runs again (a killed one may still be restarting)

    db = pymongo.MongoClient(dev.mongodb_url)["carina"]
    settle_deadline = time.monotonic() + 180
    while time.monotonic() < settle_deadline:
        unfinished = db.envs.count_documents({"_id": {"$in": list(accepted.values())}, "op": {"$ne": None}})
        if unfinished == 0:
            break
        time.sleep(1)
    envs = {e["_id"]: e for e in db.envs.find({"_id": {"$in": list(accepted.values())}})}
    assert len(envs) == len(set(accepted.values())) == CREATES, "every accepted create is recorded, once"
    assert db.envs.count_documents({"service": "demo", "name": "web"}) == CREATES, "no duplicate environment"
    stuck = [e["_id"] for e in envs.values() if e.get("op") is not None]
    assert not stuck, f"environments still in a transitional state 180 s after the faults: {stuck}"
    for env in envs.values():
        if env["policy_status"] != "ACTIVE":
            assert env.get("failed") and env["failed"].get("reason"), f"env {env['_id']} failed without reason"

    one = pyone.OneServer(dev.zone_url(0), session="oneadmin:onesim")
    zone_vms = [
        vm
        for vm in (one.vmpool.infoextended(-2, -1, -1, -1).VM or [])
        if vm.USER_TEMPLATE.get("CARINA_SERVICE") == "demo"
    ]
    per_slot = Counter(str(vm.USER_TEMPLATE.get("CARINA_SLOT")) for vm in zone_vms)
    duplicates = {slot: n for slot, n in per_slot.items() if n > 1}
    assert not duplicates, f"slots with more than one VM: {duplicates}"
    live = {s["_id"]: s for s in db.slots.find({"envid": {"$in": list(envs)}, "live": True})}
    orphans = [slot for slot in per_slot if slot not in live]
    assert not orphans, f"VMs in the zone that Carina does not want: {orphans}"
    for env in envs.values():
        if env["policy_status"] == "ACTIVE":
            mine = [s for s in live.values() if s["envid"] == env["_id"]]
            assert len(mine) == 1 + env["desired_slaves"] == 3, f"env {env['_id']}: {len(mine)} VMs"
            assert all(per_slot.get(s["_id"]) == 1 for s in mine), f"env {env['_id']}: a slot without its VM"
    ready = sum(1 for e in envs.values() if e["policy_status"] == "ACTIVE")
    reasons = Counter(str((e.get("failed") or {}).get("reason"))[:80] for e in envs.values() if e.get("failed"))
    print(f"\nR1: {CREATES} creates, kills={Counter(killer.kills)}, ready={ready}, failed={CREATES - ready} {reasons}")
