"""The global scheduler's configuration (administrator) and read-only views of its ledger: pools, services, requests.

The administrator uploads the pools and services (YAML, or Carina's `global.rb` converted by
`libs.common.carina_import`); the gateway validates them with `GlobalConfig` and stores them as the `configs`
document `global:config`, which the scheduler service re-reads on every allocation pass. The ledger itself — the
`requests` collection — belongs to the scheduler; the gateway only reads it, computing what each pool and service
holds from the ALLOCATED entries, exactly as Carina's oneenvd-gs recomputed it from Redis.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pymongo.errors import DuplicateKeyError

from libs.common.carina_import import convert_global_rb
from libs.common.db import Doc, Store
from libs.common.errors import ConflictError
from libs.common.globalconfig import GLOBAL_CONFIG_ID, GlobalConfig
from libs.common.messages import utcnow
from services.gateway import schemas
from services.gateway.deps import (
    COMMON_ERRORS,
    SERVICE_PATTERN,
    AdminDep,
    Caller,
    CallerDep,
    GatewayDep,
    ServiceQuery,
    errors,
    not_found,
    scope_query,
    service_scope,
)
from services.gateway.routes.configs import upload_body
from services.gateway.routes.environments import MAX_ID
from services.gateway.uploads import CONFIG_TYPES, RUBY_TYPES, media_type, read_upload
from services.gateway.views import config_zones, pool_views, request_view, service_views

log = logging.getLogger("carina.gateway.scheduler")

router = APIRouter(prefix="/api/v1/scheduler", tags=["global scheduler"])

ACTIVE = ("PEND", "ALLOCATED")
_GLOBAL_RB = re.compile(r"^\s*(SHAREDPOOLS|SERVICES)\s*=\s*\{", re.MULTILINE)
NOT_CONFIGURED = ("the global scheduler is not configured (an administrator uploads it: "
                  "oneenv upload global.yaml --global)")


def is_global_rb(text: str, content_type: str = "") -> bool:
    """Whether an uploaded scheduler configuration is Carina's global.rb rather than YAML/JSON."""
    return content_type in RUBY_TYPES or bool(_GLOBAL_RB.search(text))


def parse_global(text: str, ruby: bool) -> tuple[GlobalConfig, list[str]]:
    """Validate a scheduler configuration; returns it and the conversion's warnings.

    Raises:
        ValidationFailed: a syntax error (with line and column) or every invalid key, by path.
    """
    if ruby:
        converted = convert_global_rb(text)
        return GlobalConfig.parse(converted.native), list(converted.warnings)
    return GlobalConfig.from_yaml(text), []


async def store_global(store: Store, document: Doc) -> int:
    """Save the scheduler configuration as the next revision (the previous one goes to `config_history`)."""
    for _ in range(20):
        current = await store.configs.find_one({"_id": GLOBAL_CONFIG_ID})
        now = utcnow()
        if current is None:
            try:
                await store.configs.insert_one({"_id": GLOBAL_CONFIG_ID, "kind": "global", "name": "global",
                                                "service": "*", "revision": 1, "doc": document, "uploaded_at": now})
                return 1
            except DuplicateKeyError:
                continue  # a concurrent first upload won
        revision = int(current.get("revision", 1))
        await store["config_history"].replace_one(
            {"_id": f"global:{revision}"},
            {"service": "*", "kind": "global", "revision": revision, "doc": current.get("doc"),
             "uploaded_at": current.get("uploaded_at")}, upsert=True)
        updated = await store.configs.update_one({"_id": GLOBAL_CONFIG_ID, "revision": revision},
                                                 {"$set": {"doc": document, "revision": revision + 1,
                                                           "uploaded_at": now}})
        if updated.modified_count == 1:
            return revision + 1
    raise ConflictError("global scheduler configuration: too many concurrent uploads")


async def load_global(store: Store) -> Doc:
    """The stored scheduler configuration's document, or 404."""
    doc = await store.configs.find_one({"_id": GLOBAL_CONFIG_ID})
    if doc is None or not isinstance(doc.get("doc"), dict):
        raise not_found(NOT_CONFIGURED)
    config: Doc = doc["doc"]
    return config


async def active_requests(store: Store, scope: str | None = None) -> list[Doc]:
    """The ledger's PEND and ALLOCATED entries (of one service, or all)."""
    return [r async for r in store["requests"].find(scope_query(scope, {"status": {"$in": list(ACTIVE)}}))]


async def service_zones(store: Store, services: list[str]) -> dict[str, list[str]]:
    """Per service, the zones of its configured endpoints."""
    zones: dict[str, list[str]] = {}
    async for doc in store.configs.find({"kind": "config", "service": {"$in": services}}, {"service": 1, "doc": 1}):
        zones[str(doc["service"])] = config_zones(doc.get("doc") or {})
    return zones


