"""Issue #7: every service of a running stack serves Prometheus metrics, readiness and liveness on its own port."""

from __future__ import annotations

import json
import re

import httpx

from libs.devstack.stack import SERVICES
from tests.e2e.conftest import Stack

EXPECTED = {
    "envmgr": ["carina_environments", "carina_envmgr_reconcile_duration_seconds", "carina_messages_total"],
    "scheduler": ["carina_ready"],  # its gauges appear once a global configuration exists
    "provisioner": ["carina_provisioner_zone_polls_total", "carina_messages_total"],
    "policy": ["carina_policy_tick_duration_seconds"],
    "gateway": ["carina_published_messages_total"],
    "callback": ["carina_messages_total"],
}


def probe_url(stack: Stack, service: str) -> str:
    for line in stack.dev.procs[service].lines:
        if line.startswith("{") and "probe server listening" in line:
            return str(json.loads(line)["url"])
    raise AssertionError(f"{service} did not log its probe URL")


def test_every_service_is_scraped_and_ready(stack: Stack) -> None:
    created = stack.oneenv("create", "web", "--watch")  # some traffic, so that counters exist
    assert created.returncode == 0, created.stdout + created.stderr
    for service in SERVICES:
        base = probe_url(stack, service)
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200, service
        text = httpx.get(f"{base}/metrics", timeout=5).text
        names = set(re.findall(r"^([a-z_]+)(?:_bucket|_count|_sum|_total|_created)?[{ ]", text, re.M))
        for metric in EXPECTED[service]:
            assert any(n.startswith(metric) for n in names), f"{service}: {metric} missing"
        assert "carina_ready 1.0" in text
    envmgr = httpx.get(f"{probe_url(stack, 'envmgr')}/metrics", timeout=5).text
    assert re.search(r'carina_messages_total\{result="ok",subject="env.create"\} [1-9]', envmgr), envmgr[:2000]
