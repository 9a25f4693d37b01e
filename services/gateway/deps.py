"""Dependencies shared by the routes: the gateway's state, the caller's identity, and the service it acts for.

Every user route takes a `Caller` (bearer token → administrator or one service account). A service account only
ever sees its own service's documents: routes add `scope_query(...)` to every MongoDB filter, so a foreign id looks
exactly like an unknown one (404), never like a forbidden one — existence does not leak.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from libs.common.auth import hash_api_token
from libs.common.bus import Bus
from libs.common.db import Store
from libs.common.messages import Message
from libs.common.settings import CommonSettings
from services.gateway.metrics import NUDGES_LOST
from services.gateway.notify_watch import NotifyWatch
from services.gateway.ratelimit import RateLimiter
from services.gateway.schemas import ErrorBody
from services.gateway.settings import SERVICE_NAME_RE, GatewaySettings

log = logging.getLogger("carina.gateway")

SERVICE_PATTERN = SERVICE_NAME_RE.pattern


@dataclass
class Gateway:
    """What every request handler needs; one per app."""

    store: Store
    bus: Bus
    settings: GatewaySettings
    common: CommonSettings
    limiter: RateLimiter
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    notify_watch: NotifyWatch = field(default_factory=NotifyWatch)

    async def nudge(self, message: Message) -> bool:
        """Publish a command after its document was written; a failure is logged, never raised.

        The write already happened, so the request succeeded: the consumer's periodic resync from MongoDB picks the
        command up even if this nudge is lost (DESIGN.md §2).
        """
        try:
            await self.bus.publish(message, attempts=2)
            return True
        except Exception as exc:  # noqa: BLE001 - any broker failure: the resync covers it
            NUDGES_LOST.labels(subject=".".join(message.subject().split(".")[:2])).inc()
            log.warning("command recorded but its nudge was not published; the resync will pick it up",
                        extra={"subject": message.subject(), "error": f"{type(exc).__name__}: {exc}"})
            return False


def get_gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


GatewayDep = Annotated[Gateway, Depends(get_gateway)]

bearer = HTTPBearer(auto_error=False, description="an API token: the administrator's or a service account's")


@dataclass(frozen=True)
class Caller:
    """Who is calling: the administrator (any service) or a service account (its own service only)."""

    role: str  # "admin" | "service"
    service: str | None  # None for the administrator

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": 'Bearer realm="carina"'})


async def get_caller(gw: GatewayDep, creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> Caller:
    if creds is None or not creds.credentials:
        raise unauthorized("missing bearer token (Authorization: Bearer <token>)")
    return await caller_from_token(gw, creds.credentials)


async def caller_from_token(gw: Gateway, token: str) -> Caller:
    """The administrator or the service account a bearer token belongs to, or 401."""
    presented = token.strip()
    admin = gw.settings.admin_token
    if admin is not None and hmac.compare_digest(presented.encode(), admin.get_secret_value().encode()):
        return Caller("admin", None)
    account = await gw.store["accounts"].find_one({"token_hash": hash_api_token(presented)})
    if account is None or account.get("role") != "service":
        raise unauthorized("invalid bearer token")
    return Caller("service", str(account["service"]))


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_admin(caller: CallerDep) -> Caller:
    if not caller.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this operation needs the administrator's token")
    return caller


AdminDep = Annotated[Caller, Depends(get_admin)]

ServiceQuery = Annotated[str | None, Query(min_length=1, max_length=63, pattern=SERVICE_PATTERN,
                                           description="the service to act for (administrator only)")]


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, what)


def service_scope(caller: Caller, service: str | None) -> str | None:
    """The service a read is limited to (None: every service, administrator only).

    A service account naming another service gets 404, as if that service did not exist.
    """
    if caller.is_admin:
        return service
    if service is not None and service != caller.service:
        raise not_found(f"service '{service}' not found")
    return caller.service


def acting_service(caller: Caller, service: str | None) -> str:
    """The service a write acts for; the administrator must name it."""
    scoped = service_scope(caller, service)
    if scoped is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "the administrator must name the service (query parameter or field 'service')")
    return scoped


def scope_query(scope: str | None, query: dict[str, Any] | None = None) -> dict[str, Any]:
    """A MongoDB filter limited to the caller's service."""
    out = dict(query or {})
    if scope is not None:
        out["service"] = scope
    return out


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error codes, all with the `ErrorBody` shape."""
    text = {
        400: "Malformed request", 401: "Missing or invalid bearer token", 403: "Not allowed for this caller",
        404: "Not found (or not visible to this caller)", 409: "Refused by the environment's current state",
        413: "Upload too large", 415: "Unsupported content type", 422: "Invalid input; `problems` lists each one",
        429: "Too many requests", 503: "A dependency (MongoDB, NATS) is unavailable",
    }
    return {code: {"model": ErrorBody, "description": text.get(code, "Error")} for code in codes}


# Every authenticated route can answer these.
COMMON_ERRORS = (400, 401, 422, 503)
