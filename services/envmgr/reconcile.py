"""The level-triggered core of envmgr: given an environment, its VM slots and the time, decide what to do next.

`plan_env()` is pure: no I/O, no clock of its own. The handlers (`services/envmgr/handlers/`) load the documents,
call it, write what it returns with compare-and-set, publish its commands, and call it again when anything changes
(a VM status, a guest report, a timer). Because every decision is recomputed from the stored state — never from
the message that woke us — a lost, duplicated or reordered message costs latency, never correctness, and a
crashed envmgr resumes exactly where the documents say it was (resume, don't fail).

Carina's workflow (seed 001, reference §1.7), made crash-safe and bounded:

    create:    master slot → VM RUNNING with an IP → wait master_setup_time → wait MASTER_INIT_DONE →
               slaves 0..N-1 (with %MASTER%, %SLAVE_INDEX%, %NUM_SLAVES%) RUNNING → master told `add` per slave
               (acknowledged) → app_url → READY → ACTIVE/PASSIVE
    scaleup:   one more slave → RUNNING → `add` → SLAVE_SCALEUP_SUCCESS
    scaledown: the newest slave (LIFO) → master told `delete` → drain → terminate
    remove:    terminate everything, keep the record (status DONE)
    recreate:  replace one VM: a master first (then every slave re-added to the new master), a slave by delete+add
    recover:   replace broken VMs and resume the failed operation from its phase

Every wait has a deadline (`Timing`) that ends the operation in an explicit failure with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from libs.common.auth import new_nonce
from libs.common.db import slot_ip
from libs.common.messages import EnvEvent, Message, PoolCancel, PoolRelease, PoolRequest, VmProvision, VmTerminate

Doc = dict[str, Any]

BROKEN = {"FAILED", "UNKNOWN", "MISSING", "DONE"}
GONE = {"DONE", "MISSING"}


@dataclass(frozen=True)
class Timing:
    """Deadlines and delays (seconds). Defaults are minutes, never forever (OneFlow #3433, #6832)."""

    vm_running_timeout: float = 600.0  # VM allocated → RUNNING with an IP
    master_init_timeout: float = 900.0  # end of master_setup_time → MASTER_INIT_DONE
    notify_timeout: float = 300.0  # master acknowledges `add`/`delete`
    terminate_timeout: float = 600.0  # VM terminated → DONE
    drain_seconds: float = 0.0  # after the master acknowledged `delete`, before terminating (Carina: 30)
    provision_retry: float = 60.0  # ask the provisioner again (it adopts, so this never duplicates a VM)
    grant_timeout: float = 600.0  # scheduler grant for a scale-up


@dataclass(frozen=True)
class Scheduling:
    """Whether the global scheduler arbitrates this environment's capacity (its service is in the global config)."""

    account_creates: bool = True  # Carina charged only scale-ups; we charge the initial VMs too (configurable)


@dataclass(frozen=True)
class Admission:
    """Whether a create that has not started yet may start now (the worker bounds the creates in flight)."""

    admitted: bool
    limit: int = 0  # creates in flight at most
    ahead: int = 0  # queued creates submitted before this one


@dataclass
class Plan:
    """What reconciling one environment decided; applied by the handler in this order:
    slot inserts (intent first) → environment compare-and-set → slot updates → job updates → publishes."""

    env_set: Doc = field(default_factory=dict)
    slot_inserts: list[Doc] = field(default_factory=list)
    slot_sets: dict[str, Doc] = field(default_factory=dict)
    job_sets: dict[int, Doc] = field(default_factory=dict)
    publish: list[Message] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    wake_at: datetime | None = None

    @property
    def writes(self) -> bool:
        return bool(self.env_set or self.slot_inserts or self.slot_sets or self.job_sets)

    def wake(self, when: datetime) -> None:
        if self.wake_at is None or when < self.wake_at:
            self.wake_at = when


# --- slot helpers ---------------------------------------------------------------------------------------------------


def slot_id(envid: int, role: str, index: int, incarnation: int) -> str:
    return f"{envid}:master:{incarnation}" if role == "master" else f"{envid}:slave:{index}:{incarnation}"


def vm_name(env: Doc, role: str, index: int, incarnation: int) -> str:
    """Deterministic VM name (Carina: <env>-m / <env>-s), unique per slot incarnation, used for adoption."""
    base = f"{env['name']}-{env['_id']}-" + ("m" if role == "master" else f"s{index}")
    return base if incarnation == 1 else f"{base}-r{incarnation}"


def is_up(slot: Doc) -> bool:
    """RUNNING in OpenNebula and its IP known (from the guest's report or OpenNebula's NIC)."""
    return slot.get("lifecycle") == "RUNNING" and slot_ip(slot) is not None


def app_status(slot: Doc) -> str:
    return str((slot.get("guest") or {}).get("status") or "")


def acked_seq(slot: Doc | None) -> int:
    return int(((slot or {}).get("guest") or {}).get("acked_seq") or 0)


class _Ctx:
    """Working state of one planning pass: the documents plus the plan being built."""

    def __init__(self, env: Doc, slots: list[Doc], now: datetime, timing: Timing, peers: dict[str, Doc],
                 sched: Scheduling | None, admission: Admission | None = None) -> None:
        self.env = env
        self.sched = sched
        self.admission = admission
        self.now = now
        self.timing = timing
        self.peers = peers
        self.plan = Plan()
        self.slots: dict[str, Doc] = {s["_id"]: dict(s) for s in slots}
        self.op: Doc | None = dict(env["op"]) if env.get("op") else None
        self.notify: Doc = dict(env.get("notify") or {"master_incarnation": 1, "seq": 0, "items": []})
        self.notify["items"] = list(self.notify.get("items") or [])
        self.status_changed = False

    # views ------------------------------------------------------------------------------------------------------

    def live(self, role: str | None = None) -> list[Doc]:
        return sorted((s for s in self.slots.values() if s.get("live") and (role is None or s["role"] == role)),
                      key=lambda s: (s["role"] != "master", s["index"], s["incarnation"]))

    def master(self) -> Doc | None:
        inc = int(self.env.get("master_incarnation", 1))
        return self.slots.get(slot_id(self.env["_id"], "master", 0, inc))

    def slave(self, index: int) -> Doc | None:
        for s in self.live("slave"):
            if s["index"] == index:
                return s
        return None

    # writes -----------------------------------------------------------------------------------------------------

    def set_env(self, **fields: Any) -> None:
        self.plan.env_set.update(fields)
        self.env = {**self.env, **fields}

    def set_slot(self, sid: str, **fields: Any) -> None:
        self.plan.slot_sets.setdefault(sid, {}).update(fields)
        self.slots[sid] = {**self.slots[sid], **fields}

    def set_op(self, **fields: Any) -> None:
        assert self.op is not None
        self.op.update(fields)
        self.set_env(op=dict(self.op))

    def phase(self, name: str, **fields: Any) -> None:
        self.set_op(phase=name, phase_since=self.now, **fields)

    def status(self, status: str, message: str | None = None) -> None:
        self.set_env(status=status, status_at=self.now)
        self.event(message or status)

    def event(self, message: str) -> None:
        self.plan.events.append(message)

    def deadline(self, seconds: float) -> bool:
        """True if the current phase has run longer than `seconds` (and schedules a wake-up for that moment)."""
        assert self.op is not None
        since: datetime = self.op.get("phase_since") or self.now
        due = since + timedelta(seconds=seconds)
        if self.now >= due:
            return True
        self.plan.wake(due)
        return False

    # slots ------------------------------------------------------------------------------------------------------

    def ensure_slot(self, role: str, index: int, incarnation: int, params: Doc, reqid: int | None = None) -> Doc:
        sid = slot_id(self.env["_id"], role, index, incarnation)
        existing = self.slots.get(sid)
        if existing is not None:
            return existing
        spec = self.env["spec"][role] or self.env["spec"]["master"]
        doc = {
            "_id": sid,
            "version": 0,
            "envid": self.env["_id"],
            "service": self.env["service"],
            "env_name": self.env["name"],
            "role": role,
            "index": index,
            "incarnation": incarnation,
            "name": vm_name(self.env, role, index, incarnation),
            "zone": self.env["zone"],
            "endpoint": self.env["endpoint"],
            "cpu_alloc": spec["cpu"],
            "memory_alloc": spec["memory"],
            "params": params,
            "reqid": reqid,
            "nonce": new_nonce(),
            "live": True,
            "one_id": None,
            "lifecycle": "REQUESTED",
            "provision_attempt": 1,
            "provision_requested_at": self.now,
            "created_at": self.now,
        }
        self.plan.slot_inserts.append(doc)
        self.slots[sid] = doc
        self.event(f"creating {role}{'' if role == 'master' else ' ' + str(index)} VM {doc['name']}")
        return doc

    def next_slave_incarnation(self, index: int) -> int:
        """A fresh incarnation for slave `index`. Slots already gone are not loaded, so the environment keeps the
        highest number handed out: reusing one would name an existing slot document and create nothing."""
        handed_out = dict(self.env.get("slave_incarnations") or {})
        loaded = [int(s["incarnation"]) for s in self.slots.values() if s["role"] == "slave" and s["index"] == index]
        inc = 1 + max([int(handed_out.get(str(index), 0)), *loaded])
        handed_out[str(index)] = inc
        self.set_env(slave_incarnations=handed_out)
        return inc

    def retire(self, slot: Doc, why: str) -> None:
        """Stop wanting a VM: it will be terminated (or confirmed absent) by the provisioner."""
        if slot.get("live"):
            self.set_slot(slot["_id"], live=False, terminating=True, retired_at=self.now, retired_why=why,
                          terminate_attempt=1, terminate_requested_at=self.now)
            self.event(f"terminating {slot['role']} VM {slot['name']} ({why})")

    def drive_slots(self) -> None:
        """(Re)send the commands every pending slot needs. Same attempt → same message id → stored once."""
        for s in self.slots.values():
            if s.get("live"):
                if s.get("one_id") is None and s.get("lifecycle") in ("REQUESTED", None):
                    requested = s.get("provision_requested_at") or self.now
                    attempt = int(s.get("provision_attempt") or 1)
                    if self.now - requested >= timedelta(seconds=self.timing.provision_retry):
                        attempt += 1
                        self.set_slot(s["_id"], provision_attempt=attempt, provision_requested_at=self.now)
                    else:
                        self.plan.wake(requested + timedelta(seconds=self.timing.provision_retry))
                    self.plan.publish.append(VmProvision(envid=self.env["_id"], slot=s["_id"],
                                                         incarnation=s["incarnation"], attempt=attempt))
            elif s.get("lifecycle") not in GONE:
                requested = s.get("terminate_requested_at") or self.now
                attempt = int(s.get("terminate_attempt") or 1)
                if self.now - requested >= timedelta(seconds=self.timing.provision_retry):
                    attempt += 1
                    self.set_slot(s["_id"], terminate_attempt=attempt, terminate_requested_at=self.now)
                else:
                    self.plan.wake(requested + timedelta(seconds=self.timing.provision_retry))
                self.plan.publish.append(VmTerminate(envid=self.env["_id"], slot=s["_id"],
                                                     incarnation=s["incarnation"], attempt=attempt))
            elif not s.get("gone"):
                self.set_slot(s["_id"], gone=True, gone_at=self.now, terminating=False)

    # notifications to the master ---------------------------------------------------------------------------------

    def notified(self, op: str, slot: Doc) -> Doc | None:
        for item in self.notify["items"]:
            if item["op"] == op and item["slot"] == slot["_id"]:
                return dict(item)
        return None

    def notify_master(self, op: str, slot: Doc) -> Doc:
        item = self.notified(op, slot)
        if item is not None:
            return item
        seq = int(self.notify.get("seq", 0)) + 1
        data = str(self.env["spec"]["config"].get("slavedata", "")) if op == "add" else ""
        item = {"seq": seq, "op": op, "ip": slot_ip(slot) or "", "data": data, "slot": slot["_id"], "at": self.now}
        self.notify["seq"] = seq
        self.notify["items"] = [*self.notify["items"], item]
        self.set_env(notify=dict(self.notify))
        self.event(f"master told: {op} {item['ip']} {data}".rstrip())
        return item

    def master_acked(self, seq: int) -> bool:
        return acked_seq(self.master()) >= seq

    # capacity (global scheduler) ---------------------------------------------------------------------------------

    def request_capacity(self, reqid: int, role: str, kind: str) -> None:
        spec = self.env["spec"][role] or self.env["spec"]["master"]
        self.plan.publish.append(PoolRequest(reqid=reqid, service=self.env["service"], envid=self.env["_id"],
                                             pool=self.env["endpoint"], zone=self.env["zone"],
                                             vcpus=float(spec["cpu"]), memory=int(spec["memory"]),
                                             kind=kind))

    def granted(self, reqid: int) -> bool:
        return str(reqid) in (self.env.get("grants") or {})

    def release_capacity(self, reqid: int | None) -> None:
        if reqid is not None and self.sched is not None:
            self.plan.publish.append(PoolRelease(reqid=int(reqid), service=self.env["service"],
                                                 envid=self.env["_id"]))
            grants = dict(self.env.get("grants") or {})
            if grants.pop(str(reqid), None) is not None:
                self.set_env(grants=grants)

    # operation outcome -------------------------------------------------------------------------------------------

    def fail(self, status: str, reason: str) -> None:
        assert self.op is not None
        op = self.op
        self.set_env(op=None, failed={"jobid": op["jobid"], "type": op["type"], "phase": op.get("phase"),
                                      "reason": reason, "at": self.now},
                     status=status, status_at=self.now, info=reason)
        self.plan.job_sets[op["jobid"]] = {"status": "FAIL", "end": self.now, "reason": reason}
        self.op = None
        self.event(f"{op['type']} failed: {reason}")

    def finish(self, message: str) -> None:
        assert self.op is not None
        op = self.op
        self.set_env(op=None, failed=None)
        self.plan.job_sets[op["jobid"]] = {"status": "DONE", "end": self.now}
        self.op = None
        self.event(message)


# --- the phases -----------------------------------------------------------------------------------------------------


def _phase_waiting(c: _Ctx) -> None:
    """A group member waits for the member before it (Carina's PENDING job with `predjobid`)."""
    assert c.op is not None
    before = c.peers.get("__predecessor__")
    if before is None:
        c.fail("ABORT", "the group member this environment waits for no longer exists")
        return
    if before.get("failed") is not None or not before.get("active", True):
        _abort(c, f"group member '{before['name']}' ({before['_id']}) failed")
        return
    if before.get("op") is None and before.get("policy_status") in ("READY", "ACTIVE", "PASSIVE"):
        extra = {}
        for dep in c.env.get("group_dependencies") or []:
            peer = c.peers.get(dep)
            extra[f"{dep.upper()}_URL"] = (peer or {}).get("app_url") or ""
        c.set_env(context_extra=extra, status="INIT", status_at=c.now)
        c.plan.job_sets[c.op["jobid"]] = {"status": "RUNNING", "start": c.now}
        c.phase("master")
        c.event("group predecessor ready; creating" + (f" with {', '.join(extra)}" if extra else ""))


def _abort(c: _Ctx, reason: str) -> None:
    assert c.op is not None
    op = c.op
    c.set_env(op=None, failed={"jobid": op["jobid"], "type": op["type"], "phase": "waiting", "reason": reason,
                               "at": c.now}, status="ABORT", status_at=c.now, info=reason)
    c.plan.job_sets[op["jobid"]] = {"status": "ABORT", "end": c.now, "reason": reason}
    c.op = None
    c.event(f"aborted: {reason}")


def _inherited_reqid(c: _Ctx, role: str, index: int) -> int | None:
    """Capacity granted to an earlier incarnation of the same slot stays with the slot (recreate, recover)."""
    held = [int(s["reqid"]) for s in c.slots.values()
            if s["role"] == role and s["index"] == index and s.get("reqid") is not None
            and s.get("retired_why") != "scale down"]
    return held[-1] if held else None


def _create_reqids(c: _Ctx) -> dict[str, int]:
    """Deterministic request ids of a create's VMs: job 52 → 52000 (master), 52001.. (slaves)."""
    assert c.op is not None
    base = int(c.op["jobid"]) * 1000
    return {"master": base, **{f"slave:{i}": base + 1 + i for i in range(int(c.env.get("desired_slaves", 0)))}}


def _phase_grant_create(c: _Ctx) -> None:
    """Creates are charged to pools and quotas too (unlike Carina): wait until every VM's capacity is granted."""
    assert c.op is not None
    reqids = _create_reqids(c)
    missing = [r for r in reqids.values() if not c.granted(r)]
    if not missing:
        c.plan.job_sets[c.op["jobid"]] = {"status": "RUNNING", "start": c.now}
        c.phase("master", capacity_granted=True)
        _phase_master(c)
        return
    for key, reqid in reqids.items():
        if reqid in missing:
            c.request_capacity(reqid, key.split(":")[0], "create")
    if c.deadline(c.timing.grant_timeout):
        for reqid in reqids.values():
            c.release_capacity(reqid)
        c.fail("MASTER_CREATE_FAIL:no capacity",
               f"the global scheduler granted no capacity within {c.timing.grant_timeout:g} s "
               f"({len(missing)} of {len(reqids)} VMs waiting)")


def _wait_for_admission(c: _Ctx) -> bool:
    """A create not started yet waits (status PENDING, no deadline running) while too many creates are in flight;
    True while it must wait. Admitted, its phase clock restarts: the time queued does not count against deadlines."""
    assert c.op is not None
    if c.op["type"] != "CREATE" or c.op.get("admitted") or c.admission is None:
        return False
    if c.master() is not None:
        c.set_op(admitted=True)  # started before admission existed, or by a pass that lost its write: it runs
        return False
    if c.admission.admitted:
        c.phase("master", admitted=True)
        if c.op.get("queued_at") is not None:
            c.event("admitted: creating")
        return False
    if c.op.get("phase") != "queued":
        c.phase("queued", queued_at=c.now)
        c.status("PENDING", f"queued: {c.admission.ahead} earlier creates waiting, "
                            f"at most {c.admission.limit} run at once")
    return True


def _phase_master(c: _Ctx) -> None:
    assert c.op is not None
    if _wait_for_admission(c):
        return
    if (c.sched is not None and c.sched.account_creates and c.op["type"] == "CREATE"
            and not c.op.get("capacity_granted") and c.env.get("policy_status") == "INIT"):
        if c.op.get("phase") != "grant_create":
            c.plan.job_sets[c.op["jobid"]] = {"status": "READY"}
            c.phase("grant_create")
            c.event("waiting for the global scheduler to grant capacity")
        _phase_grant_create(c)
        return
    inc = int(c.env.get("master_incarnation", 1))
    reqid = _inherited_reqid(c, "master", 0)
    if reqid is None and c.op.get("capacity_granted"):
        reqid = _create_reqids(c)["master"]
    master = c.ensure_slot("master", 0, inc, {}, reqid)
    if c.env.get("status") in ("INIT", "PENDING"):
        c.status("MASTER_CREATE", "MASTER_CREATE")
    if master.get("lifecycle") in BROKEN:
        error = master.get("error") or f"master VM is {master.get('lifecycle')}"
        c.fail(f"MASTER_CREATE_FAIL:{error}", f"master VM {master['name']}: {error}")
        return
    if is_up(master):
        if app_status(master) == "MASTER_INIT_DONE":
            c.phase("slaves")
            return
        setup = float(c.env["spec"]["config"].get("master_setup_time", 0) or 0)
        c.phase("master_setup", setup_until=c.now + timedelta(seconds=setup))
        c.event(f"master running at {slot_ip(master)}; waiting master_setup_time ({setup:g} s)")
        return
    if c.deadline(c.timing.vm_running_timeout):
        state = master.get("lifecycle") or "not created"
        c.fail("MASTER_CREATE_FAIL:timeout",
               f"master VM not RUNNING with an IP after {c.timing.vm_running_timeout:g} s (state {state})")


def _phase_master_setup(c: _Ctx) -> None:
    assert c.op is not None
    master = c.master()
    if master is None or master.get("lifecycle") in BROKEN:
        c.fail("MASTER_CREATE_FAIL:master lost", "the master VM disappeared during master_setup_time")
        return
    until: datetime = c.op.get("setup_until") or c.now
    if c.now >= until:
        c.phase("master_init")
        _phase_master_init(c)
    else:
        c.plan.wake(until)


def _phase_master_init(c: _Ctx) -> None:
    master = c.master()
    if master is None or master.get("lifecycle") in BROKEN:
        c.fail("MASTER_CREATE_FAIL:master lost", "the master VM disappeared while initialising")
        return
    status = app_status(master)
    if status == "MASTER_INIT_DONE":
        c.status("MASTER_INIT_DONE", "master initialised (MASTER_INIT_DONE)")
        c.phase("slaves")
        _phase_slaves(c)
    elif status.startswith("MASTER_INIT_FAIL"):
        c.fail(status, f"the master reported {status}")
    elif c.deadline(c.timing.master_init_timeout):
        c.fail("MASTER_INIT_FAIL:timeout",
               f"no MASTER_INIT_DONE from the master within {c.timing.master_init_timeout:g} s")


def _phase_slaves(c: _Ctx) -> None:
    """Converge slaves to `desired_slaves`, each RUNNING and added to the current master (acknowledged)."""
    assert c.op is not None
    master = c.master()
    if master is None or not is_up(master):
        c.fail("MASTER_CREATE_FAIL:master lost", "the master VM is no longer running")
        return
    desired = int(c.env.get("desired_slaves", 0))
    master_ip = slot_ip(master) or ""
    waiting: list[str] = []
    pending_seq = 0
    for index in range(desired):
        slave = c.slave(index)
        if slave is None:
            inc = c.next_slave_incarnation(index)
            params = {"MASTER": master_ip, "SLAVE_INDEX": str(index), "NUM_SLAVES": str(desired)}
            reqid = _inherited_reqid(c, "slave", index)
            if reqid is None and c.op.get("grant_reqid") is not None and index == desired - 1:
                reqid = int(c.op["grant_reqid"])
            elif reqid is None and c.op.get("capacity_granted"):
                reqid = _create_reqids(c).get(f"slave:{index}")
            slave = c.ensure_slot("slave", index, inc, params, reqid)
        if slave.get("lifecycle") in BROKEN:
            error = slave.get("error") or f"slave VM is {slave.get('lifecycle')}"
            c.fail(f"SLAVE_CREATE_FAIL:{error}", f"slave {index} VM {slave['name']}: {error}")
            return
        if not is_up(slave):
            waiting.append(f"slave {index} {slave.get('lifecycle', '').lower()}")
            continue
        item = c.notify_master("add", slave)
        if not c.master_acked(item["seq"]):
            pending_seq = max(pending_seq, item["seq"])
    if not waiting and not pending_seq:
        _complete(c)
        return
    limit = c.timing.vm_running_timeout + c.timing.notify_timeout
    if c.deadline(limit):
        what = ", ".join(waiting) or f"master acknowledgement of notification {pending_seq}"
        c.fail("SLAVE_CREATE_FAIL:timeout", f"still waiting after {limit:g} s for: {what}")


def _complete(c: _Ctx) -> None:
    """Every VM is up and known to the master: finish the operation."""
    assert c.op is not None
    op_type = c.op["type"]
    if op_type in ("CREATE", "RECOVER") and c.env.get("policy_status") == "INIT":
        master_ip = slot_ip(c.master() or {}) or ""
        app_url = str(c.env["spec"]["config"].get("app_url", "")).replace("%MASTER%", master_ip) or None
        c.set_env(app_url=app_url, policy_status="READY", ready_at=c.now)
        c.finish(f"environment READY{(' at ' + app_url) if app_url else ''}")
        return
    if op_type == "SCALEUP":
        c.status("SLAVE_SCALEUP_SUCCESS", "slave added (SLAVE_SCALEUP_SUCCESS)")
    # A replaced master has a new IP: the app_url follows it.
    current_ip = slot_ip(c.master() or {})
    template = str(c.env["spec"]["config"].get("app_url", ""))
    if current_ip and template and c.env.get("app_url") != template.replace("%MASTER%", current_ip):
        c.set_env(app_url=template.replace("%MASTER%", current_ip))
        c.event(f"app_url is now {c.env['app_url']}")
    c.finish(f"{op_type} done")


def _phase_start(c: _Ctx) -> None:
    """First step of operations started after creation."""
    assert c.op is not None
    op_type = c.op["type"]
    params = c.op.get("params") or {}
    if op_type == "SCALEUP":
        if c.sched is not None:
            # Carina: a scale-up is a READY job until the global scheduler grants its capacity.
            reqid = int(c.op["jobid"]) * 1000
            c.plan.job_sets[c.op["jobid"]] = {"status": "READY"}
            c.phase("grant", reqid=reqid)
            c.event(f"asking the global scheduler for one slave (request {reqid})")
            _phase_grant(c)
            return
        c.set_env(desired_slaves=int(c.env.get("desired_slaves", 0)) + 1)
        c.phase("slaves")
        _phase_slaves(c)
    elif op_type == "SCALEDOWN":
        slaves = c.live("slave")
        if not slaves:
            c.fail(c.env.get("status", ""), "no slave left to remove")
            return
        reclaimed = params.get("reqid")
        # A reclaim names the capacity to give back; otherwise the newest slave goes (LIFO, as Carina).
        victim = next((s for s in slaves if reclaimed is not None and s.get("reqid") == reclaimed),
                      max(slaves, key=lambda s: (s["index"], s["incarnation"])))
        c.set_env(desired_slaves=max(0, int(c.env.get("desired_slaves", 0)) - 1))
        master = c.master()
        if master is not None and is_up(master) and c.notified("add", victim) is not None:
            item = c.notify_master("delete", victim)
            c.phase("notify_delete", victim=victim["_id"], seq=item["seq"])
        else:
            c.phase("terminate", victim=victim["_id"])
            c.retire(victim, "scale down")
    elif op_type == "REMOVE":
        for slot in c.live():
            c.retire(slot, "environment removed")
        c.status("REMOVING", "removing every VM")
        c.phase("terminate", victim=None)
    elif op_type in ("RECREATE", "RECOVER"):
        _start_replace(c, params)
    else:
        c.fail(c.env.get("status", ""), f"unsupported operation {op_type}")


def _start_replace(c: _Ctx, params: Doc) -> None:
    """RECREATE one VM, or RECOVER: replace every broken VM, then resume (master first, slaves re-added)."""
    assert c.op is not None
    failed = c.env.get("failed") or {}
    if c.op["type"] == "RECOVER" and failed.get("type") == "REMOVE":
        for slot in c.live():
            c.retire(slot, "removal resumed")
        c.set_env(failed=None)
        c.op["type"] = "REMOVE"
        c.phase("terminate", victim=None)
        return
    targets: list[Doc] = []
    if c.op["type"] == "RECREATE":
        target = next((s for s in c.live() if (params.get("vmid") is not None and s.get("one_id") == params["vmid"])
                       or s["_id"] == params.get("slot")), None)
        if target is None:
            c.fail(c.env.get("status", ""), f"no VM {params.get('vmid', params.get('slot'))} in this environment")
            return
        # Other broken VMs are replaced in the same operation: waiting on them would only fail it.
        targets = [target] + [s for s in c.live() if s is not target and s.get("lifecycle") in BROKEN]
    else:
        targets = [s for s in c.live() if s.get("lifecycle") in BROKEN]
        c.set_env(failed=None)
    master = c.master()
    master_replaced = master is None or any(t["role"] == "master" for t in targets)
    for target in targets:
        if target["role"] == "slave" and master is not None and is_up(master) and not master_replaced \
                and c.notified("add", target) is not None:
            c.notify_master("delete", target)
        c.retire(target, "recreate" if c.op["type"] == "RECREATE" else "recover")
    if master_replaced:
        # Always a new number: the old master's slot may be gone already (deleted behind Carina's back).
        inc = int(c.env.get("master_incarnation", 1)) + 1
        c.notify = {"master_incarnation": inc, "seq": 0, "items": []}
        c.set_env(master_incarnation=inc, notify=dict(c.notify))
        c.phase("master")
        _phase_master(c)
    elif master is None or not is_up(master) or (
            c.env.get("policy_status") == "INIT" and app_status(master) != "MASTER_INIT_DONE"):
        # The master is still coming up (e.g. a create that timed out waiting for it): wait for it again.
        c.phase("master")
        _phase_master(c)
    else:
        c.phase("slaves")
        _phase_slaves(c)


def _phase_grant(c: _Ctx) -> None:
    assert c.op is not None
    reqid = int(c.op["reqid"])
    if c.granted(reqid):
        c.plan.job_sets[c.op["jobid"]] = {"status": "RUNNING", "start": c.now}
        c.set_env(desired_slaves=int(c.env.get("desired_slaves", 0)) + 1)
        c.phase("slaves", grant_reqid=reqid)
        c.event(f"capacity granted (request {reqid})")
        _phase_slaves(c)
        return
    c.request_capacity(reqid, "slave", "scaleup")
    if c.deadline(c.timing.grant_timeout):
        c.release_capacity(reqid)
        c.fail("SLAVE_SCALEUP_FAIL:no capacity",
               f"the global scheduler granted no capacity within {c.timing.grant_timeout:g} s")


def _phase_notify_delete(c: _Ctx) -> None:
    assert c.op is not None
    victim = c.slots.get(c.op["victim"])
    if victim is None:
        c.finish("SCALEDOWN done")
        return
    master = c.master()
    if master is None or master.get("lifecycle") in BROKEN or c.master_acked(int(c.op["seq"])):
        c.phase("drain", drain_until=c.now + timedelta(seconds=c.timing.drain_seconds))
        _phase_drain(c)
    elif c.deadline(c.timing.notify_timeout):
        c.fail(c.env.get("status", ""),
               f"the master did not acknowledge 'delete {slot_ip(victim)}' within {c.timing.notify_timeout:g} s")


def _phase_drain(c: _Ctx) -> None:
    assert c.op is not None
    until: datetime = c.op.get("drain_until") or c.now
    if c.now < until:
        c.plan.wake(until)
        return
    victim = c.slots[c.op["victim"]]
    c.retire(victim, "scale down")
    c.phase("terminate")
    _phase_terminate(c)


def _phase_terminate(c: _Ctx) -> None:
    assert c.op is not None
    victim_id = c.op.get("victim")
    pending = [s for s in c.slots.values() if not s.get("live") and s.get("lifecycle") not in GONE
               and (victim_id is None or s["_id"] == victim_id)]
    if not pending:
        if c.op["type"] == "REMOVE":
            c.set_env(active=False, policy_status="DONE", status="DONE", status_at=c.now, removed_at=c.now)
            if c.sched is not None or c.env.get("grants"):
                c.plan.publish.append(PoolCancel(service=c.env["service"], envid=c.env["_id"]))
        elif victim_id is not None:
            c.release_capacity(c.slots[victim_id].get("reqid"))
        c.finish(f"{c.op['type']} done")
        return
    if c.deadline(c.timing.terminate_timeout):
        names = ", ".join(s["name"] for s in pending)
        c.fail(c.env.get("status", ""), f"VMs not terminated after {c.timing.terminate_timeout:g} s: {names}")


PHASES = {
    "waiting": _phase_waiting,
    "grant_create": _phase_grant_create,
    "grant": _phase_grant,
    "queued": _phase_master,  # a create waiting for admission
    "master": _phase_master,
    "master_setup": _phase_master_setup,
    "master_init": _phase_master_init,
    "slaves": _phase_slaves,
    "start": _phase_start,
    "notify_delete": _phase_notify_delete,
    "drain": _phase_drain,
    "terminate": _phase_terminate,
}


def _mirror_app_status(c: _Ctx) -> None:
    """Carina shows the last status any VM reported as the environment's deploy status (D_STATUS)."""
    if c.env.get("failed") is not None or not c.env.get("active", True):
        return
    latest_at = c.env.get("status_at")
    latest: tuple[datetime, str] | None = None
    for s in c.live():
        guest = s.get("guest") or {}
        at = guest.get("status_at")
        if guest.get("status") and at is not None and (latest_at is None or at > latest_at):
            if latest is None or at > latest[0]:
                latest = (at, str(guest["status"]))
    if latest is not None:
        c.set_env(status=latest[1], status_at=latest[0])


def plan_env(env: Doc, slots: list[Doc], now: datetime, timing: Timing, peers: dict[str, Doc] | None = None,
             sched: Scheduling | None = None, admission: Admission | None = None) -> Plan:
    """Decide the next steps for one environment.

    Args:
        env: the environment document.
        slots: its slot documents that are not yet gone.
        now: the current time (injected for tests).
        timing: deadlines.
        peers: for group members, the other members by name and the predecessor under `__predecessor__`.
        sched: how the global scheduler arbitrates this environment's capacity (None: it does not).
        admission: for a create that has not started, whether it may start now (None: no limit).

    Returns:
        The plan to apply (possibly empty).
    """
    c = _Ctx(env, slots, now, timing, peers or {}, sched, admission)
    _mirror_app_status(c)
    # Phases may complete within one pass (e.g. master already initialised): run until the phase stops moving.
    for _ in range(8):
        if c.op is None:
            break
        phase = c.op.get("phase", "start")
        PHASES.get(phase, _phase_start)(c)
        if c.op is None or c.op.get("phase") == phase:
            break
    if c.op is None and c.env.get("policy_status") == "READY" and c.env.get("active", True):
        role = ((c.env["spec"]["config"].get("availability_policy") or {}).get("failover_role") or "active")
        promoted = "PASSIVE" if role == "passive" else "ACTIVE"
        c.set_env(policy_status=promoted)
        c.event(f"policy status {promoted}")
    c.drive_slots()
    if c.plan.env_set:
        c.plan.env_set["updated_at"] = now
    return c.plan


def env_event(env: Doc, message: str, job_status: str | None = None) -> EnvEvent:
    """The watcher event for a change of `env` (after the write)."""
    op = env.get("op") or {}
    return EnvEvent(envid=env["_id"], seq=int(env.get("version", 0)), status=str(env.get("status", "")),
                    policy_status=str(env.get("policy_status", "")), message=message[:500],
                    jobid=op.get("jobid") or (env.get("failed") or {}).get("jobid"), job_status=job_status,
                    app_url=env.get("app_url"), notify_seq=int((env.get("notify") or {}).get("seq") or 0))
