"""Carina's own REST routes (oneenvd and oneenvd-gs), beside the v1 API, so that existing scripts keep working.

The answers keep Carina's JSON shapes (`services.gateway.carina_views`); unlike Carina, errors use proper HTTP
status codes with the API's `{"detail": ...}` body. Every operation goes through the same code as its v1 twin
(`accept_config`, `accept_create`, `start_operation`, `remove_group_members`), so the two APIs cannot disagree.

Authentication is what Carina clients send: the parameters `endpoint` and `authinfo` (query string or form body),
which must equal an endpoint name and its credentials in a service's stored configuration — the caller then acts
as that service — or, like the v1 API, `Authorization: Bearer <token>`. Where several services use the same
endpoint name and credentials, the parameter `service` says which one. These routes are left out of the OpenAPI
document (they are Carina's API, not ours) and are tested by golden tests of their shapes.
"""

from __future__ import annotations

import hmac
import logging
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.responses import PlainTextResponse
from starlette.datastructures import FormData, UploadFile

from libs.common.db import Doc, Store
from libs.common.messages import EnvRemove, EnvScale
from libs.common.operations import CONFIG_ID, start_operation
from services.gateway import carina_views as cv
from services.gateway.deps import (
    Caller,
    Gateway,
    GatewayDep,
    acting_service,
    caller_from_token,
    not_found,
    scope_query,
    service_scope,
    unauthorized,
)
from services.gateway.routes.configs import accept_config, is_config_rb, store_template
from services.gateway.routes.environments import MAX_ID, accept_create, load_env, remove_group_members
from services.gateway.routes.scheduler import list_pools, list_requests, list_services
from services.gateway.settings import SERVICE_NAME_RE
from services.gateway.uploads import MULTIPART, media_type, too_large
from services.gateway.views import as_dict

log = logging.getLogger("carina.gateway.carina")

router = APIRouter(include_in_schema=False)

NOT_AUTHORIZED = "Not authorized to use this service"
FORM_TYPES = ("application/x-www-form-urlencoded", MULTIPART)
CONFIG_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$"
UPLOAD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
ENV_LOG = re.compile(r"^env\.log\.([0-9]{1,18})$")
PLUGINS_UNSUPPORTED = "metric plugins are not supported; use guest-pushed metrics (PUT /vm)"

EnvIdPath = Annotated[int, Path(ge=1, le=MAX_ID)]


# --- parameters and authentication ------------------------------------------------------------------------------------


async def carina_form(request: Request, gw: Gateway) -> FormData | None:
    """The request's form body (url-encoded or multipart), parsed once and within the upload limit."""
    if media_type(request) not in FORM_TYPES:
        return None
    cached = getattr(request.state, "carina_form", None)
    if isinstance(cached, FormData):
        return cached
    limit = gw.settings.max_config_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise too_large(limit)
    try:
        form = await request.form(max_files=1, max_fields=20, max_part_size=limit)
    except Exception as exc:  # noqa: BLE001 - python-multipart raises several types for a broken form
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"unreadable form: {exc}") from None
    request.state.carina_form = form
    return form


def param(request: Request, form: FormData | None, name: str) -> str | None:
    """A Carina parameter from the query string or the form body (Carina's clients used both)."""
    value = request.query_params.get(name)
    if value is None and form is not None:
        field = form.get(name)
        value = field if isinstance(field, str) else None
    value = value.strip() if value is not None else None
    return value or None


