"""Benchmark of the policy service (issue #6): evaluation time per tick, and metric push to scale command.

Run: `.venv/bin/python bench/bench_policy.py [--envs 10000] [--store-envs 10000] [--samples 10]`.

Three figures, printed, nothing asserted:

1. the pure engine: `engine.decide` over N environment views (a mix of Carina auto, time-based, OneFlow rules and
   availability with failover), per tick, after a warm-up tick;
2. the whole I/O shell: `Evaluator.evaluate_all` over N environment documents (3 VM slots each) stored in the
   development MongoDB-wire server — reading the environment, slots, metrics and policy state, deciding, writing
   the state with compare-and-set and recording decisions (publishing is counted but goes nowhere). That server is
   a slow, single-threaded stand-in for MongoDB, so this figure is an upper bound;
3. on a running stack (1 s tick, `period: 1`): the median time from a guest's `PUT /vm` (OneGate metrics, with the
   VM's own token) to the `env.scale` command on NATS. `period: 1` means the condition must hold on two tick
   periods, so the figure is "the rest of the current tick period plus processing".
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.db import Store  # noqa: E402
from libs.common.messages import Message  # noqa: E402
from libs.devstack.procs import free_port, mongo_proc  # noqa: E402
from libs.devstack.stack import DevStack, StackConfig  # noqa: E402
from services.policy.engine import EnvironmentPolicy, EnvironmentView, Partner, PolicyState, decide  # noqa: E402
from services.policy.handlers.evaluate import Evaluator  # noqa: E402
from services.policy.settings import Settings  # noqa: E402
from tests.e2e.conftest import Stack, config_text, quick_environment, running_stack, wait_for  # noqa: E402

MONDAY = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

POLICIES: list[dict[str, Any]] = [
    {
        "elasticity_policy": {
            "mode": "auto",
            "min": 2,
            "max": 4,
            "priority": 10,
            "period": 3,
            "scaleup_expr": "avgcpu > 50",
            "scaledown_expr": "avgcpu < 20",
        }
    },
    {
        "elasticity_policy": {
            "mode": "time-based",
            "windows": {
                "morn": {"spec": "Mon-Fri 0900-1300", "min": 6},
                "aft": {"spec": "Mon-Fri 1300-1700", "min": 4},
                "night": {"spec": "Mon-Fri 0000-0859 1700-2359", "min": 2},
            },
        }
    },
    {
        "elasticity_policy": {
            "min_vms": 1,
            "max_vms": 5,
            "elasticity_policies": [
                {"expression": "ATT > 50", "type": "CHANGE", "adjust": 2, "period_number": 3, "period": 10},
                {"expression": "ATT < 20", "type": "PERCENTAGE_CHANGE", "adjust": -10, "min_adjust_step": 2},
            ],
        }
    },
    {
        "availability_policy": {
            "period": 3,
            "recreate_expr": "nummissing > 0 || numunknown > 0 || numfailed > 0",
            "failover_role": "active",
            "failover_group": "g",
            "failover_expr": "(numunknown + nummissing + numfailed) / numvms > 0.50",
            "failback_expr": "numunknown == 0",
        }
    },
]


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# --- 1. the pure engine ---------------------------------------------------------------------------------------------


def bench_engine(count: int, ticks: int = 5) -> None:
    rng = random.Random(6)
    policies = [EnvironmentPolicy.from_config(p) for p in POLICIES]
    views, chosen = [], []
    for envid in range(1, count + 1):
        kind = envid % len(policies)
        cpu = rng.uniform(0, 100)
        views.append(
            EnvironmentView(
                envid=envid,
                policy_status="ACTIVE",
                num_vms=rng.randint(1, 5),
                numunknown=rng.choice([0, 0, 0, 1]),
                metrics={"avgcpu": cpu, "ATT": cpu},
                partners=(Partner(envid=envid + count, role="passive", policy_status="PASSIVE"),) if kind == 3 else (),
            )
        )
        chosen.append(policies[kind])
    states = [PolicyState() for _ in views]
    timings = []
    for tick in range(ticks + 1):
        now = MONDAY + timedelta(seconds=60 * tick)
        started = time.perf_counter()
        for index, view in enumerate(views):
            _, states[index] = decide(view, chosen[index], states[index], now)
        if tick:  # the first tick warms the expression and window caches
            timings.append(time.perf_counter() - started)
    median = statistics.median(timings)
    out(
        f"engine.decide, {count} environments: {median * 1000:.0f} ms per tick (median of {ticks}; "
        f"{median / count * 1e6:.1f} us per environment)"
    )


# --- 2. the I/O shell over the MongoDB-wire server ------------------------------------------------------------------


class CountingBus:
    """Stands in for NATS: counts what the evaluator would publish."""

    def __init__(self) -> None:
        self.published: dict[str, int] = {}

    async def publish(self, message: Message, **_: Any) -> bool:
        self.published[message.subject()] = self.published.get(message.subject(), 0) + 1
        return True


async def bench_store(count: int, concurrency: int) -> None:
    var = Path(tempfile.mkdtemp(prefix="carina-bench-policy-"))
    port = free_port()
    proc = mongo_proc(port, str(var / "mongo")).start()
    store = Store(f"mongodb://127.0.0.1:{port}/")
    try:
        await store.connect()
        await store.ensure_indexes()
        rng = random.Random(6)
        now = datetime.now(UTC)
        started = time.perf_counter()
        for first in range(1, count + 1, 1000):
            envs, slots = [], []
            for envid in range(first, min(first + 1000, count + 1)):
                config = {"num_slaves": 2, **POLICIES[envid % len(POLICIES)]}
                envs.append(
                    {
                        "_id": envid,
                        "version": 1,
                        "service": "bench",
                        "name": f"e{envid}",
                        "active": True,
                        "policy_status": "ACTIVE",
                        "op": None,
                        "spec": {"config": config},
                    }
                )
                for index, role in enumerate(("master", "slave", "slave")):
                    slots.append(
                        {
                            "_id": f"{envid}:{role}:{index}:1",
                            "envid": envid,
                            "role": role,
                            "index": index,
                            "live": True,
                            "lifecycle": "RUNNING",
                            "one_id": envid * 3 + index,
                            "cpu": round(rng.uniform(0, 100), 1),
                            "memory": 262144,
                            "observed_at": now,
                        }
                    )
            await store.envs.insert_many(envs)
            await store.slots.insert_many(slots)
        out(
            f"MongoDB-wire server: stored {count} environments and {3 * count} slots in "
            f"{time.perf_counter() - started:.1f} s"
        )
        settings = Settings(tick_interval=60.0, concurrency=concurrency)
        bus = CountingBus()
        evaluator = Evaluator(SimpleNamespace(store=store, bus=bus), settings)  # type: ignore[arg-type]
        for tick in range(2):
            began = time.perf_counter()
            evaluated = await evaluator.evaluate_all()
            elapsed = time.perf_counter() - began
            what = "first tick (creates every policy state)" if tick == 0 else "next tick (compare-and-set updates)"
            out(
                f"evaluate_all over the MongoDB-wire server, {evaluated} environments, {what}: {elapsed:.1f} s "
                f"({elapsed / max(evaluated, 1) * 1000:.2f} ms per environment, concurrency {concurrency})"
            )
            # The next tick falls in the next tick period (a 60 s tick), as in production.
            settings.tick_interval = 60.0 / (tick + 2)
        out(f"  would have published: {dict(sorted(bus.published.items()))}")
    finally:
        await store.close()
        proc.stop(grace=5)


# --- 3. metric push to scale command on a running stack -------------------------------------------------------------


def latency_config(dev: DevStack, samples: int) -> str:
    return config_text(
        dev,
        {
            "pushed": quick_environment(
                "zone1",
                1,
                elasticity_policy={
                    "mode": "auto",
                    "min": 2,
                    "max": samples + 3,
                    "period": 1,
                    "scaleup_expr": "CPU_LOAD > 50",
                    "scaledown_expr": "CPU_LOAD < 1",
                },
            )
        },
    )


async def bench_latency(samples: int) -> None:
    var = Path(tempfile.mkdtemp(prefix="carina-bench-policy-stack-"))
    config = StackConfig.for_tests(var, service_env={"CARINA_POLICY_TICK_INTERVAL": "1"})
    config.zone_args = [
        "--boot-seconds",
        "0.1",
        "--guest-seconds",
        "0.05",
        "--guest-poll-seconds",
        "0.05",
        "--monitor-seconds",
        "5",
        "--shutdown-seconds",
        "0",
        "--sched-seconds",
        "0",
        "--host-cpu",
        "100000",
        "--host-memory",
        "10000000",
    ]
    with running_stack(config, lambda dev: latency_config(dev, samples)) as stack:
        latencies = await _latencies(stack, samples)
    if latencies:
        out(
            f"metric push (PUT /vm) -> env.scale, 1 s tick, period 1: median {statistics.median(latencies):.2f} s, "
            f"min {min(latencies):.2f} s, max {max(latencies):.2f} s over {len(latencies)} samples"
        )
    else:
        out("metric push -> env.scale: no scale command seen")


async def _latencies(stack: Stack, samples: int) -> list[float]:
    """Create the environment, then time `samples` metric pushes to the `env.scale` each one causes."""
    created = stack.http.post("/api/v1/environments", json={"config": "pushed"})
    created.raise_for_status()
    envid = int(created.json()["envid"])
    wait_for(lambda: _environment(stack, envid).get("policy_status") == "ACTIVE", 60, "the environment ACTIVE")
    one = stack.zone(0)
    guests = [
        (int(vm.ID), str(one.vm.info(int(vm.ID)).TEMPLATE["CONTEXT"]["CARINA_TOKEN"]))
        for vm in stack.zone_vms(0, envid)
    ]
    scale_seen: list[float] = []
    nc = await nats.connect(stack.dev.operator_nats_url)
    try:

        async def on_scale(msg: Any) -> None:
            scale_seen.append(time.monotonic())

        await nc.subscribe("env.scale", cb=on_scale)

        async with httpx.AsyncClient(base_url=stack.dev.gateway_url, timeout=10) as guest_http:

            async def push(load: float) -> None:
                await asyncio.gather(
                    *(
                        guest_http.put(
                            "/vm",
                            content=f"CPU_LOAD = {load}\n",
                            headers={"X-ONEGATE-TOKEN": token, "X-ONEGATE-VMID": str(vm)},
                        )
                        for vm, token in guests
                    )
                )

            latencies = []
            rng = random.Random(6)
            for sample in range(samples):
                # Values differ from sample to sample: `vm.metrics` messages with equal content are folded together
                # by JetStream's duplicate window (VmMetrics.msg_id ignores `at`), which would hide the push.
                await push(30 + sample / 10)  # neither expression holds: the policy's counter restarts
                await _wait_idle(stack, envid)
                await asyncio.sleep(1.2 + rng.random())  # a random moment within the tick period
                before = len(scale_seen)
                pushed = time.monotonic()
                await push(80 + sample / 10)
                deadline = time.monotonic() + 15
                while len(scale_seen) == before and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                if len(scale_seen) > before:
                    latencies.append(scale_seen[before] - pushed)
        return latencies
    finally:
        await nc.close()


def _environment(stack: Stack, envid: int) -> dict[str, Any]:
    return dict(stack.http.get(f"/api/v1/environments/{envid}").json())


async def _wait_idle(stack: Stack, envid: int) -> None:
    # In a thread: the event loop keeps receiving `env.scale` while this polls.
    await asyncio.to_thread(
        wait_for, lambda: _environment(stack, envid).get("job") is None, 30, "the operation to finish", 0.05
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=10_000, help="environments for the pure engine")
    parser.add_argument(
        "--store-envs", type=int, default=10_000, help="environments stored in the MongoDB-wire server (0 skips)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="evaluations at once (CARINA_POLICY_CONCURRENCY)")
    parser.add_argument("--samples", type=int, default=10, help="metric push samples (0 skips)")
    args = parser.parse_args()
    bench_engine(args.envs)
    if args.store_envs:
        asyncio.run(bench_store(args.store_envs, args.concurrency))
    if args.samples:
        asyncio.run(bench_latency(args.samples))


if __name__ == "__main__":
    main()
