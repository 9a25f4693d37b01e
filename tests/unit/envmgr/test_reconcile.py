"""The envmgr planner, driven tick by tick against an in-memory world (no I/O).

The world applies each plan exactly as the worker would (slot inserts, environment fields, slot fields), plays
the provisioner (a provisioned slot gets a VM that is RUNNING with an IP) and the guests (the master reports
MASTER_INIT_DONE and acknowledges notifications) — each behaviour switchable to exercise failures and deadlines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.common.messages import PoolCancel, PoolRelease, PoolRequest, VmProvision, VmTerminate
from libs.common.operations import _new_env_doc
from services.envmgr.reconcile import Admission, Plan, Scheduling, Timing, plan_env

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def spec(num_slaves: int = 2, setup: float = 0, **cfg: Any) -> dict[str, Any]:
    role = {"template": "t", "file": "t.vm", "text": "CPU=%CPU%", "template_id": None, "cpu": 1, "vcpu": None,
            "memory": 512, "image_id": 0, "network_id": 0}
    config = {"type": "compute", "endpoint": "zone1", "master_template": "t", "slave_template": "t",
              "num_slaves": num_slaves, "slavedata": "8080", "master_setup_time": setup,
              "app_url": "http://%MASTER%:8080/app", **cfg}
    return {"config": config, "config_revision": 1, "endpoint": "zone1", "zone": "zone1", "url": "http://x/RPC2",
            "master": role, "slave": dict(role)}


@dataclass
class World:
    env: dict[str, Any]
    now: datetime = T0
    slots: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[int, dict[str, Any]] = field(default_factory=dict)
    plans: list[Plan] = field(default_factory=list)
    boots: bool = True
    master_init: str | None = "MASTER_INIT_DONE"
    master_acks: bool = True
    next_vm: int = 100
    sched: Scheduling | None = None
    grants: bool = True
    admission: Admission | None = None

    def step(self, timing: Timing | None = None) -> Plan:
        plan = plan_env(self.env, [s for s in self.slots.values() if not s.get("gone")], self.now,
                        timing or Timing(), sched=self.sched, admission=self.admission)
        self.plans.append(plan)
        for doc in plan.slot_inserts:
            self.slots.setdefault(doc["_id"], dict(doc))
        self.env = {**self.env, **plan.env_set, "version": self.env["version"] + (1 if plan.env_set else 0)}
        for sid, fields in plan.slot_sets.items():
            self.slots[sid].update(fields)
        for jobid, fields in plan.job_sets.items():
            self.jobs.setdefault(jobid, {}).update(fields)
        for message in plan.publish:
            if isinstance(message, PoolRequest):
                if self.grants:
                    self.env.setdefault("grants", {})[str(message.reqid)] = {"pool": message.pool}
                continue
            if isinstance(message, PoolRelease | PoolCancel):
                continue
            slot = self.slots[message.slot]
            if isinstance(message, VmProvision) and self.boots and slot.get("one_id") is None:
                self.next_vm += 1
                slot.update(one_id=self.next_vm, lifecycle="RUNNING", ip=f"10.0.0.{self.next_vm % 250}")
            elif isinstance(message, VmTerminate):
                slot.update(lifecycle="DONE")
        self._guests()
        return plan

    def _guests(self) -> None:
        master = next((s for s in self.slots.values() if s["role"] == "master" and s.get("live")
                       and s["incarnation"] == self.env.get("master_incarnation", 1)), None)
        if master is None or master.get("lifecycle") != "RUNNING":
            return
        guest = master.setdefault("guest", {})
        if self.master_init and not guest.get("status"):
            guest.update(status=self.master_init, status_at=self.now)
        if self.master_acks:
            guest["acked_seq"] = int((self.env.get("notify") or {}).get("seq", 0))

    def run(self, ticks: int = 20, dt: float = 1.0, timing: Timing | None = None) -> None:
        for _ in range(ticks):
            self.step(timing)
            self.now += timedelta(seconds=dt)

    def live(self, role: str | None = None) -> list[dict[str, Any]]:
        return [s for s in self.slots.values() if s.get("live") and (role is None or s["role"] == role)]

    def start(self, op: str, **params: Any) -> None:
        jobid = max(self.jobs, default=1) + 1
        self.env["op"] = {"jobid": jobid, "type": op, "phase": "start", "started_at": self.now,
                          "phase_since": self.now, "params": params}


def new_world(**kwargs: Any) -> World:
    env = _new_env_doc(5, "svc", "tomcat", spec(**kwargs), T0, 7, None, None, None)
    return World(env=env)


def test_create_brings_master_then_slaves_up_and_ends_ready_with_app_url() -> None:
    world = new_world(num_slaves=2)
    world.run(6)
    env = world.env
    assert env["op"] is None and env["failed"] is None
    assert env["policy_status"] == "ACTIVE"
    master = world.live("master")[0]
    assert env["app_url"] == f"http://{master['ip']}:8080/app"
    slaves = sorted(world.live("slave"), key=lambda s: s["index"])
    assert [s["index"] for s in slaves] == [0, 1]
    assert all(s["params"]["MASTER"] == master["ip"] and s["params"]["NUM_SLAVES"] == "2" for s in slaves)
    adds = [i for i in env["notify"]["items"] if i["op"] == "add"]
    assert [(a["ip"], a["data"]) for a in adds] == [(s["ip"], "8080") for s in slaves]
    assert world.jobs[7]["status"] == "DONE"


def test_slaves_wait_for_master_init_done_and_master_setup_time() -> None:
    world = new_world(num_slaves=1, setup=30)
    world.master_init = None
    world.run(10)
    assert not world.live("slave"), "no slave before master_setup_time and MASTER_INIT_DONE"
    world.run(25)
    assert world.env["op"]["phase"] == "master_init"
    assert not world.live("slave")
    world.master_init = "MASTER_INIT_DONE"
    world.run(5)
    assert len(world.live("slave")) == 1
    assert world.env["policy_status"] == "ACTIVE"


def test_master_init_fail_fails_the_job_with_the_guest_status() -> None:
    world = new_world()
    world.master_init = "MASTER_INIT_FAIL:MOUNTLIST_MISSING"
    world.run(5)
    assert world.env["op"] is None
    assert world.env["status"] == "MASTER_INIT_FAIL:MOUNTLIST_MISSING"
    assert world.jobs[7]["status"] == "FAIL"
    assert not world.live("slave")


def test_every_wait_has_a_deadline() -> None:
    world = new_world()
    world.boots = False
    timing = Timing(vm_running_timeout=60)
    world.run(70, timing=timing)
    assert world.env["op"] is None
    assert world.env["status"] == "MASTER_CREATE_FAIL:timeout"
    assert "not RUNNING" in world.env["failed"]["reason"]
    assert world.jobs[7]["status"] == "FAIL"


def test_unacknowledged_add_times_out_with_reason() -> None:
    world = new_world(num_slaves=1)
    world.master_acks = False
    world.run(700, timing=Timing(vm_running_timeout=300, notify_timeout=300))
    assert world.env["status"] == "SLAVE_CREATE_FAIL:timeout"
    assert "acknowledgement" in world.env["failed"]["reason"]


def test_provision_is_asked_again_with_a_new_attempt_after_retry_period() -> None:
    world = new_world()
    world.boots = False
    world.run(3, dt=30, timing=Timing(provision_retry=60))
    attempts = {m.attempt for p in world.plans for m in p.publish if isinstance(m, VmProvision)}
    assert attempts == {1, 2}


def test_scaleup_then_scaledown_is_lifo_and_tells_the_master() -> None:
    world = new_world(num_slaves=1)
    world.run(5)
    world.start("SCALEUP")
    world.run(5)
    assert sorted(s["index"] for s in world.live("slave")) == [0, 1]
    assert world.env["status"] == "SLAVE_SCALEUP_SUCCESS"
    newest = next(s for s in world.live("slave") if s["index"] == 1)
    world.start("SCALEDOWN")
    world.run(5)
    assert [s["index"] for s in world.live("slave")] == [0]
    assert world.slots[newest["_id"]]["lifecycle"] == "DONE"
    deletes = [i for i in world.env["notify"]["items"] if i["op"] == "delete"]
    assert [d["ip"] for d in deletes] == [newest["ip"]]
    assert world.env["desired_slaves"] == 1
    assert world.env["op"] is None


def test_remove_terminates_everything_and_keeps_the_record() -> None:
    world = new_world(num_slaves=2)
    world.run(5)
    world.start("REMOVE")
    world.run(5)
    assert not world.live()
    assert all(s["lifecycle"] == "DONE" for s in world.slots.values())
    assert world.env["active"] is False and world.env["status"] == "DONE"


def test_a_create_beyond_the_limit_waits_pending_without_a_deadline_then_starts_fresh() -> None:
    world = new_world(num_slaves=1)
    world.admission = Admission(False, limit=2, ahead=3)
    plan = world.step()
    assert plan.events == ["queued: 3 earlier creates waiting, at most 2 run at once"]
    assert world.env["status"] == "PENDING" and world.env["op"]["phase"] == "queued" and not world.slots
    # Hours in the queue are not a failure, and it says so once, not at every pass.
    world.now += timedelta(hours=3)
    assert world.step().events == [] and world.env["op"]["phase"] == "queued" and world.env["failed"] is None
    world.admission = Admission(True, limit=2)
    plan = world.step()
    assert plan.events[:3] == ["admitted: creating", "creating master VM tomcat-5-m", "MASTER_CREATE"]
    assert world.env["op"]["admitted"] is True and world.env["op"]["phase_since"] == world.now
    assert [s["role"] for s in world.slots.values()] == ["master"]
    world.run(5)
    assert world.env["policy_status"] == "ACTIVE" and world.env["op"] is None


def test_a_create_that_already_has_its_master_is_not_held_back() -> None:
    # Started before the limit existed (or by a pass whose admission write was lost): it runs, and counts.
    world = new_world(num_slaves=1)
    world.step()
    world.env["op"].pop("admitted", None)
    world.admission = Admission(False, limit=1, ahead=0)
    world.run(5)
    assert world.env["policy_status"] == "ACTIVE"
    assert all(p.env_set.get("status") != "PENDING" for p in world.plans)


def test_a_retired_slot_is_terminating_until_its_vm_is_gone() -> None:
    # The zone monitor and envmgr's resync find VMs still being terminated by `terminating`, not by reading every
    # slot that was ever made.
    world = new_world(num_slaves=1)
    world.run(5)
    world.start("REMOVE")
    world.step()  # retires every slot and asks for the terminations (the test world's zone does them at once)
    assert all(s["terminating"] is True and s["live"] is False for s in world.slots.values())
    world.step()
    assert all(s["terminating"] is False and s["gone"] is True for s in world.slots.values())


def test_recreate_master_readds_every_slave_to_the_new_master() -> None:
    world = new_world(num_slaves=2)
    world.run(5)
    old_master = world.live("master")[0]
    world.start("RECREATE", vmid=old_master["one_id"])
    world.run(6)
    master = world.live("master")[0]
    assert master["incarnation"] == 2 and master["one_id"] != old_master["one_id"]
    assert world.env["notify"]["master_incarnation"] == 2
    assert sorted(i["ip"] for i in world.env["notify"]["items"]) == sorted(s["ip"] for s in world.live("slave"))
    assert world.env["app_url"] == f"http://{master['ip']}:8080/app", "app_url follows the new master"
    assert world.env["op"] is None


def test_vms_gone_before_the_recreate_get_new_slots_not_their_old_ids() -> None:
    # A slave deleted behind Carina's back is DONE; once its slot is gone it is no longer loaded, and the
    # replacement must still get a new slot (not the id of the gone one, which would create nothing).
    world = new_world(num_slaves=2)
    world.run(5)
    master, lost = world.live("master")[0], next(s for s in world.live("slave") if s["index"] == 1)
    master.update(lifecycle="UNKNOWN")
    lost.update(lifecycle="DONE")
    world.start("RECREATE", vmid=master["one_id"])
    world.run(8)
    assert world.env["op"] is None and world.env["failed"] is None
    slaves = sorted(world.live("slave"), key=lambda s: s["index"])
    assert [(s["index"], s["lifecycle"]) for s in slaves] == [(0, "RUNNING"), (1, "RUNNING")]
    assert slaves[1]["incarnation"] == 2 and world.slots[lost["_id"]]["gone"] is True
    # Again, with the master itself gone first: a third incarnation for each.
    world.live("master")[0].update(lifecycle="DONE")
    slaves[1].update(lifecycle="DONE")
    world.run(2)
    world.start("RECOVER")
    world.run(8)
    assert world.env["op"] is None
    assert world.live("master")[0]["incarnation"] == 3
    assert sorted(s["incarnation"] for s in world.live("slave")) == [1, 3]


def test_recover_replaces_failed_vms_and_finishes_the_create() -> None:
    world = new_world(num_slaves=1)
    world.boots = False
    world.run(3)
    master = world.live("master")[0]
    master.update(one_id=55, lifecycle="FAILED", error="BOOT_FAILURE")
    world.run(2)
    assert world.env["status"].startswith("MASTER_CREATE_FAIL")
    world.boots = True
    world.start("RECOVER")
    world.run(6)
    assert world.env["policy_status"] == "ACTIVE"
    assert world.live("master")[0]["incarnation"] == 2
    assert world.slots[master["_id"]]["live"] is False


@pytest.mark.parametrize("status", ["ACTIVE", "PASSIVE"])
def test_ready_is_promoted_by_failover_role(status: str) -> None:
    role = "passive" if status == "PASSIVE" else "active"
    world = new_world(num_slaves=0, availability_policy={"failover_role": role, "failover_group": "g"})
    world.run(4)
    assert world.env["policy_status"] == status


def published(world: World, kind: type) -> list[Any]:
    return [m for p in world.plans for m in p.publish if isinstance(m, kind)]


def test_with_the_scheduler_a_create_waits_for_capacity_and_charges_every_vm() -> None:
    world = new_world(num_slaves=2)
    world.sched = Scheduling(account_creates=True)
    world.grants = False
    world.run(3)
    assert not world.live(), "no VM before the scheduler grants capacity"
    assert world.jobs[7]["status"] == "READY"
    assert {m.reqid for m in published(world, PoolRequest)} == {7000, 7001, 7002}
    world.grants = True
    world.run(6)
    assert world.env["policy_status"] == "ACTIVE"
    assert sorted(s["reqid"] for s in world.live()) == [7000, 7001, 7002]


def test_scaleup_is_ready_until_granted_and_scaledown_releases_its_capacity() -> None:
    world = new_world(num_slaves=1)
    world.sched = Scheduling(account_creates=False)
    world.run(5)
    world.grants = False
    world.start("SCALEUP")
    world.run(3)
    jobid = world.env["op"]["jobid"]
    assert world.jobs[jobid]["status"] == "READY" and len(world.live("slave")) == 1
    world.grants = True
    world.run(5)
    new = next(s for s in world.live("slave") if s["index"] == 1)
    assert new["reqid"] == jobid * 1000 and world.jobs[jobid]["status"] == "DONE"
    world.start("SCALEDOWN")
    world.run(5)
    assert [m.reqid for m in published(world, PoolRelease)] == [jobid * 1000]


def test_reclaim_scales_down_the_slave_holding_the_reclaimed_capacity() -> None:
    world = new_world(num_slaves=2)
    world.sched = Scheduling(account_creates=True)
    world.run(8)
    held = {s["index"]: s["reqid"] for s in world.live("slave")}
    world.start("SCALEDOWN", reqid=held[0])
    world.run(5)
    assert [s["index"] for s in world.live("slave")] == [1]
    assert [m.reqid for m in published(world, PoolRelease)] == [held[0]]


def test_scaleup_without_capacity_fails_with_a_reason_after_the_grant_timeout() -> None:
    world = new_world(num_slaves=0)
    world.sched = Scheduling(account_creates=False)
    world.run(3)
    world.grants = False
    world.start("SCALEUP")
    world.run(20, timing=Timing(grant_timeout=10))
    assert world.env["status"] == "SLAVE_SCALEUP_FAIL:no capacity"
    assert published(world, PoolRelease), "the pending request is withdrawn"
