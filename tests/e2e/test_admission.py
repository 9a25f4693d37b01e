"""Creates beyond envmgr's limit wait their turn — PENDING, oldest first — instead of all slowing down together.

A stack of its own whose envmgr lets at most two creates run at once (`CARINA_ENVMGR_MAX_CREATES_IN_FLIGHT=2`).
Six creates are submitted together; the environments' progress events (`events.env.<envid>`, read from NATS as an
operator would) show which ran when.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest
from conftest import Stack, running_stack

from libs.devstack.stack import StackConfig

LIMIT = 2
CREATES = 6


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig.for_tests(tmp_path_factory.mktemp("admission-stack"))
    config.service_env = {**config.service_env, "CARINA_ENVMGR_MAX_CREATES_IN_FLIGHT": str(LIMIT)}
    with running_stack(config) as stack:
        yield stack


async def test_creates_beyond_the_limit_queue_and_start_oldest_first(limited: Stack) -> None:
    dev = limited.dev
    nc = await nats.connect(dev.operator_nats_url)
    timeline: list[tuple[float, int, str]] = []

    async def on_event(msg: Any) -> None:
        timeline.append((time.monotonic(), int(msg.subject.rsplit(".", 1)[1]), json.loads(msg.data)["message"]))

    await nc.subscribe("events.env.*", cb=on_event)
    await nc.flush()
    async with httpx.AsyncClient(base_url=dev.gateway_url, timeout=30,
                                 headers={"Authorization": f"Bearer {limited.token}"}) as http:
        answers = await asyncio.gather(*(http.post("/api/v1/environments", json={"config": "web"})
                                         for _ in range(CREATES)))
        assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
        envids = sorted(a.json()["envid"] for a in answers)
        # The queued ones are visible as PENDING while they wait.
        await asyncio.sleep(0.5)
        statuses = [(await http.get(f"/api/v1/environments/{e}")).json()["status"] for e in envids]
        assert statuses.count("PENDING") >= CREATES - LIMIT - 1, statuses  # (one may just have been admitted)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sum(1 for _, _, m in timeline if m.startswith("environment READY")) == CREATES:
                break
            await asyncio.sleep(0.2)
        details = [(await http.get(f"/api/v1/environments/{e}")).json() for e in envids]
    await nc.close()

    assert [d["policy_status"] for d in details] == ["ACTIVE"] * CREATES, details
    started = {e: t for t, e, m in reversed(timeline) if m.startswith("creating master VM")}
    ready = {e: t for t, e, m in reversed(timeline) if m.startswith("environment READY")}
    queued = {e for _, e, m in timeline if m.startswith("queued:")}
    assert len(queued) >= CREATES - LIMIT, timeline
    assert all(any(e == q and m == "admitted: creating" for _, e, m in timeline) for q in queued), timeline
    # At no moment were more than LIMIT creates between their first VM and READY.
    for envid in envids:
        running_then = [e for e in envids if started[e] <= started[envid] < ready[e]]
        assert len(running_then) <= LIMIT, f"env {envid} started while {running_then} ran"