async def list_pools(store: Store) -> list[schemas.Pool]:
    return pool_views(await load_global(store), await active_requests(store))


async def list_services(store: Store, caller: Caller, service: str | None = None) -> list[schemas.SchedulerService]:
    scope = service_scope(caller, service)
    config = await load_global(store)
    if scope is not None:
        config = {**config, "services": {k: v for k, v in (config.get("services") or {}).items() if k == scope}}
    names = list(config.get("services") or {})
    return service_views(config, await active_requests(store, scope), await service_zones(store, names))


async def list_requests(store: Store, caller: Caller, service: str | None, status: str | None = None,
                        envid: int | None = None, limit: int = 1000) -> list[schemas.CapacityRequest]:
    query: Doc = {}
    if status is not None:
        query["status"] = status
    if envid is not None:
        query["envid"] = envid
    cursor = store["requests"].find(scope_query(service_scope(caller, service), query)).sort("_id", -1).limit(limit)
    docs = [d async for d in cursor]
    envids = list({int(d.get("envid") or 0) for d in docs})
    names = {int(e["_id"]): str(e.get("name", "")) async for e in store.envs.find({"_id": {"$in": envids}},
                                                                                   {"name": 1})}
    return [request_view(d, names) for d in docs]


@router.put(
    "/config",
    response_model=schemas.SchedulerConfigUploaded,
    summary="Upload the global scheduler's pools and services (administrator; YAML, JSON or Carina's global.rb)",
    responses=errors(*COMMON_ERRORS, 403, 413, 415),
    openapi_extra=upload_body(CONFIG_TYPES, "`pools` and `services` (docs/conventions.md), or a global.rb "
                                           "(Content-Type text/x-ruby, or recognised by SHAREDPOOLS/SERVICES)"),
)
async def upload_scheduler_config(request: Request, gw: GatewayDep,
                                  _admin: AdminDep) -> schemas.SchedulerConfigUploaded:
    text = await read_upload(request, CONFIG_TYPES, gw.settings.max_config_bytes)
    config, warnings = parse_global(text, is_global_rb(text, media_type(request)))
    revision = await store_global(gw.store, config.to_native())
    log.info("global scheduler configuration stored",
             extra={"revision": revision, "pools": len(config.pools), "services": len(config.services)})
    return schemas.SchedulerConfigUploaded(revision=revision, pools=sorted(config.pools),
                                           services=sorted(config.services), warnings=warnings)


@router.get("/config", response_model=schemas.StoredSchedulerConfig,
            summary="The global scheduler's configuration (administrator)", responses=errors(*COMMON_ERRORS, 403, 404))
async def get_scheduler_config(gw: GatewayDep, _admin: AdminDep) -> schemas.StoredSchedulerConfig:
    doc = await gw.store.configs.find_one({"_id": GLOBAL_CONFIG_ID})
    if doc is None:
        raise not_found(NOT_CONFIGURED)
    return schemas.StoredSchedulerConfig(revision=int(doc.get("revision", 1)), uploaded_at=doc.get("uploaded_at"),
                                         config=doc.get("doc") or {})


@router.get("/pools", response_model=list[schemas.Pool], response_model_by_alias=True,
            summary="Capacity pools: size, class, and what ALLOCATED requests hold",
            responses=errors(*COMMON_ERRORS, 404))
async def pools(gw: GatewayDep, _caller: CallerDep) -> list[schemas.Pool]:
    return await list_pools(gw.store)


@router.get("/services", response_model=list[schemas.SchedulerService], response_model_by_alias=True,
            summary="Services: class, quota, and what they hold (a service account sees its own)",
            responses=errors(*COMMON_ERRORS, 404))
async def services(gw: GatewayDep, caller: CallerDep, service: ServiceQuery = None) -> list[schemas.SchedulerService]:
    return await list_services(gw.store, caller, service)


@router.get("/requests", response_model=list[schemas.CapacityRequest],
            summary="Capacity requests of the ledger, newest first (a service account sees its own)",
            responses=errors(*COMMON_ERRORS, 404))
async def requests(
    gw: GatewayDep,
    caller: CallerDep,
    service: Annotated[str | None, Query(min_length=1, max_length=63, pattern=SERVICE_PATTERN,
                                         description="only this service's requests")] = None,
    status: Annotated[schemas.RequestStatus | None, Query(description="only requests in this status")] = None,
    envid: Annotated[int | None, Query(ge=1, le=MAX_ID, description="only this environment's requests")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> list[schemas.CapacityRequest]:
    return await list_requests(gw.store, caller, service, status, envid, limit)
