"""Benchmark: create→READY latency and sustained creates per second on the whole stack (issue #4).

Runs the real processes (`libs.devstack.stack`) with the simulated zone's boot and guest delays at zero, creates
environments of a master + 2 slaves (master_setup_time 0) through the REST API, and times each one from the POST
to the "environment READY" event on NATS (`events.env.<envid>`). Prints figures; asserts nothing.

Besides time, it prints MongoDB round trips per environment, by service and command (from each service's
`carina_db_commands_total`): on the embedded MongoDB-wire server those dominate throughput, and unlike seconds they
do not depend on the machine.

    .venv/bin/python bench/bench_lifecycle.py [--samples 30] [--burst 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import nats
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.devstack.procs import free_port  # noqa: E402
from libs.devstack.stack import SERVICES, DevStack, StackConfig  # noqa: E402
from tests.e2e.conftest import E2E_CONFIG, Stack  # noqa: E402

Counts = dict[tuple[str, str], float]


def scrape(probe_urls: dict[str, str]) -> tuple[Counts, Counts, Counts]:
    """From each service's /metrics: ((service, collection.command) → MongoDB commands sent so far,
    (service, subject) → messages handled so far, (service, subject) → seconds spent handling them)."""
    commands: Counts = {}
    messages: Counts = {}
    handling: Counts = {}
    for service, url in probe_urls.items():
        for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
            for sample in family.samples:
                if sample.name == "carina_db_commands_total":
                    collection, command = sample.labels["collection"], sample.labels["command"]
                    key = (service, command if collection == "-" else f"{collection}.{command}")
                    commands[key] = commands.get(key, 0.0) + sample.value
                elif sample.name == "carina_messages_total":
                    key = (service, sample.labels["subject"])
                    messages[key] = messages.get(key, 0.0) + sample.value
                elif sample.name == "carina_handler_duration_seconds_sum":
                    key = (service, sample.labels["subject"])
                    handling[key] = handling.get(key, 0.0) + sample.value
    return commands, messages, handling


def print_handler_times(before: tuple[Counts, Counts, Counts], after: tuple[Counts, Counts, Counts]) -> None:
    """Mean time from a message's delivery to its acknowledgement, per consumer (waits for MongoDB, zones, locks)."""
    means = []
    for key, seconds in after[2].items():
        handled = after[1].get(key, 0.0) - before[1].get(key, 0.0)
        if handled >= 1:
            means.append((f"{key[0]} {key[1]}", (seconds - before[2].get(key, 0.0)) / handled * 1000))
    print("mean handler time (ms): " + ", ".join(f"{name} {ms:.0f}" for name, ms in sorted(means)))


