"""Carina's JSON shapes (oneenvd and oneenvd-gs), built from the same documents as the v1 API (pure functions).

Existing Carina scripts parse these answers, so the keys and value types follow Carina's: ids are strings (they came
out of MySQL as text), times are Ruby's `Time#to_s` ("2024-05-01 09:30:00 +0000", 0 when unset), the global
scheduler's objects carry `@`-prefixed keys (oneenvd-gs dumped Ruby instance variables). What Carina did not have
(zones, failure reasons) stays in the v1 API.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.gateway import schemas
from services.gateway.views import Doc, as_dict, epoch_time, vm_sort_key, vm_status

NO_GROUP = "-1"  # Carina's groupid of an environment outside any group


def ruby_time(value: Any) -> str | int:
    """A timestamp as Ruby's `Time#to_s` printed it; 0 (Carina's "not yet") when missing."""
    if isinstance(value, datetime):
        when = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000")
    if isinstance(value, int | float) and not isinstance(value, bool):
        converted = epoch_time(value)
        return ruby_time(converted) if converted is not None else 0
    return 0


def _text_id(value: Any) -> str:
    return str(value) if value is not None else ""


def _cpu(slot: Doc) -> float | int:
    value = slot.get("cpu")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return -1  # Carina's value before the first `onevm list`


def config_row(name: str, env: Doc) -> dict[str, Any]:
    """One entry of `GET /configs`."""
    group = env.get("type") == "group"
    return {"endpoint": None if group else env.get("endpoint"), "name": name,
            "desc": str(env.get("description", "")), "type": str(env.get("type") or "compute")}


def config_rows(doc: Doc) -> list[dict[str, Any]]:
    """`GET /configs`: one entry per environment or group of the stored configuration."""
    return [config_row(name, as_dict(env)) for name, env in sorted(as_dict(doc.get("environments")).items())]


def vm(slot: Doc) -> dict[str, Any]:
    """One VM of `GET /vms` and `GET /envs/<id>/vms`."""
    guest = as_dict(slot.get("guest"))
    one_id = slot.get("one_id")
    return {"vmid": _text_id(one_id), "envid": _text_id(slot.get("envid")),
            "hostname": guest.get("hostname") or slot.get("name"), "ipaddress": guest.get("ip") or slot.get("ip"),
            "status": vm_status(slot), "cpu": _cpu(slot)}


def vms(slots: list[Doc]) -> list[dict[str, Any]]:
    """Live VMs, by environment, master first."""
    live = [s for s in slots if s.get("live")]
    return [vm(s) for s in sorted(live, key=lambda s: (int(s.get("envid") or 0), *vm_sort_key(s)))]


def cpu_metric(slots: list[Doc]) -> str:
    """Carina's `metrics` text: the average CPU of the environment's live VMs, `avgcpu[N]`."""
    values = [float(s["cpu"]) for s in slots if s.get("live") and isinstance(s.get("cpu"), int | float)
              and not isinstance(s.get("cpu"), bool)]
    average = round(sum(values) / len(values)) if values else 0
    return f"avgcpu[{average}]"


def env(env_doc: Doc, slots: list[Doc], requests: list[Doc]) -> dict[str, Any]:
    """One environment of `GET /envs`.

    Args:
        env_doc: the environment document.
        slots: its slots (live ones are counted).
        requests: its capacity requests in the scheduler's ledger (ALLOCATED ones are its `gsTokens`).
    """
    live = [s for s in slots if s.get("live")]
    tokens = sorted(int(r["_id"]) for r in requests if r.get("status") == "ALLOCATED")
    groupid = env_doc.get("groupid")
    return {
        "envid": str(env_doc["_id"]),
        "name": str(env_doc.get("name", "")),
        "status": str(env_doc.get("status") or "INIT"),
        "policy_status": str(env_doc.get("policy_status") or "INIT"),
        "url": env_doc.get("app_url") or "",
        "numVMs": len(live),
        "metrics": cpu_metric(live),
        "gsTokens": [str(t) for t in tokens],
        "gsOutStandingReqs": sum(1 for r in requests if r.get("status") == "PEND"),
        "info": env_doc.get("info") or "",
        "groupid": str(groupid) if groupid is not None else NO_GROUP,
    }


def job(job_doc: Doc) -> dict[str, Any]:
    """One job of `GET /jobs`. Carina's `pid` (the svccontroller process) has no equivalent: always "-1"."""
    predjob = job_doc.get("predjob")
    groupid = job_doc.get("groupid")
    return {
        "jobid": str(job_doc["_id"]),
        "name": str(job_doc.get("name", "")),
        "pid": "-1",
        "envid": _text_id(job_doc.get("envid")),
        "type": str(job_doc.get("type", "")),
        "predjob": _text_id(predjob),
        "group": job_doc.get("group") or "",
        "groupid": _text_id(groupid),
        "submit": ruby_time(job_doc.get("submit")),
        "start": ruby_time(job_doc.get("start")),
        "end": ruby_time(job_doc.get("end")),
        "dependstr": "",
        "status": str(job_doc.get("status", "")),
        "priority": 0,
    }


