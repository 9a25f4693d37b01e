"""The global scheduler's pure core: the request ledger and the allocation pass (no I/O, injected clock).

Flow: envmgr publishes `pool.request` / `pool.release` / `pool.cancel`; the scheduler service (the I/O shell around
this module) loads the admin's `GlobalConfig`, restores an `Allocator` from the requests persisted in MongoDB,
feeds it each message (`submit`, `release`, `cancel`, `renew`) and, on every tick, calls `step(now)`. The returned
effects are what the shell must do: persist the changed requests (`drain_changes`), publish `pool.grant.<service>`
for each `Grant`, `pool.reclaim.<service>` for each `Reclaim`, and record `Expired`/`Rejected` outcomes.

Scheduling follows Carina's `oneenvd-gs` (reference §1.5) with its gaps closed:

* Pending requests are served by service class (platinum first), then submit time, then reqid.
* A request may use a pool in its zone whose class is at least its service's class, with enough free vCPUs and
  memory, and only while the service stays within its quota. Among those, best fit: least free vCPUs first.
* A request that fits nowhere is a *preemptee*. While it waits, lower classes may not borrow the pools it could
  use (otherwise freed capacity would be taken again by the lower class and the higher class would starve).
* Reclaim takes back *borrowed* capacity only: a `scaleup` grant of a lower-class service in a pool of a higher
  class, in the preemptee's zone (Carina checked no zone), in a pool the preemptee may use. Just enough victims are
  chosen to make the preemptee fit, counting capacity already being reclaimed. A victim is not asked again within
  `reclaim_window` seconds. A reclaimed grant stays ALLOCATED until its holder releases it or its lease runs out;
  renewals do not extend a reclaimed grant, so an unresponsive victim still gives the capacity back.
* Grants are leases (`lease_ttl`): the holder renews them; `expire(now)` (also run at the start of each `step`)
  releases the ones that ran out, so a crashed holder cannot leak capacity.

vCPUs may be fractional (OpenNebula CPU shares); they are accounted in integer thousandths so sums stay exact.
"""

from __future__ import annotations

import bisect
import heapq
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from libs.common.errors import CarinaError, PermanentError
from libs.common.globalconfig import GlobalConfig, ServiceClass

DEFAULT_LEASE_TTL = 600.0
DEFAULT_RECLAIM_WINDOW = 60.0
_MILLI = 1000


class RequestStatus(StrEnum):
    """Ledger states (Carina's, plus REJECTED for requests that can never be served under the config)."""

    PEND = "PEND"
    ALLOCATED = "ALLOCATED"
    RELEASED = "RELEASED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"


TERMINAL_STATUSES = frozenset({RequestStatus.RELEASED, RequestStatus.CANCELLED, RequestStatus.REJECTED})


class RequestKind(StrEnum):
    """What the capacity is for. Only `scaleup` grants can be reclaimed (reclaim = scale down one slave)."""

    CREATE = "create"
    SCALEUP = "scaleup"


@dataclass(slots=True)
class Request:
    """One ledger entry. Callers fill the first block; the ledger owns the rest.

    Attributes:
        reqid: unique id chosen by the requester (idempotency key).
        service: the tenant asking.
        envid: the environment the capacity is for.
        vcpus: vCPUs wanted (may be fractional).
        memory: MiB wanted.
        zone: the zone to allocate in; may be omitted when `target_pool` is given.
        target_pool: Carina style: the env's endpoint name, which names a pool; its zone is used.
        kind: `create` or `scaleup`.
        submitted_at: when it was asked for; the ledger's clock if omitted.
        status: PEND, ALLOCATED, RELEASED, CANCELLED or REJECTED.
        pool: the pool granted.
        lease_expires_at: when an ALLOCATED grant lapses unless renewed.
        granted_at: when it was granted.
        reclaimed_at: when a reclaim was last sent for it.
        ended_at: when it reached a terminal status.
        reason: why it ended (`released`, `lease expired`, a rejection reason, ...).
    """

    reqid: int
    service: str
    envid: int
    vcpus: float
    memory: int
    zone: str | None = None
    target_pool: str | None = None
    kind: RequestKind = RequestKind.SCALEUP
    submitted_at: float | None = None
    status: RequestStatus = RequestStatus.PEND
    pool: str | None = None
    lease_expires_at: float | None = None
    granted_at: float | None = None
    reclaimed_at: float | None = None
    ended_at: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as strings) for persisting."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["kind"] = str(self.kind)
        data["status"] = str(self.status)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Request:
        """Rebuild a request from `to_dict` output.

        Raises:
            InvalidRequest: a key is unknown or missing, or a status/kind is not recognised.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRequest(f"persisted request has unknown keys: {', '.join(unknown)}")
        try:
            values = dict(data)
            values["kind"] = RequestKind(values.get("kind", RequestKind.SCALEUP))
            values["status"] = RequestStatus(values.get("status", RequestStatus.PEND))
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"persisted request {data.get('reqid')!r} is malformed: {exc}") from None

    @property
    def active(self) -> bool:
        """PEND or ALLOCATED."""
        return self.status in (RequestStatus.PEND, RequestStatus.ALLOCATED)


# --- effects -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    """Tell `service` that request `reqid` got `vcpus`/`memory` in `pool` (publish `pool.grant.<service>`)."""

    reqid: int
    service: str
    envid: int
    zone: str
    pool: str
    vcpus: float
    memory: int
    kind: RequestKind
    lease_expires_at: float


@dataclass(frozen=True, slots=True)
class Reclaim:
    """Ask `service` to scale `envid` down by one slave and release `reqid` (publish `pool.reclaim.<service>`).

    `for_reqid` is the pending request that needs the capacity; `resend` marks a repeat after `reclaim_window`.
    """

    reqid: int
    service: str
    envid: int
    zone: str
    pool: str
    vcpus: float
    memory: int
    for_reqid: int
    resend: bool = False


@dataclass(frozen=True, slots=True)
class Expired:
    """A grant's lease ran out; its capacity went back to the pool (tell the holder it lost it)."""

    reqid: int
    service: str
    envid: int
    pool: str
    vcpus: float
    memory: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A pending request can never be served under the current config (unknown service, no pool, too big)."""

    reqid: int
    service: str
    envid: int
    reason: str


Effect = Grant | Reclaim | Expired | Rejected


# --- errors and views --------------------------------------------------------------------------------------------


class InvalidRequest(PermanentError):
    """A request is malformed (bad sizes, ids); nothing was changed."""


class RequestConflict(PermanentError):
    """A reqid was submitted again with different content; nothing was changed."""


class InvariantViolation(CarinaError):
    """`check_invariants` found the ledger inconsistent; `problems` lists what."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("scheduler ledger invariants violated: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """A pool as the scheduler sees it (Carina's `GET /pools`). `retired`: removed from config, still in use."""

    name: str
    zone: str
    service_class: ServiceClass
    vcpus: float
    memory: int
    vcpus_allocated: float
    memory_allocated: int
    retired: bool

    @property
    def vcpus_available(self) -> float:
        return self.vcpus - self.vcpus_allocated

    @property
    def memory_available(self) -> int:
        return self.memory - self.memory_allocated


@dataclass(frozen=True, slots=True)
class ServiceUsage:
    """A service's class, quota and what it holds (Carina's `GET /services`)."""

    name: str
    service_class: ServiceClass
    max_vcpus: float
    max_memory: int
    vcpus_allocated: float
    memory_allocated: int
    retired: bool


# --- internal state ----------------------------------------------------------------------------------------------


_LOWEST = int(min(ServiceClass))


def _priority(entry: _Entry) -> tuple[int, float, int]:
    """Scheduling order: higher class first, then earlier submission, then lower reqid."""
    return (-entry.cls, entry.req.submitted_at or 0.0, entry.req.reqid)


def _milli(vcpus: float) -> int:
    return round(vcpus * _MILLI)


@dataclass(slots=True, eq=False)
class _Entry:
    req: Request
    mv: int  # vCPUs in thousandths
    cls: int  # the service's class (refreshed on config change)


@dataclass(slots=True, eq=False)
class _Pool:
    name: str
    zone: str
    cls: int
    cap_mv: int
    cap_mem: int
    retired: bool = False
    used_mv: int = 0
    used_mem: int = 0
    allocated: dict[int, _Entry] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Service:
    name: str
    cls: int
    max_mv: int
    max_mem: int
    retired: bool = False
    used_mv: int = 0
    used_mem: int = 0


class Allocator:
    """The ledger of capacity requests and the scheduling pass over it.

    Args:
        config: pools and services.
        clock: seconds (wall clock, since leases are persisted); used when a method's `now` is omitted.
        lease_ttl: how long a grant lasts without renewal, seconds.
        reclaim_window: minimum seconds between two reclaims of the same granted request.
    """

    def __init__(
        self,
        config: GlobalConfig,
        *,
        clock: Callable[[], float] = time.time,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        reclaim_window: float = DEFAULT_RECLAIM_WINDOW,
    ) -> None:
        if not lease_ttl > 0:
            raise ValueError(f"lease_ttl must be positive, got {lease_ttl!r}")
        if not reclaim_window >= 0:
            raise ValueError(f"reclaim_window must be >= 0, got {reclaim_window!r}")
        self._clock = clock
        self.lease_ttl = float(lease_ttl)
        self.reclaim_window = float(reclaim_window)
        self._config = config
        self._entries: dict[int, _Entry] = {}
        self._pending: dict[int, _Entry] = {}
        self._pending_order: list[_Entry] | None = []
        self._pools: dict[str, _Pool] = {}
        self._services: dict[str, _Service] = {}
        self._eligible: dict[tuple[str, int], list[_Pool]] = {}
        self._by_holder: dict[str, dict[int, set[int]]] = {}  # service -> envid -> active reqids
        self._leases: list[tuple[float, int]] = []  # heap; stale entries skipped lazily
        self._reclaiming: set[int] = set()  # ALLOCATED reqids with a reclaim outstanding
        self._overcommitted: set[tuple[str, str]] = set()  # ("pool"|"service", name) over limit after config change
        self._dirty: set[int] = set()
        self._deferred: list[Effect] = []
        self._max_reqid = 0
        self._apply_config(config)

    # --- construction from persisted state ---------------------------------------------------------------------

    @classmethod
    def restore(
        cls,
        config: GlobalConfig,
        requests: Iterable[Request],
        *,
        clock: Callable[[], float] = time.time,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        reclaim_window: float = DEFAULT_RECLAIM_WINDOW,
        now: float | None = None,
    ) -> Allocator:
        """Rebuild an allocator from persisted requests (what a restarted scheduler does).

        Pool availability and service allocations are recomputed from the ALLOCATED requests. An ALLOCATED request
        without a lease (a Carina import) gets a fresh one. Allocations in pools or of services no longer in the
        config are kept (as retired entries) until released. Pending requests that the config can no longer serve
        are rejected; their `Rejected` effects come out of the next `step`.

        Raises:
            InvalidRequest: duplicate reqids, or an ALLOCATED request without a pool; nothing is built.
        """
        alloc = cls(config, clock=clock, lease_ttl=lease_ttl, reclaim_window=reclaim_window)
        now = alloc._now(now)
        seen: set[int] = set()
        loaded: list[Request] = []
        for original in requests:
            req = replace(original)
            if req.reqid in seen:
                raise InvalidRequest(f"persisted requests hold reqid {req.reqid} twice")
            seen.add(req.reqid)
            if req.status is RequestStatus.ALLOCATED and not req.pool:
                raise InvalidRequest(f"persisted request {req.reqid} is ALLOCATED but names no pool")
            loaded.append(req)
        for req in loaded:
            alloc._load(req, now)
        alloc._pending_order = None
        alloc._deferred.extend(alloc._revalidate_pending(now))
        return alloc

    def _load(self, req: Request, now: float) -> None:
        entry = _Entry(req=req, mv=_milli(req.vcpus), cls=self._service_class(req.service))
        self._entries[req.reqid] = entry
        self._max_reqid = max(self._max_reqid, req.reqid)
        if req.status is RequestStatus.PEND:
            self._pending[req.reqid] = entry
            self._hold(entry)
        elif req.status is RequestStatus.ALLOCATED:
            assert req.pool is not None
            pool = self._pools.get(req.pool)
            if pool is None:
                pool = _Pool(req.pool, req.zone or "", int(ServiceClass.PLATINUM), 0, 0, retired=True)
                self._pools[req.pool] = pool
            service = self._services.get(req.service)
            if service is None:
                service = _Service(req.service, int(ServiceClass.BRONZE), 0, 0, retired=True)
                self._services[req.service] = service
            if req.lease_expires_at is None:
                req.lease_expires_at = now + self.lease_ttl
                self._dirty.add(req.reqid)  # persist it, or every restart would grant a fresh lease
            self._charge(entry, pool, service)
            heapq.heappush(self._leases, (req.lease_expires_at, req.reqid))
            if req.reclaimed_at is not None:
                self._reclaiming.add(req.reqid)
            self._hold(entry)
            self._note_overcommit(pool, service)

    # --- configuration -----------------------------------------------------------------------------------------

    @property
    def config(self) -> GlobalConfig:
        """The configuration in force."""
        return self._config

    def update_config(self, config: GlobalConfig, now: float | None = None) -> list[Effect]:
        """Switch to a new configuration without disturbing existing grants.

        Grants stay where they are. A pool or service that disappears while still holding grants is kept as
        retired (no new grants) until those are released. A pool shrunk below its allocations, or a quota lowered
        below a service's holdings, grants nothing more until back under the limit.

        Returns:
            `Rejected` effects for pending requests the new config can never serve.
        """
        now = self._now(now)
        self._config = config
        self._apply_config(config)
        for entry in self._entries.values():
            if entry.req.active:
                entry.cls = self._service_class(entry.req.service)
        self._pending_order = None
        return self._revalidate_pending(now)

    def _apply_config(self, config: GlobalConfig) -> None:
        pools: dict[str, _Pool] = {}
        for name, pc in config.pools.items():
            old = self._pools.get(name)
            pool = _Pool(name, pc.zone, int(pc.service_class), _milli(pc.vcpus), pc.memory)
            if old is not None:
                pool.used_mv, pool.used_mem, pool.allocated = old.used_mv, old.used_mem, old.allocated
            pools[name] = pool
        for name, old in self._pools.items():
            if name not in pools and old.allocated:
                pools[name] = _Pool(name, old.zone, old.cls, 0, 0, True, old.used_mv, old.used_mem, old.allocated)
        services: dict[str, _Service] = {}
        for name, sc in config.services.items():
            olds = self._services.get(name)
            service = _Service(name, int(sc.service_class), _milli(sc.max_vcpus), sc.max_memory)
            if olds is not None:
                service.used_mv, service.used_mem = olds.used_mv, olds.used_mem
            services[name] = service
        for name, olds in self._services.items():
            if name not in services and (olds.used_mv or olds.used_mem):
                services[name] = _Service(name, olds.cls, 0, 0, True, olds.used_mv, olds.used_mem)
        self._pools, self._services = pools, services
        eligible: dict[tuple[str, int], list[_Pool]] = {}
        for pool in pools.values():
            if pool.retired:
                continue
            for cls in ServiceClass:
                if pool.cls >= cls:
                    eligible.setdefault((pool.zone, int(cls)), []).append(pool)
        self._eligible = eligible
        self._overcommitted = set()
        for pool in pools.values():
            self._note_overcommit(pool, None)
        for service in services.values():
            self._note_overcommit(None, service)

    def _service_class(self, service: str) -> int:
        known = self._services.get(service)
        return known.cls if known is not None else int(ServiceClass.BRONZE)

    def _note_overcommit(self, pool: _Pool | None, service: _Service | None) -> None:
        if pool is not None and (pool.used_mv > pool.cap_mv or pool.used_mem > pool.cap_mem):
            self._overcommitted.add(("pool", pool.name))
        if service is not None and (service.used_mv > service.max_mv or service.used_mem > service.max_mem):
            self._overcommitted.add(("service", service.name))

    # --- requests ----------------------------------------------------------------------------------------------

    @property
    def next_reqid(self) -> int:
        """An id larger than every reqid seen (for shells that assign ids themselves)."""
        return self._max_reqid + 1

    def submit(self, request: Request, now: float | None = None) -> Request:
        """Record a request for capacity (idempotent on `reqid`).

        A request the config can never serve (unknown service, no pool for its class in its zone, larger than any
        such pool or than the service's whole quota) is recorded as REJECTED with the reason.

        Args:
            request: the request; only the caller's fields (reqid .. submitted_at) are read.
            now: defaults to the clock.

        Returns:
            A copy of the ledger entry (PEND or REJECTED; for a repeated reqid, the entry as it stands).

        Raises:
            InvalidRequest: bad ids or sizes.
            RequestConflict: the reqid is known with different content.
        """
        existing = self._entries.get(request.reqid)
        if existing is not None:
            self._check_same(existing.req, request)
            return replace(existing.req)
        problem = _validate_shape(request)
        if problem:
            raise InvalidRequest(f"request {request.reqid!r}: {problem}")
        now = self._now(now)
        req = Request(
            reqid=request.reqid,
            service=request.service,
            envid=request.envid,
            vcpus=request.vcpus,
            memory=request.memory,
            zone=request.zone,
            target_pool=request.target_pool,
            kind=RequestKind(request.kind),
            submitted_at=now if request.submitted_at is None else request.submitted_at,
        )
        entry = _Entry(req=req, mv=_milli(req.vcpus), cls=self._service_class(req.service))
        self._max_reqid = max(self._max_reqid, req.reqid)
        self._entries[req.reqid] = entry
        self._dirty.add(req.reqid)
        reason = self._resolve_zone(req) or self._admission_problem(entry)
        if reason:
            self._end(entry, RequestStatus.REJECTED, reason, now)
        else:
            self._pending[req.reqid] = entry
            self._hold(entry)
            if self._pending_order is not None:
                bisect.insort(self._pending_order, entry, key=_priority)
        return replace(req)

    @staticmethod
    def _check_same(stored: Request, incoming: Request) -> None:
        differs = [
            name
            for name in ("service", "envid", "vcpus", "memory", "kind", "target_pool")
            if getattr(stored, name) != getattr(incoming, name)
        ]
        if incoming.zone is not None and incoming.zone != stored.zone:
            differs.append("zone")
        if differs:
            raise RequestConflict(f"reqid {stored.reqid} already exists with different {', '.join(differs)}")

    def _resolve_zone(self, req: Request) -> str | None:
        if req.target_pool is not None:
            pool = self._pools.get(req.target_pool)
            if pool is None or pool.retired:
                return f"unknown pool {req.target_pool!r} (not in the global config)"
            if req.zone is not None and req.zone != pool.zone:
                return f"pool {req.target_pool!r} is in zone {pool.zone!r}, not {req.zone!r}"
            req.zone = pool.zone
        return None

    def _admission_problem(self, entry: _Entry) -> str | None:
        req = entry.req
        service = self._services.get(req.service)
        if service is None or service.retired:
            return f"unknown service {req.service!r} (not in the global config)"
        label = ServiceClass(service.cls).label
        if entry.mv > service.max_mv or req.memory > service.max_mem:
            return (
                f"request ({req.vcpus:g} vCPU, {req.memory} MiB) exceeds the quota of service {req.service!r} "
                f"({service.max_mv / _MILLI:g} vCPU, {service.max_mem} MiB)"
            )
        pools = self._eligible.get((req.zone or "", service.cls), [])
        if not pools:
            return f"no pool in zone {req.zone!r} serves class {label}"
        if not any(p.cap_mv >= entry.mv and p.cap_mem >= req.memory for p in pools):
            return (
                f"request ({req.vcpus:g} vCPU, {req.memory} MiB) is larger than every pool serving class {label} "
                f"in zone {req.zone!r}"
            )
        return None

    def _revalidate_pending(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for entry in list(self._pending.values()):
            reason = (self._resolve_zone(entry.req) if entry.req.zone is None else None) or self._admission_problem(
                entry
            )
            if reason:
                req = entry.req
                self._end(entry, RequestStatus.REJECTED, reason, now)
                effects.append(Rejected(req.reqid, req.service, req.envid, reason))
        return effects

    def release(self, reqid: int, now: float | None = None) -> bool:
        """Give back a grant (RELEASED); a still pending request is withdrawn (CANCELLED).

        Returns:
            False when the request is unknown or already ended (a repeated release changes nothing).
        """
        entry = self._entries.get(reqid)
        if entry is None or not entry.req.active:
            return False
        now = self._now(now)
        if entry.req.status is RequestStatus.ALLOCATED:
            self._end(entry, RequestStatus.RELEASED, "released", now)
        else:
            self._end(entry, RequestStatus.CANCELLED, "withdrawn before it was granted", now)
        return True

    def cancel(self, service: str, envid: int, now: float | None = None) -> list[int]:
        """An environment was removed: free its grants and cancel its pending requests (all become CANCELLED).

        Returns:
            The reqids that changed.
        """
        held = self._by_holder.get(service, {}).get(envid)
        if not held:
            return []
        now = self._now(now)
        changed = sorted(held)
        for reqid in changed:
            self._end(self._entries[reqid], RequestStatus.CANCELLED, "environment removed", now)
        return changed

    def renew(self, service: str, envid: int | None = None, now: float | None = None) -> int:
        """Extend the leases of a holder's grants to `now + lease_ttl`.

        A grant with a reclaim outstanding is not extended: it must be released, or it lapses.

        Args:
            service: the holder.
            envid: only this environment's grants; all of the service's when None.

        Returns:
            How many leases were extended.
        """
        by_env = self._by_holder.get(service)
        if not by_env:
            return 0
        now = self._now(now)
        until = now + self.lease_ttl
        groups = [by_env.get(envid, set())] if envid is not None else list(by_env.values())
        renewed = 0
        for reqids in groups:
            for reqid in reqids:
                req = self._entries[reqid].req
                if req.status is not RequestStatus.ALLOCATED or reqid in self._reclaiming:
                    continue
                if req.lease_expires_at is None or req.lease_expires_at < until:
                    req.lease_expires_at = until
                    heapq.heappush(self._leases, (until, reqid))
                    self._dirty.add(reqid)
                    renewed += 1
        return renewed

    def expire(self, now: float | None = None) -> list[Expired]:
        """Release every grant whose lease ended at or before `now`.

        Returns:
            One `Expired` per grant released.
        """
        now = self._now(now)
        expired: list[Expired] = []
        leases = self._leases
        while leases and leases[0][0] <= now:
            at, reqid = heapq.heappop(leases)
            entry = self._entries.get(reqid)
            if entry is None:
                continue
            req = entry.req
            if req.status is not RequestStatus.ALLOCATED or req.lease_expires_at != at:
                continue  # stale heap entry: released or renewed since
            pool = req.pool or ""
            self._end(entry, RequestStatus.RELEASED, "lease expired", now)
            expired.append(Expired(reqid, req.service, req.envid, pool, req.vcpus, req.memory))
        return expired

    # --- the scheduling pass -----------------------------------------------------------------------------------

    def step(self, now: float | None = None) -> list[Effect]:
        """Run one scheduling pass: expire leases, grant what fits, reclaim borrowed capacity for what does not.

        Returns:
            Effects in the order they happened: `Rejected` (deferred from a restore), `Expired`, `Grant`,
            `Reclaim`.
        """
        now = self._now(now)
        effects: list[Effect] = list(self._deferred)
        self._deferred.clear()
        effects.extend(self.expire(now))
        if self._pending_order is None:
            self._pending_order = sorted(self._pending.values(), key=_priority)
        order = self._pending_order
        services = self._services
        eligible = self._eligible
        preemptees: list[tuple[_Entry, list[_Pool]]] = []
        reserved: set[str] = set()  # pools wanted by waiting requests of a higher class than the current one
        reserved_now: set[str] = set()  # ... of the current class
        current_cls = -1
        order_changed = False
        for entry in order:
            if entry.req.status is not RequestStatus.PEND:
                order_changed = True  # ended since the order was built
                continue
            if entry.cls != current_cls:
                reserved |= reserved_now
                reserved_now = set()
                current_cls = entry.cls
            req = entry.req
            service = services[req.service]
            mv, mem = entry.mv, req.memory
            if service.used_mv + mv > service.max_mv or service.used_mem + mem > service.max_mem:
                continue  # over quota: waits, and (as in Carina) does not preempt anyone
            best: _Pool | None = None
            usable: list[_Pool] = []
            for pool in eligible.get((req.zone or "", entry.cls), ()):
                if pool.cap_mv < mv or pool.cap_mem < mem or pool.name in reserved:
                    continue
                usable.append(pool)
                free_mv = pool.cap_mv - pool.used_mv
                if free_mv < mv or pool.cap_mem - pool.used_mem < mem:
                    continue
                if best is None or (free_mv, pool.cap_mem - pool.used_mem, pool.name) < (
                    best.cap_mv - best.used_mv,
                    best.cap_mem - best.used_mem,
                    best.name,
                ):
                    best = pool
            if best is None:
                if usable:
                    preemptees.append((entry, usable))
                    for pool in usable:
                        reserved_now.add(pool.name)
                continue
            effects.append(self._grant(entry, best, service, now))
            order_changed = True
        if order_changed:
            self._pending_order = [e for e in order if e.req.status is RequestStatus.PEND]
        if preemptees or self._reclaiming:
            effects.extend(self._reclaim(preemptees, now))
        return effects

    def _grant(self, entry: _Entry, pool: _Pool, service: _Service, now: float) -> Grant:
        req = entry.req
        req.status = RequestStatus.ALLOCATED
        req.pool = pool.name
        req.granted_at = now
        req.lease_expires_at = now + self.lease_ttl
        del self._pending[req.reqid]
        self._charge(entry, pool, service)
        heapq.heappush(self._leases, (req.lease_expires_at, req.reqid))
        self._dirty.add(req.reqid)
        return Grant(
            req.reqid,
            req.service,
            req.envid,
            req.zone or pool.zone,
            pool.name,
            req.vcpus,
            req.memory,
            req.kind,
            req.lease_expires_at,
        )

    def _reclaim(self, preemptees: list[tuple[_Entry, list[_Pool]]], now: float) -> list[Effect]:
        effects: list[Effect] = []
        # capacity each pool will have once outstanding reclaims are honoured, minus what this pass promised
        free_mv: dict[str, int] = {}
        free_mem: dict[str, int] = {}
        for name, pool in self._pools.items():
            free_mv[name] = pool.cap_mv - pool.used_mv
            free_mem[name] = pool.cap_mem - pool.used_mem
        outstanding: dict[str, list[_Entry]] = {}
        for reqid in self._reclaiming:
            victim = self._entries[reqid]
            name = victim.req.pool or ""
            free_mv[name] = free_mv.get(name, 0) + victim.mv
            free_mem[name] = free_mem.get(name, 0) + victim.req.memory
            outstanding.setdefault(name, []).append(victim)
        candidates: dict[str, _Victims] = {}
        waiting_in: dict[str, list[_Entry]] = {}  # pool -> preemptees that may use it, highest priority first
        for entry, pools in preemptees:
            if entry.cls == _LOWEST:
                break  # sorted by class: the rest can take nobody's capacity, and promises among them are moot
            mv, mem = entry.mv, entry.req.memory
            for pool in pools:
                waiting_in.setdefault(pool.name, []).append(entry)
            covered = [p for p in pools if free_mv[p.name] >= mv and free_mem[p.name] >= mem]
            if covered:
                # enough is already on its way: promise it, reclaim nothing more
                chosen = min(covered, key=lambda p: (free_mv[p.name], free_mem[p.name], p.name))
                free_mv[chosen.name] -= mv
                free_mem[chosen.name] -= mem
                continue
            best_plan: list[_Entry] | None = None
            best_pool: _Pool | None = None
            best_cost: tuple[int, int, int] | None = None
            for pool in pools:
                victims = candidates.get(pool.name)
                if victims is None:
                    victims = candidates[pool.name] = self._victims_in(pool)
                plan = victims.plan(entry.cls, mv - free_mv[pool.name], mem - free_mem[pool.name])
                if plan is None:
                    continue
                cost = (sum(v.mv for v in plan), sum(v.req.memory for v in plan), len(plan))
                if best_cost is None or cost < best_cost:
                    best_plan, best_pool, best_cost = plan, pool, cost
            if best_plan is None or best_pool is None:
                continue  # nothing borrowable would make it fit: wait for releases
            for victim in best_plan:
                candidates[best_pool.name].take(victim)
                free_mv[best_pool.name] += victim.mv
                free_mem[best_pool.name] += victim.req.memory
                effects.append(self._send_reclaim(victim, entry, now, resend=False))
            free_mv[best_pool.name] -= mv
            free_mem[best_pool.name] -= mem
        # a reclaim whose message may have been lost is repeated after the window, while a request of a higher
        # class than the victim still waits for that pool
        for name, in_flight in outstanding.items():
            waiting = waiting_in.get(name)
            if not waiting:
                continue
            for victim in in_flight:
                sent = victim.req.reclaimed_at
                if sent is None or now - sent < self.reclaim_window:
                    continue
                beneficiary = next((e for e in waiting if e.cls > victim.cls), None)
                if beneficiary is not None:
                    effects.append(self._send_reclaim(victim, beneficiary, now, resend=True))
        return effects

    def _victims_in(self, pool: _Pool) -> _Victims:
        """Borrowed grants in `pool` that may be reclaimed, most reclaimable first (lowest class, newest)."""
        victims = [
            e
            for e in pool.allocated.values()
            if e.cls < pool.cls and e.req.kind is RequestKind.SCALEUP and e.req.reqid not in self._reclaiming
        ]
        victims.sort(key=lambda e: (e.cls, -(e.req.granted_at or 0.0), -e.req.reqid))
        return _Victims(victims)

    def _send_reclaim(self, victim: _Entry, waiting: _Entry, now: float, *, resend: bool) -> Reclaim:
        req = victim.req
        req.reclaimed_at = now
        self._reclaiming.add(req.reqid)
        self._dirty.add(req.reqid)
        return Reclaim(
            req.reqid,
            req.service,
            req.envid,
            req.zone or "",
            req.pool or "",
            req.vcpus,
            req.memory,
            waiting.req.reqid,
            resend,
        )

    # --- bookkeeping -------------------------------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _hold(self, entry: _Entry) -> None:
        req = entry.req
        self._by_holder.setdefault(req.service, {}).setdefault(req.envid, set()).add(req.reqid)

    def _charge(self, entry: _Entry, pool: _Pool, service: _Service) -> None:
        pool.used_mv += entry.mv
        pool.used_mem += entry.req.memory
        pool.allocated[entry.req.reqid] = entry
        service.used_mv += entry.mv
        service.used_mem += entry.req.memory

    def _end(self, entry: _Entry, status: RequestStatus, reason: str, now: float) -> None:
        req = entry.req
        reqid = req.reqid
        if req.status is RequestStatus.ALLOCATED:
            pool = self._pools[req.pool or ""]
            service = self._services[req.service]
            pool.used_mv -= entry.mv
            pool.used_mem -= req.memory
            del pool.allocated[reqid]
            service.used_mv -= entry.mv
            service.used_mem -= req.memory
            self._reclaiming.discard(reqid)
            self._settle(pool, service)
        elif req.status is RequestStatus.PEND:
            self._pending.pop(reqid, None)  # `step` drops it from the cached order when it meets it
        req.status = status
        req.reason = reason
        req.ended_at = now
        by_env = self._by_holder.get(req.service)
        if by_env is not None:
            held = by_env.get(req.envid)
            if held is not None:
                held.discard(reqid)
                if not held:
                    del by_env[req.envid]
                    if not by_env:
                        del self._by_holder[req.service]
        self._dirty.add(reqid)

    def _settle(self, pool: _Pool, service: _Service) -> None:
        """After a release: lift over-limit marks that no longer apply; drop retired entries that are now empty."""
        if self._overcommitted:
            if pool.used_mv <= pool.cap_mv and pool.used_mem <= pool.cap_mem:
                self._overcommitted.discard(("pool", pool.name))
            if service.used_mv <= service.max_mv and service.used_mem <= service.max_mem:
                self._overcommitted.discard(("service", service.name))
        if pool.retired and not pool.allocated:
            del self._pools[pool.name]
        if service.retired and service.used_mv == 0 and service.used_mem == 0:
            del self._services[service.name]

    # --- views -------------------------------------------------------------------------------------------------

    def get(self, reqid: int) -> Request | None:
        """A copy of one ledger entry, or None."""
        entry = self._entries.get(reqid)
        return replace(entry.req) if entry is not None else None

    def requests(self, status: RequestStatus | None = None) -> list[Request]:
        """Copies of the ledger entries (optionally of one status), by reqid."""
        return [replace(e.req) for _, e in sorted(self._entries.items()) if status is None or e.req.status is status]

    def snapshot(self) -> list[Request]:
        """Every ledger entry (copies): what `restore` needs."""
        return self.requests()

    def drain_changes(self) -> list[Request]:
        """Copies of the entries changed since the last call, for the shell to persist."""
        changed = [replace(self._entries[r].req) for r in sorted(self._dirty) if r in self._entries]
        self._dirty.clear()
        return changed

    def compact(self, ended_before: float) -> int:
        """Forget terminal entries that ended before `ended_before` (their reqids become unknown again).

        Returns:
            How many were forgotten.
        """
        gone = [
            reqid
            for reqid, e in self._entries.items()
            if e.req.status in TERMINAL_STATUSES and (e.req.ended_at or 0.0) < ended_before
        ]
        for reqid in gone:
            del self._entries[reqid]
            self._dirty.discard(reqid)
        return len(gone)

    @property
    def pending_count(self) -> int:
        """How many requests are PEND."""
        return len(self._pending)

    def pool_usage(self) -> list[PoolUsage]:
        """Every pool (retired ones included), by name."""
        return [
            PoolUsage(
                p.name,
                p.zone,
                ServiceClass(p.cls),
                p.cap_mv / _MILLI,
                p.cap_mem,
                p.used_mv / _MILLI,
                p.used_mem,
                p.retired,
            )
            for _, p in sorted(self._pools.items())
        ]

    def service_usage(self) -> list[ServiceUsage]:
        """Every service (retired ones included), by name."""
        return [
            ServiceUsage(
                s.name, ServiceClass(s.cls), s.max_mv / _MILLI, s.max_mem, s.used_mv / _MILLI, s.used_mem, s.retired
            )
            for _, s in sorted(self._services.items())
        ]

    def check_invariants(self) -> None:
        """Verify the ledger against the counters.

        Checks: no pool over capacity and no service over quota (unless a config change or restore put it there,
        and then it has received no grant since), counters equal the sums of ALLOCATED entries, every ALLOCATED
        entry has a known pool and a lease, PEND entries are exactly the pending set.

        Raises:
            InvariantViolation: listing every problem found.
        """
        problems: list[str] = []
        pool_sums: dict[str, list[int]] = {}
        service_sums: dict[str, list[int]] = {}
        pending: set[int] = set()
        for reqid, entry in self._entries.items():
            req = entry.req
            if req.status is RequestStatus.PEND:
                pending.add(reqid)
            elif req.status is RequestStatus.ALLOCATED:
                if req.pool not in self._pools:
                    problems.append(f"request {reqid} is ALLOCATED in unknown pool {req.pool!r}")
                    continue
                if req.lease_expires_at is None:
                    problems.append(f"request {reqid} is ALLOCATED without a lease")
                if reqid not in self._pools[req.pool].allocated:
                    problems.append(f"request {reqid} is missing from pool {req.pool!r}'s allocations")
                ps = pool_sums.setdefault(req.pool, [0, 0])
                ps[0] += entry.mv
                ps[1] += req.memory
                ss = service_sums.setdefault(req.service, [0, 0])
                ss[0] += entry.mv
                ss[1] += req.memory
        if pending != set(self._pending):
            problems.append("pending set differs from PEND entries")
        for name, pool in self._pools.items():
            mv, mem = pool_sums.get(name, [0, 0])
            if (pool.used_mv, pool.used_mem) != (mv, mem):
                problems.append(
                    f"pool {name!r} counts {pool.used_mv / _MILLI:g} vCPU/{pool.used_mem} MiB, "
                    f"ledger holds {mv / _MILLI:g}/{mem}"
                )
            if len(pool.allocated) != sum(
                1 for e in pool.allocated.values() if e.req.status is RequestStatus.ALLOCATED
            ):
                problems.append(f"pool {name!r} lists requests that are no longer ALLOCATED")
            over = pool.used_mv > pool.cap_mv or pool.used_mem > pool.cap_mem
            if over and ("pool", name) not in self._overcommitted:
                problems.append(f"pool {name!r} is over capacity")
        for name, service in self._services.items():
            mv, mem = service_sums.get(name, [0, 0])
            if (service.used_mv, service.used_mem) != (mv, mem):
                problems.append(
                    f"service {name!r} counts {service.used_mv / _MILLI:g} vCPU/{service.used_mem} MiB, "
                    f"ledger holds {mv / _MILLI:g}/{mem}"
                )
            over = service.used_mv > service.max_mv or service.used_mem > service.max_mem
            if over and ("service", name) not in self._overcommitted:
                problems.append(f"service {name!r} is over quota")
        for name in set(service_sums) - set(self._services):
            problems.append(f"ALLOCATED requests of unknown service {name!r}")
        for reqid in self._reclaiming:
            victim = self._entries.get(reqid)
            if victim is None or victim.req.status is not RequestStatus.ALLOCATED:
                problems.append(f"request {reqid} is marked as being reclaimed but is not ALLOCATED")
        if problems:
            raise InvariantViolation(problems)


def _validate_shape(req: Request) -> str | None:
    if not isinstance(req.reqid, int) or isinstance(req.reqid, bool) or req.reqid < 1:
        return "reqid must be a positive integer"
    if not isinstance(req.envid, int) or isinstance(req.envid, bool) or req.envid < 1:
        return "envid must be a positive integer"
    if not isinstance(req.service, str) or not req.service:
        return "service must be a non-empty string"
    vcpus = req.vcpus
    if isinstance(vcpus, bool) or not isinstance(vcpus, int | float) or not math.isfinite(vcpus) or vcpus < 0:
        return "vcpus must be a finite number >= 0"
    if not isinstance(req.memory, int) or isinstance(req.memory, bool) or req.memory < 0:
        return "memory must be an integer number of MiB >= 0"
    if _milli(req.vcpus) == 0 and req.memory == 0:
        return "a request must ask for some vCPUs or memory"
    if req.zone is None and req.target_pool is None:
        return "a request needs a zone or a target pool"
    if req.kind not in (RequestKind.CREATE, RequestKind.SCALEUP):
        return f"kind must be 'create' or 'scaleup', got {req.kind!r}"
    if req.status is not RequestStatus.PEND:
        return f"a new request must be PEND, got {req.status}"
    return None


class _Victims:
    """One pool's reclaimable grants during a pass, with running totals so hopeless plans are refused at once."""

    __slots__ = ("entries", "taken", "below_mv", "below_mem")

    def __init__(self, entries: list[_Entry]) -> None:
        self.entries = entries
        self.taken: set[int] = set()
        # below_x[c]: what untaken victims of a class lower than c hold
        levels = len(ServiceClass) + 1
        self.below_mv = [0] * levels
        self.below_mem = [0] * levels
        for e in entries:
            for c in range(e.cls + 1, levels):
                self.below_mv[c] += e.mv
                self.below_mem[c] += e.req.memory

    def take(self, victim: _Entry) -> None:
        self.taken.add(victim.req.reqid)
        for c in range(victim.cls + 1, len(self.below_mv)):
            self.below_mv[c] -= victim.mv
            self.below_mem[c] -= victim.req.memory

    def plan(self, below_cls: int, need_mv: int, need_mem: int) -> list[_Entry] | None:
        """The victims (of class < `below_cls`) to free `need_mv`/`need_mem`, none superfluous; None if impossible."""
        if self.below_mv[below_cls] < need_mv or self.below_mem[below_cls] < need_mem:
            return None
        plan: list[_Entry] = []
        left_mv, left_mem = need_mv, need_mem
        for victim in self.entries:
            if left_mv <= 0 and left_mem <= 0:
                break
            if victim.cls >= below_cls:
                break  # sorted by class: nothing further on is lower
            if victim.req.reqid in self.taken:
                continue
            if (left_mv > 0 and victim.mv > 0) or (left_mem > 0 and victim.req.memory > 0):
                plan.append(victim)
                left_mv -= victim.mv
                left_mem -= victim.req.memory
        if left_mv > 0 or left_mem > 0:
            return None
        # drop victims the others already cover, so no more is reclaimed than needed
        for victim in list(plan):
            if left_mv + victim.mv <= 0 and left_mem + victim.req.memory <= 0:
                plan.remove(victim)
                left_mv += victim.mv
                left_mem += victim.req.memory
        return plan