async def service_for_credentials(store: Store, endpoint: str, authinfo: str, service: str | None) -> str:
    """The service whose configuration has `endpoint` with credentials `authinfo` (Carina's `checkAuthInfo`).

    Every candidate is compared in constant time, without an early exit, so timing does not tell which ones matched.

    Raises:
        HTTPException: 401 when none matches; 400 when several services match and `service` does not choose one.
    """
    query: Doc = {"kind": "config"}
    if service is not None:
        query["service"] = service
    matches: list[str] = []
    async for doc in store.configs.find(query, {"service": 1, "doc.endpoints": 1}):
        entry = as_dict(as_dict(as_dict(doc.get("doc")).get("endpoints")).get(endpoint))
        stored = str(entry.get("credentials") or "")
        if hmac.compare_digest(stored.encode(), authinfo.encode()) and stored:
            matches.append(str(doc["service"]))
    if not matches:
        raise unauthorized(NOT_AUTHORIZED)
    if len(matches) > 1:
        raise HTTPException(status.HTTP_400_BAD_REQUEST,
                            f"endpoint '{endpoint}' with these credentials belongs to several services "
                            f"({', '.join(sorted(matches))}): add the parameter service=<name>")
    return matches[0]


async def carina_caller(request: Request, gw: GatewayDep) -> Caller:
    """Who calls a Carina route: a bearer token, or Carina's `endpoint` + `authinfo` parameters."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("use Authorization: Bearer <token>, or Carina's endpoint and authinfo parameters")
        return await caller_from_token(gw, token)
    form = await carina_form(request, gw)
    endpoint, authinfo = param(request, form, "endpoint"), param(request, form, "authinfo")
    if endpoint is None or authinfo is None:
        raise unauthorized("send Carina's endpoint and authinfo parameters, or Authorization: Bearer <token>")
    service = param(request, form, "service")
    if service is not None and not SERVICE_NAME_RE.match(service):
        raise unauthorized(NOT_AUTHORIZED)
    return Caller("service", await service_for_credentials(gw.store, endpoint, authinfo, service))


CarinaCaller = Annotated[Caller, Depends(carina_caller)]


async def requested_service(request: Request, gw: Gateway) -> str | None:
    """The `service` parameter (how the administrator names the service to act for)."""
    service = param(request, await carina_form(request, gw), "service")
    if service is not None and not SERVICE_NAME_RE.match(service):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "service names may use letters, digits, '_', '-' and '.' (max 63)")
    return service


async def scope_of(request: Request, gw: Gateway, caller: Caller) -> str | None:
    """The service a read is limited to (None: the administrator reading every service)."""
    return service_scope(caller, await requested_service(request, gw))


# --- oneenvd ----------------------------------------------------------------------------------------------------------


@router.get("/configs")
async def configs(request: Request, gw: GatewayDep, caller: CarinaCaller) -> list[dict[str, Any]]:
    """`[{endpoint, name, desc, type}]` for every environment and group of the service's configuration."""
    service = acting_service(caller, await requested_service(request, gw))
    doc = await gw.store.configs.find_one({"_id": CONFIG_ID.format(service=service)})
    return cv.config_rows(doc["doc"]) if doc is not None else []


async def _upload_text(form: FormData, limit: int) -> tuple[str, str | None]:
    field = form.get("upload")
    if isinstance(field, UploadFile):
        data = await field.read(limit + 1)
        filename = field.filename
    elif isinstance(field, str):
        data, filename = field.encode(), None
    else:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "multipart form without an 'upload' field")
    if len(data) > limit:
        raise too_large(limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"the upload is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the upload is empty")
    return text, filename


@router.post("/configs")
async def upload(request: Request, gw: GatewayDep, caller: CarinaCaller) -> PlainTextResponse:
    """Carina's multipart upload: `type=config|vm|plugin`, `name`, `upload`; answers `OK`."""
    form = await carina_form(request, gw)
    if form is None:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            "send multipart/form-data with the fields type, name and upload (as Carina's oneenv)")
    service = acting_service(caller, await requested_service(request, gw))
    name = param(request, form, "name")
    kind = (param(request, form, "type") or ("vm" if (name or "").endswith(".vm") else "config")).lower()
    if kind == "plugin":
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, PLUGINS_UNSUPPORTED)
    if kind == "config":
        text, filename = await _upload_text(form, gw.settings.max_config_bytes)
        answer = await accept_config(gw, service, text, ruby=is_config_rb(text, filename=filename or name))
        for warning in answer.warnings:
            log.info("config.rb conversion warning", extra={"service_name": service, "warning": warning})
        return PlainTextResponse("OK")
    if kind == "vm":
        text, filename = await _upload_text(form, gw.settings.max_template_bytes)
        template = name or filename or ""
        if not UPLOAD_NAME.match(template):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                "the template needs a name (field 'name') of letters, digits, '_', '-' and '.'")
        await store_template(gw.store, service, template, text)
        return PlainTextResponse("OK")
    raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                        f"unknown upload type '{kind}': use config, vm or plugin")


