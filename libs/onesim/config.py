"""Configuration of one simulated OpenNebula zone (hosts, networks, users, timings, guest behaviour).

Where it sits: built by the CLI (``python -m libs.onesim``) or by tests, handed to :class:`libs.onesim.SimZone`.
All durations are seconds; ``0`` makes the corresponding transition immediate.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass
class HostSpec:
    """One hypervisor host: capacity in OpenNebula units (CPU: 100 per core, memory: MiB)."""

    name: str
    cpu: int = 800
    memory_mb: int = 32768
    hypervisor: str = "kvm"


@dataclass
class NetworkSpec:
    """A virtual network leasing IPv4 addresses from one range (``name:CIDR``)."""

    name: str
    cidr: str

    @classmethod
    def parse(cls, text: str) -> NetworkSpec:
        """Parse ``name:10.1.0.0/24``.

        Raises:
            ValueError: naming the malformed part.
        """
        name, sep, cidr = text.partition(":")
        if not sep or not name:
            raise ValueError(f"network {text!r}: expected NAME:CIDR, e.g. public:10.1.0.0/24")
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ValueError(f"network {text!r}: bad CIDR {cidr!r} ({exc})") from exc
        if net.version != 4 or net.num_addresses < 4:
            raise ValueError(f"network {text!r}: need an IPv4 range with at least 2 usable addresses")
        return cls(name, str(net))


@dataclass
class ZoneConfig:
    """Everything a simulated zone needs. Defaults give a small, fast zone suitable for tests."""

    name: str = "zone1"
    host: str = "127.0.0.1"
    port: int = 0
    hosts: list[HostSpec] = field(default_factory=lambda: [HostSpec(f"host{i}") for i in range(4)])
    networks: list[NetworkSpec] = field(default_factory=lambda: [NetworkSpec("public", "10.1.0.0/24")])
    users: list[tuple[str, str]] = field(default_factory=lambda: [("oneadmin", "secret")])
    version: str = "6.10.0"
    zone_id: int = 0
    list_order_desc: bool = True
    # lifecycle timings (seconds)
    sched_seconds: float = 0.0
    boot_seconds: float = 1.0
    shutdown_seconds: float = 0.5
    hard_factor: float = 0.2
    # monitoring
    monitor_seconds: float = 5.0
    monitor_keep: int = 20
    # guests
    guest_seconds: float = 0.5
    guest_http_timeout: float = 5.0
    guest_retries: int = 8
    guest_backoff: float = 0.25
    guest_poll_seconds: float = 2.0
    guest_long_poll: float = 25.0  # seconds a master asks Carina to hold a notifications poll (as balance.sh)
    guest_metrics: bool = False
    guest_metrics_seconds: float = 5.0
    guest_workers: int = 64
    # full text search on vmpool.info* is a MySQL-only feature in oned; sqlite answers an INTERNAL error
    fts_supported: bool = True
    # accept dotted paths (VM.NAME=x, VM.USER_TEMPLATE.K=v) as exact matches in the search filter
    search_dotted_paths: bool = True
    state_file: str | None = None
    save_seconds: float = 0.5

    @staticmethod
    def uniform_hosts(count: int, cpu: int, memory_mb: int, hypervisor: str = "kvm") -> list[HostSpec]:
        """``count`` identical hosts named host0..host{count-1}."""
        return [HostSpec(f"host{i}", cpu, memory_mb, hypervisor) for i in range(count)]
