"""Turning stored documents into API answers (pure functions, unit-tested without servers).

The documents belong to other services (envmgr writes environments, slots and jobs); these functions decide what
a user sees of them: Carina's columns, the VM status as Carina's `oneenv --vms` showed it, and nothing internal.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from services.gateway import schemas

Doc = dict[str, Any]

# OpenNebula's `onevm list` short states, as Carina showed them; MISSING (not in the zone at all) stays upper case.
SHORT_STATE = {
    "PENDING": "pend", "HOLD": "hold", "PROLOG": "prol", "BOOT": "boot", "RUNNING": "runn", "SHUTDOWN": "shut",
    "EPILOG": "epil", "POWEROFF": "poff", "SUSPENDED": "susp", "STOPPED": "stop", "UNDEPLOYED": "unde",
    "UNKNOWN": "unkn", "FAILED": "fail", "DONE": "done", "MISSING": "MISSING", "OTHER": "othr",
}
# States in which what the zone says matters more than the last thing the guest reported: a guest that reported
# MASTER_INIT_DONE and then vanished must not look healthy (Carina's 60 s refresh overwrote the status the same way).
ZONE_STATE_WINS = {"UNKNOWN", "FAILED", "MISSING", "POWEROFF", "SUSPENDED", "STOPPED", "UNDEPLOYED", "DONE"}
TERMINAL_JOB = {"DONE", "FAIL", "ABORT"}
METRIC_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def as_dict(value: Any) -> Doc:
    """A sub-document, or an empty one when it is missing or not a mapping."""
    return value if isinstance(value, dict) else {}


def vm_status(slot: Doc) -> str:
    """The STATUS column of a VM: the guest's status (lower case) unless the zone reports trouble."""
    lifecycle = str(slot.get("lifecycle") or "PENDING").upper()
    guest = slot.get("guest") or {}
    reported = guest.get("status")
    if reported and lifecycle not in ZONE_STATE_WINS:
        return str(reported).lower()
    return SHORT_STATE.get(lifecycle, lifecycle.lower()[:4])


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def vm_row(slot: Doc) -> schemas.Vm:
    """One VM as `oneenv --vms` lists it."""
    guest = slot.get("guest") or {}
    one_id = slot.get("one_id")
    return schemas.Vm(
        vmid=int(one_id) if isinstance(one_id, int) else None,
        envid=int(slot["envid"]),
        zone=slot.get("zone"),
        hostname=guest.get("hostname") or slot.get("name"),
        ipaddr=guest.get("ip") or slot.get("ip"),
        status=vm_status(slot),
        cpu=_number(slot.get("cpu")),
        role=str(slot.get("role", "")),
        index=slot.get("index") if isinstance(slot.get("index"), int) else None,
        slot=str(slot["_id"]),
        lifecycle=slot.get("lifecycle"),
    )


def vm_sort_key(slot: Doc) -> tuple[int, int, int]:
    """Master first, then slaves by index (the order Carina created them in)."""
    return (0 if slot.get("role") == "master" else 1, int(slot.get("index") or 0), int(slot.get("incarnation") or 0))


def current_job(env: Doc) -> schemas.CurrentJob | None:
    op = env.get("op")
    if not isinstance(op, dict) or op.get("jobid") is None:
        return None
    return schemas.CurrentJob(jobid=int(op["jobid"]), type=str(op.get("type", "")), phase=op.get("phase"))


def failure(env: Doc) -> schemas.Failure | None:
    failed = env.get("failed")
    if not isinstance(failed, dict):
        return None
    return schemas.Failure(jobid=failed.get("jobid"), type=failed.get("type"), reason=failed.get("reason"),
                           at=failed.get("at"))


def env_summary(env: Doc, numvms: int) -> schemas.EnvSummary:
    """One row of the environment listing."""
    return schemas.EnvSummary(
        envid=int(env["_id"]),
        name=str(env.get("name", "")),
        service=str(env.get("service", "")),
        zone=env.get("zone"),
        numvms=numvms,
        status=str(env.get("status") or "INIT"),
        policy_status=str(env.get("policy_status") or "INIT"),
        app_url=env.get("app_url") or None,
        info=env.get("info") or None,
        groupid=env.get("groupid"),
        active=bool(env.get("active", True)),
        job=current_job(env),
        failed=failure(env),
    )


def job_view(job: Doc) -> schemas.Job:
    return schemas.Job(
        jobid=int(job["_id"]),
        envid=int(job.get("envid") or 0),
        service=str(job.get("service", "")),
        name=str(job.get("name", "")),
        type=str(job.get("type", "")),
        status=str(job.get("status", "")),
        submit=job.get("submit"),
        start=job.get("start"),
        end=job.get("end"),
        reason=job.get("reason"),
        requested_by=job.get("requested_by"),
        groupid=job.get("groupid"),
        predjob=job.get("predjob"),
    )