@router.post("/configs/{configname}")
async def create(request: Request, gw: GatewayDep, caller: CarinaCaller,
                 configname: Annotated[str, Path(pattern=CONFIG_NAME)]) -> dict[str, str]:
    """Create an environment (or a group): `{"envid": "18", "jobid": "51"}` (the group's first member)."""
    service = acting_service(caller, await requested_service(request, gw))
    members = await accept_create(gw, service, configname, request_id=None)
    return {"envid": str(members[0].envid), "jobid": str(members[0].jobid)}


async def _requests_of(store: Store, envids: list[int]) -> dict[int, list[Doc]]:
    out: dict[int, list[Doc]] = {}
    async for req in store["requests"].find({"envid": {"$in": envids}, "status": {"$in": ["PEND", "ALLOCATED"]}},
                                            {"envid": 1, "status": 1}):
        out.setdefault(int(req["envid"]), []).append(req)
    return out


@router.get("/envs")
async def envs(request: Request, gw: GatewayDep, caller: CarinaCaller) -> list[dict[str, Any]]:
    """The service's current environments, in Carina's shape (VM count, CPU metric, scheduler tokens)."""
    scope = await scope_of(request, gw, caller)
    docs = [e async for e in gw.store.envs.find(scope_query(scope, {"active": {"$ne": False}}),
                                                {"spec": 0, "notify": 0}).sort("_id", 1)]
    envids = [int(e["_id"]) for e in docs]
    slots: dict[int, list[Doc]] = {}
    async for slot in gw.store.slots.find({"envid": {"$in": envids}, "live": True},
                                          {"envid": 1, "live": 1, "cpu": 1}):
        slots.setdefault(int(slot["envid"]), []).append(slot)
    requests = await _requests_of(gw.store, envids)
    return [cv.env(e, slots.get(int(e["_id"]), []), requests.get(int(e["_id"]), [])) for e in docs]


@router.get("/envs/{envid}/vms")
async def env_vms(request: Request, gw: GatewayDep, caller: CarinaCaller, envid: EnvIdPath) -> list[dict[str, Any]]:
    """`[{vmid, envid, hostname, ipaddress, status, cpu}]` of one environment."""
    await load_env(gw, caller, envid, await requested_service(request, gw))
    return cv.vms([s async for s in gw.store.slots.find({"envid": envid, "live": True})])


async def _scale(request: Request, gw: Gateway, caller: Caller, envid: int, direction: str) -> dict[str, str]:
    scope = await scope_of(request, gw, caller)
    jobid = await start_operation(gw.store, envid, "SCALEUP" if direction == "up" else "SCALEDOWN",
                                  requested_by="api", service=scope)
    await gw.nudge(EnvScale(envid=envid, direction="up" if direction == "up" else "down", requested_by="api",
                            request_id=f"job-{jobid}"))
    log.info("operation accepted (Carina route)", extra={"envid": envid, "jobid": jobid, "op": f"scale{direction}"})
    return {"jobid": str(jobid)}


@router.put("/envs/{envid}/scaleup")
async def scaleup(request: Request, gw: GatewayDep, caller: CarinaCaller, envid: EnvIdPath) -> dict[str, str]:
    """Add one slave: `{"jobid": "N"}`."""
    return await _scale(request, gw, caller, envid, "up")


