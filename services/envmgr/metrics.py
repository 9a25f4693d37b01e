"""envmgr metrics: reconcile passes, jobs by outcome, environments by status."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_SECONDS = Histogram("carina_envmgr_reconcile_duration_seconds", "One reconcile pass of an environment",
                              buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
RECONCILE_CONFLICTS = Counter("carina_envmgr_reconcile_conflicts_total",
                              "Compare-and-set conflicts (another replica wrote first)")
JOBS_TOTAL = Counter("carina_envmgr_jobs_total", "Operations finished, by type and result", ["type", "result"])
ENVIRONMENTS = Gauge("carina_environments", "Environments by policy status", ["policy_status"])
VMS = Gauge("carina_vms", "Live VM slots by lifecycle state and zone", ["lifecycle", "zone"])
