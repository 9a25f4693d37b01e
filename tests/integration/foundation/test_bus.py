"""The bus against a real nats-server, with the consumer in another process (issue #2, "Show")."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.common.bus import Bus
from libs.common.messages import EnvScale
from libs.devstack.procs import Proc, free_port, nats_proc


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Proc]:
    port = free_port()
    proc = nats_proc(port, str(tmp_path / "js"))
    proc.start()
    proc.url = f"nats://127.0.0.1:{port}"  # type: ignore[attr-defined]
    proc.port = port  # type: ignore[attr-defined]
    yield proc
    proc.stop()


def start_consumer(url: str, out: Path, durable: str) -> Proc:
    return Proc("consumer", [sys.executable, "-m", "tests.integration.foundation.consumer_proc", url, str(out),
                             durable], ready_pattern="consumer ready").start(timeout=30)


def handled(out: Path) -> list[dict[str, object]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def publisher(url: str) -> Bus:
    bus = Bus(url, name="publisher")
    await bus.connect(timeout=10)
    await bus.declare_streams()
    return bus


async def test_durable_delivery_dedup_and_redelivery_across_processes(broker: Proc, tmp_path: Path) -> None:
    out = tmp_path / "handled.jsonl"
    consumer = start_consumer(broker.url, out, "test-durable")  # type: ignore[attr-defined]
    bus = await publisher(broker.url)  # type: ignore[attr-defined]
    try:
        assert await bus.publish(EnvScale(envid=1, direction="up", request_id="a"))
        # Same message id published twice: JetStream stores it once.
        assert not await bus.publish(EnvScale(envid=1, direction="up", request_id="a"))
        assert await bus.publish(EnvScale(envid=2, direction="up", request_id="b", reason="transient-once"))
        await wait_for(lambda: len(handled(out)) >= 2)
        await asyncio.sleep(0.5)
        rows = handled(out)
        assert [r["request_id"] for r in rows if r["envid"] == 1] == ["a"], "delivered exactly once"
        retried = [r for r in rows if r["envid"] == 2]
        assert len(retried) == 1 and retried[0]["delivered"] == 2, "redelivered after the transient error"
    finally:
        await bus.close()
        assert consumer.stop() == 0, "\n".join(consumer.lines[-20:])


async def test_invalid_payloads_are_terminated_with_a_logged_reason(broker: Proc, tmp_path: Path) -> None:
    out = tmp_path / "handled.jsonl"
    consumer = start_consumer(broker.url, out, "test-invalid")  # type: ignore[attr-defined]
    bus = await publisher(broker.url)  # type: ignore[attr-defined]
    try:
        await bus.js.publish("env.scale", b"{not json", headers={"Nats-Msg-Id": uuid.uuid4().hex})
        await bus.js.publish("env.scale", b'{"envid": "x", "direction": "sideways"}',
                             headers={"Nats-Msg-Id": uuid.uuid4().hex})
        await bus.publish(EnvScale(envid=3, direction="up", request_id="c", reason="permanent"))
        await bus.publish(EnvScale(envid=4, direction="up", request_id="d"))
        await wait_for(lambda: len(handled(out)) >= 1)
        await asyncio.sleep(1.0)
        assert [r["envid"] for r in handled(out)] == [4]
        logs = [json.loads(line) for line in consumer.lines if line.startswith("{")]
        terminated = [entry for entry in logs if entry["msg"].startswith("message terminated")]
        reasons = " | ".join(str(entry.get("reason")) for entry in terminated)
        assert len(terminated) == 3, reasons
        assert "Invalid JSON" in reasons or "invalid" in reasons.lower()
        assert "direction" in reasons and "envid" in reasons, reasons
        assert "simulated permanent failure" in reasons
        # Terminated means not redelivered: nothing is pending on the consumer.
        info = await bus.js.consumer_info("ENV", "test-invalid")
        assert info.num_ack_pending == 0 and info.num_pending == 0
    finally:
        await bus.close()
        consumer.stop()


async def test_messages_survive_a_broker_restart_with_the_same_store(broker: Proc, tmp_path: Path) -> None:
    bus = await publisher(broker.url)  # type: ignore[attr-defined]
    await bus.publish(EnvScale(envid=5, direction="down", request_id="before-restart"))
    await bus.close()
    broker.stop()
    broker.start()
    out = tmp_path / "handled.jsonl"
    consumer = start_consumer(broker.url, out, "test-restart")  # type: ignore[attr-defined]
    try:
        await wait_for(lambda: any(r["request_id"] == "before-restart" for r in handled(out)))
    finally:
        consumer.stop()


async def test_publisher_reconnects_after_a_broker_restart(broker: Proc) -> None:
    bus = await publisher(broker.url)  # type: ignore[attr-defined]
    try:
        broker.stop()
        broker.start()
        deadline = time.monotonic() + 15
        while not bus.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert bus.connected
        assert await bus.publish(EnvScale(envid=6, direction="up", request_id="after-restart"))
    finally:
        await bus.close()


async def test_lease_has_one_holder_and_passes_on_when_released(broker: Proc) -> None:
    from libs.common.bus import Lease

    a, b = await publisher(broker.url), await publisher(broker.url)  # type: ignore[attr-defined]
    try:
        la, lb = Lease(a, "test.lease", "a", ttl=2), Lease(b, "test.lease", "b", ttl=2)
        assert await la.try_acquire_or_renew()
        assert not await lb.try_acquire_or_renew()
        assert await la.try_acquire_or_renew(), "the holder renews"
        await la.release()
        assert await lb.try_acquire_or_renew(), "a standby takes over once released"
    finally:
        await a.close()
        await b.close()


async def test_connect_gives_up_with_a_clear_error() -> None:
    from libs.common.errors import StartupError

    bus = Bus(f"nats://127.0.0.1:{free_port()}", name="nobody")
    started = time.monotonic()
    with pytest.raises(StartupError, match="cannot reach NATS"):
        await bus.connect(timeout=1.5)
    assert time.monotonic() - started < 6