def cpu_seconds(dev: DevStack) -> dict[str, float]:
    """CPU time (user + system) each process of the stack has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, proc in dev.procs.items():
        if proc.popen is not None and proc.popen.poll() is None:
            fields = Path(f"/proc/{proc.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
            used[name] = (int(fields[11]) + int(fields[12])) / tick
    return used


def summarise_log_line(line: str) -> str:
    """A JSON log line as its message and the last line of its traceback (what was raised), else the raw start."""
    try:
        record = json.loads(line)
    except ValueError:
        return line[:400]
    raised = str(record.get("exc") or "").strip().splitlines()[-1:] or [""]
    return f"{record.get('msg')} at {record.get('path') or record.get('logger')}: {raised[0][:300]}"


def report_logged_errors(dev: DevStack) -> None:
    """A benchmark that made a service log an error is not a clean figure: say so, with the first lines."""
    for name, proc in dev.procs.items():
        errors = [line for line in proc.lines if '"level": "ERROR"' in line or "Traceback" in line]
        if errors:
            print(f"{name} logged {len(errors)} error(s) during the run, first: {summarise_log_line(errors[0])}")


def print_per_environment(title: str, before: Counts, after: Counts, envs: float,
                          per: str = "per environment (create → READY)") -> None:
    per_service: dict[str, dict[str, float]] = {}
    for key, value in after.items():
        spent = value - before.get(key, 0.0)
        if spent:
            per_service.setdefault(key[0], {})[key[1]] = spent / envs
    total = sum(sum(counts.values()) for counts in per_service.values())
    print(f"{title} {per}: {total:.1f}")
    for service, counts in sorted(per_service.items(), key=lambda item: -sum(item[1].values())):
        detail = ", ".join(f"{name} {n:.1f}" for name, n in sorted(counts.items(), key=lambda item: -item[1]))
        print(f"  {service:<12} {sum(counts.values()):5.1f}   ({detail})")


def print_timeline(median: tuple[float, int, float], timelines: dict[int, list[tuple[float, str]]]) -> None:
    """Where the median sequential create spent its time: each progress event, at ms since the POST."""
    _, envid, started = median
    print(f"  median create (env {envid}), progress events at ms after the POST:")
    for at, message in timelines.get(envid, []):
        print(f"    {(at - started) * 1000:6.0f}  {message[:90]}")


IDLE_SECONDS = 10.0


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


async def run(samples: int, burst: int) -> None:
    var = Path(tempfile.mkdtemp(prefix="carina-bench-"))
    config = StackConfig.for_tests(var, service_env={"CARINA_PROVISIONER_MONITOR_FAST_INTERVAL": "0.05",
                                                     "CARINA_ENVMGR_CONCURRENCY": "32"})
    probe_ports = {service: free_port() for service in SERVICES}
    config.service_env.update({f"CARINA_{name.upper()}_PROBE_PORT": str(port) for name, port in probe_ports.items()})
    probe_urls = {service: f"http://127.0.0.1:{port}/metrics" for service, port in probe_ports.items()}
    config.zone_args = ["--boot-seconds", "0", "--guest-seconds", "0", "--guest-poll-seconds", "0.05",
                        "--monitor-seconds", "5", "--shutdown-seconds", "0", "--sched-seconds", "0",
                        "--host-cpu", "100000", "--host-memory", "10000000"]
    dev = DevStack(config)
    dev.start()
    try:
        stack = Stack(dev)
        stack.upload_config(E2E_CONFIG % {"zone1": dev.zone_url(0), "zone2": dev.zone_url(1)})
        nc = await nats.connect(dev.operator_nats_url)
        ready: dict[int, float] = {}
        timelines: dict[int, list[tuple[float, str]]] = {}

        async def on_event(msg: nats.aio.msg.Msg) -> None:
            with contextlib.suppress(ValueError, AttributeError):
                timelines.setdefault(int(msg.subject.rsplit(".", 1)[1]), []).append(
                    (time.perf_counter(), str(json.loads(msg.data).get("message"))))
            if b"environment READY" in msg.data:
                ready.setdefault(int(msg.subject.rsplit(".", 1)[1]), time.perf_counter())

        await nc.subscribe("events.env.*", cb=on_event)
        client = httpx.AsyncClient(base_url=dev.gateway_url, timeout=60,
                                   headers={"Authorization": f"Bearer {stack.token}"})

        async def create() -> tuple[int, float]:
            started = time.perf_counter()
            answer = await client.post("/api/v1/environments", json={"config": "web", "request_id": uuid.uuid4().hex})
            answer.raise_for_status()
            return int(answer.json()["envid"]), started

        async def wait_ready(envids: list[int], timeout: float) -> None:
            deadline = time.perf_counter() + timeout
            next_progress = time.perf_counter() + 10
            while any(e not in ready for e in envids) and time.perf_counter() < deadline:
                await asyncio.sleep(0.005)
                if time.perf_counter() > next_progress:
                    done = sum(1 for e in envids if e in ready)
                    print(f"  … {done}/{len(envids)} READY", file=sys.stderr, flush=True)
                    next_progress += 10

        for _ in range(3):  # warm-up: connections, caches, imports
            envid, _ = await create()
            await wait_ready([envid], 30)
        sequential_before = scrape(probe_urls)
        latencies: list[float] = []
        sampled: list[tuple[float, int, float]] = []
        for _ in range(samples):
            envid, started = await create()
            await wait_ready([envid], 30)
            if envid in ready:
                latencies.append((ready[envid] - started) * 1000)
                sampled.append((latencies[-1], envid, started))
        sequential_after = scrape(probe_urls)
        before, cpu_before = scrape(probe_urls), cpu_seconds(dev)
        started = time.perf_counter()
        created = await asyncio.gather(*(create() for _ in range(burst)))
        accepted_in = time.perf_counter() - started
        await wait_ready([e for e, _ in created], 600)
        elapsed = time.perf_counter() - started
        done = sum(1 for e, _ in created if e in ready)
        await asyncio.sleep(1)  # let the last READY's writes land before counting
        after, cpu_after = scrape(probe_urls), cpu_seconds(dev)
        print("create→READY latency, master + 2 slaves, zero simulated delays "
              f"({len(latencies)} sequential creates):")
        print(f"  p50 {statistics.median(latencies):.0f} ms   p95 {percentile(latencies, 95):.0f} ms   "
              f"min {min(latencies):.0f} ms   max {max(latencies):.0f} ms")
        print_timeline(sorted(sampled)[len(sampled) // 2], timelines)
        print_handler_times(sequential_before, sequential_after)
        print(f"sustained creates: {burst} submitted at once (accepted in {accepted_in:.1f} s), {done} READY in "
              f"{elapsed:.1f} s → {done / elapsed:.1f} environments/s ({3 * done / elapsed:.0f} VMs/s)")
        cpu = {name: (cpu_after[name] - cpu_before.get(name, 0.0)) * 1000 / (done or 1) for name in cpu_after}
        print(f"CPU per environment: {sum(cpu.values()):.0f} ms   (" + ", ".join(
            f"{name} {ms:.0f}" for name, ms in sorted(cpu.items(), key=lambda item: -item[1])) + ")")
        print_per_environment("MongoDB round trips", before[0], after[0], done or 1)
        print_per_environment("NATS messages handled", before[1], after[1], done or 1)
        print_handler_times(before, after)
        # What the running VMs cost when nothing happens: monitoring, guests' metric pushes, masters' long polls.
        idle_before, idle_started = scrape(probe_urls), time.perf_counter()
        await asyncio.sleep(IDLE_SECONDS)
        idle_after, idle_seconds = scrape(probe_urls), time.perf_counter() - idle_started
        at_rest = f"per second at rest, {3 * (done + samples + 3)} VMs running"
        print_per_environment("MongoDB round trips", idle_before[0], idle_after[0], idle_seconds, per=at_rest)
        print_per_environment("NATS messages handled", idle_before[1], idle_after[1], idle_seconds, per=at_rest)
        report_logged_errors(dev)
        await client.aclose()
        await nc.drain()
    finally:
        dev.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(run(args.samples, args.burst))


if __name__ == "__main__":
    main()