def env_detail(env: Doc, slots: list[Doc], jobs: list[Doc]) -> schemas.EnvDetail:
    """An environment with its live VMs, recent jobs and failure reason."""
    live = sorted((s for s in slots if s.get("live")), key=vm_sort_key)
    summary = env_summary(env, len(live))
    config = as_dict(env.get("spec")).get("config")
    config = config if isinstance(config, dict) else None
    return schemas.EnvDetail(
        **summary.model_dump(),
        type=env.get("type"),
        description=env.get("description"),
        endpoint=env.get("endpoint"),
        group_name=env.get("group_name"),
        desired_slaves=env.get("desired_slaves"),
        created_at=env.get("created_at"),
        updated_at=env.get("updated_at"),
        config=config,
        vms=[vm_row(s) for s in live],
        jobs=[job_view(j) for j in jobs],
    )


def status_matches(env: Doc, wanted: str) -> bool:
    """The `status` filter: the deploy status (with or without its `:reason`) or the policy status, any case."""
    wanted = wanted.strip().upper()
    status = str(env.get("status") or "").upper()
    return wanted in (status, status.split(":", 1)[0], str(env.get("policy_status") or "").upper())


def config_entries(doc: Doc) -> list[schemas.ConfigEntry]:
    """Carina's `GET /configs`: one row per environment or group of the stored configuration."""
    endpoints = doc.get("endpoints") or {}
    rows = []
    for name, env in sorted((doc.get("environments") or {}).items()):
        if env.get("type") == "group":
            rows.append(schemas.ConfigEntry(name=name, type="group", endpoint="-", zone="-",
                                            description=str(env.get("description", ""))))
            continue
        endpoint = str(env.get("endpoint", ""))
        zone = (endpoints.get(endpoint) or {}).get("zone") or endpoint
        rows.append(schemas.ConfigEntry(name=name, type=str(env.get("type", "compute")), endpoint=endpoint,
                                        zone=str(zone), description=str(env.get("description", ""))))
    return rows


def parse_metrics(text: str) -> dict[str, float]:
    """Parse OneGate's `KEY = VALUE` lines into numbers.

    Blank lines and `#` comments are skipped; a value may be quoted. Carina's policies only use numbers, so any
    other value is refused rather than dropped silently.

    Raises:
        ValueError: naming the first line that is not `KEY = <number>`.
    """
    values: dict[str, float] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip().strip('"').strip("'").strip()
        if not sep or not METRIC_KEY_RE.match(key):
            raise ValueError(f"line {number}: expected KEY = VALUE, got {raw.strip()[:80]!r}")
        try:
            parsed = float(value)
        except ValueError:
            raise ValueError(f"line {number}: {key} is not a number: {value[:40]!r}") from None
        if not math.isfinite(parsed):
            raise ValueError(f"line {number}: {key} is not a finite number")
        values[key] = parsed
    if not values:
        raise ValueError("no KEY = VALUE line in the body")
    return values


# --- global scheduler -------------------------------------------------------------------------------------------------


def epoch_time(value: Any) -> datetime | None:
    """The ledger's epoch seconds as an aware datetime (None when missing or not a number)."""
    number = _number(value)
    return datetime.fromtimestamp(number, tz=UTC) if number is not None else None


def _amount(request: Doc, key: str) -> float:
    return _number(request.get(key)) or 0.0


def pool_views(config: Doc, requests: list[Doc]) -> list[schemas.Pool]:
    """Each pool of the global configuration with what ALLOCATED requests hold of it.

    `requests` are the ledger's PEND and ALLOCATED entries; a PEND request counts as pending in every pool of its
    zone (the scheduler has not chosen one yet).
    """
    pools = as_dict(config.get("pools"))
    zone_of_pool = {name: str(as_dict(p).get("zone", "")) for name, p in pools.items()}
    rows = []
    for name, raw in sorted(pools.items()):
        pool = as_dict(raw)
        held = [r for r in requests if r.get("status") == "ALLOCATED" and r.get("pool") == name]
        zone = str(pool.get("zone", ""))
        pending = sum(1 for r in requests if r.get("status") == "PEND"
                      and (r.get("zone") or zone_of_pool.get(str(r.get("target_pool")))) == zone)
        vcpus = _number(pool.get("vcpus")) or 0.0
        memory = int(_number(pool.get("memory")) or 0)
        used_vcpus = sum(_amount(r, "vcpus") for r in held)
        used_memory = int(sum(_amount(r, "memory") for r in held))
        rows.append(schemas.Pool.model_validate({
            "name": name, "zone": zone, "class": str(pool.get("class", "")), "vcpus": vcpus, "memory": memory,
            "allocated_vcpus": used_vcpus, "allocated_memory": used_memory,
            "available_vcpus": vcpus - used_vcpus, "available_memory": memory - used_memory, "pending": pending}))
    return rows


