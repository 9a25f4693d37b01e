"""What the global scheduler could still grant, read from its stored configuration and ledger (pure).

The policy service asks this before it scales an environment up, so that it never plans beyond what the scheduler
would grant: a scale-up the scheduler cannot serve only sits as a READY job until `grant_timeout` and fails. The
rules are the allocator's (services/scheduler/allocator.py), seen from outside:

* a service may use the pools of its zone whose class is at least its own (a bronze service borrows a gold pool);
* a grant must fit the pool's free vCPUs and memory and keep the service within its quota;
* what a lower-class service borrowed with a `scaleup` grant (in a pool of a higher class than its own) can be
  reclaimed for a higher class, so it counts as room for that class.

PEND requests of the same service count against its quota (they are served first); other services' PEND requests
are not subtracted from the pools — the scheduler's order decides those, and the envmgr grant wait still holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from libs.common.globalconfig import GlobalConfig

_MILLI = 1000


def _milli(vcpus: Any) -> int:
    """vCPUs in integer thousandths, as the allocator accounts them (0 for a missing or odd value)."""
    try:
        return round(float(vcpus) * _MILLI)
    except (TypeError, ValueError):
        return 0


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def headroom(config: GlobalConfig | None, requests: Iterable[Mapping[str, Any]], service: str, zone: str,
             vcpus: float, memory: int) -> int | None:
    """How many more VMs of `vcpus` x `memory` the scheduler could grant `service` in `zone` now.

    Args:
        config: the scheduler's global configuration; None when none is stored.
        requests: the ledger's entries (documents of the `requests` collection); only PEND and ALLOCATED count.
        service: the service asking.
        zone: the zone of the environment.
        vcpus: vCPUs of one VM (may be fractional).
        memory: MiB of one VM.

    Returns:
        The number of VMs (0 or more), or None when the scheduler does not arbitrate this service (no
        configuration, or the service is not in it), i.e. there is no limit to apply.
    """
    if config is None or service not in config.services:
        return None
    mine = config.services[service]
    cls = int(mine.service_class)
    want_mv, want_mem = max(_milli(vcpus), 1), max(int(memory), 1)
    classes = {name: int(s.service_class) for name, s in config.services.items()}

    used_mv: dict[str, int] = {}
    used_mem: dict[str, int] = {}
    reclaimable_mv: dict[str, int] = {}
    reclaimable_mem: dict[str, int] = {}
    quota_mv, quota_mem = _milli(mine.max_vcpus), int(mine.max_memory)
    for req in requests:
        status, holder = req.get("status"), str(req.get("service", ""))
        mv, mem = _milli(req.get("vcpus")), _int(req.get("memory"))
        if holder == service and status in ("PEND", "ALLOCATED"):
            quota_mv, quota_mem = quota_mv - mv, quota_mem - mem
        if status != "ALLOCATED":
            continue
        held_in = str(req.get("pool", ""))
        used_mv[held_in] = used_mv.get(held_in, 0) + mv
        used_mem[held_in] = used_mem.get(held_in, 0) + mem
        held_config = config.pools.get(held_in)
        holder_cls = classes.get(holder, -1)
        if (held_config is not None and req.get("kind") == "scaleup" and holder_cls < int(held_config.service_class)
                and holder_cls < cls):
            reclaimable_mv[held_in] = reclaimable_mv.get(held_in, 0) + mv
            reclaimable_mem[held_in] = reclaimable_mem.get(held_in, 0) + mem

    by_quota = min(quota_mv // want_mv, quota_mem // want_mem)
    by_pools = 0
    for name, pool in config.pools.items():
        if pool.zone != zone or int(pool.service_class) < cls:
            continue
        free_mv = _milli(pool.vcpus) - used_mv.get(name, 0) + reclaimable_mv.get(name, 0)
        free_mem = int(pool.memory) - used_mem.get(name, 0) + reclaimable_mem.get(name, 0)
        by_pools += max(0, min(free_mv // want_mv, free_mem // want_mem))
    return max(0, min(by_quota, by_pools))
