"""The gateway with NATS unreachable: writes still succeed (envmgr's resync picks them up), readiness says no."""

from __future__ import annotations

import httpx
from gateway_helpers import CONFIG_YAML, TEMPLATE_VM, make_settings

from libs.common.bus import Bus
from libs.common.db import Store
from libs.common.settings import CommonSettings
from services.gateway.accounts import set_service_token
from services.gateway.app import create_app


async def test_accepted_request_survives_a_lost_nudge(store: Store, common: CommonSettings) -> None:
    never_connected = Bus("nats://127.0.0.1:1", name="down")
    app = create_app(store, never_connected, make_settings(), common)
    await set_service_token(store, "alpha", "crn_alpha-degraded-test")
    auth = {"Authorization": "Bearer crn_alpha-degraded-test"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["nats"] is False
        await client.put("/api/v1/templates/small.vm", content=TEMPLATE_VM,
                         headers={**auth, "Content-Type": "text/plain"})
        await client.put("/api/v1/config", content=CONFIG_YAML, headers={**auth, "Content-Type": "text/yaml"})
        resp = await client.post("/api/v1/environments", json={"config": "tomcat"}, headers=auth)
        assert resp.status_code == 202, resp.text
        env = await store.envs.find_one({"_id": resp.json()["envid"]})
        assert env is not None and env["op"]["type"] == "CREATE"
        removal = await client.delete(f"/api/v1/environments/{env['_id']}", headers=auth)
        assert removal.status_code == 202
