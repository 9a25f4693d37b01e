"""RELIABILITY.md R2 (crash points), R4 (duplicates and redelivery) and R5 (OpenNebula errors), PR tier.

R2: the process exits abruptly (as `kill -9`) at named points between a side effect and its record — after the VM
is allocated but before its status is reported, after a slot intent is written but before the environment, before
commands are published, after a guest report is recorded but before it is announced — once per point; it is then
restarted. R4: a test middleware re-publishes 30% of commands and events with a new message id, so JetStream's
de-duplication does not hide them. R5: the zone fails, loses the replies of, and slows down its calls. In every
case: no accepted create lost, no duplicate VM, no orphan, and every environment settles.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from libs.devstack.stack import DevStack
from libs.onesim.control import SimControl
from tests.chaos.checker import chaos_config, check, restart_dead, settle
from tests.chaos.test_kill_services import accept_create
from tests.e2e.conftest import Stack, running_stack

PER_POINT = int(os.environ.get("CARINA_CHAOS_PER_POINT", "8"))
CRASH_POINTS = [
    ("provisioner", "provisioner.before_allocate"),
    ("provisioner", "provisioner.after_allocate"),
    ("envmgr", "envmgr.after_intent"),
    ("envmgr", "envmgr.before_publish"),
    ("callback", "callback.after_record"),
]


@pytest.fixture
def fault_stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(chaos_config(tmp_path / "stack", call_timeout="3", provision_retry="8")) as stack:
        yield stack


class Watchdog(threading.Thread):
    """Restarts a service that exited (the crash points end processes with status 137)."""

    def __init__(self, dev: DevStack) -> None:
        super().__init__(daemon=True)
        self.dev = dev
        self.stop_event = threading.Event()
        self.restarts = 0

    def run(self) -> None:
        while not self.stop_event.wait(0.3):
            for name, proc in list(self.dev.procs.items()):
                if name in ("envmgr", "provisioner", "callback") and not proc.running:
                    self.restarts += 1
                    restart_dead(self.dev)


def creates(stack: Stack, n: int) -> list[int]:
    deadline = time.monotonic() + 120
    return [accept_create(stack, uuid.uuid4().hex, deadline) for _ in range(n)]


def test_crash_points_lose_nothing_and_duplicate_nothing(fault_stack: Stack, tmp_path: Path) -> None:
    dev = fault_stack.dev
    watchdog = Watchdog(dev)
    watchdog.start()
    envids: list[int] = []
    crashed = []
    try:
        for service, point in CRASH_POINTS:
            marker = tmp_path / f"{point}.crashed"
            dev.config.service_env.update({"CARINA_CRASHPOINT": point, "CARINA_CRASHPOINT_ONCE": str(marker)})
            dev.restart_service(service)
            batch = creates(fault_stack, PER_POINT)
            envids += batch
            settle(dev, batch, timeout=120)
            crashed.append((point, marker.exists()))
        dev.config.service_env.pop("CARINA_CRASHPOINT")
    finally:
        watchdog.stop_event.set()
        watchdog.join(timeout=10)
    assert all(hit for _, hit in crashed), f"every crash point was reached: {crashed}"
    settle(dev, envids)
    verdict = check(dev, envids)
    print(f"\nR2: {len(envids)} creates over {len(CRASH_POINTS)} crash points: {verdict.summary()}")
    assert not verdict.problems, verdict.problems
    assert verdict.ready == len(envids), f"a crash must not fail an environment: {verdict.summary()}"


async def duplicate_some(url: str, subjects: list[str], share: float, stop: asyncio.Event, seed: int) -> int:
    """Re-publish `share` of the messages on `subjects` with a fresh Nats-Msg-Id (so they are not de-duplicated)."""
    rng = random.Random(seed)
    nc = await nats.connect(url)
    js = nc.jetstream()
    count = 0

    async def on(msg: nats.aio.msg.Msg) -> None:
        nonlocal count
        if msg.headers and msg.headers.get("X-Chaos-Dup"):
            return
        if rng.random() < share:
            count += 1
            await js.publish(msg.subject, msg.data, headers={"Nats-Msg-Id": uuid.uuid4().hex, "X-Chaos-Dup": "1"})

    for subject in subjects:
        await nc.subscribe(subject, cb=on)
    await stop.wait()
    await nc.drain()
    return count


async def test_zone_errors_and_duplicate_deliveries(fault_stack: Stack) -> None:
    dev = fault_stack.dev
    zone = SimControl(dev.zone_url(0))
    zone.fail_calls("one.vm.allocate", count=6, code="internal")
    zone.lose_replies("one.vm.allocate", count=4)
    zone.slow_replies("one.vmpool.infoextended", delay=1.5, count=4)
    zone.fail_calls("one.vm.info", count=4, code="internal")
    stop = asyncio.Event()
    subjects = ["env.create", "env.reconcile", "vm.provision", "vm.terminate", "vm.status", "vm.guest", "guest.report"]
    dup_task = asyncio.create_task(duplicate_some(dev.operator_nats_url, subjects, 0.3, stop, seed=11))
    envids = await asyncio.to_thread(creates, fault_stack, 20)
    await asyncio.to_thread(settle, dev, envids, 150.0)
    stop.set()
    duplicated = await dup_task
    verdict = await asyncio.to_thread(check, dev, envids)
    print(f"\nR4+R5: 20 creates, {duplicated} duplicated messages, zone faults {zone.faults()}: {verdict.summary()}")
    assert duplicated > 0
    assert not verdict.problems, verdict.problems
    assert verdict.ready + sum(verdict.failed.values()) == len(envids)
    assert verdict.ready >= 19, f"transient zone errors are retried, not failed: {verdict.summary()}"
