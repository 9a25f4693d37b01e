"""An environment's policies as the policy service sees them: state, counters and recent decisions (read-only).

The policy service owns `policy_state` (one document per environment: counters, cooldown, the last evaluation's
decisions) and `decisions` (the audit of every action and every change of reason); this route joins them with the
environment's policy status, so `oneenv policy ENVID` can answer "why did (or didn't) it scale?".
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.gateway import schemas
from services.gateway.deps import COMMON_ERRORS, CallerDep, GatewayDep, ServiceQuery, errors
from services.gateway.routes.environments import EnvId, load_env
from services.gateway.views import policy_view

router = APIRouter(prefix="/api/v1", tags=["environments"])


@router.get("/environments/{envid}/policy", response_model=schemas.PolicyView,
            summary="Policy status, counters and recent decisions of one environment",
            responses=errors(*COMMON_ERRORS, 404))
async def environment_policy(
    envid: EnvId,
    gw: GatewayDep,
    caller: CallerDep,
    service: ServiceQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="recorded decisions to return")] = 20,
) -> schemas.PolicyView:
    env = await load_env(gw, caller, envid, service)
    state = await gw.store["policy_state"].find_one({"_id": envid})
    decisions = [d async for d in gw.store["decisions"].find({"envid": envid}).sort("at", -1).limit(limit)]
    return policy_view(env, state, decisions)
