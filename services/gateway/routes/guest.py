"""Callbacks from guest VMs: Carina's CGI routes, OneGate's `PUT /vm`, and master notifications (pull mode).

A guest proves which VM incarnation it is with the token Carina put in its CONTEXT (`libs.common.auth`): the gateway
derives the token again from the live slot (slot id, incarnation, nonce) and compares in constant time. A missing
token is 401; a wrong one — another VM's, a replaced incarnation's, a removed environment's — is 403, and nothing
changes. An accepted callback is published as a `GuestReport` for the callback service, which records it; the
gateway itself never writes slot or environment state. User bearer tokens mean nothing here, and these routes are
left out of the user API's OpenAPI document (they are documented in DESIGN.md §"Guest protocol").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from libs.common.auth import check_guest_token
from libs.common.db import Doc
from libs.common.messages import GuestReport
from services.gateway.deps import Gateway, GatewayDep
from services.gateway.metrics import GUEST_CALLBACKS
from services.gateway.schemas import Ack, Notification, Notifications
from services.gateway.uploads import MULTIPART, media_type
from services.gateway.views import as_dict, parse_metrics

log = logging.getLogger("carina.gateway.guest")

router = APIRouter(include_in_schema=False)

MAX_GUEST_BODY = 64 * 1024
MAX_CANDIDATES = 16  # one_id is unique per zone; a handful of zones at most share a number
_EMPTY_HTML = b""
ReportKind = Literal["vmstatus", "appstatus", "metrics", "notify_ack"]


class GuestRejected(HTTPException):
    """A refused callback, counted by kind and result."""

    def __init__(self, kind: str, code: int, result: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(code, detail, headers=headers)
        GUEST_CALLBACKS.labels(kind=kind, result=result).inc()


def _numeric(kind: str, name: str, value: str | None, required: bool) -> int | None:
    if value is None or value == "":
        if required:
            raise GuestRejected(kind, status.HTTP_400_BAD_REQUEST, "invalid", f"parameter '{name}' is required")
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise GuestRejected(kind, status.HTTP_400_BAD_REQUEST, "invalid", f"parameter '{name}' must be a number")
    return int(value)


def _limit(gw: Gateway, kind: str, vmid: int, client: str) -> None:
    # Keyed by caller address and VM id: limiting before the token check stops guessing, and a flood of forged
    # requests naming a VM from elsewhere does not lock the real guest out.
    key = f"{client}|{vmid}"
    if not gw.limiter.allow(key):
        retry = max(1, int(gw.limiter.retry_after(key) + 0.999))
        raise GuestRejected(kind, status.HTTP_429_TOO_MANY_REQUESTS, "limited", "too many callbacks from this VM",
                            headers={"Retry-After": str(retry)})


async def verify_guest(request: Request, gw: Gateway, kind: str, vmid: int, envid: int | None, token: str | None,
                       service: str | None = None) -> Doc:
    """The live slot a token belongs to, or 401/403.

    Every candidate slot is checked (no early exit) so that the time taken does not tell which VM ids exist. The
    slot being live is enough: a removed environment's slots are all retired before it is marked inactive.
    """
    _limit(gw, kind, vmid, request.client.host if request.client else "unknown")
    if not token:
        raise GuestRejected(kind, status.HTTP_401_UNAUTHORIZED, "unauthenticated", "missing guest token",
                            headers={"WWW-Authenticate": 'Carina-Token realm="guest"'})
    query: Doc = {"one_id": vmid, "live": True}
    if envid is not None:
        # A guest may call back before Carina has recorded its VM id (the zone answered, the provisioner or envmgr
        # is restarting): the slots of this environment still waiting for their id are candidates too; the token
        # alone decides which slot it is.
        query = {"envid": envid, "live": True, "one_id": {"$in": [vmid, None]}}
    candidates = [s async for s in gw.store.slots.find(query).limit(MAX_CANDIDATES)]
    secret = gw.common.token_secret
    match: Doc | None = None
    for slot in candidates or [{"_id": "-", "incarnation": 0, "nonce": "-"}]:
        ok = check_guest_token(secret, str(slot["_id"]), int(slot.get("incarnation") or 0),
                               str(slot.get("nonce") or ""), token)
        if ok and candidates and match is None:
            match = slot
    if match is None or (service and match.get("service") != service):
        raise _not_this_vm(kind)
    return match


def _not_this_vm(kind: str) -> GuestRejected:
    return GuestRejected(kind, status.HTTP_403_FORBIDDEN, "forbidden",
                         "token not valid for this VM (wrong token, replaced VM, or removed environment)")


async def verify_master(request: Request, gw: Gateway, kind: str) -> tuple[Doc, Doc, dict[str, Any]]:
    """The current master's live slot, its environment and the environment's notifications, or 401/403."""
    vmid, token = _onegate_identity(request, kind)
    slot = await verify_guest(request, gw, kind, vmid, None, token)
    env = await gw.store.envs.find_one({"_id": slot["envid"]}, {"notify": 1, "master_incarnation": 1, "active": 1})
    if env is None or env.get("active") is False:
        raise _not_this_vm(kind)
    return slot, env, _current_master(kind, slot, env)


async def _report(gw: Gateway, slot: Doc, kind: ReportKind, params: dict[str, str], msg_id: str | None = None) -> None:
    report = GuestReport(envid=int(slot["envid"]), slot=str(slot["_id"]), incarnation=int(slot["incarnation"]),
                         one_id=slot.get("one_id"), kind=kind, params=params)
    try:
        await gw.bus.publish(report, attempts=3, msg_id=msg_id)
    except Exception as exc:  # noqa: BLE001 - the guest retries its callback; tell it to
        GUEST_CALLBACKS.labels(kind=kind, result="unavailable").inc()
        log.warning("guest report not published", extra={"slot": slot["_id"], "error": repr(exc)})
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "could not record the report; try again") from None
    GUEST_CALLBACKS.labels(kind=kind, result="accepted").inc()


def _carina_token(request: Request) -> str | None:
    return request.query_params.get("token") or request.headers.get("x-carina-token")


def _onegate_identity(request: Request, kind: str) -> tuple[int, str | None]:
    vmid = _numeric(kind, "X-ONEGATE-VMID", request.headers.get("x-onegate-vmid"), required=True)
    assert vmid is not None
    return vmid, request.headers.get("x-onegate-token")


async def update_vm_status(request: Request, gw: GatewayDep) -> Response:
    """`updatevmstatus.sh?service=&vmid=&envid=&newip=&name=`: the guest's network is configured."""
    q = request.query_params
    vmid = _numeric("vmstatus", "vmid", q.get("vmid"), required=True)
    envid = _numeric("vmstatus", "envid", q.get("envid"), required=False)
    assert vmid is not None
    service = q.get("service") or None
    slot = await verify_guest(request, gw, "vmstatus", vmid, envid, _carina_token(request), service)
    params = {k: q[k][:255] for k in ("newip", "name") if q.get(k)}
    await _report(gw, slot, "vmstatus", params)
    return Response(_EMPTY_HTML, media_type="text/html")


