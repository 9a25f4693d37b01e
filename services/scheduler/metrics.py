"""Scheduler metrics: pool capacity and allocation, service allocation, requests by state."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

POOL_CAPACITY_VCPUS = Gauge("carina_scheduler_pool_capacity_vcpus", "vCPUs a pool offers", ["pool", "zone", "class"])
POOL_ALLOCATED_VCPUS = Gauge("carina_scheduler_pool_allocated_vcpus", "vCPUs granted from a pool",
                             ["pool", "zone", "class"])
POOL_CAPACITY_MEMORY = Gauge("carina_scheduler_pool_capacity_memory_mib", "Memory a pool offers (MiB)",
                            ["pool", "zone", "class"])
POOL_ALLOCATED_MEMORY = Gauge("carina_scheduler_pool_allocated_memory_mib", "Memory granted from a pool (MiB)",
                              ["pool", "zone", "class"])
SERVICE_ALLOCATED_VCPUS = Gauge("carina_scheduler_service_allocated_vcpus", "vCPUs a service holds", ["service"])
REQUESTS = Gauge("carina_scheduler_requests", "Requests in the ledger by state", ["state"])
EFFECTS = Counter("carina_scheduler_effects_total", "Grants, reclaims, expiries and rejections", ["effect"])
