"""End-to-end fixtures: the whole stack as separate processes (the same code `make run` uses).

A module-scoped `DevStack` on free ports with fast simulated zones; `oneenv()` runs the real CLI as a subprocess
against it, the way a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.devstack.stack import DevStack, StackConfig

E2E_CONFIG = """
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


class Stack:
    """A running stack plus the conveniences tests need."""

    def __init__(self, dev: DevStack) -> None:
        self.dev = dev
        self.token = dev.secrets["dev_token"]
        self.http = httpx.Client(base_url=dev.gateway_url, headers={"Authorization": f"Bearer {self.token}"},
                                 timeout=30)

    def oneenv(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CARINA_URL": self.dev.gateway_url, "CARINA_TOKEN": self.token}
        return subprocess.run([sys.executable, "-m", "libs.cli.oneenv", *args], env=env, capture_output=True,
                              text=True, timeout=timeout)

    def json(self, *args: str) -> Any:
        result = self.oneenv("--json", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def upload_config(self, text: str) -> None:
        examples = Path(__file__).resolve().parents[2] / "examples" / "templates"
        self.http.put("/api/v1/templates/example.vm", content=(examples / "example.vm").read_bytes(),
                      headers={"Content-Type": "text/plain"}).raise_for_status()
        answer = self.http.put("/api/v1/config", content=text, headers={"Content-Type": "application/yaml"})
        assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig.for_tests(tmp_path_factory.mktemp("stack"))
    dev = DevStack(config)
    dev.start()
    try:
        s = Stack(dev)
        s.upload_config(E2E_CONFIG % {"zone1": dev.zone_url(0), "zone2": dev.zone_url(1)})
        yield s
    finally:
        dev.stop()
