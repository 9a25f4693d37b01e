"""Administration of service accounts (administrator only): issue or rotate a token, list accounts."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, status

from services.gateway import schemas
from services.gateway.accounts import issue_token
from services.gateway.deps import COMMON_ERRORS, SERVICE_PATTERN, AdminDep, GatewayDep, errors

log = logging.getLogger("carina.gateway.services")

router = APIRouter(prefix="/api/v1", tags=["administration"])


@router.post("/services/{service}/token", status_code=status.HTTP_201_CREATED, response_model=schemas.TokenIssued,
             summary="Create a service account or rotate its token (the token is shown once)",
             responses=errors(*COMMON_ERRORS, 403))
async def rotate_token(service: Annotated[str, Path(min_length=1, max_length=63, pattern=SERVICE_PATTERN)],
                       gw: GatewayDep, _admin: AdminDep) -> schemas.TokenIssued:
    token = await issue_token(gw.store, service)
    log.info("service token issued", extra={"service_name": service})
    return schemas.TokenIssued(service=service, token=token)


@router.get("/services", response_model=list[schemas.Account], summary="Service accounts (never their tokens)",
            responses=errors(*COMMON_ERRORS, 403))
async def list_accounts(gw: GatewayDep, _admin: AdminDep) -> list[schemas.Account]:
    return [schemas.Account(service=str(a["service"]), role=str(a.get("role", "service")),
                            created_at=a.get("created_at"), rotated_at=a.get("rotated_at"))
            async for a in gw.store["accounts"].find({}, {"token_hash": 0}).sort("_id", 1)]
