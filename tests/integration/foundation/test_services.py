"""Issue #2 "Show": every service starts, reports ready, exits cleanly on SIGTERM; bad settings stop start-up with
a clear message; concurrent compare-and-set loses nothing; `make run`'s stack starts, stops without leaving a
process behind, and starts again on the same state."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from libs.common.db import Store
from libs.devstack.procs import Proc, free_port
from libs.devstack.stack import SERVICES

REPO = Path(__file__).resolve().parents[3]


def service_env(nats_url: str, mongo_url: str, db: str, **extra: str) -> dict[str, str]:
    return {"CARINA_NATS_URL": nats_url, "CARINA_MONGODB_URL": mongo_url, "CARINA_MONGODB_DB": db,
            "CARINA_DEV_MODE": "true", "CARINA_GATEWAY_PORT": str(free_port()), "CARINA_STARTUP_TIMEOUT": "3",
            **extra}


@pytest.mark.parametrize("service", SERVICES)
def test_service_starts_reports_ready_and_stops_on_sigterm(service: str, nats_server: Proc, mongo_url: str,
                                                          db_name: str) -> None:
    probe = free_port()
    env = service_env(nats_server.url, mongo_url, db_name,  # type: ignore[attr-defined]
                      **{f"CARINA_{service.upper()}_PROBE_PORT": str(probe)})
    proc = Proc(service, [sys.executable, "-m", f"services.{service}"], env=env, ready_pattern="service ready",
                cwd=str(REPO)).start(timeout=60)
    try:
        assert httpx.get(f"http://127.0.0.1:{probe}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{probe}/readyz", timeout=5).status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{probe}/metrics", timeout=5).text
        assert "carina_ready 1.0" in metrics
    finally:
        code = proc.stop(grace=15)
    assert code == 0, "\n".join(proc.lines[-30:])
    assert any('"stopped"' in line for line in proc.lines[-10:])


def test_unreachable_nats_gives_a_clear_message_and_a_non_zero_exit(mongo_url: str, db_name: str) -> None:
    env = {**os.environ, **service_env(f"nats://127.0.0.1:{free_port()}", mongo_url, db_name)}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "services.envmgr"], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert time.monotonic() - started < 30, "bounded retries"
    assert "cannot reach NATS" in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_invalid_setting_names_the_variable(mongo_url: str) -> None:
    env = {**os.environ, "CARINA_LOG_LEVEL": "LOUD", "CARINA_DEV_MODE": "true"}
    result = subprocess.run([sys.executable, "-m", "services.callback"], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "CARINA_LOG_LEVEL" in result.stderr and "Traceback" not in result.stderr
    env = {**os.environ, "CARINA_DEV_MODE": "false", "CARINA_TOKEN_SECRET": ""}
    result = subprocess.run([sys.executable, "-m", "services.provisioner"], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "CARINA_TOKEN_SECRET" in result.stderr


async def test_concurrent_compare_and_set_exactly_one_wins_and_nothing_is_lost(store: Store) -> None:
    await store.envs.insert_one({"_id": 1, "version": 0, "counter": 0, "seen": []})
    assert await store.cas_update("envs", 1, 0, {"counter": 1}) is True
    assert await store.cas_update("envs", 1, 0, {"counter": 99}) is False, "a stale version loses"

    async def increment(writer: int) -> None:
        await store.mutate("envs", 1, lambda d: {"counter": d["counter"] + 1, "seen": [*d["seen"], writer]})

    await asyncio.gather(*(increment(i) for i in range(20)))
    doc = await store.envs.find_one({"_id": 1})
    assert doc is not None
    assert doc["counter"] == 21 and sorted(doc["seen"]) == list(range(20)), "every concurrent update applied once"


def test_dev_stack_starts_stops_cleanly_and_restarts_on_the_same_state(tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}

    def run_once() -> tuple[str, float]:
        proc = subprocess.Popen([sys.executable, "-m", "libs.devstack.stack", "--var", str(var), "--test-ports"],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        started = time.monotonic()
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Try:") or ("stack:" in line and "exited" in line):
                break
        up = time.monotonic() - started
        gateway = next(line.split()[1] for line in lines if line.strip().startswith("gateway:")) if any(
            line.strip().startswith("gateway:") for line in lines) else None
        assert gateway, "".join(lines[-40:])
        assert httpx.get(f"{gateway}/healthz", timeout=5).status_code == 200
        children = _descendants(proc.pid)
        assert len(children) >= 10, f"nats, mongo, two zones and six services: {children}"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest[-3000:]
        alive = [pid for pid in children if _alive(pid)]
        assert not alive, f"children left behind: {alive}"
        return "".join(lines) + rest, up

    first, up = run_once()
    assert up < 30, f"every process up within 30 s (took {up:.1f} s)"
    assert (tmp_path / "config" / "carina" / "cli.json").exists()
    second, _ = run_once()
    assert "Carina is up" in second


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    pids = [int(p) for p in out]
    for child in list(pids):
        pids += _descendants(child)
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split()[2] != "Z"