async def update_app_status(request: Request, gw: GatewayDep) -> Response:
    """`updateappstatus.sh?service=&vmid=&envid=&status=`: the application's init status (MASTER_INIT_DONE, …)."""
    q = request.query_params
    vmid = _numeric("appstatus", "vmid", q.get("vmid"), required=True)
    envid = _numeric("appstatus", "envid", q.get("envid"), required=False)
    assert vmid is not None
    app_status = (q.get("status") or "").strip()
    if not app_status or len(app_status) > 256:
        raise GuestRejected("appstatus", status.HTTP_400_BAD_REQUEST, "invalid",
                            "parameter 'status' is required (at most 256 characters)")
    service = q.get("service") or None
    slot = await verify_guest(request, gw, "appstatus", vmid, envid, _carina_token(request), service)
    await _report(gw, slot, "appstatus", {"status": app_status})
    return Response(_EMPTY_HTML, media_type="text/html")


for _path in ("/cgi-bin/updatevmstatus.sh", "/cgi-bin/updatevmstatus"):
    router.add_api_route(_path, update_vm_status, methods=["GET"])
for _path in ("/cgi-bin/updateappstatus.sh", "/cgi-bin/updateappstatus"):
    router.add_api_route(_path, update_app_status, methods=["GET"])


async def _guest_text(request: Request) -> str:
    kind = media_type(request)
    if kind in ("application/x-www-form-urlencoded", MULTIPART):
        form = await request.form(max_files=0, max_fields=20, max_part_size=MAX_GUEST_BODY)
        data = form.get("data")
        return data if isinstance(data, str) else ""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_GUEST_BODY:
            raise GuestRejected("metrics", status.HTTP_413_CONTENT_TOO_LARGE, "invalid", "body too large")
    return body.decode("utf-8", errors="replace")


@router.put("/vm")
async def onegate_update_vm(request: Request, gw: GatewayDep) -> Response:
    """OneGate's `PUT /vm`: `KEY = VALUE` lines (or form field `data`) of numeric metrics."""
    vmid, token = _onegate_identity(request, "metrics")
    slot = await verify_guest(request, gw, "metrics", vmid, None, token)
    try:
        values = parse_metrics(await _guest_text(request))
    except ValueError as exc:
        raise GuestRejected("metrics", status.HTTP_400_BAD_REQUEST, "invalid", str(exc)) from None
    # Each push is a new sample: a unique message id keeps JetStream from folding equal values together.
    msg_id = f"guest.report:{slot['_id']}:{slot['incarnation']}:metrics:{time.time_ns()}"
    await _report(gw, slot, "metrics", {k: repr(v) for k, v in values.items()}, msg_id=msg_id)
    return Response(b"", media_type="text/plain")


