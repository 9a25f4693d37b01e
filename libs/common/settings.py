"""Settings shared by the six services, read from the environment with pydantic-settings.

Every service builds its own `Settings` class from `ServiceSettings` with the prefix `CARINA_<SERVICE>_`; the
settings every service needs (NATS, MongoDB, logging, probes) live in `CommonSettings` under the plain `CARINA_`
prefix. `load_settings` turns a validation failure into one line naming the environment variable and exits, so a
bad deployment stops at start-up with a message an operator can act on instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRETS_DIR = "/run/secrets"  # where Kubernetes mounts secrets; missing locally, which pydantic-settings tolerates


class CommonSettings(BaseSettings):
    """Settings every service reads (`CARINA_…`)."""

    model_config = SettingsConfigDict(env_prefix="CARINA_", extra="ignore", env_ignore_empty=True)

    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server URL(s), comma separated")
    nats_user: str | None = Field(None, description="NATS user of this service (per-service permissions)")
    nats_password: str | None = Field(None, description="password of the NATS user")
    nats_replicas: int = Field(1, ge=1, le=5, description="JetStream stream replicas (3 in production)")
    mongodb_url: str = Field("mongodb://127.0.0.1:27017/", description="MongoDB connection string")
    mongodb_db: str = Field("carina", min_length=1, description="MongoDB database name")
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="log level")
    log_format: str = Field("json", pattern="^(json|text)$", description="json for machines, text for humans")
    probe_host: str = Field("127.0.0.1", description="address of the /healthz, /readyz, /metrics server")
    startup_timeout: float = Field(30.0, gt=0, description="seconds to wait for NATS and MongoDB at start-up")
    token_secret: str = Field(
        "dev-only-token-secret-change-me",
        min_length=16,
        description="key from which per-VM guest tokens are derived (HMAC); shared by provisioner and gateway",
    )
    dev_mode: bool = Field(False, description="allow development defaults for secrets (make run sets it)")


class ServiceSettings(BaseSettings):
    """Base of each service's own settings (`CARINA_<SERVICE>_…`)."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True)

    probe_port: int = Field(0, ge=0, le=65535, description="port of the probe server; 0 picks a free one")


S = TypeVar("S", bound=BaseSettings)


def _env_name(model: type[BaseSettings], field: str) -> str:
    prefix = str(model.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def load_settings(model: type[S], **overrides: Any) -> S:
    """Load settings or exit with a one-line message naming the offending environment variable.

    Args:
        model: the settings class.
        **overrides: values that win over the environment (tests).

    Returns:
        The validated settings.
    """
    try:
        return model(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        sys.stderr.write(f"carina: invalid setting {_env_name(model, field)}: {first['msg']}\n")
        raise SystemExit(2) from None


def check_secret(common: CommonSettings) -> None:
    """Refuse the development token secret outside development mode."""
    if not common.dev_mode and common.token_secret.startswith("dev-only"):
        sys.stderr.write(
            "carina: invalid setting CARINA_TOKEN_SECRET: the development default is refused "
            "outside dev mode (set CARINA_TOKEN_SECRET or CARINA_DEV_MODE=true)\n"
        )
        raise SystemExit(2)
