"""Policy settings (`CARINA_POLICY_…`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CARINA_POLICY_", extra="ignore", env_ignore_empty=True)

    tick_interval: float = Field(10.0, gt=0, description="seconds between policy ticks (Carina: 60)")
    lease_ttl: float = Field(6.0, gt=0, description="ticker lease: a standby ticker takes over within this")
    metric_max_age: float = Field(120.0, gt=0, description="guest metrics older than this are ignored")
    command_timeout: float = Field(15.0, gt=0, description="seconds a command sent to envmgr holds further actions "
                                   "on its environment until envmgr shows the operation")
    refresh_interval: float = Field(60.0, gt=0, description="an environment whose policy state did not change is "
                                    "written back (its latest decision refreshed) at most this often")
    evaluation_timeout: float = Field(5.0, gt=0, description="deadline of one environment's evaluation on a tick")
    concurrency: int = Field(8, ge=1, le=256, description="environments evaluated at once")
    tick_shards: int = Field(8, ge=1, le=1024, description="each tick is split into this many messages (environments "
                             "by envid modulo), which the policy replicas share")
    scheduler_config_cache_seconds: float = Field(5.0, ge=0, description="how long the scheduler's global "
                                                  "configuration, read for headroom, is reused")
