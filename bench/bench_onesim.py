"""Benchmark of the simulated zone: 1,000 VMs allocated to RUNNING, then vmpool.infoextended over them via pyone.

Where it sits: a plain script (``.venv/bin/python bench/bench_onesim.py [--vms N]``) guarding DESIGN §9's promise
that the simulator is fast enough for scale tests. It starts a zone in-process with boot-seconds 0 on a free port
and prints one line per figure.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyone  # noqa: E402

from libs.onesim import NetworkSpec, SimZone, ZoneConfig  # noqa: E402

VM_TEXT = (
    'NAME = "bench-{i}"\nCPU = 0.1\nVCPU = 1\nMEMORY = 64\nNIC = [ NETWORK_ID = 0 ]\n'
    'CONTEXT = [ IP = "$NIC[IP]", VMID = "$VMID" ]\nCARINA_ENVID = "{env}"\n'
)


def main() -> int:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8, help="parallel pyone clients for the allocation phase")
    args = ap.parse_args()
    cfg = ZoneConfig(
        hosts=ZoneConfig.uniform_hosts(8, 10000, 65536),
        networks=[NetworkSpec("bench", "10.8.0.0/16")],
        boot_seconds=0,
        shutdown_seconds=0,
        guest_seconds=0,
        monitor_seconds=3600,
    )
    with SimZone(cfg) as zone:

        def allocate(chunk: range) -> list[int]:
            one = pyone.OneServer(zone.url, session=zone.session)
            return [one.vm.allocate(VM_TEXT.format(i=i, env=i % 10), False) for i in chunk]

        n, k = args.vms, args.clients
        chunks = [range(j, n, k) for j in range(k)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(k) as pool:
            ids = [vid for part in pool.map(allocate, chunks) for vid in part]
        t_alloc = time.perf_counter() - t0
        one = pyone.OneServer(zone.url, session=zone.session)
        deadline = time.monotonic() + 60
        while True:
            pool_info = one.vmpool.info(-2, -1, -1, 3)
            running = sum(1 for vm in pool_info.VM if vm.LCM_STATE == 3)
            if running >= n or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        t_running = time.perf_counter() - t0
        zone.core.ctl_monitor_now()
        times = []
        for _ in range(3):
            t1 = time.perf_counter()
            ext = one.vmpool.infoextended(-2, -1, -1, -1)
            times.append(time.perf_counter() - t1)
        assert len(ext.VM) == n, f"expected {n} VMs, got {len(ext.VM)}"
        t2 = time.perf_counter()
        one.vmpool.infoextended(-2, -1, -1, -1, "CARINA_ENVID=3")
        t_filter = time.perf_counter() - t2
        t3 = time.perf_counter()
        short = one.vmpool.info(-2, -1, -1, -1)
        t_short = time.perf_counter() - t3
        sys.stdout.write(
            f"onesim bench: {len(ids)} VMs, {k} parallel pyone clients\n"
            f"  allocate {n} VMs:                    {t_alloc:.3f} s ({n / t_alloc:.0f} calls/s)\n"
            f"  allocate + all RUNNING ({running}):      {t_running:.3f} s\n"
            f"  vmpool.infoextended over {n} (pyone): best {min(times):.3f} s, worst {max(times):.3f} s\n"
            f"  vmpool.infoextended with filter:      {t_filter:.3f} s\n"
            f"  vmpool.info (short) over {len(short.VM)}:        {t_short:.3f} s\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
