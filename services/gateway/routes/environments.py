"""Environments: create, list, show, and the operations on one (scale, remove, recover, recreate).

Writes go through `libs.common.operations` only — the same compare-and-set envmgr uses, so "one operation per
environment at a time, whoever asks" holds and a refused request is a clear 409 before anything runs. After the
write, the gateway nudges envmgr on NATS; if that publish fails the answer is still 202 because envmgr's periodic
resync finds the recorded operation (DESIGN.md §2). Reads come straight from MongoDB, scoped to the caller's
service: another service's environment is indistinguishable from a missing one (404).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Query, status
from pymongo.errors import DuplicateKeyError

from libs.common.db import Doc
from libs.common.errors import OperationRefused
from libs.common.messages import EnvCreate, EnvRecover, EnvRecreate, EnvRemove, EnvScale
from libs.common.operations import OpType, create_environment, start_operation
from services.gateway import schemas
from services.gateway.deps import (
    COMMON_ERRORS,
    Caller,
    CallerDep,
    Gateway,
    GatewayDep,
    ServiceQuery,
    acting_service,
    errors,
    not_found,
    scope_query,
    service_scope,
)
from services.gateway.views import env_detail, env_summary, status_matches, vm_row, vm_sort_key

log = logging.getLogger("carina.gateway.environments")

router = APIRouter(prefix="/api/v1", tags=["environments"])

MAX_ID = 2**62  # MongoDB stores 64-bit integers; anything larger is certainly not an id of ours
EnvId = Annotated[int, Path(ge=1, le=MAX_ID, description="environment id")]
GroupId = Annotated[int, Path(ge=1, le=MAX_ID, description="group id (the envid of the group's first member)")]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=128,
                                              description="same as `request_id` in the body")]


async def load_env(gw: Gateway, caller: Caller, envid: int, service: str | None = None) -> Doc:
    env = await gw.store.envs.find_one(scope_query(service_scope(caller, service), {"_id": envid}))
    if env is None:
        raise not_found(f"Environment {envid} not found")
    return env


async def accept_create(gw: Gateway, service: str, config: str, request_id: str | None) -> list[schemas.Member]:
    """Record a new environment (or every member of a group) and nudge envmgr; the members in creation order."""
    try:
        ids = await create_environment(gw.store, service, config, request_id=request_id, requested_by="api")
    except DuplicateKeyError:
        # A concurrent request with the same idempotency key won the insert: answer with its result.
        ids = await create_environment(gw.store, service, config, request_id=request_id, requested_by="api")
    names = {d["_id"]: str(d["name"]) async for d in gw.store.envs.find({"_id": {"$in": [e for e, _ in ids]}},
                                                                         {"name": 1})}
    members = [schemas.Member(envid=envid, jobid=jobid, name=names.get(envid, config)) for envid, jobid in ids]
    for member in members:
        await gw.nudge(EnvCreate(service=service, config=member.name, envid=member.envid, request_id=request_id))
    log.info("environment accepted", extra={"service_name": service, "config": config,
                                            "envids": [m.envid for m in members]})
    return members


@router.post("/environments", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.Created,
             summary="Create an environment (or every member of a group) from the configuration",
             responses=errors(*COMMON_ERRORS, 404))
async def create(body: schemas.CreateEnvironment, gw: GatewayDep, caller: CallerDep,
                 idempotency_key: IdempotencyKey = None, service: ServiceQuery = None) -> schemas.Created:
    if body.service and service and body.service != service:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "'service' differs between the query and the body")
    if body.request_id and idempotency_key and body.request_id != idempotency_key:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "'request_id' and the Idempotency-Key header differ")
    svc = acting_service(caller, body.service or service)
    members = await accept_create(gw, svc, body.config, body.request_id or idempotency_key)
    return schemas.Created(envid=members[0].envid, jobid=members[0].jobid, members=members)


@router.get("/environments", response_model=list[schemas.EnvSummary], summary="Environments of the service",
            responses=errors(*COMMON_ERRORS, 404))
async def list_environments(
    gw: GatewayDep,
    caller: CallerDep,
    service: ServiceQuery = None,
    status_filter: Annotated[str | None, Query(alias="status", min_length=1, max_length=128,
                                               description="deploy status (with or without ':reason') or policy status")
                             ] = None,
    name: Annotated[str | None, Query(min_length=1, max_length=63, description="environment name")] = None,
    active: Annotated[bool, Query(description="true: current environments; false: removed ones")] = True,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> list[schemas.EnvSummary]:
    query: Doc = {"active": {"$ne": False}} if active else {"active": False}
    if name is not None:
        query["name"] = name
    envs = [e async for e in gw.store.envs.find(scope_query(service_scope(caller, service), query),
                                                {"spec": 0}).sort("_id", 1)]
    if status_filter is not None:
        envs = [e for e in envs if status_matches(e, status_filter)]
    envs = envs[:limit]
    counts: dict[int, int] = {}
    if envs:
        async for slot in gw.store.slots.find({"envid": {"$in": [e["_id"] for e in envs]}, "live": True},
                                              {"envid": 1}):
            counts[slot["envid"]] = counts.get(slot["envid"], 0) + 1
    return [env_summary(e, counts.get(e["_id"], 0)) for e in envs]


@router.get("/environments/{envid}", response_model=schemas.EnvDetail,
            summary="One environment with its VMs, recent jobs and failure reason",
            responses=errors(*COMMON_ERRORS, 404))
async def show_environment(envid: EnvId, gw: GatewayDep, caller: CallerDep,
                           service: ServiceQuery = None) -> schemas.EnvDetail:
    env = await load_env(gw, caller, envid, service)
    slots = [s async for s in gw.store.slots.find({"envid": envid, "live": True})]
    jobs = [j async for j in gw.store.jobs.find({"envid": envid}).sort("_id", -1).limit(20)]
    return env_detail(env, slots, jobs)


@router.get("/environments/{envid}/vms", response_model=list[schemas.Vm], summary="Live VMs of one environment",
            responses=errors(*COMMON_ERRORS, 404))
async def environment_vms(envid: EnvId, gw: GatewayDep, caller: CallerDep,
                          service: ServiceQuery = None) -> list[schemas.Vm]:
    await load_env(gw, caller, envid, service)
    slots = [s async for s in gw.store.slots.find({"envid": envid, "live": True})]
    return [vm_row(s) for s in sorted(slots, key=vm_sort_key)]


async def _start(gw: Gateway, caller: Caller, envid: int, op: OpType, service: str | None,
                 params: Doc | None = None) -> int:
    scope = service_scope(caller, service)
    jobid = await start_operation(gw.store, envid, op, requested_by="api", service=scope, params=params)
    log.info("operation accepted", extra={"envid": envid, "jobid": jobid, "op": op})
    return jobid


OP_ERRORS = errors(*COMMON_ERRORS, 404, 409)


@router.post("/environments/{envid}/scaleup", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.JobAccepted,
             summary="Add one slave", responses=OP_ERRORS)
async def scaleup(envid: EnvId, gw: GatewayDep, caller: CallerDep, service: ServiceQuery = None) -> schemas.JobAccepted:
    jobid = await _start(gw, caller, envid, "SCALEUP", service)
    await gw.nudge(EnvScale(envid=envid, direction="up", requested_by="api", request_id=f"job-{jobid}"))
    return schemas.JobAccepted(envid=envid, jobid=jobid)


@router.post("/environments/{envid}/scaledown", status_code=status.HTTP_202_ACCEPTED,
             response_model=schemas.JobAccepted, summary="Remove one slave", responses=OP_ERRORS)
async def scaledown(envid: EnvId, gw: GatewayDep, caller: CallerDep,
                    service: ServiceQuery = None) -> schemas.JobAccepted:
    jobid = await _start(gw, caller, envid, "SCALEDOWN", service)
    await gw.nudge(EnvScale(envid=envid, direction="down", requested_by="api", request_id=f"job-{jobid}"))
    return schemas.JobAccepted(envid=envid, jobid=jobid)


@router.post("/environments/{envid}/recover", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.JobAccepted,
             summary="Retry the failed operation from where it stopped", responses=OP_ERRORS)
async def recover(envid: EnvId, gw: GatewayDep, caller: CallerDep, service: ServiceQuery = None) -> schemas.JobAccepted:
    jobid = await _start(gw, caller, envid, "RECOVER", service)
    await gw.nudge(EnvRecover(envid=envid, request_id=f"job-{jobid}"))
    return schemas.JobAccepted(envid=envid, jobid=jobid)


@router.post("/environments/{envid}/recreate", status_code=status.HTTP_202_ACCEPTED,
             response_model=schemas.JobAccepted, summary="Replace one VM (a master is replaced first)",
             responses=OP_ERRORS)
async def recreate(envid: EnvId, body: schemas.Recreate, gw: GatewayDep, caller: CallerDep,
                   service: ServiceQuery = None) -> schemas.JobAccepted:
    await load_env(gw, caller, envid, service)
    slot = await gw.store.slots.find_one({"envid": envid, "one_id": body.vmid, "live": True})
    if slot is None:
        raise not_found(f"VM {body.vmid} is not a live VM of environment {envid}")
    jobid = await _start(gw, caller, envid, "RECREATE", service, params={"vmid": body.vmid, "slot": slot["_id"]})
    await gw.nudge(EnvRecreate(envid=envid, vmid=body.vmid, requested_by="api", request_id=f"job-{jobid}"))
    return schemas.JobAccepted(envid=envid, jobid=jobid)


@router.delete("/environments/{envid}", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.JobAccepted,
               summary="Remove an environment (its record and job history are kept)", responses=OP_ERRORS)
async def remove(envid: EnvId, gw: GatewayDep, caller: CallerDep, service: ServiceQuery = None) -> schemas.JobAccepted:
    jobid = await _start(gw, caller, envid, "REMOVE", service)
    await gw.nudge(EnvRemove(envid=envid, requested_by="api"))
    return schemas.JobAccepted(envid=envid, jobid=jobid)


@router.delete("/groups/{groupid}", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.GroupRemoval,
               summary="Remove every member of a group (Carina's `--remove -GROUPID`)", responses=OP_ERRORS)
async def remove_group(groupid: GroupId, gw: GatewayDep, caller: CallerDep,
                       service: ServiceQuery = None) -> schemas.GroupRemoval:
    return await remove_group_members(gw, service_scope(caller, service), groupid)


async def remove_group_members(gw: Gateway, scope: str | None, groupid: int) -> schemas.GroupRemoval:
    """Start REMOVE on every member of a group (dependants first) that can be removed.

    Raises:
        HTTPException: 404 when the group has no member visible to the caller.
        OperationRefused: when no member could be removed (each one's reason is listed).
    """
    members = [m async for m in gw.store.envs.find(scope_query(scope, {"groupid": groupid}), {"spec": 0})]
    if not members:
        raise not_found(f"Group {groupid} not found")
    envids: list[int] = []
    jobids: list[int] = []
    refused: list[str] = []
    # Dependants were created last; remove them first so no member loses what it depends on while it still runs.
    for member in sorted(members, key=lambda m: int(m["_id"]), reverse=True):
        try:
            jobid = await start_operation(gw.store, int(member["_id"]), "REMOVE", requested_by="api", service=scope)
        except OperationRefused as exc:
            refused.append(str(exc))
            continue
        envids.append(int(member["_id"]))
        jobids.append(jobid)
        await gw.nudge(EnvRemove(envid=int(member["_id"]), requested_by="api"))
    if not jobids:
        raise OperationRefused(f"Nothing to remove in group {groupid}: " + "; ".join(refused))
    return schemas.GroupRemoval(groupid=groupid, envids=envids, jobids=jobids)