def service_views(config: Doc, requests: list[Doc], zones: dict[str, list[str]]) -> list[schemas.SchedulerService]:
    """Each service of the global configuration with its quota and what it holds (ALLOCATED) or waits for (PEND).

    Args:
        config: the stored global configuration document (`doc`).
        requests: the ledger's PEND and ALLOCATED entries.
        zones: per service, the zones of its configured endpoints.
    """
    rows = []
    for name, raw in sorted(as_dict(config.get("services")).items()):
        svc = as_dict(raw)
        mine = [r for r in requests if r.get("service") == name]
        held = [r for r in mine if r.get("status") == "ALLOCATED"]
        rows.append(schemas.SchedulerService.model_validate({
            "name": name, "class": str(svc.get("class", "")), "max_vcpus": _number(svc.get("max_vcpus")) or 0.0,
            "max_memory": int(_number(svc.get("max_memory")) or 0),
            "allocated_vcpus": sum(_amount(r, "vcpus") for r in held),
            "allocated_memory": int(sum(_amount(r, "memory") for r in held)),
            "pending": sum(1 for r in mine if r.get("status") == "PEND"), "zones": zones.get(name, [])}))
    return rows


def request_view(request: Doc, env_names: dict[int, str]) -> schemas.CapacityRequest:
    """One ledger entry as the API shows it (epoch seconds become timestamps)."""
    envid = int(request.get("envid") or 0)
    return schemas.CapacityRequest(
        reqid=int(request["_id"]), envid=envid, env=env_names.get(envid), service=str(request.get("service", "")),
        vcpus=_amount(request, "vcpus"), memory=int(_amount(request, "memory")), zone=request.get("zone"),
        target_pool=request.get("target_pool"), kind=request.get("kind"), status=str(request.get("status") or "PEND"),
        pool=request.get("pool"), submitted_at=epoch_time(request.get("submitted_at")),
        granted_at=epoch_time(request.get("granted_at")), lease_expires_at=epoch_time(request.get("lease_expires_at")),
        reason=request.get("reason"))


def config_zones(doc: Doc) -> list[str]:
    """The zones of a stored service configuration's endpoints, sorted."""
    return sorted({str(as_dict(e).get("zone") or name) for name, e in as_dict(doc.get("endpoints")).items()})


# --- policies ---------------------------------------------------------------------------------------------------------


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return epoch_time(value)


def decision_view(decision: Doc) -> schemas.PolicyDecision:
    """A policy decision (from `policy_state.recent` or the `decisions` collection)."""
    count = decision.get("count")
    vm = decision.get("vm")
    return schemas.PolicyDecision(
        at=_when(decision.get("at")), policy=str(decision.get("policy", "")), action=str(decision.get("action", "")),
        reason=str(decision.get("reason", "")), source=decision.get("source"),
        count=count if isinstance(count, int) and not isinstance(count, bool) else None,
        recommend_only=bool(decision.get("recommend_only", False)),
        recommended=str(decision["recommended"]) if decision.get("recommended") is not None else None,
        inputs=as_dict(decision.get("inputs")), expressions=as_dict(decision.get("expressions")),
        vm=vm if isinstance(vm, dict) else None)


def policy_view(env: Doc, state_doc: Doc | None, decisions: list[Doc]) -> schemas.PolicyView:
    """An environment's policies, the policy service's state for it, and its recent decisions."""
    config = as_dict(as_dict(env.get("spec")).get("config"))
    elasticity = config.get("elasticity_policy")
    availability = config.get("availability_policy")
    state = as_dict(state_doc)
    return schemas.PolicyView(
        envid=int(env["_id"]), name=str(env.get("name", "")), policy_status=str(env.get("policy_status") or "INIT"),
        info=env.get("info") or None,
        elasticity=elasticity if isinstance(elasticity, dict) else None,
        availability=availability if isinstance(availability, dict) else None,
        state=as_dict(state.get("state")), updated_at=_when(state.get("updated_at")),
        recent=[decision_view(d) for d in state.get("recent") or [] if isinstance(d, dict)],
        decisions=[decision_view(d) for d in decisions])