def _current_master(kind: str, slot: Doc, env: Doc) -> dict[str, Any]:
    notify = as_dict(env.get("notify"))
    current = int(notify.get("master_incarnation") or env.get("master_incarnation") or 1)
    if slot.get("role") != "master" or int(slot.get("incarnation") or 0) != current:
        raise GuestRejected(kind, status.HTTP_403_FORBIDDEN, "forbidden",
                            "only the environment's current master receives notifications")
    return notify


MAX_WAIT = 30.0  # seconds a long poll may be held


def _pending(slot: Doc, notify: dict[str, Any]) -> list[dict[str, Any]]:
    acked = int(as_dict(slot.get("guest")).get("acked_seq") or 0)
    return sorted((i for i in notify.get("items") or [] if int(i.get("seq", 0)) > acked), key=lambda i: int(i["seq"]))


@router.get("/guest/v1/notifications")
async def notifications(request: Request, gw: GatewayDep) -> JSONResponse:
    """Pending `add`/`delete` notifications for the master, oldest first (pull mode).

    With `?wait=N` (seconds, at most 30) the request is held until there is something pending or N seconds pass:
    a long poll, so that a master learns of a new slave at once without polling Carina every fraction of a second.
    It wakes on the environment's progress events (`events.env.<envid>`), which envmgr publishes when it tells the
    master something (`services.gateway.notify_watch`: one subscription shared by every waiting poll).
    """
    try:
        wait = min(MAX_WAIT, max(0.0, float(request.query_params.get("wait") or 0)))
    except ValueError:
        raise GuestRejected("notifications", status.HTTP_400_BAD_REQUEST, "invalid",
                            "wait must be a number of seconds") from None
    slot, env, notify = await verify_master(request, gw, "notifications")
    items = _pending(slot, notify)
    if not items and wait > 0 and gw.bus.nc is not None and gw.bus.connected:
        envid = int(env["_id"])
        known_seq = int(notify.get("seq") or 0)
        await gw.notify_watch.ensure_started(gw.bus.nc)
        with gw.notify_watch.waiter(envid) as woken:
            deadline = time.monotonic() + wait
            # Checked once the waiter is registered: an event published since our read is either seen here or wakes
            # the waiter. After that, only a new event makes us read again (never a loop on a stale number: a
            # replaced master starts counting from 1 again).
            missed = gw.notify_watch.seen_after(envid, known_seq)
            while not items and not gw.stopping.is_set():
                if not missed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), timeout=max(0.0, deadline - time.monotonic()))
                    if not woken.is_set() or gw.stopping.is_set():
                        break  # the wait is over, or this gateway is stopping: answer now, the master asks again
                    woken.clear()
                missed = False
                fresh_slot = await gw.store.slots.find_one({"_id": slot["_id"], "live": True}, {"guest": 1})
                fresh_env = await gw.store.envs.find_one({"_id": envid}, {"notify": 1, "master_incarnation": 1})
                if fresh_slot is None or fresh_env is None:
                    break
                items = _pending(fresh_slot, as_dict(fresh_env.get("notify")))
    body = Notifications(notifications=[
        Notification(seq=int(i["seq"]), op=str(i.get("op", "")), ip=i.get("ip"), data=str(i.get("data") or ""))
        for i in items])
    GUEST_CALLBACKS.labels(kind="notifications", result="accepted").inc()
    return JSONResponse(body.model_dump(exclude_none=True))


@router.post("/guest/v1/notifications/ack")
async def acknowledge(request: Request, gw: GatewayDep) -> JSONResponse:
    """The master applied every notification up to `seq`."""
    slot, _, notify = await verify_master(request, gw, "notify_ack")
    raw = await request.body()
    if len(raw) > MAX_GUEST_BODY:
        raise GuestRejected("notify_ack", status.HTTP_413_CONTENT_TOO_LARGE, "invalid", "body too large")
    try:
        ack = Ack.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise GuestRejected("notify_ack", status.HTTP_400_BAD_REQUEST, "invalid",
                            f"expected JSON {{\"seq\": <int>}}: {where}: {first['msg']}") from None
    last = int(notify.get("seq") or 0)
    if ack.seq > last:
        raise GuestRejected("notify_ack", status.HTTP_400_BAD_REQUEST, "invalid",
                            f"seq {ack.seq} is beyond the last notification ({last})")
    await _report(gw, slot, "notify_ack", {"seq": str(ack.seq)})
    return JSONResponse({"seq": ack.seq})
