"""R13: model-based test of the global scheduler's allocator (Hypothesis stateful).

Pools are three times oversubscribed by the services' quotas and the demand; rules submit, release, cancel, renew,
advance the clock, expire, run scheduling passes, let victims honour reclaims, and restart the scheduler from its
persisted ledger. After every rule the model checks, from the ledger alone (not the allocator's counters):
capacity and quota are never exceeded, every grant lapses within the lease TTL of its last renewal, and each pass
respected class priority (no lower-class grant took room in a pool where a higher-class request that was already
pending would have fitted). Reclaims must target borrowed, lower-class scale-ups in the waiting request's zone and
respect the per-victim window.

Example counts: `CARINA_HYPOTHESIS_PROFILE=nightly` runs 500 examples x 50 steps (R13); the default is sized
for CI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from libs.common.globalconfig import GlobalConfig, ServiceClass
from services.scheduler.allocator import (
    Allocator,
    Expired,
    Grant,
    Reclaim,
    Rejected,
    Request,
    RequestKind,
    RequestStatus,
)

PROFILES = {
    "ci": settings(
        max_examples=200,
        stateful_step_count=30,
        deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow],
    ),
    "nightly": settings(
        max_examples=500,
        stateful_step_count=50,
        deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow],
    ),
}
PROFILE = PROFILES[os.environ.get("CARINA_HYPOTHESIS_PROFILE", "ci")]

LEASE_TTL = 300.0
RECLAIM_WINDOW = 60.0

# 18 vCPU / 18 GiB of pools in two zones; quotas add up to 3x that.
POOLS = {
    "z1-bronze": {"zone": "z1", "vcpus": 4, "memory": 4096, "class": "bronze"},
    "z1-gold": {"zone": "z1", "vcpus": 4, "memory": 4096, "class": "gold"},
    "z1-plat": {"zone": "z1", "vcpus": 2, "memory": 2048, "class": "platinum"},
    "z2-silver": {"zone": "z2", "vcpus": 4, "memory": 4096, "class": "silver"},
    "z2-gold": {"zone": "z2", "vcpus": 4, "memory": 4096, "class": "gold"},
}
# bronze-b and silver have quotas small enough to bind; the others are limited by the pools.
SERVICES = {
    "bronze-a": {"class": "bronze", "max_vcpus": 20, "max_memory": 20480},
    "bronze-b": {"class": "bronze", "max_vcpus": 3, "max_memory": 12288},
    "silver": {"class": "silver", "max_vcpus": 10, "max_memory": 3072},
    "gold": {"class": "gold", "max_vcpus": 16, "max_memory": 16384},
    "plat": {"class": "platinum", "max_vcpus": 8, "max_memory": 8192},
}
CONFIG = GlobalConfig.parse({"pools": POOLS, "services": SERVICES})
CAPACITY = sum(p["vcpus"] for p in POOLS.values())  # type: ignore[misc]
assert sum(s["max_vcpus"] for s in SERVICES.values()) >= 3 * CAPACITY  # type: ignore[misc]

# bronze-a borrows most, so higher classes often have to reclaim
service_names = st.sampled_from(["bronze-a", "bronze-a", "bronze-a", "bronze-b", "silver", "gold", "gold", "plat"])
envids = st.integers(1, 4)
sizes = st.tuples(st.sampled_from([0.5, 1, 1, 2, 3]), st.sampled_from([256, 512, 1024, 2048]))


@dataclass
class Held:
    renewed_at: float
    reclaimed_at: float | None = None


class SchedulerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.next_reqid = 1
        self.alloc = self._new_allocator([])
        self.held: dict[int, Held] = {}  # the model's view of every live grant
        self.last_expiry_check = 0.0

    def _new_allocator(self, ledger: list[Request]) -> Allocator:
        return Allocator.restore(
            CONFIG,
            ledger,
            clock=lambda: self.now,
            lease_ttl=LEASE_TTL,
            reclaim_window=RECLAIM_WINDOW,
        )

    # --- helpers -------------------------------------------------------------------------------------------------

    def _status(self, reqid: int) -> RequestStatus:
        req = self.alloc.get(reqid)
        assert req is not None
        return req.status

    def _allocated(self) -> list[Request]:
        return self.alloc.requests(RequestStatus.ALLOCATED)

    def _forget_ended(self) -> None:
        for reqid in list(self.held):
            if self._status(reqid) is not RequestStatus.ALLOCATED:
                del self.held[reqid]

    # --- rules ---------------------------------------------------------------------------------------------------

    @initialize(batch=st.lists(st.tuples(service_names, st.sampled_from(["z1", "z2"]), envids, sizes), max_size=20))
    def fill(self, batch: list[tuple[str, str, int, tuple[float, int]]]) -> None:
        for service, zone, envid, size in batch:
            self.submit(service, zone, envid, size, False, False)
        if batch:
            self.step()

    @rule(
        batch=st.lists(st.tuples(service_names, st.sampled_from(["z1", "z2"]), envids, sizes), min_size=1, max_size=6)
    )
    def burst(self, batch: list[tuple[str, str, int, tuple[float, int]]]) -> None:
        for service, zone, envid, size in batch:
            self.submit(service, zone, envid, size, False, False)

    @rule(
        service=service_names,
        zone=st.sampled_from(["z1", "z2"]),
        envid=envids,
        size=sizes,
        create=st.booleans(),
        by_pool=st.booleans(),
    )
    def submit(self, service: str, zone: str, envid: int, size: tuple[float, int], create: bool, by_pool: bool) -> None:
        vcpus, memory = size
        reqid, self.next_reqid = self.next_reqid, self.next_reqid + 1
        target = next((n for n, p in POOLS.items() if p["zone"] == zone), None) if by_pool else None
        request = Request(
            reqid=reqid,
            service=service,
            envid=envid,
            vcpus=vcpus,
            memory=memory,
            zone=None if target else zone,
            target_pool=target,
            kind=RequestKind.CREATE if create else RequestKind.SCALEUP,
        )
        result = self.alloc.submit(request)
        assert result.zone == zone
        assert result.status in (RequestStatus.PEND, RequestStatus.REJECTED)
        if result.status is RequestStatus.REJECTED:
            # only a request no pool of its class in its zone could ever hold may be rejected
            cls = ServiceClass.parse(SERVICES[service]["class"])
            assert not any(
                p["zone"] == zone and ServiceClass.parse(p["class"]) >= cls and p["vcpus"] >= vcpus  # type: ignore[operator]
                for p in POOLS.values()
            ), result.reason
        # a redelivered request changes nothing
        assert self.alloc.submit(request) == result

    @rule(zone=st.sampled_from(["z1", "z3"]), known=st.booleans())
    def submit_unservable(self, zone: str, known: bool) -> None:
        reqid, self.next_reqid = self.next_reqid, self.next_reqid + 1
        service = "gold" if known else "nobody"
        if known and zone == "z1":
            zone = "z3"
        result = self.alloc.submit(Request(reqid=reqid, service=service, envid=1, vcpus=1, memory=256, zone=zone))
        assert result.status is RequestStatus.REJECTED and result.reason

    @precondition(lambda self: bool(self.held))
    @rule(pick=st.integers(0, 10_000))
    def release(self, pick: int) -> None:
        reqids = sorted(self.held)
        reqid = reqids[pick % len(reqids)]
        assert self.alloc.release(reqid)
        assert self._status(reqid) is RequestStatus.RELEASED
        del self.held[reqid]
        assert not self.alloc.release(reqid)

    @rule(service=service_names, envid=envids)
    def cancel(self, service: str, envid: int) -> None:
        changed = self.alloc.cancel(service, envid)
        for reqid in changed:
            req = self.alloc.get(reqid)
            assert req is not None and (req.service, req.envid, req.status) == (service, envid, RequestStatus.CANCELLED)
            self.held.pop(reqid, None)
        assert not [r for r in self.alloc.snapshot() if r.service == service and r.envid == envid and r.active], (
            "cancel left live requests behind"
        )

    @rule(service=service_names, whole_service=st.booleans(), envid=envids)
    def renew(self, service: str, whole_service: bool, envid: int) -> None:
        self.alloc.renew(service, None if whole_service else envid)
        for reqid, held in self.held.items():
            req = self.alloc.get(reqid)
            assert req is not None
            if req.service == service and (whole_service or req.envid == envid) and held.reclaimed_at is None:
                held.renewed_at = self.now

    @rule(seconds=st.sampled_from([1.0, 10.0, 30.0, 61.0, 120.0, 301.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def expire(self) -> None:
        for effect in self.alloc.expire():
            self._on_expired(effect)
        self.last_expiry_check = self.now

    @precondition(lambda self: any(h.reclaimed_at is not None for h in self.held.values()))
    @rule(pick=st.integers(0, 10_000))
    def victim_releases(self, pick: int) -> None:
        victims = sorted(r for r, h in self.held.items() if h.reclaimed_at is not None)
        reqid = victims[pick % len(victims)]
        assert self.alloc.release(reqid)
        del self.held[reqid]

    @rule()
    def restart(self) -> None:
        before_pools = self.alloc.pool_usage()
        before_services = self.alloc.service_usage()
        ledger = [Request.from_dict(r.to_dict()) for r in self.alloc.snapshot()]
        self.alloc = self._new_allocator(ledger)
        assert self.alloc.pool_usage() == before_pools
        assert self.alloc.service_usage() == before_services

    @rule()
    def step(self) -> None:
        pending_before = {r.reqid: r for r in self.alloc.requests(RequestStatus.PEND)}
        pool_used = {name: [0.0, 0] for name in POOLS}
        service_used = {name: [0.0, 0] for name in SERVICES}
        for r in self._allocated():
            assert r.pool is not None
            pool_used[r.pool][0] += r.vcpus
            pool_used[r.pool][1] += r.memory
            service_used[r.service][0] += r.vcpus
            service_used[r.service][1] += r.memory

        effects = self.alloc.step()
        self.last_expiry_check = self.now
        for kind in sorted({type(e).__name__ for e in effects}):
            event(f"pass with {kind}")
        still_pending = {r.reqid for r in self.alloc.requests(RequestStatus.PEND)}
        for effect in effects:
            if isinstance(effect, Expired):
                self._on_expired(effect)
                pool_used[effect.pool][0] -= effect.vcpus
                pool_used[effect.pool][1] -= effect.memory
                service_used[effect.service][0] -= effect.vcpus
                service_used[effect.service][1] -= effect.memory
            elif isinstance(effect, Grant):
                self._check_priority(effect, pending_before, still_pending, pool_used, service_used)
                pool_used[effect.pool][0] += effect.vcpus
                pool_used[effect.pool][1] += effect.memory
                service_used[effect.service][0] += effect.vcpus
                service_used[effect.service][1] += effect.memory
                assert effect.reqid in pending_before
                assert effect.lease_expires_at == self.now + LEASE_TTL
                self.held[effect.reqid] = Held(renewed_at=self.now)
            elif isinstance(effect, Reclaim):
                self._check_reclaim(effect)
            else:
                assert isinstance(effect, Rejected)

    # --- checks --------------------------------------------------------------------------------------------------

    def _on_expired(self, effect: Expired) -> None:
        held = self.held.pop(effect.reqid)
        # a grant lapses exactly when its last renewal (or the grant) is a TTL old, never earlier
        assert held.renewed_at + LEASE_TTL <= self.now
        assert self._status(effect.reqid) is RequestStatus.RELEASED

    def _check_priority(
        self,
        grant: Grant,
        pending_before: dict[int, Request],
        still_pending: set[int],
        pool_used: dict[str, list[float]],
        service_used: dict[str, list[float]],
    ) -> None:
        pool = POOLS[grant.pool]
        pool_cls = ServiceClass.parse(pool["class"])
        granted_cls = ServiceClass.parse(SERVICES[grant.service]["class"])
        free_v = pool["vcpus"] - pool_used[grant.pool][0]  # type: ignore[operator]
        free_m = pool["memory"] - pool_used[grant.pool][1]  # type: ignore[operator]
        assert free_v >= grant.vcpus - 1e-9 and free_m >= grant.memory, "granted beyond capacity"
        quota = SERVICES[grant.service]
        assert service_used[grant.service][0] + grant.vcpus <= quota["max_vcpus"] + 1e-9  # type: ignore[operator]
        assert service_used[grant.service][1] + grant.memory <= quota["max_memory"]  # type: ignore[operator]
        assert pool["zone"] == grant.zone and pool_cls >= granted_cls
        for waiting in pending_before.values():
            if waiting.reqid not in still_pending:
                continue
            cls = ServiceClass.parse(SERVICES[waiting.service]["class"])
            if cls <= granted_cls or waiting.zone != pool["zone"] or pool_cls < cls:
                continue
            wq = SERVICES[waiting.service]
            within_quota = (
                service_used[waiting.service][0] + waiting.vcpus <= wq["max_vcpus"]  # type: ignore[operator]
                and service_used[waiting.service][1] + waiting.memory <= wq["max_memory"]  # type: ignore[operator]
            )
            if not within_quota:
                continue
            fits = waiting.vcpus <= free_v + 1e-9 and waiting.memory <= free_m
            assert not fits, (
                f"{grant.service} got {grant.pool} while higher-class request {waiting.reqid} fitting there waited"
            )
            # stronger (our anti-starvation rule): no lending a pool that a waiting higher class could
            # ever use, else freed capacity is borrowed again before the higher class has room
            could_ever_fit = waiting.vcpus <= pool["vcpus"] and waiting.memory <= pool["memory"]  # type: ignore[operator]
            assert not could_ever_fit, (
                f"{grant.service} borrowed {grant.pool} while higher-class request {waiting.reqid} waited for it"
            )

    def _check_reclaim(self, effect: Reclaim) -> None:
        victim = self.alloc.get(effect.reqid)
        waiting = self.alloc.get(effect.for_reqid)
        assert victim is not None and waiting is not None
        assert victim.status is RequestStatus.ALLOCATED and victim.kind is RequestKind.SCALEUP
        assert waiting.status is RequestStatus.PEND
        victim_cls = ServiceClass.parse(SERVICES[victim.service]["class"])
        waiting_cls = ServiceClass.parse(SERVICES[waiting.service]["class"])
        pool = POOLS[effect.pool]
        assert victim.pool == effect.pool
        assert victim_cls < waiting_cls <= ServiceClass.parse(pool["class"]), "not borrowed capacity"
        assert pool["zone"] == waiting.zone, "reclaimed in another zone"
        held = self.held[effect.reqid]
        if held.reclaimed_at is not None:
            assert effect.resend and self.now - held.reclaimed_at >= RECLAIM_WINDOW, "reclaim not throttled"
        held.reclaimed_at = self.now

    @invariant()
    def ledger_is_consistent(self) -> None:
        self.alloc.check_invariants()

    @invariant()
    def capacity_and_quota_hold(self) -> None:
        pool_used = {name: [0.0, 0] for name in POOLS}
        service_used = {name: [0.0, 0] for name in SERVICES}
        allocated = self._allocated()
        for r in allocated:
            assert r.pool is not None
            pool_used[r.pool][0] += r.vcpus
            pool_used[r.pool][1] += r.memory
            service_used[r.service][0] += r.vcpus
            service_used[r.service][1] += r.memory
        for name, (v, m) in pool_used.items():
            assert v <= POOLS[name]["vcpus"] + 1e-9 and m <= POOLS[name]["memory"], f"pool {name} over capacity"  # type: ignore[operator]
        for name, (v, m) in service_used.items():
            q = SERVICES[name]
            assert v <= q["max_vcpus"] + 1e-9 and m <= q["max_memory"], f"service {name} over quota"  # type: ignore[operator]
        assert {r.reqid for r in allocated} == set(self.held), "ledger and model disagree on live grants"

    @invariant()
    def grants_lapse_within_the_lease_ttl(self) -> None:
        for reqid, held in self.held.items():
            req = self.alloc.get(reqid)
            assert req is not None and req.lease_expires_at is not None
            assert req.lease_expires_at == held.renewed_at + LEASE_TTL
            # whenever expiry last ran, no grant older than its TTL survived it
            assert req.lease_expires_at > self.last_expiry_check

    def teardown(self) -> None:
        # with nobody renewing, every grant (including those of this last pass) is gone one TTL later
        self.now += LEASE_TTL
        self.alloc.step()
        self.now += LEASE_TTL
        self.alloc.expire()
        assert self._allocated() == []
        self.alloc.check_invariants()


SchedulerModel.TestCase.settings = PROFILE
TestSchedulerModel = SchedulerModel.TestCase
