"""`python -m services.gateway` as an operator runs it: settings checks, start-up, probes, SIGTERM."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from gateway_helpers import TOKEN_SECRET, plant_running_env

from libs.common.db import Store
from libs.devstack.procs import Proc, free_port

REPO = Path(__file__).resolve().parents[3]


def _env(nats_server: Proc, mongo_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARINA_")}
    env.update({"CARINA_NATS_URL": nats_server.url, "CARINA_MONGODB_URL": mongo_url,  # type: ignore[attr-defined]
                "CARINA_MONGODB_DB": f"t_svc_{uuid.uuid4().hex[:8]}", "CARINA_LOG_FORMAT": "text"})
    env.update(extra)
    return env


def test_refuses_to_start_without_an_admin_token(nats_server: Proc, mongo_url: str) -> None:
    for extra, needle in (
        ({"CARINA_TOKEN_SECRET": "a-real-secret-of-some-length"}, "CARINA_GATEWAY_ADMIN_TOKEN: required"),
        ({"CARINA_TOKEN_SECRET": "a-real-secret-of-some-length", "CARINA_GATEWAY_ADMIN_TOKEN": "changeme"},
         "CARINA_GATEWAY_ADMIN_TOKEN: a placeholder"),
        ({"CARINA_DEV_MODE": "true", "CARINA_GATEWAY_PUBLIC_URL": "carina:8080"}, "CARINA_GATEWAY_PUBLIC_URL"),
    ):
        done = subprocess.run([sys.executable, "-m", "services.gateway"], cwd=REPO, env=_env(nats_server, mongo_url,
                              **extra), capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, done.stderr
        assert needle in done.stderr and "Traceback" not in done.stderr


def test_serves_the_dev_account_and_stops_on_sigterm(nats_server: Proc, mongo_url: str) -> None:
    port, probe_port = free_port(), free_port()
    env = _env(nats_server, mongo_url, CARINA_DEV_MODE="true", CARINA_GATEWAY_PORT=str(port),
               CARINA_GATEWAY_PROBE_PORT=str(probe_port), CARINA_GATEWAY_DEV_SERVICE="svc1",
               CARINA_GATEWAY_DEV_TOKEN="dev-token-for-tests-0001")
    proc = subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "gateway not ready in 30 s"
            time.sleep(0.2)
        answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/environments",
                           headers={"Authorization": "Bearer dev-token-for-tests-0001"})
        assert answer.status_code == 200 and answer.json() == []
        assert httpx.get(f"http://127.0.0.1:{probe_port}/readyz").status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{probe_port}/metrics").text
        assert 'carina_gateway_requests_total{method="GET",route="/api/v1/environments",status="200"}' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        output = proc.stdout.read() if proc.stdout else ""
        assert "dev-token-for-tests-0001" not in output and "Traceback" not in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_held_long_poll_is_answered_when_the_gateway_stops(nats_server: Proc, mongo_url: str) -> None:
    # A master waits on its notifications (up to 25 s) while the gateway is told to stop: the poll is answered at
    # once (empty; the master asks again elsewhere) instead of being cut off with an error after the grace period.
    port = free_port()
    env = _env(nats_server, mongo_url, CARINA_DEV_MODE="true", CARINA_GATEWAY_PORT=str(port),
               CARINA_TOKEN_SECRET=TOKEN_SECRET)

    async def plant() -> dict[str, Any]:
        store = Store(mongo_url, env["CARINA_MONGODB_DB"])
        await store.connect(timeout=10)
        try:
            return await plant_running_env(store, 9101, "svc1", slaves=0)
        finally:
            await store.close()

    planted = asyncio.run(plant())
    master = planted["slots"][0]
    headers = {"X-ONEGATE-VMID": str(master["one_id"]), "X-ONEGATE-TOKEN": planted["tokens"][master["_id"]]}
    proc = subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "gateway not ready in 30 s"
            time.sleep(0.2)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            poll = pool.submit(httpx.get, f"http://127.0.0.1:{port}/guest/v1/notifications", params={"wait": 25},
                               headers=headers, timeout=40)
            time.sleep(1.0)
            assert not poll.done(), "nothing pending: the poll is held"
            stopped_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            answer = poll.result(timeout=30)
        assert answer.status_code == 200 and answer.json() == {"notifications": []}
        assert time.monotonic() - stopped_at < 4, "answered when the stop began, not at the grace period's end"
        assert proc.wait(timeout=20) == 0
        output = proc.stdout.read() if proc.stdout else ""
        assert "Traceback" not in output and "ERROR" not in output, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
