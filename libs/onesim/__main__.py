"""Command line entry: ``python -m libs.onesim`` runs one simulated zone until SIGTERM/SIGINT.

Where it sits: used by ``make run`` and by tests that need the simulator as a separate process. Prints exactly one
line ``onesim <name> listening on http://<host>:<port>/RPC2`` once the port is bound (``--port 0`` picks one).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from .config import HostSpec, NetworkSpec, ZoneConfig
from .server import SimZone


def _host_spec(text: str) -> HostSpec:
    parts = text.split(":")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"host spec {text!r}: expected NAME:CPU:MEMORY_MB:HYPERVISOR")
    try:
        return HostSpec(parts[0], int(parts[1]), int(parts[2]), parts[3])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"host spec {text!r}: CPU and MEMORY_MB must be integers") from exc


def _network(text: str) -> NetworkSpec:
    try:
        return NetworkSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _user(text: str) -> tuple[str, str]:
    name, sep, pw = text.partition(":")
    if not sep or not name or not pw:
        raise argparse.ArgumentTypeError(f"user {text!r}: expected USER:PASSWORD")
    return name, pw


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(prog="python -m libs.onesim", description="Simulated OpenNebula 6.10 zone")
    p.add_argument("--name", default="zone1", help="zone name (zonepool.info, logs)")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=2633, help="port (0 picks a free one)")
    p.add_argument("--hosts", type=int, default=4, help="number of identical hosts host0..hostN-1")
    p.add_argument("--host-cpu", type=int, default=800, help="CPU per host (100 per core)")
    p.add_argument("--host-memory", type=int, default=32768, help="memory per host, MiB")
    p.add_argument("--hypervisor", default="kvm", help="hypervisor of the identical hosts (kvm, openvz, ec2)")
    p.add_argument("--host-spec", type=_host_spec, action="append", default=[],
                   help="extra host NAME:CPU:MEMORY_MB:HYPERVISOR (repeatable)")
    p.add_argument("--network", type=_network, action="append", default=[],
                   help="virtual network NAME:CIDR (repeatable; default public:10.1.0.0/24)")
    p.add_argument("--user", type=_user, action="append", default=[],
                   help="USER:PASSWORD (repeatable; the first is oneadmin-like, uid 0; default oneadmin:secret)")
    p.add_argument("--boot-seconds", type=float, default=1.0, help="placement to RUNNING (PROLOG + BOOT)")
    p.add_argument("--shutdown-seconds", type=float, default=0.5, help="soft shutdown/epilog time")
    p.add_argument("--sched-seconds", type=float, default=0.0, help="delay before a PENDING VM is placed")
    p.add_argument("--monitor-seconds", type=float, default=5.0, help="monitoring refresh period")
    p.add_argument("--guest-seconds", type=float, default=0.5, help="RUNNING to the guest's first report")
    p.add_argument("--guest-poll-seconds", type=float, default=2.0, help="pull-notification poll period")
    p.add_argument("--guest-metrics", action="store_true", help="guests push OneGate metrics by default")
    p.add_argument("--metrics-seconds", type=float, default=5.0, help="metrics push period")
    p.add_argument("--guest-timeout", type=float, default=5.0, help="timeout of each guest HTTP request")
    p.add_argument("--state-file", default=None, help="JSON file keeping VMs across restarts (atomic writes)")
    p.add_argument("--version", dest="one_version", default="6.10.0", help="one.system.version answer")
    p.add_argument("--no-fts", action="store_true", help="answer search filters like a sqlite-backed oned")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a zone until a signal arrives."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    hosts = ZoneConfig.uniform_hosts(args.hosts, args.host_cpu, args.host_memory, args.hypervisor) + args.host_spec
    cfg = ZoneConfig(
        name=args.name, host=args.bind, port=args.port, hosts=hosts,
        networks=args.network or [NetworkSpec("public", "10.1.0.0/24")],
        users=args.user or [("oneadmin", "secret")], version=args.one_version,
        boot_seconds=args.boot_seconds, shutdown_seconds=args.shutdown_seconds, sched_seconds=args.sched_seconds,
        monitor_seconds=args.monitor_seconds, guest_seconds=args.guest_seconds,
        guest_poll_seconds=args.guest_poll_seconds, guest_metrics=args.guest_metrics,
        guest_metrics_seconds=args.metrics_seconds, guest_http_timeout=args.guest_timeout,
        state_file=args.state_file, fts_supported=not args.no_fts,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    zone = SimZone(cfg).start()
    sys.stdout.write(f"onesim {cfg.name} listening on {zone.url}\n")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        zone.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
