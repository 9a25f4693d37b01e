"""envmgr settings (`CARINA_ENVMGR_…`): deadlines of every wait, resync period, concurrency."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings
from services.envmgr.reconcile import Timing


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CARINA_ENVMGR_", extra="ignore", env_ignore_empty=True)

    resync_interval: float = Field(5.0, gt=0, description="seconds between full passes over unfinished work")
    concurrency: int = Field(16, ge=1, le=256, description="messages handled at once per subject")
    vm_running_timeout: float = Field(600.0, gt=0, description="VM allocated → RUNNING with an IP")
    master_init_timeout: float = Field(900.0, gt=0, description="master_setup_time over → MASTER_INIT_DONE")
    notify_timeout: float = Field(300.0, gt=0, description="master acknowledges add/delete")
    terminate_timeout: float = Field(600.0, gt=0, description="terminate → DONE")
    drain_seconds: float = Field(0.0, ge=0, description="wait after the master dropped a slave (Carina: 30)")
    provision_retry: float = Field(60.0, gt=0, description="re-ask the provisioner after this long (it adopts)")
    grant_timeout: float = Field(600.0, gt=0, description="scheduler grant for a scale-up")
    account_creates: bool = Field(True, description="charge an environment's initial VMs to pools (Carina: no)")
    max_creates_in_flight: int = Field(100, ge=0, description="creates started and not yet ended at once; later ones "
                                                              "wait as PENDING, oldest first (0: no limit)")

    def timing(self) -> Timing:
        return Timing(
            vm_running_timeout=self.vm_running_timeout,
            master_init_timeout=self.master_init_timeout,
            notify_timeout=self.notify_timeout,
            terminate_timeout=self.terminate_timeout,
            drain_seconds=self.drain_seconds,
            provision_retry=self.provision_retry,
            grant_timeout=self.grant_timeout,
        )
