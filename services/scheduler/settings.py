"""Scheduler settings (`CARINA_SCHEDULER_…`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CARINA_SCHEDULER_", extra="ignore", env_ignore_empty=True)

    interval: float = Field(1.0, gt=0, description="seconds between allocation passes (Carina: 30)")
    lease_ttl: float = Field(6.0, gt=0, description="allocator lease: a standby takes over within this")
    grant_ttl: float = Field(120.0, gt=0, description="a grant expires if its holder stops renewing it")
    reclaim_throttle: float = Field(60.0, ge=0, description="no second reclaim of a victim within this")
    account_creates: bool = Field(True, description="charge initial creates to pools and quotas (Carina: no)")
