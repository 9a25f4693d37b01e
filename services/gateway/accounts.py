"""Service accounts (the gateway owns the `accounts` collection): one API token per service, stored hashed.

The administrator's token is a setting, not a document. A service account's token is shown once when it is issued
(`POST /api/v1/services/{service}/token`) or configured (`CARINA_GATEWAY_DEV_TOKEN` for `make run`).
"""

from __future__ import annotations

from libs.common.auth import hash_api_token, new_api_token
from libs.common.db import Store
from libs.common.messages import utcnow


async def set_service_token(store: Store, service: str, token: str) -> None:
    """Create the service's account, or replace its token (the old one stops working at once)."""
    now = utcnow()
    await store["accounts"].update_one(
        {"_id": service},
        {"$set": {"service": service, "role": "service", "token_hash": hash_api_token(token), "rotated_at": now},
         "$setOnInsert": {"created_at": now}},
        upsert=True,
    )


async def issue_token(store: Store, service: str) -> str:
    """A fresh random token for `service` (returned once, stored hashed)."""
    token = new_api_token()
    await set_service_token(store, service, token)
    return token
