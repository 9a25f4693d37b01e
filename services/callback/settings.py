"""Callback settings (`CARINA_CALLBACK_…`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CARINA_CALLBACK_", extra="ignore", env_ignore_empty=True)

    concurrency: int = Field(16, ge=1, le=256, description="reports handled at once")
