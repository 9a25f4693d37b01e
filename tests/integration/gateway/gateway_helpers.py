"""Helpers of the gateway tests: the real app served by uvicorn on a free port, against real NATS and MongoDB.

The gateway runs in its own thread with its own event loop and its own connections (exactly as in production,
where it is a separate process), so tests may block — run the `oneenv` CLI as a subprocess, drive Schemathesis —
without stalling it. Tests reach the same database through the suite's `store` fixture to plant the documents
envmgr would have written, and watch NATS through the `bus` fixture.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI

from libs.common.auth import guest_token, new_nonce
from libs.common.bus import Bus
from libs.common.db import Doc, Store
from libs.common.messages import utcnow
from libs.common.settings import CommonSettings
from services.gateway.app import bind, create_app, start_server, stop_server
from services.gateway.settings import GatewaySettings

ADMIN_TOKEN = "adm-" + "7f3c9a1e5b2d4c6e8a0f"
TOKEN_SECRET = "test-token-secret-0123456789abcdef"
CREDENTIALS = "oneadmin:zone-pass-Kq93x"  # must never appear in an API answer

TEMPLATE_VM = 'NAME = "%NAME%"\nCPU = %CPU%\nMEMORY = %MEMORY%\nCONTEXT = [ TOKEN = "YES" ]\n'

CONFIG_YAML = f"""\
endpoints:
  zone1:
    url: http://127.0.0.1:2633/RPC2
    credentials: "{CREDENTIALS}"
templates:
  small:
    file: small.vm
    cpu: 1
    memory: 512
    network_id: {{zone1: 0}}
    image_id: {{zone1: 0}}
environments:
  tomcat:
    type: compute
    endpoint: zone1
    description: Load-balanced Tomcat
    placement_policy: pack
    master_template: small
    slave_template: small
    num_slaves: 2
    slavedata: "8080"
    app_url: "http://%MASTER%:8080/"
  db:
    type: data
    endpoint: zone1
    description: A database
    master_template: small
  stack:
    type: group
    description: db then tomcat
    members: [db, tomcat]
    dependencies: {{tomcat: [db]}}
"""


class ServerThread:
    """The gateway app on a free port, in a thread with its own loop, Store and Bus."""

    def __init__(self, common: CommonSettings, settings: GatewaySettings) -> None:
        self.common = common
        self.settings = settings
        self.port = 0
        self.app: FastAPI | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="gateway-under-test", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"gateway did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to the test through start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        store = Store(self.common.mongodb_url, self.common.mongodb_db)
        await store.connect(timeout=10)
        bus = Bus(self.common.nats_url, name="gateway-under-test")
        await bus.connect(timeout=10)
        await bus.declare_streams()
        self.app = create_app(store, bus, self.settings, self.common)
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        server, task = await start_server(self.app, sock)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await stop_server(server, task, self.app.state.gateway)
            await bus.close()
            await store.close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=20)


def make_settings(**overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {"admin_token": ADMIN_TOKEN, "port": 0, "sse_poll": 0.2, "sse_heartbeat": 1.0,
                              "guest_rate": 5.0, "guest_burst": 20, "public_url": "http://127.0.0.1:8080"}
    values.update(overrides)
    return GatewaySettings(**values)


@dataclass
class Accounts:
    a: str
    b: str
    service_a: str = "alpha"
    service_b: str = "beta"

    def headers(self, who: str) -> dict[str, str]:
        token = {"a": self.a, "b": self.b, "admin": ADMIN_TOKEN}[who]
        return {"Authorization": f"Bearer {token}"}


async def upload_basics(client: httpx.AsyncClient, headers: dict[str, str], service: str | None = None) -> None:
    """The template and the configuration every environment test needs."""
    params = {"service": service} if service else {}
    resp = await client.put("/api/v1/templates/small.vm", content=TEMPLATE_VM, params=params,
                            headers={**headers, "Content-Type": "text/plain"})
    assert resp.status_code == 200, resp.text
    resp = await client.put("/api/v1/config", content=CONFIG_YAML, params=params,
                            headers={**headers, "Content-Type": "application/yaml"})
    assert resp.status_code == 200, resp.text


@dataclass
class Collector:
    """Messages received on NATS subjects (core subscription on the test's own connection)."""

    bus: Bus
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    subs: list[Any] = field(default_factory=list)

    async def subscribe(self, *subjects: str) -> Collector:
        assert self.bus.nc is not None
        for subject in subjects:
            self.subs.append(await self.bus.nc.subscribe(subject, cb=self._on))
        await self.bus.nc.flush()
        return self

    async def _on(self, msg: Any) -> None:
        self.messages.append((msg.subject, msg.data))

    async def wait_for(self, match: Callable[[str, Any], bool], within: float = 5.0) -> Any:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            for subject, data in self.messages:
                payload = json.loads(data)
                if match(subject, payload):
                    return payload
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no matching message within {within} s; got {self.messages!r}")
            await asyncio.sleep(0.05)

    def matching(self, match: Callable[[str, Any], bool]) -> list[Any]:
        return [json.loads(d) for s, d in self.messages if match(s, json.loads(d))]

    async def close(self) -> None:
        for sub in self.subs:
            await sub.unsubscribe()


async def plant_running_env(store: Store, envid: int, service: str, *, slaves: int = 1, one_id_base: int = 0,
                            op: Doc | None = None, notify: Doc | None = None, name: str = "tomcat") -> dict[str, Any]:
    """An environment as envmgr leaves it after a successful create: master + slaves, live, with guest tokens."""
    now = utcnow()
    base = one_id_base or envid * 10
    await store.envs.insert_one({
        "_id": envid, "version": 3, "service": service, "name": name, "type": "compute", "description": "",
        "endpoint": "zone1", "zone": "zone1", "status": "SLAVE_0_INIT_DONE", "policy_status": "ACTIVE",
        "app_url": f"http://10.0.{envid % 250}.1:8080/", "info": "", "desired_slaves": slaves, "active": True,
        "op": op, "failed": None, "notify": notify or {"master_incarnation": 1, "seq": 0, "items": []},
        "groupid": None, "group_name": None, "created_at": now, "updated_at": now,
        "spec": {"config": {"type": "compute", "endpoint": "zone1"}, "secret_note": "internal"},
    })
    slots = []
    roles = [("master", 0)] + [("slave", i) for i in range(slaves)]
    for position, (role, index) in enumerate(roles):
        slot_id = f"{envid}:master:1" if role == "master" else f"{envid}:slave:{index}:1"
        nonce = new_nonce()
        slots.append({
            "_id": slot_id, "envid": envid, "service": service, "role": role, "index": index, "incarnation": 1,
            "name": f"{name}-{envid}-{'m' if role == 'master' else f's{index}'}", "zone": "zone1", "live": True,
            "nonce": nonce, "one_id": base + position, "lifecycle": "RUNNING",
            "ip": f"10.0.{envid % 250}.{position + 1}",
            "host": "host01", "cpu": 12.5, "guest": {"status": "MASTER_INIT_DONE" if role == "master" else
                                                     f"SLAVE_{index}_INIT_DONE", "acked_seq": 0},
            "created_at": now,
        })
    await store.slots.insert_many(slots)
    return {"env": envid, "slots": slots,
            "tokens": {s["_id"]: guest_token(TOKEN_SECRET, str(s["_id"]), 1, str(s["nonce"])) for s in slots}}
