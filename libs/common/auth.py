"""Credentials: per-VM guest tokens and API bearer tokens.

Guest tokens (DESIGN.md §5, RELIABILITY.md B5). A guest proves which VM it is with a token Carina put in its
CONTEXT. The token is an HMAC of the slot id, its incarnation and a random nonce under `CARINA_TOKEN_SECRET`; it is
never stored: the provisioner derives it when it renders the VM's CONTEXT, the gateway derives it again to check a
callback, with a constant-time comparison. A recreated VM is a new incarnation with a new nonce, so its
predecessor's token stops working; a removed environment's slots are no longer live, so their tokens are refused.

API tokens. Each service account (and the admin) holds an opaque random token; only its SHA-256 is stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def guest_token(secret: str, slot_id: str, incarnation: int, nonce: str) -> str:
    """The token of one VM incarnation (URL-safe, 43 characters)."""
    mac = hmac.new(secret.encode(), f"{slot_id}|{incarnation}|{nonce}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def check_guest_token(secret: str, slot_id: str, incarnation: int, nonce: str, presented: str | None) -> bool:
    """Constant-time check of a presented guest token."""
    if not presented:
        return False
    expected = guest_token(secret, slot_id, incarnation, nonce)
    return hmac.compare_digest(expected.encode(), presented.strip().encode())


def new_nonce() -> str:
    """A fresh random nonce for a new VM incarnation."""
    return secrets.token_urlsafe(16)


def new_api_token() -> str:
    """A new opaque API token (shown once, stored hashed)."""
    return "crn_" + secrets.token_urlsafe(32)


def hash_api_token(token: str) -> str:
    """What is stored for an API token."""
    return hashlib.sha256(token.encode()).hexdigest()
