"""The chaos tests' checker: compare the client's history, MongoDB and the zones' ground truth.

Classifies every accepted create (Jepsen-style): ok (READY/ACTIVE), failed with a reason, or lost; and checks the
zones for duplicate VMs (two VMs for one slot) and orphans (a VM tagged as Carina's that no live slot wants).
Also the configuration the chaos tests' stacks share (`chaos_config`).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo
import pyone

from libs.devstack.stack import SERVICES, DevStack, StackConfig


def chaos_config(var: Path, *, call_timeout: str, provision_retry: str) -> StackConfig:
    """A test stack's configuration for the chaos tests: envmgr resyncs every 2 s and gives a VM 90 s to run and a
    master 90 s to initialise; the provisioner's call timeout and envmgr's provision retries are the test's."""
    return StackConfig.for_tests(
        var,
        service_env={
            "CARINA_PROVISIONER_CALL_TIMEOUT": call_timeout,
            "CARINA_ENVMGR_PROVISION_RETRY": provision_retry,
            "CARINA_ENVMGR_RESYNC_INTERVAL": "2",
            "CARINA_ENVMGR_VM_RUNNING_TIMEOUT": "90",
            "CARINA_ENVMGR_MASTER_INIT_TIMEOUT": "90",
        },
    )


@dataclass
class Verdict:
    ready: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"ready={self.ready} failed={sum(self.failed.values())} {dict(self.failed)}"


def restart_dead(dev: DevStack) -> None:
    for service in SERVICES:
        dev.start_if_dead(service)


def settle(dev: DevStack, envids: list[int], timeout: float = 180.0) -> None:
    db = pymongo.MongoClient(dev.mongodb_url)["carina"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        restart_dead(dev)
        if db.envs.count_documents({"_id": {"$in": envids}, "op": {"$ne": None}}) == 0:
            return
        time.sleep(1)


def check(dev: DevStack, envids: list[int], service: str = "demo", expect_vms: int = 3) -> Verdict:
    db = pymongo.MongoClient(dev.mongodb_url)["carina"]
    verdict = Verdict()
    envs = {e["_id"]: e for e in db.envs.find({"_id": {"$in": envids}})}
    lost = sorted(set(envids) - set(envs))
    if lost:
        verdict.problems.append(f"accepted but not recorded (lost): {lost}")
    for env in envs.values():
        if env.get("op") is not None:
            verdict.problems.append(f"env {env['_id']} still in a transitional state: {env['op'].get('phase')}")
        elif env["policy_status"] == "ACTIVE":
            verdict.ready += 1
        elif env.get("failed") and env["failed"].get("reason"):
            verdict.failed[str(env["failed"]["reason"])[:70]] += 1
        else:
            verdict.problems.append(f"env {env['_id']} ended {env['policy_status']} without a reason")
    zone_vms: list[Any] = []
    for index in range(len(dev.config.zone_ports)):
        one = pyone.OneServer(dev.zone_url(index), session=dev.config.zone_credentials)
        zone_vms += [
            vm
            for vm in (one.vmpool.infoextended(-2, -1, -1, -1).VM or [])
            if vm.USER_TEMPLATE.get("CARINA_SERVICE") == service
        ]
    per_slot = Counter(str(vm.USER_TEMPLATE.get("CARINA_SLOT")) for vm in zone_vms)
    duplicates = {slot: n for slot, n in per_slot.items() if n > 1}
    if duplicates:
        verdict.problems.append(f"duplicate VMs: {duplicates}")
    live = {s["_id"]: s for s in db.slots.find({"service": service, "live": True})}
    orphans = sorted(slot for slot in per_slot if slot not in live)
    if orphans:
        verdict.problems.append(f"orphan VMs: {orphans}")
    for env in envs.values():
        if env.get("op") is None and env["policy_status"] == "ACTIVE":
            mine = [s for s in live.values() if s["envid"] == env["_id"]]
            if len(mine) != expect_vms:
                verdict.problems.append(f"env {env['_id']} has {len(mine)} VMs, wants {expect_vms}")
            missing = [s["_id"] for s in mine if per_slot.get(s["_id"]) != 1]
            if missing:
                verdict.problems.append(f"env {env['_id']}: slots without exactly one VM: {missing}")
    return verdict