@router.put("/envs/{envid}/scaledown")
async def scaledown(request: Request, gw: GatewayDep, caller: CarinaCaller, envid: EnvIdPath) -> dict[str, str]:
    """Remove one slave: `{"jobid": "N"}`."""
    return await _scale(request, gw, caller, envid, "down")


@router.delete("/envs/{target}")
async def remove(request: Request, gw: GatewayDep, caller: CarinaCaller,
                 target: Annotated[str, Path(pattern=r"^-?[1-9][0-9]{0,17}$")]) -> dict[str, str]:
    """Remove an environment (`{"jobid": "a"}`), or with `-GROUPID` every member of a group (`{"jobid": "a,b"}`)."""
    scope = await scope_of(request, gw, caller)
    if target.startswith("-"):
        removal = await remove_group_members(gw, scope, int(target[1:]))
        return {"jobid": ",".join(str(j) for j in removal.jobids)}
    envid = int(target)
    jobid = await start_operation(gw.store, envid, "REMOVE", requested_by="api", service=scope)
    await gw.nudge(EnvRemove(envid=envid, requested_by="api"))
    return {"jobid": str(jobid)}


@router.get("/jobs")
async def jobs(request: Request, gw: GatewayDep, caller: CarinaCaller) -> list[dict[str, Any]]:
    """The service's jobs in Carina's shape, oldest first (the latest 1000)."""
    scope = await scope_of(request, gw, caller)
    latest = [j async for j in gw.store.jobs.find(scope_query(scope)).sort("_id", -1).limit(1000)]
    return [cv.job(j) for j in reversed(latest)]


@router.get("/vms")
async def vms(request: Request, gw: GatewayDep, caller: CarinaCaller) -> list[dict[str, Any]]:
    """Every live VM of the service."""
    scope = await scope_of(request, gw, caller)
    return cv.vms([s async for s in gw.store.slots.find(scope_query(scope, {"live": True}))])


@router.get("/logs/{logname}")
async def logs(request: Request, gw: GatewayDep, caller: CarinaCaller,
               logname: Annotated[str, Path(max_length=64)]) -> PlainTextResponse:
    """`env.log.<envid>`: the environment's history as text (jobs, failures, policy decisions)."""
    match = ENV_LOG.match(logname)
    if match is None:
        raise not_found(f"log '{logname}' not found (the logs served are env.log.<envid>)")
    envid = int(match.group(1))
    env = await load_env(gw, caller, envid, await requested_service(request, gw))
    jobs = [j async for j in gw.store.jobs.find({"envid": envid}).sort("_id", 1)]
    decisions = [d async for d in gw.store["decisions"].find({"envid": envid}).sort("at", -1).limit(200)]
    return PlainTextResponse(cv.env_log(env, jobs, decisions))


# --- oneenvd-gs (the global scheduler) --------------------------------------------------------------------------------


@router.get("/pools")
async def pools(gw: GatewayDep, _caller: CarinaCaller) -> list[dict[str, Any]]:
    """`[{@name, @zone, @vcpus, @mem, @availvcpus, @availmem, @priclass, @status}]`."""
    return [cv.pool(p) for p in await list_pools(gw.store)]


@router.get("/services")
async def services(request: Request, gw: GatewayDep, caller: CarinaCaller) -> list[dict[str, Any]]:
    """`[{@name, @zone, @maxcpus, @maxmemory, @priclass, @clientList, @vcpusallocated, @memallocated}]`."""
    public = urlsplit(gw.settings.public_url)
    port = public.port or (443 if public.scheme == "https" else 80)
    views = await list_services(gw.store, caller, await requested_service(request, gw))
    return [cv.service(v, public.hostname or "", port) for v in views]


@router.get("/requests")
async def requests(request: Request, gw: GatewayDep, caller: CarinaCaller) -> list[dict[str, Any]]:
    """`[{@type, @zone, @submittime, @vcpus, @mem, @env, @envid, @service, @reqid, @status, @pool}]`, oldest first."""
    views = await list_requests(gw.store, caller, await requested_service(request, gw))
    return [cv.request(v) for v in reversed(views)]
