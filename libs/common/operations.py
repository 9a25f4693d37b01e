"""Accepting requests: recording a new environment and starting an operation on one, atomically per environment.

Used by the gateway (to answer a REST call with an `envid`/`jobid` at once, and a clear 409 when refused) and by
envmgr (for commands that arrive over NATS from the policy service, the scheduler or an operator's `nats pub`).
Both paths go through the same compare-and-set on the environment document, so "one operation per environment at
a time, whoever asks" holds across every replica. The environment's `op` field is the current operation; envmgr's
reconcile loop drives it to completion, and a crash between the two writes here is repaired by that loop (it
re-creates a job document the environment refers to if it is missing).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pymongo.errors import DuplicateKeyError

from libs.common.db import Doc, Store
from libs.common.envconfig import Group, ServiceConfig, validate_service_config
from libs.common.errors import NotFoundError, OperationRefused, ValidationFailed
from libs.common.messages import utcnow

OpType = Literal["CREATE", "SCALEUP", "SCALEDOWN", "REMOVE", "RECREATE", "RECOVER", "FAILOVER", "FAILBACK"]

CONFIG_ID = "{service}:config"


async def load_service_config(store: Store, service: str) -> tuple[ServiceConfig, Doc]:
    """The service's current configuration (validated model and stored document)."""
    doc = await store.configs.find_one({"_id": CONFIG_ID.format(service=service)})
    if doc is None:
        raise NotFoundError(f"service '{service}' has no configuration: upload one first (oneenv upload config.yaml)")
    config, _ = validate_service_config(doc["doc"])
    return config, doc


async def _vm_text(store: Store, service: str, file: str) -> str:
    doc = await store.configs.find_one({"service": service, "kind": "vm", "name": file})
    if doc is None:
        raise ValidationFailed(f"template file '{file}' has not been uploaded", [("file", f"'{file}' not uploaded")])
    return str(doc["text"])


async def _role_spec(store: Store, service: str, config: ServiceConfig, tname: str | None, endpoint: str) -> Doc | None:
    if tname is None:
        return None
    template = config.templates[tname]
    return {
        "template": tname,
        "file": template.file,
        "text": await _vm_text(store, service, template.file) if template.file else None,
        "template_id": template.template_id,
        "cpu": template.cpu,
        "vcpu": template.vcpu,
        "memory": template.memory,
        "image_id": template.image_id.get(endpoint),
        "network_id": template.network_id.get(endpoint),
    }


async def environment_spec(store: Store, service: str, config: ServiceConfig, name: str, revision: int) -> Doc:
    """Snapshot what creating environment `name` needs, so later uploads don't change a running environment."""
    env = config.environments[name]
    assert not isinstance(env, Group)
    endpoint = config.endpoints[env.endpoint]
    return {
        "config": env.model_dump(mode="python", exclude_none=True),
        "config_revision": revision,
        "endpoint": env.endpoint,
        "zone": config.zone_of(env.endpoint),
        "url": endpoint.url,
        "master": await _role_spec(store, service, config, env.master_template, env.endpoint),
        "slave": await _role_spec(store, service, config, env.slave_template, env.endpoint),
    }


def _new_env_doc(envid: int, service: str, name: str, spec: Doc, now: datetime, jobid: int,
                 request_id: str | None, group: Doc | None, waiting_for: int | None) -> Doc:
    cfg = spec["config"]
    phase = "waiting" if waiting_for is not None else "master"
    doc: Doc = {
        "_id": envid,
        "version": 0,
        "service": service,
        "name": name,
        "type": cfg.get("type", "compute"),
        "description": cfg.get("description", ""),
        "endpoint": spec["endpoint"],
        "zone": spec["zone"],
        "spec": spec,
        "status": "PENDING" if waiting_for is not None else "INIT",
        "policy_status": "INIT",
        "app_url": None,
        "info": "",
        "desired_slaves": int(cfg.get("num_slaves", 0)),
        "active": True,
        "op": {"jobid": jobid, "type": "CREATE", "phase": phase, "started_at": now, "phase_since": now,
               "after_envid": waiting_for},
        "failed": None,
        "notify": {"master_incarnation": 1, "seq": 0, "acked_seq": 0, "items": []},
        "master_incarnation": 1,
        "context_extra": {},
        "created_at": now,
        "updated_at": now,
        "groupid": group["groupid"] if group else None,
        "group_name": group["name"] if group else None,
        "group_dependencies": group["dependencies"] if group else [],
    }
    if request_id is not None:
        doc["request_id"] = request_id
    return doc


def _job_doc(jobid: int, envid: int, service: str, name: str, op: str, status: str, now: datetime,
             requested_by: str, **extra: Any) -> Doc:
    return {"_id": jobid, "envid": envid, "service": service, "name": name, "type": op, "status": status,
            "submit": now, "start": now if status == "RUNNING" else None, "end": None, "reason": None,
            "requested_by": requested_by, **extra}


