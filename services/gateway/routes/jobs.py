"""Jobs (the record of every operation) and the service's VMs: read-only views of envmgr's documents."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from libs.common.db import Doc
from services.gateway import schemas
from services.gateway.deps import (
    COMMON_ERRORS,
    CallerDep,
    GatewayDep,
    ServiceQuery,
    errors,
    not_found,
    scope_query,
    service_scope,
)
from services.gateway.routes.environments import MAX_ID
from services.gateway.views import job_view, vm_row, vm_sort_key

router = APIRouter(prefix="/api/v1", tags=["jobs and VMs"])

JobStatus = Literal["PENDING", "READY", "RUNNING", "DONE", "FAIL", "ABORT"]


@router.get("/jobs", response_model=list[schemas.Job], summary="Jobs, newest first",
            responses=errors(*COMMON_ERRORS, 404))
async def list_jobs(
    gw: GatewayDep,
    caller: CallerDep,
    service: ServiceQuery = None,
    envid: Annotated[int | None, Query(ge=1, le=MAX_ID, description="only this environment's jobs")] = None,
    job_status: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> list[schemas.Job]:
    query: Doc = {}
    if envid is not None:
        query["envid"] = envid
    if job_status is not None:
        query["status"] = job_status
    cursor = gw.store.jobs.find(scope_query(service_scope(caller, service), query)).sort("_id", -1).limit(limit)
    return [job_view(j) async for j in cursor]


@router.get("/jobs/{jobid}", response_model=schemas.Job, summary="One job", responses=errors(*COMMON_ERRORS, 404))
async def show_job(jobid: Annotated[int, Path(ge=1, le=MAX_ID)], gw: GatewayDep, caller: CallerDep,
                   service: ServiceQuery = None) -> schemas.Job:
    job = await gw.store.jobs.find_one(scope_query(service_scope(caller, service), {"_id": jobid}))
    if job is None:
        raise not_found(f"Job {jobid} not found")
    return job_view(job)


@router.get("/vms", response_model=list[schemas.Vm], summary="Every live VM of the service",
            responses=errors(*COMMON_ERRORS, 404))
async def list_vms(gw: GatewayDep, caller: CallerDep, service: ServiceQuery = None) -> list[schemas.Vm]:
    slots = [s async for s in gw.store.slots.find(scope_query(service_scope(caller, service), {"live": True}))]
    return [vm_row(s) for s in sorted(slots, key=lambda s: (int(s.get("envid", 0)), *vm_sort_key(s)))]
