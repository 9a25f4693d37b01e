"""Benchmark of the global scheduler's pure allocator: allocation decisions per second over 10,000 requests.

Run: `.venv/bin/python bench/bench_scheduler.py [--requests N] [--seed S]`.

Scenario: 3 zones with one pool of each class (4 x 3 pools of 96 vCPUs), 24 services spread over the four classes.
Requests arrive in waves of 400 per pass (passes 30 s apart), bronze and silver first, then more and more gold and
platinum, so lower classes borrow higher-class pools and must give capacity back. Between passes holders release a
random 30% of their grants and every victim honours its reclaim, as envmgr would. The run ends when nothing is
pending. A decision is a Grant, Reclaim or Rejected effect; only time spent inside the
allocator (submit, step, release) is counted.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.globalconfig import GlobalConfig  # noqa: E402
from services.scheduler.allocator import Allocator, Grant, Reclaim, Rejected, Request, RequestKind  # noqa: E402

CLASSES = ["bronze", "silver", "gold", "platinum"]
ZONES = ["flame", "ember", "spark"]
WAVE = 400


def build_config() -> GlobalConfig:
    pools = {
        f"{zone}-{cls}": {"zone": zone, "vcpus": 96, "memory": 96 * 2048, "class": cls}
        for zone in ZONES
        for cls in CLASSES
    }
    services = {f"svc{i:02d}": {"class": CLASSES[i % 4], "max_vcpus": 200, "max_memory": 200 * 2048} for i in range(24)}
    return GlobalConfig.parse({"pools": pools, "services": services})


def make_requests(count: int, rng: random.Random) -> list[Request]:
    by_class = {cls: [f"svc{i:02d}" for i in range(24) if i % 4 == n] for n, cls in enumerate(CLASSES)}
    requests = []
    for reqid in range(1, count + 1):
        vcpus = rng.choice([0.5, 1, 1, 2, 2, 4])
        progress = reqid / count  # early waves are mostly low classes, late ones mostly high
        weights = [1 - progress, 1 - progress / 2, 0.2 + progress, 0.1 + progress]
        cls = rng.choices(CLASSES, weights)[0]
        requests.append(
            Request(
                reqid=reqid,
                service=rng.choice(by_class[cls]),
                envid=rng.randint(1, 400),
                vcpus=vcpus,
                memory=int(vcpus * 1024),
                zone=rng.choice(ZONES),
                kind=RequestKind.SCALEUP if rng.random() < 0.9 else RequestKind.CREATE,
            )
        )
    return requests


def run(count: int, seed: int) -> None:
    rng = random.Random(seed)
    alloc = Allocator(build_config(), clock=lambda: 0.0, lease_ttl=3600.0, reclaim_window=60.0)
    requests = make_requests(count, rng)

    busy = submit_time = 0.0
    now = 0.0
    grants = reclaims = rejected = passes = 0
    held: list[int] = []
    to_release: list[int] = []
    arrivals = iter(requests)
    arrived = 0
    while (arrived < count or alloc.pending_count) and passes < 10_000:
        now += 30.0
        wave = [next(arrivals) for _ in range(min(WAVE, count - arrived))]
        arrived += len(wave)
        started = time.perf_counter()
        for request in wave:
            alloc.submit(request, now=now)
        submit_time += time.perf_counter() - started
        for reqid in to_release:
            alloc.release(reqid, now=now)
        effects = alloc.step(now=now)
        busy += time.perf_counter() - started
        passes += 1
        to_release = []
        for effect in effects:
            if isinstance(effect, Grant):
                grants += 1
                held.append(effect.reqid)
            elif isinstance(effect, Reclaim):
                reclaims += 1
                to_release.append(effect.reqid)  # the victim scales down and releases before the next pass
            elif isinstance(effect, Rejected):
                rejected += 1
        rng.shuffle(held)
        cut = int(len(held) * 0.3)
        to_release.extend(held[:cut])
        held = held[cut:]
    alloc.check_invariants()

    decisions = grants + reclaims + rejected
    print(f"requests:   {count} (seed {seed}), {passes} scheduling passes")  # noqa: T201
    print(f"decisions:  {grants} grants, {reclaims} reclaims, {rejected} rejected")  # noqa: T201
    print(f"time:       {busy:.3f} s inside the allocator ({submit_time:.3f} s of it submitting)")  # noqa: T201
    print(f"throughput: {decisions / busy:,.0f} allocation decisions/s")  # noqa: T201


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    run(args.requests, args.seed)


if __name__ == "__main__":
    main()