async def create_environment(
    store: Store, service: str, config_name: str, request_id: str | None = None, requested_by: str = "api"
) -> list[tuple[int, int]]:
    """Record a new environment (or every member of a group) and its CREATE job(s).

    Returns:
        `[(envid, jobid), ...]`, the group's members in creation order (one entry for a plain environment). A
        repeated call with the same `request_id` returns the first result instead of creating a second environment.
    """
    if request_id is not None:
        existing = await _existing_request(store, service, request_id)
        if existing:
            return existing
    config, cdoc = await load_service_config(store, service)
    target = config.environments.get(config_name)
    if target is None:
        known = ", ".join(sorted(config.environments)) or "none"
        raise NotFoundError(f"Cannot find configuration for {config_name} (known: {known})")
    now = utcnow()
    revision = int(cdoc.get("revision", 1))
    members: list[str] = list(target.members) if isinstance(target, Group) else [config_name]
    specs = [await environment_spec(store, service, config, m, revision) for m in members]
    ids = [(await store.next_id("envid"), await store.next_id("jobid")) for _ in members]
    groupid = ids[0][0] if isinstance(target, Group) else None
    docs, jobs = [], []
    for position, (member, spec, (envid, jobid)) in enumerate(zip(members, specs, ids, strict=True)):
        group = None
        if isinstance(target, Group):
            group = {"groupid": groupid, "name": config_name, "dependencies": target.dependencies.get(member, [])}
        waiting_for = ids[position - 1][0] if position > 0 else None
        docs.append(_new_env_doc(envid, service, member, spec, now, jobid,
                                 request_id if position == 0 else None, group, waiting_for))
        jobs.append(_job_doc(jobid, envid, service, member, "CREATE", "PENDING" if waiting_for else "RUNNING", now,
                             requested_by, groupid=groupid, predjob=ids[position - 1][1] if position > 0 else None,
                             group=config_name if group else None))
    # Environments first: the unique (service, request_id) index makes a racing duplicate request fail here,
    # before it wrote anything else. A crash before the jobs are written is repaired by envmgr, which re-creates
    # the job record an environment refers to.
    try:
        await store.envs.insert_many(docs)
    except DuplicateKeyError:
        if request_id is not None:
            existing = await _existing_request(store, service, request_id)
            if existing:
                return existing
        raise
    await store.jobs.insert_many(jobs)
    return ids


async def _existing_request(store: Store, service: str, request_id: str) -> list[tuple[int, int]]:
    """The ids of an earlier create with the same idempotency key (group members included), or []."""
    existing = await store.envs.find_one({"service": service, "request_id": request_id})
    if existing is None:
        return []
    ids = [(int(existing["_id"]), int((existing.get("op") or existing.get("failed") or {}).get("jobid") or 0))]
    if existing.get("groupid") == existing["_id"]:
        async for member in store.envs.find({"groupid": existing["_id"], "_id": {"$ne": existing["_id"]}}):
            ids.append((int(member["_id"]), int((member.get("op") or member.get("failed") or {}).get("jobid") or 0)))
    return ids


def live_slaves(slots: list[Doc]) -> list[Doc]:
    return [s for s in slots if s["role"] == "slave" and s.get("live")]


async def start_operation(
    store: Store,
    envid: int,
    op_type: OpType,
    requested_by: str,
    service: str | None = None,
    params: Doc | None = None,
    job_status: str = "RUNNING",
) -> int:
    """Start an operation on an environment if nothing else runs on it; returns the new job id.

    Args:
        store: the store.
        envid: the environment.
        op_type: SCALEUP, SCALEDOWN, REMOVE, RECREATE, RECOVER, FAILOVER or FAILBACK.
        requested_by: api, policy, scheduler or operator (recorded on the job).
        service: restrict to this service's environments (None: admin).
        params: operation parameters (e.g. the slot to recreate).
        job_status: READY for a scale-up that waits for the scheduler's grant.

    Raises:
        NotFoundError: no such environment (for this service).
        OperationRefused: another operation runs, the environment was removed, or there is nothing to scale down.
    """
    query: Doc = {"_id": envid}
    if service is not None:
        query["service"] = service
    for _ in range(20):
        env = await store.envs.find_one(query)
        if env is None:
            raise NotFoundError(f"Environment {envid} not found")
        if not env.get("active", True):
            raise OperationRefused(f"Environment {envid} was removed")
        current = env.get("op")
        if current is not None:
            # Removal wins over anything but another removal: an environment stuck creating can always be removed.
            if op_type != "REMOVE" or current["type"] == "REMOVE":
                raise OperationRefused(
                    f"Operation in progress on environment {envid}: job {current['jobid']} ({current['type']})")
        if op_type == "SCALEDOWN":
            slots = [s async for s in store.slots.find({"envid": envid, "role": "slave", "live": True})]
            if not slots:
                raise OperationRefused(f"Environment {envid} has no slave left to remove")
        if op_type == "RECOVER" and env.get("failed") is None and current is None:
            raise OperationRefused(f"Environment {envid} has nothing to recover")
        now = utcnow()
        jobid = await store.next_id("jobid")
        op = {"jobid": jobid, "type": op_type, "phase": "start", "started_at": now, "phase_since": now,
              "params": params or {}, "requested_by": requested_by}
        if await store.cas_update("envs", envid, int(env["version"]), {"op": op, "updated_at": now}):
            await store.jobs.insert_one(_job_doc(jobid, envid, env["service"], env["name"], op_type, job_status, now,
                                                 requested_by))
            if current is not None:
                await store.jobs.update_one({"_id": current["jobid"]}, {"$set": {
                    "status": "ABORT", "end": now, "reason": f"superseded by {op_type} job {jobid}"}})
            return jobid
    raise OperationRefused(f"Environment {envid} is being changed concurrently; try again")
