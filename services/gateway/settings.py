"""Settings of the gateway (`CARINA_GATEWAY_…`), the only HTTP ingress for users and guests.

Read once at start-up by `services.gateway.__main__`; `check_settings` refuses a deployment without an admin token
(or with a placeholder one) outside development mode, with a one-line message naming the variable.
"""

from __future__ import annotations

import re
import sys

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from libs.common.settings import CommonSettings, ServiceSettings

SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")

# Values people paste from examples; a production gateway must never run with one of them.
_PLACEHOLDERS = ("changeme", "change-me", "changethis", "change_me", "secret", "admin", "password", "dev-only",
                 "placeholder", "token")


class GatewaySettings(ServiceSettings):
    """The gateway's own settings."""

    model_config = SettingsConfigDict(env_prefix="CARINA_GATEWAY_", extra="ignore", env_ignore_empty=True)

    host: str = Field("127.0.0.1", description="address the HTTP API listens on")
    port: int = Field(8080, ge=0, le=65535, description="port of the HTTP API (0 picks a free one)")
    public_url: str = Field("http://127.0.0.1:8080", description="base URL guests use to call back (CARINA_URL)")
    admin_token: SecretStr | None = Field(None, description="the administrator's bearer token (required)")
    dev_service: str | None = Field(None, description="service account upserted at start-up (make run)")
    dev_token: SecretStr | None = Field(None, description="the API token of dev_service")
    guest_rate: float = Field(50.0, gt=0, description="guest callbacks per second allowed per VM")
    guest_burst: int = Field(100, ge=1, description="guest callbacks a VM may send in a burst")
    sse_poll: float = Field(2.0, gt=0, le=60, description="seconds between snapshot re-reads of an event stream")
    sse_heartbeat: float = Field(15.0, gt=0, le=300, description="seconds between keep-alive comments")
    max_config_bytes: int = Field(1_048_576, ge=1024, description="largest configuration upload accepted")
    max_template_bytes: int = Field(262_144, ge=1024, description="largest .vm template upload accepted")

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL such as http://carina.example.org:8080")
        return value.rstrip("/")

    @field_validator("dev_service")
    @classmethod
    def _service(cls, value: str | None) -> str | None:
        if value is not None and not SERVICE_NAME_RE.match(value):
            raise ValueError("service names may use letters, digits, '_', '-' and '.' (max 63)")
        return value


def is_placeholder(secret: str) -> bool:
    """True for secrets that are obviously copied from an example or too short to be random."""
    lowered = secret.strip().lower()
    return len(lowered) < 16 or any(lowered.startswith(p) for p in _PLACEHOLDERS)


def check_settings(settings: GatewaySettings, common: CommonSettings) -> None:
    """Stop start-up with one line when a secret is missing or a placeholder (outside dev mode)."""
    problem: tuple[str, str] | None = None
    if settings.admin_token is None and not common.dev_mode:
        problem = ("CARINA_GATEWAY_ADMIN_TOKEN", "required (or set CARINA_DEV_MODE=true for development)")
    elif settings.admin_token is not None and not common.dev_mode and is_placeholder(
            settings.admin_token.get_secret_value()):
        problem = ("CARINA_GATEWAY_ADMIN_TOKEN", "a placeholder or too short (use at least 16 random characters)")
    elif (settings.dev_service is None) != (settings.dev_token is None):
        problem = ("CARINA_GATEWAY_DEV_TOKEN", "CARINA_GATEWAY_DEV_SERVICE and CARINA_GATEWAY_DEV_TOKEN go together")
    elif settings.dev_token is not None and not common.dev_mode and is_placeholder(
            settings.dev_token.get_secret_value()):
        problem = ("CARINA_GATEWAY_DEV_TOKEN", "a placeholder or too short (use at least 16 random characters)")
    if problem is not None:
        sys.stderr.write(f"carina: invalid setting {problem[0]}: {problem[1]}\n")
        raise SystemExit(2)
