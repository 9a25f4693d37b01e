"""Wiring of the gateway: the FastAPI app (routers, error shapes, metrics) and the service's `setup`.

`create_app(store, bus, settings, common)` builds the app around connections the caller owns, so tests serve it
with uvicorn on a free port against real NATS and MongoDB. `setup(ctx)` is what `run_service` calls: it upserts the
development account if configured, binds the listening socket (a port in use stops start-up with a clear message),
and runs uvicorn inside the service's event loop; the runner's shutdown stops it.

Errors always have one shape, `{"detail": "...", "problems": [{"path", "message"}]?}`: validation problems are
422 with every problem listed, refused operations 409, unknown or foreign ids 404, an unreachable dependency 503,
and an unexpected bug a plain 500 without a stack trace (which goes to the log instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common.bus import Bus
from libs.common.db import Store
from libs.common.errors import NotFoundError, OperationRefused, StartupError, TransientError, ValidationFailed
from libs.common.runner import ServiceContext
from libs.common.settings import CommonSettings
from services.gateway.accounts import set_service_token
from services.gateway.deps import Gateway
from services.gateway.metrics import REQUEST_SECONDS, REQUESTS
from services.gateway.ratelimit import RateLimiter
from services.gateway.routes import (
    carina,
    configs,
    environments,
    events,
    guest,
    health,
    jobs,
    policy,
    scheduler,
    services,
)
from services.gateway.settings import GatewaySettings

log = logging.getLogger("carina.gateway")

API_DESCRIPTION = """\
Carina's REST API: upload a service's configuration and VM templates, create environments (a master and N slaves)
and groups, scale, recover, recreate and remove them, and follow their progress.

Authenticate with `Authorization: Bearer <token>`: a service account's token acts for its own service; the
administrator's token acts for any service named with `service=`. Errors are `{"detail": ..., "problems": [...]}`.
Operations answer `202 Accepted` with a job id at once; follow it with `GET /api/v1/jobs/{jobid}` or the
server-sent events of `GET /api/v1/environments/{envid}/events?until=done`.

Carina's original routes (`/configs`, `/envs`, `/jobs`, `/vms`, `/logs/...`, and the global scheduler's `/pools`,
`/services`, `/requests`) are served too, with Carina's JSON shapes and its `endpoint`/`authinfo` parameters; they
are not part of this document.
"""


def _error(status: int, detail: str, problems: list[tuple[str, str]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if problems:
        body["problems"] = [{"path": p, "message": m} for p, m in problems]
    return JSONResponse(body, status_code=status, headers=headers)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc) or "request"


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure onto the API's error shape and status code."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [(_loc(e.get("loc", ())), str(e.get("msg", "invalid"))) for e in exc.errors()]
        first = f"{problems[0][0]}: {problems[0][1]}" if problems else "invalid request"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return _error(422, f"invalid request: {first}{more}", problems)

    @app.exception_handler(ValidationFailed)
    async def input_rejected(_: Request, exc: ValidationFailed) -> JSONResponse:
        return _error(422, str(exc), exc.problems)

    @app.exception_handler(NotFoundError)
    async def not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(OperationRefused)
    async def refused(_: Request, exc: OperationRefused) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(TransientError)
    async def transient(_: Request, exc: TransientError) -> JSONResponse:
        return _error(503, f"temporarily unavailable: {exc}", headers={"Retry-After": "1"})

    @app.exception_handler(PyMongoError)
    async def database_down(_: Request, exc: PyMongoError) -> JSONResponse:
        log.warning("MongoDB error while answering a request", extra={"error": type(exc).__name__})
        return _error(503, "the database is unavailable; try again", headers={"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", extra={"path": request.url.path})
        return _error(500, "internal error (logged on the server)")


class MetricsMiddleware:
    """Counts requests by route template (not raw path: ids would explode the label set)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500

        async def record(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
                route = scope.get("route")
                REQUEST_SECONDS.labels(route=getattr(route, "path", "unmatched")).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, record)
        except asyncio.CancelledError:
            if code == 500:
                code = 499  # the client went away before an answer (nginx's code), not a server error
            raise
        finally:
            route = scope.get("route")
            REQUESTS.labels(route=getattr(route, "path", "unmatched"), method=scope.get("method", ""),
                            status=str(code)).inc()


def create_app(store: Store, bus: Bus, settings: GatewaySettings, common: CommonSettings) -> FastAPI:
    """The gateway's ASGI app around connections the caller owns (and closes)."""
    app = FastAPI(title="Carina", version="1.0.0", description=API_DESCRIPTION, docs_url="/docs", redoc_url=None)
    app.state.gateway = Gateway(store=store, bus=bus, settings=settings, common=common,
                                limiter=RateLimiter(settings.guest_rate, settings.guest_burst))
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware)
    for module in (health, configs, environments, events, policy, jobs, services, scheduler, guest, carina):
        app.include_router(module.router)
    return app


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service runner owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so that a port in use is a clear start-up error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def start_server(app: FastAPI, sock: socket.socket) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Serve `app` on an already bound socket in the running loop; returns once it accepts connections."""
    config = uvicorn.Config(app, log_config=None, lifespan="off", access_log=False, timeout_graceful_shutdown=5,
                            proxy_headers=False, server_header=False)
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="gateway-http")
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            task.result()
            raise StartupError("the HTTP server stopped during start-up")
        if time.monotonic() > deadline:
            raise StartupError("the HTTP server did not start within 10 s")
        await asyncio.sleep(0.02)
    return server, task


async def stop_server(server: uvicorn.Server, task: asyncio.Task[None], gw: Gateway | None = None) -> None:
    """Stop accepting, end event streams, let in-flight requests finish (uvicorn's graceful timeout)."""
    if gw is not None:
        gw.stopping.set()
        gw.notify_watch.wake_all()
    server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(task), timeout=10)
    if gw is not None:
        await gw.notify_watch.stop()


async def setup(ctx: ServiceContext) -> None:
    """The gateway's part of `run_service`: accounts, app, HTTP server."""
    settings: GatewaySettings = ctx.settings
    if settings.dev_service is not None and settings.dev_token is not None:
        await set_service_token(ctx.store, settings.dev_service, settings.dev_token.get_secret_value())
        log.info("development service account ready", extra={"service_name": settings.dev_service})
    if settings.admin_token is None:
        log.warning("no administrator token configured (development mode): admin routes are unusable")
    app = create_app(ctx.store, ctx.bus, settings, ctx.common)
    sock = bind(settings.host, settings.port)
    server, task = await start_server(app, sock)
    port = sock.getsockname()[1]
    log.info("gateway listening", extra={"url": f"http://{settings.host}:{port}", "public_url": settings.public_url})
    gw: Gateway = app.state.gateway

    async def shutdown() -> None:
        await stop_server(server, task, gw)

    ctx.cleanups.append(shutdown)
    ctx.readiness_checks.append(lambda: server.started and not task.done())
    ctx.tasks.append(task)
