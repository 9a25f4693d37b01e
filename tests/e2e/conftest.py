"""End-to-end fixtures: the whole stack as separate processes (the same code `make run` uses).

A module-scoped `DevStack` on free ports with fast simulated zones; `oneenv()` runs the real CLI as a subprocess
against it, the way a user would. The pieces are shared with the chaos tests and the benchmarks: `running_stack`
(a started stack with a configuration uploaded), the configuration texts and `wait_for`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pyone
import pytest
import yaml

from libs.devstack.stack import DevStack, StackConfig

T = TypeVar("T")

ZONE_CREDENTIALS = "oneadmin:onesim"

# Both simulated zones and the one template every end-to-end configuration uses (`%(zone1)s`: the zone's URL).
ZONES_CONFIG = """
endpoints:
  zone1: {url: "%(zone1)s", credentials: "oneadmin:onesim"}
  zone2: {url: "%(zone2)s", credentials: "oneadmin:onesim"}
templates:
  small:
    file: example.vm
    cpu: 0.5
    memory: 256
    network_id: {zone1: 0, zone2: 0}
    image_id: {zone1: 0, zone2: 0}
"""

E2E_CONFIG = (
    ZONES_CONFIG
    + """\
environments:
  web:
    endpoint: zone1
    description: master + 2 slaves, no setup time
    placement_policy: stripe
    master_template: small
    master_setup_time: 0
    slave_template: small
    slave_context_var: '"APP_PACKAGE=x.war, SLAVE_ID=%%SLAVE_INDEX%%"'
    num_slaves: 2
    slavedata: "8080"
    app_url: "http://%%MASTER%%:8080/app"
  web2:
    endpoint: zone2
    master_template: small
    slave_template: small
    num_slaves: 1
    app_url: "http://%%MASTER%%/"
"""
)


def zone_urls(dev: DevStack) -> dict[str, str]:
    """The values of the `%(zone1)s` and `%(zone2)s` placeholders."""
    return {"zone1": dev.zone_url(0), "zone2": dev.zone_url(1)}


def e2e_config(dev: DevStack) -> str:
    """`E2E_CONFIG` for this stack's zones."""
    return E2E_CONFIG % zone_urls(dev)


def config_text(dev: DevStack, environments: dict[str, dict[str, Any]]) -> str:
    """A configuration for this stack's zones: `ZONES_CONFIG` with these environments."""
    return ZONES_CONFIG % zone_urls(dev) + yaml.safe_dump({"environments": environments}, sort_keys=False)


def quick_environment(endpoint: str, num_slaves: int, **settings: Any) -> dict[str, Any]:
    """An environment of `small` VMs whose master needs no setup time, with `settings` added (policies, ...)."""
    return {
        "endpoint": endpoint,
        "master_template": "small",
        "master_setup_time": 0,
        "slave_template": "small",
        "num_slaves": num_slaves,
        "slavedata": "8080",
        **settings,
    }


class Stack:
    """A running stack plus the conveniences tests need."""

    def __init__(self, dev: DevStack) -> None:
        self.dev = dev
        self.token = dev.secrets["dev_token"]
        self.http = httpx.Client(
            base_url=dev.gateway_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def oneenv(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CARINA_URL": self.dev.gateway_url, "CARINA_TOKEN": self.token}
        return subprocess.run(
            [sys.executable, "-m", "libs.cli.oneenv", *args], env=env, capture_output=True, text=True, timeout=timeout
        )

    def json(self, *args: str) -> Any:
        result = self.oneenv("--json", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def upload_config(self, text: str) -> None:
        examples = Path(__file__).resolve().parents[2] / "examples" / "templates"
        self.http.put(
            "/api/v1/templates/example.vm",
            content=(examples / "example.vm").read_bytes(),
            headers={"Content-Type": "text/plain"},
        ).raise_for_status()
        answer = self.http.put("/api/v1/config", content=text, headers={"Content-Type": "application/yaml"})
        assert answer.status_code == 200, answer.text

    def zone(self, index: int) -> Any:
        """An XML-RPC client of a simulated zone, as oneadmin."""
        return pyone.OneServer(self.dev.zone_url(index), session=ZONE_CREDENTIALS)

    def zone_vms(self, index: int, envid: int) -> list[Any]:
        """The environment's VMs as the zone itself reports them (anything not DONE)."""
        return [
            vm
            for vm in (self.zone(index).vmpool.infoextended(-2, -1, -1, -1).VM or [])
            if str(vm.USER_TEMPLATE.get("CARINA_ENVID")) == str(envid)
        ]


@contextmanager
def running_stack(config: StackConfig, configuration: Callable[[DevStack], str] = e2e_config) -> Iterator[Stack]:
    """Start a stack, upload `configuration(dev)` (it needs the zones' URLs), and stop the stack at the end."""
    dev = DevStack(config)
    dev.start()
    try:
        stack = Stack(dev)
        stack.upload_config(configuration(dev))
        yield stack
    finally:
        dev.stop()


def wait_for(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    every: float = 0.1,
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns something true and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"\n{explain()}" if explain else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(every)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(StackConfig.for_tests(tmp_path_factory.mktemp("stack"))) as s:
        yield s
