"""Liveness and readiness of the gateway on its public port (the runner's probe port serves them too)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.gateway.deps import GatewayDep
from services.gateway.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, summary="MongoDB and NATS are reachable",
            responses={503: {"model": Health, "description": "A dependency is unreachable"}})
async def readyz(gw: GatewayDep) -> JSONResponse:
    checks = {"mongodb": await gw.store.ping(), "nats": gw.bus.connected}
    ready = all(checks.values()) and not gw.stopping.is_set()
    body = Health(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