def pool(view: schemas.Pool) -> dict[str, Any]:
    """One pool of oneenvd-gs's `GET /pools`."""
    full = view.available_vcpus <= 0 or view.available_memory <= 0
    return {"@name": view.name, "@zone": view.zone, "@vcpus": _whole(view.vcpus), "@mem": view.memory,
            "@availvcpus": _whole(view.available_vcpus), "@availmem": view.available_memory,
            "@priclass": view.service_class, "@status": "FULL" if full else "AVAILABLE"}


def service(view: schemas.SchedulerService, host: str, port: int) -> dict[str, Any]:
    """One service of oneenvd-gs's `GET /services`; its clients are the gateway, once per zone it is configured in."""
    clients = [{"@name": view.name, "@zone": zone, "@host": host, "@port": port} for zone in view.zones]
    return {"@name": view.name, "@zone": view.zones[0] if len(view.zones) == 1 else None,
            "@maxcpus": _whole(view.max_vcpus), "@maxmemory": view.max_memory, "@priclass": view.service_class,
            "@clientList": clients, "@vcpusallocated": _whole(view.allocated_vcpus),
            "@memallocated": view.allocated_memory}


def request(view: schemas.CapacityRequest) -> dict[str, Any]:
    """One request of oneenvd-gs's `GET /requests`."""
    return {"@type": "ALLOCATE", "@zone": view.zone, "@submittime": ruby_time(view.submitted_at),
            "@vcpus": _whole(view.vcpus), "@mem": view.memory, "@env": view.env, "@envid": str(view.envid),
            "@service": view.service, "@reqid": str(view.reqid), "@status": view.status,
            "@pool": view.pool or view.target_pool}


def _whole(value: float) -> float | int:
    """2.0 as 2 (Carina's numbers were integers); fractional vCPUs stay as they are."""
    return int(value) if float(value).is_integer() else value


def env_log(env_doc: Doc, jobs: list[Doc], decisions: list[Doc], limit: int = 500) -> str:
    """`GET /logs/env.log.<envid>`: the environment's history as text lines, oldest first (the last `limit`).

    Carina's file held svccontroller's output; ours is the record of what happened: each job's submission, start and
    end (with its failure reason), each recorded policy decision, and the environment's current state.
    """
    events: list[tuple[datetime, int, str]] = []

    def add(when: Any, order: int, text: str) -> None:
        if isinstance(when, datetime):
            events.append((when if when.tzinfo is not None else when.replace(tzinfo=UTC), order, text))

    envid = env_doc["_id"]
    add(env_doc.get("created_at"), 0, f"environment {envid} ({env_doc.get('name', '')}) recorded")
    for j in jobs:
        label = f"job {j['_id']} {j.get('type', '')}"
        add(j.get("submit"), 1, f"{label} submitted by {j.get('requested_by') or 'api'}")
        add(j.get("start"), 2, f"{label} started")
        reason = f": {j['reason']}" if j.get("reason") else ""
        if j.get("status") in ("DONE", "FAIL", "ABORT"):
            add(j.get("end") or j.get("start") or j.get("submit"), 3, f"{label} {j['status']}{reason}")
    for d in decisions:
        when = d.get("at")
        if isinstance(when, str):
            try:
                when = datetime.fromisoformat(when.replace("Z", "+00:00"))
            except ValueError:
                continue
        mode = " (recommendation only)" if d.get("recommend_only") else ""
        add(when, 4, f"policy {d.get('policy', '')} {d.get('action', '')}{mode}: {d.get('reason', '')}")
    events.sort(key=lambda e: (e[0], e[1]))
    lines = [f"{ruby_time(when)} {text}" for when, _, text in events]
    failed = as_dict(env_doc.get("failed"))
    state = (f"now: status {env_doc.get('status') or 'INIT'}, policy status {env_doc.get('policy_status') or 'INIT'}"
             f"{', active' if env_doc.get('active', True) else ', removed'}")
    if env_doc.get("info"):
        state += f", info: {env_doc['info']}"
    if failed:
        state += f", last failure: job {failed.get('jobid')} {failed.get('type')}: {failed.get('reason')}"
    lines.append(state)
    return "\n".join(lines[-limit:]) + "\n"
