"""The one entry-point shape all six services share.

`python -m services.<name>` calls `run_service(...)`, which:

1. loads settings (a bad one stops start-up with a one-line message) and sets up JSON logging;
2. connects to NATS and MongoDB with bounded retries — an unreachable dependency ends in a clear message and a
   non-zero exit, not a traceback loop;
3. declares the streams, creates the indexes, and calls the service's `setup(ctx)` which starts its consumers and
   background loops;
4. serves `/healthz` (alive), `/readyz` (dependencies reachable, consumers running) and `/metrics` on its own port;
5. on SIGTERM/SIGINT stops consuming, lets in-flight handlers finish, drains NATS, closes MongoDB and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from libs.common.bus import Bus
from libs.common.db import Store
from libs.common.errors import StartupError
from libs.common.logging import setup_logging
from libs.common.metrics import READY
from libs.common.settings import CommonSettings, check_secret

log = logging.getLogger("carina.runner")


@dataclass
class ServiceContext:
    """What a service's `setup` receives: its connections, settings and a place to register background work."""

    name: str
    common: CommonSettings
    settings: Any
    bus: Bus
    store: Store
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    readiness_checks: list[Callable[[], bool]] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def spawn(self, loop_factory: Callable[[], Awaitable[Any]], name: str) -> None:
        """Run a background loop for the life of the service; if it crashes, log it and start it again."""

        async def guarded() -> None:
            while not self.stopping.is_set():
                try:
                    await loop_factory()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - a background loop must outlive a bug in one iteration
                    log.exception("background task crashed; restarting", extra={"task": name})
                    await self.sleep(1)

        self.tasks.append(asyncio.create_task(guarded(), name=name))

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless the service is stopping. Returns False when it is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        return not self.stopping.is_set()

    def ready(self) -> bool:
        return self.bus.connected and all(check() for check in self.readiness_checks)


class ProbeServer:
    """A tiny HTTP server for /healthz, /readyz and /metrics (no framework needed for three routes)."""

    def __init__(self, ctx: ServiceContext, host: str, port: int) -> None:
        self.ctx = ctx
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._mongo_ok = True

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def refresh_mongo(self) -> None:
        while not self.ctx.stopping.is_set():
            self._mongo_ok = await self.ctx.store.ping()
            await self.ctx.sleep(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode(errors="replace").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            if path == "/healthz":
                status, body, ctype = 200, b'{"status":"ok"}', "application/json"
            elif path == "/readyz":
                ready = self.ctx.ready() and self._mongo_ok
                READY.set(1 if ready else 0)
                status = 200 if ready else 503
                body = b'{"status":"ready"}' if ready else b'{"status":"not ready"}'
                ctype = "application/json"
            elif path == "/metrics":
                status, body, ctype = 200, generate_latest(), CONTENT_TYPE_LATEST
            else:
                status, body, ctype = 404, b'{"detail":"not found"}', "application/json"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


SetupFn = Callable[[ServiceContext], Awaitable[None]]


async def serve(name: str, common: CommonSettings, settings: Any, setup: SetupFn, probe_port: int) -> None:
    """Run a service until SIGTERM/SIGINT (the body of `run_service`, usable from tests)."""
    loop = asyncio.get_running_loop()
    bus = Bus(common.nats_url, name=f"carina-{name}", user=common.nats_user, password=common.nats_password,
              replicas=common.nats_replicas)
    store = Store(common.mongodb_url, common.mongodb_db)
    ctx = ServiceContext(name=name, common=common, settings=settings, bus=bus, store=store)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, ctx.stopping.set)
    probes = ProbeServer(ctx, common.probe_host, probe_port)
    port = await probes.start()
    log.info("probe server listening", extra={"url": f"http://{common.probe_host}:{port}"})
    try:
        await bus.connect(timeout=common.startup_timeout)
        await store.connect(timeout=common.startup_timeout)
        await store.ensure_indexes()
        await bus.declare_streams()
        await setup(ctx)
        ctx.spawn(probes.refresh_mongo, "mongo-ping")
        READY.set(1)
        log.info("service ready", extra={"instance": ctx.instance})
        await ctx.stopping.wait()
        log.info("shutting down")
    finally:
        ctx.stopping.set()
        READY.set(0)
        await bus.stop_consuming()
        for cleanup in reversed(ctx.cleanups):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(cleanup(), timeout=10)
        for task in ctx.tasks:
            task.cancel()
        await asyncio.gather(*ctx.tasks, return_exceptions=True)
        await bus.close()
        await store.close()
        await probes.close()
        log.info("stopped")


def run_service(name: str, settings: Any, setup: SetupFn, common: CommonSettings | None = None) -> None:
    """The `__main__` of every service: settings → logging → `serve` → exit code."""
    from libs.common.settings import load_settings

    common = common or load_settings(CommonSettings)
    check_secret(common)
    setup_logging(name, common.log_level, common.log_format)
    try:
        asyncio.run(serve(name, common, settings, setup, getattr(settings, "probe_port", 0)))
    except StartupError as exc:
        log.error("start-up failed", extra={"reason": str(exc)})
        sys.stderr.write(f"carina-{name}: {exc}\n")
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass
