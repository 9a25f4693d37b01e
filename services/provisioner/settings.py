"""Provisioner settings (`CARINA_PROVISIONER_…`): zone call limits, monitoring cadence, guest-facing URL."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CARINA_PROVISIONER_", extra="ignore", env_ignore_empty=True)

    public_url: str = Field("http://127.0.0.1:8080", description="gateway URL guests call back (CONTEXT CARINA_URL)")
    zone_concurrency: int = Field(8, ge=1, le=64, description="OpenNebula calls in flight per zone")
    call_timeout: float = Field(30.0, gt=0, description="deadline of one OpenNebula call, seconds")
    monitor_interval: float = Field(2.0, gt=0, description="zone poll period when nothing is changing")
    monitor_fast_interval: float = Field(0.2, gt=0, description="poll period while VMs are booting/terminating")
    cpu_report_delta: float = Field(2.0, ge=0, description="CPU change (points) worth reporting a VM's load")
    terminate_action: Literal["terminate", "terminate-hard"] = Field("terminate-hard",
                                                                     description="how VMs are terminated")
    # Carina 2012 ran the master's script over ssh; that push mode is not implemented, so it is not accepted.
    notify_mode: Literal["pull"] = Field("pull", description="how the master learns of slaves (CARINA_NOTIFY): "
                                                             "pull = long poll of /guest/v1/notifications")
    concurrency: int = Field(16, ge=1, le=256, description="messages handled at once per subject")
