"""Progress of one environment as server-sent events (what `oneenv --watch` and the web page follow).

The stream opens with a snapshot read from MongoDB, then relays every `EnvEvent` envmgr publishes on
`events.env.<envid>` (a core NATS subscription: watchers only need what happens while they watch). Because a NATS
event can be missed — the watcher connected between two events, the broker restarted — the snapshot is re-read
every couple of seconds and sent when it changed, so a watcher never waits on a lost message. With `until=done`
the stream ends once the watched job is DONE, FAIL or ABORT, with a final `end` event carrying its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from nats.aio.msg import Msg
from pydantic import ValidationError

from libs.common.db import Doc
from libs.common.messages import EnvEvent
from libs.common.subjects import EVENTS_ENV
from services.gateway.deps import COMMON_ERRORS, CallerDep, Gateway, GatewayDep, ServiceQuery, errors, not_found
from services.gateway.metrics import EVENT_STREAMS
from services.gateway.routes.environments import MAX_ID, EnvId, load_env
from services.gateway.views import TERMINAL_JOB

log = logging.getLogger("carina.gateway.events")

router = APIRouter(prefix="/api/v1", tags=["environments"])


def _json(value: Any) -> str:
    return json.dumps(value, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v),
                      separators=(",", ":"))


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {_json(data)}\n\n".encode()


async def snapshot(gw: Gateway, envid: int, jobid: int | None) -> tuple[dict[str, Any], Doc | None]:
    """The environment's state for watchers, and the watched job's document."""
    env = await gw.store.envs.find_one({"_id": envid}, {"spec": 0, "notify": 0}) or {}
    op = env.get("op") if isinstance(env.get("op"), dict) else None
    job = await gw.store.jobs.find_one({"_id": jobid}) if jobid is not None else None
    current = None
    if op is not None:
        current = {"jobid": op.get("jobid"), "type": op.get("type"), "phase": op.get("phase")}
    elif job is not None:
        current = {"jobid": job["_id"], "type": job.get("type"), "phase": None}
    if current is not None and job is not None and current["jobid"] == job["_id"]:
        current["status"] = job.get("status")
    failed = env.get("failed") if isinstance(env.get("failed"), dict) else None
    data = {
        "envid": envid,
        "status": env.get("status"),
        "policy_status": env.get("policy_status"),
        "app_url": env.get("app_url") or None,
        "info": env.get("info") or None,
        "job": current,
        "failed": {"jobid": failed.get("jobid"), "type": failed.get("type"), "reason": failed.get("reason")}
        if failed else None,
    }
    return data, job


def _end(job: Doc | None, outcome: str | None = None) -> bytes:
    if job is None:
        return sse("end", {"jobid": None, "status": outcome or "NONE", "reason": None})
    return sse("end", {"jobid": job["_id"], "status": outcome or job.get("status"), "reason": job.get("reason")})


async def stream_events(gw: Gateway, envid: int, jobid: int | None, until_done: bool,
                        deadline: float) -> AsyncIterator[bytes]:
    """The event stream of one environment (see the module docstring)."""
    queue: asyncio.Queue[EnvEvent] = asyncio.Queue(maxsize=1000)

    async def on_message(msg: Msg) -> None:
        try:
            event = EnvEvent.model_validate_json(msg.data)
        except (ValidationError, ValueError):
            return  # not ours to judge; envmgr's own tests cover its payloads
        with contextlib.suppress(asyncio.QueueFull):  # a watcher this slow gets the next snapshot instead
            queue.put_nowait(event)

    subscription = None
    if gw.bus.nc is not None and gw.bus.connected:
        try:
            subscription = await gw.bus.nc.subscribe(f"{EVENTS_ENV}.{envid}", cb=on_message)
        except Exception as exc:  # noqa: BLE001 - without NATS the snapshot polling still reports progress
            log.warning("event subscription failed; polling only", extra={"envid": envid, "error": repr(exc)})
    EVENT_STREAMS.inc()
    try:
        data, job = await snapshot(gw, envid, jobid)
        last_sent = data
        yield sse("snapshot", data)
        last_write = time.monotonic()
        while True:
            if until_done and (job is None or job.get("status") in TERMINAL_JOB):
                yield _end(job)
                return
            now = time.monotonic()
            if now >= deadline:
                yield _end(job, "TIMEOUT")
                return
            if gw.stopping.is_set():
                return
            try:
                event = await asyncio.wait_for(queue.get(), timeout=min(gw.settings.sse_poll, deadline - now))
            except TimeoutError:
                event = None
            if event is not None:
                yield sse("progress", event.model_dump(mode="json", exclude={"schema_version"}))
                last_write = time.monotonic()
                if not (until_done and event.jobid == jobid and event.job_status in TERMINAL_JOB):
                    continue
            # Fallback (and confirmation of a terminal event): re-read the snapshot, send it if it changed.
            data, job = await snapshot(gw, envid, jobid)
            if data != last_sent:
                last_sent = data
                yield sse("snapshot", data)
                last_write = time.monotonic()
            elif time.monotonic() - last_write >= gw.settings.sse_heartbeat:
                yield b": keep-alive\n\n"
                last_write = time.monotonic()
    finally:
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()


@router.get(
    "/environments/{envid}/events",
    summary="Follow an environment's progress (server-sent events)",
    response_class=StreamingResponse,
    responses={
        200: {"description": "`snapshot`, `progress` and `end` events; `: keep-alive` comments",
              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **errors(*COMMON_ERRORS, 404),
    },
)
async def environment_events(
    envid: EnvId,
    gw: GatewayDep,
    caller: CallerDep,
    service: ServiceQuery = None,
    until: Annotated[Literal["done"] | None, Query(description="'done': end when the watched job ends")] = None,
    jobid: Annotated[int | None, Query(ge=1, le=MAX_ID, description="the job to watch (default: the current one)")
                     ] = None,
    max_seconds: Annotated[float, Query(alias="timeout", gt=0, le=86400,
                                        description="seconds before the stream ends anyway")] = 3600,
) -> StreamingResponse:
    env = await load_env(gw, caller, envid, service)
    if jobid is not None and await gw.store.jobs.find_one({"_id": jobid, "envid": envid}, {"_id": 1}) is None:
        raise not_found(f"Job {jobid} of environment {envid} not found")
    if jobid is None:
        op = env.get("op")
        if isinstance(op, dict) and op.get("jobid") is not None:
            jobid = int(op["jobid"])
        elif until == "done":
            latest = await gw.store.jobs.find_one({"envid": envid}, sort=[("_id", -1)])
            jobid = int(latest["_id"]) if latest is not None else None
    body = stream_events(gw, envid, jobid, until == "done", time.monotonic() + max_seconds)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
