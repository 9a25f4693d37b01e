"""Unit tests of the global scheduler's pure allocator (services/scheduler/allocator.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from libs.common.globalconfig import GlobalConfig
from services.scheduler.allocator import (
    Allocator,
    Expired,
    Grant,
    InvalidRequest,
    InvariantViolation,
    Reclaim,
    Rejected,
    Request,
    RequestConflict,
    RequestKind,
    RequestStatus,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(
    pools: Mapping[str, tuple[str, float, int, str]], services: Mapping[str, tuple[str, float, int]]
) -> GlobalConfig:
    return GlobalConfig.parse(
        {
            "pools": {n: {"zone": z, "vcpus": v, "memory": m, "class": c} for n, (z, v, m, c) in pools.items()},
            "services": {n: {"class": c, "max_vcpus": v, "max_memory": m} for n, (c, v, m) in services.items()},
        }
    )


SERVICES = {
    "bronze": ("bronze", 100, 1_000_000),
    "silver": ("silver", 100, 1_000_000),
    "gold": ("gold", 100, 1_000_000),
    "plat": ("platinum", 100, 1_000_000),
}


class Ids:
    def __init__(self) -> None:
        self.next = 1

    def __call__(self) -> int:
        self.next += 1
        return self.next - 1


def req(
    reqid: int, service: str, *, vcpus: float = 1, memory: int = 512, zone: str | None = "z1", **kw: Any
) -> Request:
    return Request(reqid=reqid, service=service, envid=kw.pop("envid", 1), vcpus=vcpus, memory=memory, zone=zone, **kw)


def got(alloc: Allocator, reqid: int) -> Request:
    found = alloc.get(reqid)
    assert found is not None, f"request {reqid} is not in the ledger"
    return found


def grants(effects: list[Any]) -> list[Grant]:
    return [e for e in effects if isinstance(e, Grant)]


def reclaims(effects: list[Any]) -> list[Reclaim]:
    return [e for e in effects if isinstance(e, Reclaim)]


# --- best fit, zone and class eligibility ------------------------------------------------------------------------


def test_best_fit_picks_the_eligible_pool_with_least_free_vcpus() -> None:
    cfg = config(
        {
            "big": ("z1", 8, 8192, "gold"),
            "small": ("z1", 4, 8192, "gold"),
            "tiny-other-zone": ("z2", 2, 8192, "gold"),
            "tiny-bronze": ("z1", 2, 8192, "bronze"),
            "mid": ("z1", 6, 8192, "platinum"),
        },
        SERVICES,
    )
    alloc = Allocator(cfg, clock=FakeClock())
    alloc.submit(req(1, "gold", vcpus=2))
    (grant,) = grants(alloc.step())
    assert grant.pool == "small"
    # "small" now has 2 free: still the best fit for another 2
    alloc.submit(req(2, "gold", vcpus=2))
    assert [g.pool for g in grants(alloc.step())] == ["small"]
    # "small" is full; "mid" (6 free) beats "big" (8 free)
    alloc.submit(req(3, "gold", vcpus=1))
    assert [g.pool for g in grants(alloc.step())] == ["mid"]
    alloc.check_invariants()


def test_best_fit_skips_a_pool_without_enough_free_memory() -> None:
    cfg = config({"a": ("z1", 2, 1024, "bronze"), "b": ("z1", 4, 4096, "bronze")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock())
    alloc.submit(req(1, "bronze", vcpus=0.5, memory=600), now=1)
    assert [g.pool for g in grants(alloc.step(now=2))] == ["a"]
    alloc.submit(req(2, "bronze", vcpus=1, memory=600), now=3)  # "a" has the vCPU but only 424 MiB left
    assert [g.pool for g in grants(alloc.step(now=4))] == ["b"]


def test_target_pool_names_the_zone_like_carina() -> None:
    cfg = config({"flame": ("flame", 4, 4096, "bronze"), "other": ("z9", 4, 4096, "bronze")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock())
    submitted = alloc.submit(req(1, "bronze", zone=None, target_pool="flame"))
    assert submitted.zone == "flame"
    (grant,) = grants(alloc.step())
    assert (grant.zone, grant.pool) == ("flame", "flame")


# --- class priority and quota ------------------------------------------------------------------------------------


def test_higher_class_is_served_first_even_if_it_asked_later() -> None:
    cfg = config({"g": ("z1", 1, 4096, "gold")}, SERVICES)
    clock = FakeClock()
    alloc = Allocator(cfg, clock=clock)
    alloc.submit(req(1, "bronze"), now=1)
    alloc.submit(req(2, "silver"), now=2)
    alloc.submit(req(3, "gold"), now=3)
    assert [g.reqid for g in grants(alloc.step(now=4))] == [3]
    assert alloc.release(3, now=5)
    assert [g.reqid for g in grants(alloc.step(now=6))] == [2]


def test_same_class_is_first_come_first_served() -> None:
    cfg = config({"p": ("z1", 1, 4096, "gold")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock())
    alloc.submit(req(7, "gold"), now=20)
    alloc.submit(req(8, "gold"), now=10)
    assert [g.reqid for g in grants(alloc.step(now=30))] == [8]


def test_quota_caps_a_service_and_a_release_lets_the_next_one_in() -> None:
    cfg = config({"p": ("z1", 16, 16384, "gold")}, {"gold": ("gold", 2, 1536)})
    alloc = Allocator(cfg, clock=FakeClock())
    for i in (1, 2, 3):
        alloc.submit(req(i, "gold"), now=i)
    effects = alloc.step(now=10)
    assert [g.reqid for g in grants(effects)] == [1, 2]
    assert got(alloc, 3).status is RequestStatus.PEND
    assert reclaims(effects) == []  # over quota waits; it never preempts
    alloc.release(1, now=11)
    assert [g.reqid for g in grants(alloc.step(now=12))] == [3]
    (usage,) = alloc.service_usage()
    assert (usage.vcpus_allocated, usage.memory_allocated) == (2, 1024)


def test_memory_quota_counts_too() -> None:
    cfg = config({"p": ("z1", 16, 16384, "gold")}, {"gold": ("gold", 10, 1000)})
    alloc = Allocator(cfg, clock=FakeClock())
    alloc.submit(req(1, "gold", memory=600))
    alloc.submit(req(2, "gold", memory=600))
    assert [g.reqid for g in grants(alloc.step())] == [1]


def test_fractional_vcpus_add_up_exactly() -> None:
    cfg = config({"p": ("z1", 3, 100000, "bronze")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock())
    for i in range(1, 32):
        alloc.submit(req(i, "bronze", vcpus=0.1, memory=1), now=i)
    assert len(grants(alloc.step(now=100))) == 30
    (pool,) = alloc.pool_usage()
    assert pool.vcpus_allocated == 3 and pool.vcpus_available == 0
    alloc.check_invariants()


# --- reclaim -----------------------------------------------------------------------------------------------------


def bronze_fills_gold() -> tuple[Allocator, FakeClock]:
    cfg = config({"gold-pool": ("z1", 4, 4096, "gold"), "bronze-pool": ("z1", 2, 2048, "bronze")}, SERVICES)
    clock = FakeClock(0)
    alloc = Allocator(cfg, clock=clock, reclaim_window=60)
    for i in range(1, 7):
        alloc.submit(req(i, "bronze", envid=10 + i), now=i)
    assert len(grants(alloc.step(now=10))) == 6
    assert {p.name: p.vcpus_available for p in alloc.pool_usage()} == {"gold-pool": 0, "bronze-pool": 0}
    return alloc, clock


def test_bronze_borrowing_gold_is_reclaimed_for_a_gold_request_exactly_once() -> None:
    alloc, _ = bronze_fills_gold()
    alloc.submit(req(100, "gold", envid=99), now=20)
    effects = alloc.step(now=21)
    assert grants(effects) == []
    (rec,) = reclaims(effects)
    victim = alloc.get(rec.reqid)
    assert victim is not None and victim.pool == "gold-pool" and victim.service == "bronze"
    assert (rec.service, rec.envid, rec.for_reqid, rec.resend) == ("bronze", victim.envid, 100, False)
    assert rec.reqid == 6  # the newest borrowed grant goes first
    # the victim still holds it until it releases: nothing more happens, nobody else is reclaimed
    assert victim.status is RequestStatus.ALLOCATED
    assert alloc.step(now=30) == []
    assert alloc.release(rec.reqid, now=31)
    (grant,) = grants(alloc.step(now=32))
    assert (grant.reqid, grant.pool) == (100, "gold-pool")
    assert got(alloc, 100).status is RequestStatus.ALLOCATED
    alloc.check_invariants()


def test_reclaim_takes_just_enough_victims() -> None:
    alloc, _ = bronze_fills_gold()
    alloc.submit(req(100, "gold", vcpus=2, memory=256), now=20)
    effects = alloc.step(now=21)
    assert sorted(r.reqid for r in reclaims(effects)) == [5, 6]
    alloc.release(5, now=22)
    assert alloc.step(now=23) == []  # 1 vCPU free of the 2 needed: waits for the second, reclaims nobody else
    alloc.release(6, now=24)
    assert [g.reqid for g in grants(alloc.step(now=25))] == [100]


def test_free_capacity_counts_before_reclaiming() -> None:
    cfg = config({"gold-pool": ("z1", 3, 4096, "gold")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock(0))
    alloc.submit(req(1, "bronze"), now=1)
    alloc.submit(req(2, "bronze"), now=2)
    alloc.step(now=3)
    alloc.submit(req(3, "gold", vcpus=2), now=4)
    assert [r.reqid for r in reclaims(alloc.step(now=5))] == [2]  # one free + one reclaimed = 2


def test_borrowed_capacity_blocks_lower_classes_while_a_higher_class_waits() -> None:
    alloc, _ = bronze_fills_gold()
    alloc.submit(req(100, "gold", vcpus=2, memory=256), now=20)
    alloc.step(now=21)  # reclaims 5 and 6
    alloc.submit(req(200, "bronze", envid=50), now=22)
    alloc.release(6, now=23)
    effects = alloc.step(now=24)
    assert grants(effects) == []  # the freed gold vCPU is kept for the gold request, not lent out again
    alloc.release(5, now=25)
    assert [g.reqid for g in grants(alloc.step(now=26))] == [100]
    assert got(alloc, 200).status is RequestStatus.PEND


def test_reclaim_checks_the_zone() -> None:
    cfg = config(
        {"gold-z1": ("z1", 1, 4096, "gold"), "gold-z2": ("z2", 2, 4096, "gold")},
        SERVICES,
    )
    alloc = Allocator(cfg, clock=FakeClock(0))
    alloc.submit(req(1, "gold", zone="z1"), now=1)
    alloc.submit(req(2, "bronze", zone="z2"), now=2)
    alloc.submit(req(3, "bronze", zone="z2"), now=3)
    assert len(grants(alloc.step(now=4))) == 3
    alloc.submit(req(4, "gold", zone="z1"), now=5)
    assert reclaims(alloc.step(now=6)) == []  # bronze borrows in z2, which would not help a z1 request
    alloc.submit(req(5, "gold", zone="z2"), now=7)
    assert [r.reqid for r in reclaims(alloc.step(now=8))] == [3]


def test_only_lower_class_scaleups_are_reclaimed() -> None:
    cfg = config({"plat": ("z1", 3, 4096, "platinum")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock(0))
    alloc.submit(req(1, "plat"), now=1)  # the pool's own class
    alloc.submit(req(2, "bronze", kind=RequestKind.CREATE), now=2)  # an environment's initial VMs
    alloc.submit(req(3, "gold"), now=3)  # borrowing, and lower than platinum
    alloc.step(now=4)
    alloc.submit(req(4, "plat"), now=5)
    assert [r.reqid for r in reclaims(alloc.step(now=6))] == [3]
    alloc.submit(req(5, "plat"), now=7)
    assert reclaims(alloc.step(now=8)) == []  # 1 and 2 cannot be taken, 3 is already on its way


def test_a_same_class_borrower_is_not_a_victim() -> None:
    cfg = config({"plat": ("z1", 2, 4096, "platinum")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock(0))
    alloc.submit(req(1, "gold"), now=1)
    alloc.submit(req(2, "gold"), now=2)
    alloc.step(now=3)
    alloc.submit(req(3, "gold"), now=4)
    assert reclaims(alloc.step(now=5)) == []  # gold borrows platinum, but only a higher class may take it back
    alloc.submit(req(4, "plat"), now=6)
    assert [r.reqid for r in reclaims(alloc.step(now=7))] == [2]


def test_lowest_class_victim_first() -> None:
    cfg = config({"plat": ("z1", 2, 4096, "platinum")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock(0))
    alloc.submit(req(1, "bronze"), now=1)
    alloc.submit(req(2, "gold"), now=2)
    alloc.step(now=3)
    alloc.submit(req(3, "plat"), now=4)
    assert [r.reqid for r in reclaims(alloc.step(now=5))] == [1]


def test_reclaims_are_throttled_per_victim_and_repeated_after_the_window() -> None:
    cfg = config({"gold-pool": ("z1", 1, 4096, "gold")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock(0), reclaim_window=30)
    alloc.submit(req(1, "bronze"), now=0)
    alloc.step(now=1)
    alloc.submit(req(2, "gold"), now=2)
    assert [(r.reqid, r.resend) for r in reclaims(alloc.step(now=10))] == [(1, False)]
    assert alloc.step(now=20) == []
    assert alloc.step(now=39.9) == []
    assert [(r.reqid, r.resend) for r in reclaims(alloc.step(now=40))] == [(1, True)]
    assert alloc.step(now=41) == []
    alloc.cancel("gold", 1, now=42)  # nobody waits any more: no further reminders
    assert alloc.step(now=200) == []


def test_reclaim_reminders_only_go_out_for_a_higher_class_waiter() -> None:
    cfg = config({"plat": ("z1", 2, 4096, "platinum")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock(0), reclaim_window=60)
    alloc.submit(req(1, "silver"), now=1)
    alloc.submit(req(2, "silver"), now=1)
    alloc.step(now=2)
    alloc.submit(req(3, "plat", envid=9), now=3)
    assert [r.reqid for r in reclaims(alloc.step(now=4))] == [2]
    alloc.submit(req(4, "bronze", envid=8), now=5)  # waits for the same pool, but may not take silver's capacity
    alloc.cancel("plat", 9, now=6)
    assert alloc.step(now=100) == []
    alloc.submit(req(5, "gold", envid=7), now=101)
    assert [(r.reqid, r.for_reqid, r.resend) for r in reclaims(alloc.step(now=102))] == [(2, 5, True)]


# --- leases ------------------------------------------------------------------------------------------------------


def test_grants_expire_unless_renewed() -> None:
    cfg = config({"p": ("z1", 2, 4096, "bronze")}, SERVICES)
    clock = FakeClock(0)
    alloc = Allocator(cfg, clock=clock, lease_ttl=100)
    alloc.submit(req(1, "bronze", envid=1))
    alloc.submit(req(2, "bronze", envid=2))
    (g1, g2) = grants(alloc.step())
    assert g1.lease_expires_at == 100
    clock.now = 50
    assert alloc.renew("bronze", envid=1) == 1
    assert got(alloc, 1).lease_expires_at == 150
    assert alloc.expire(now=99.9) == []
    (expired,) = alloc.expire(now=100)
    assert expired == Expired(2, "bronze", 2, "p", 1, 512)
    assert got(alloc, 2).status is RequestStatus.RELEASED
    assert got(alloc, 2).reason == "lease expired"
    # step expires too, and the freed capacity is granted in the same pass
    alloc.submit(req(3, "bronze", envid=3), now=120)
    alloc.submit(req(4, "bronze", envid=4), now=120)
    effects = alloc.step(now=150)
    assert [type(e).__name__ for e in effects] == ["Expired", "Grant", "Grant"]
    assert alloc.pool_usage()[0].vcpus_allocated == 2


def test_renewal_does_not_extend_a_reclaimed_grant() -> None:
    cfg = config({"g": ("z1", 1, 4096, "gold")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock(0), lease_ttl=100)
    alloc.submit(req(1, "bronze"), now=0)
    alloc.step(now=0)
    alloc.submit(req(2, "gold"), now=1)
    assert reclaims(alloc.step(now=1))
    assert alloc.renew("bronze", now=50) == 0
    effects = alloc.step(now=100)  # the victim never answered: its lease runs out and gold gets the capacity
    assert [type(e).__name__ for e in effects] == ["Expired", "Grant"]


# --- ledger operations -------------------------------------------------------------------------------------------


def test_submit_is_idempotent_and_conflicts_are_refused() -> None:
    cfg = config({"p": ("z1", 2, 4096, "bronze")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock())
    first = alloc.submit(req(1, "bronze"))
    again = alloc.submit(req(1, "bronze"))
    assert first == again and len(alloc.requests()) == 1
    alloc.step()
    assert alloc.submit(req(1, "bronze")).status is RequestStatus.ALLOCATED
    with pytest.raises(RequestConflict, match="reqid 1 .*vcpus"):
        alloc.submit(req(1, "bronze", vcpus=2))
    assert got(alloc, 1).vcpus == 1


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (req(0, "bronze"), "reqid"),
        (req(1, "bronze", envid=-1), "envid"),
        (req(1, "bronze", vcpus=-1), "vcpus"),
        (req(1, "bronze", vcpus=float("nan")), "vcpus"),
        (req(1, "bronze", memory=-1), "memory"),
        (req(1, "bronze", vcpus=0, memory=0), "some vCPUs or memory"),
        (req(1, "bronze", zone=None), "zone or a target pool"),
        (req(1, ""), "service"),
    ],
)
def test_malformed_requests_are_refused_and_change_nothing(bad: Request, message: str) -> None:
    cfg = config({"p": ("z1", 2, 4096, "bronze")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock())
    with pytest.raises(InvalidRequest, match=message):
        alloc.submit(bad)
    assert alloc.requests() == [] and alloc.drain_changes() == []


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (req(1, "nobody"), "unknown service 'nobody'"),
        (req(1, "gold", zone="z9"), "no pool in zone 'z9' serves class gold"),
        (req(1, "plat"), "no pool in zone 'z1' serves class platinum"),
        (req(1, "gold", vcpus=5), "larger than every pool"),
        (req(1, "small", vcpus=3), "exceeds the quota"),
        (req(1, "gold", zone=None, target_pool="nope"), "unknown pool 'nope'"),
        (req(1, "gold", zone="z2", target_pool="g"), "pool 'g' is in zone 'z1', not 'z2'"),
    ],
)
def test_requests_that_can_never_be_served_are_rejected(request_: Request, reason: str) -> None:
    cfg = config({"g": ("z1", 4, 4096, "gold")}, {**SERVICES, "small": ("gold", 2, 4096)})
    alloc = Allocator(cfg, clock=FakeClock())
    result = alloc.submit(request_)
    assert result.status is RequestStatus.REJECTED
    assert result.reason is not None and reason in result.reason
    assert alloc.step() == []
    assert alloc.pending_count == 0
    alloc.check_invariants()


def test_release_and_cancel() -> None:
    cfg = config({"p": ("z1", 3, 4096, "bronze")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock())
    alloc.submit(req(1, "bronze", envid=5))
    alloc.submit(req(2, "bronze", envid=5))
    alloc.submit(req(3, "bronze", envid=6))
    alloc.step()
    alloc.submit(req(4, "bronze", envid=5))
    assert alloc.cancel("bronze", 5) == [1, 2, 4]
    assert [got(alloc, i).status for i in (1, 2, 3, 4)] == [
        RequestStatus.CANCELLED,
        RequestStatus.CANCELLED,
        RequestStatus.ALLOCATED,
        RequestStatus.CANCELLED,
    ]
    assert alloc.pool_usage()[0].vcpus_allocated == 1
    assert alloc.cancel("bronze", 5) == []
    assert alloc.release(3) and not alloc.release(3) and not alloc.release(999)
    alloc.submit(req(5, "bronze", vcpus=9, memory=1), now=0)  # over the pool: rejected, nothing to release
    alloc.submit(req(6, "bronze"))
    assert alloc.release(6)
    assert got(alloc, 6).status is RequestStatus.CANCELLED
    assert alloc.step() == []
    alloc.check_invariants()


def test_drain_changes_reports_each_change_once() -> None:
    cfg = config({"p": ("z1", 2, 4096, "bronze")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock())
    alloc.submit(req(1, "bronze"))
    assert [(r.reqid, r.status) for r in alloc.drain_changes()] == [(1, RequestStatus.PEND)]
    assert alloc.drain_changes() == []
    alloc.step()
    assert [(r.reqid, r.status) for r in alloc.drain_changes()] == [(1, RequestStatus.ALLOCATED)]


# --- restore and config updates ----------------------------------------------------------------------------------


def test_restore_from_the_ledger_rebuilds_availability_and_decides_the_same() -> None:
    cfg = config({"gold-pool": ("z1", 4, 4096, "gold"), "bronze-pool": ("z1", 2, 2048, "bronze")}, SERVICES)
    clock = FakeClock(0)
    alloc = Allocator(cfg, clock=clock)
    for i in range(1, 8):
        alloc.submit(req(i, "bronze", envid=i), now=i)
    alloc.step(now=10)
    alloc.release(2, now=11)
    alloc.submit(req(20, "gold", vcpus=2), now=12)
    alloc.submit(req(21, "silver"), now=13)
    persisted = [r.to_dict() for r in alloc.snapshot()]

    restored = Allocator.restore(cfg, [Request.from_dict(d) for d in persisted], clock=clock)
    restored.check_invariants()
    assert restored.pool_usage() == alloc.pool_usage()
    assert restored.service_usage() == alloc.service_usage()
    assert restored.snapshot() == alloc.snapshot()
    assert restored.step(now=20) == alloc.step(now=20)
    reclaimed = sorted(r.reqid for r in alloc.requests(RequestStatus.ALLOCATED) if r.reclaimed_at is not None)
    assert reclaimed  # the gold request made bronze give some back
    # an outstanding reclaim survives a restart: not repeated within the window, and its lease is not renewed
    again = Allocator.restore(cfg, alloc.snapshot(), clock=clock)
    assert again.step(now=30) == []
    again.renew("bronze", now=31)
    assert [got(again, r).lease_expires_at for r in reclaimed] == [got(alloc, r).lease_expires_at for r in reclaimed]
    # a resubmitted reqid is still recognised after the restart
    assert restored.submit(req(1, "bronze", envid=1)).status is RequestStatus.ALLOCATED


def test_restore_of_a_carina_ledger_without_leases_or_with_vanished_pools() -> None:
    cfg = config({"p": ("z1", 2, 4096, "bronze")}, SERVICES)
    ledger = [
        Request(1, "bronze", 1, 1, 512, zone="z1", status=RequestStatus.ALLOCATED, pool="p", submitted_at=1),
        Request(2, "bronze", 1, 1, 512, zone="z0", status=RequestStatus.ALLOCATED, pool="gone", submitted_at=2),
        Request(3, "ghost", 1, 1, 512, zone="z1", status=RequestStatus.ALLOCATED, pool="p", submitted_at=3),
        Request(4, "ghost", 2, 1, 512, zone="z1", submitted_at=4),
        Request(5, "bronze", 2, 1, 512, zone="z1", status=RequestStatus.RELEASED, pool="p", submitted_at=5),
    ]
    alloc = Allocator.restore(cfg, ledger, clock=FakeClock(100), lease_ttl=50)
    alloc.check_invariants()
    assert got(alloc, 1).lease_expires_at == 150
    usage = {p.name: p for p in alloc.pool_usage()}
    assert usage["gone"].retired and usage["gone"].vcpus_allocated == 1
    assert usage["p"].vcpus_allocated == 2
    effects = alloc.step(now=101)
    assert effects == [Rejected(4, "ghost", 2, "unknown service 'ghost' (not in the global config)")]
    alloc.release(2, now=102)
    alloc.release(3, now=102)
    assert [p.name for p in alloc.pool_usage()] == ["p"]
    assert [s.name for s in alloc.service_usage()] == ["bronze", "gold", "plat", "silver"]
    alloc.check_invariants()


def test_restore_refuses_a_corrupt_ledger() -> None:
    cfg = config({"p": ("z1", 2, 4096, "bronze")}, SERVICES)
    with pytest.raises(InvalidRequest, match="reqid 1 twice"):
        Allocator.restore(cfg, [req(1, "bronze"), req(1, "bronze")])
    with pytest.raises(InvalidRequest, match="names no pool"):
        Allocator.restore(cfg, [req(1, "bronze", status=RequestStatus.ALLOCATED)])
    with pytest.raises(InvalidRequest, match="unknown keys: colour"):
        Request.from_dict({**req(1, "bronze").to_dict(), "colour": "red"})
    with pytest.raises(InvalidRequest, match="malformed"):
        Request.from_dict({**req(1, "bronze").to_dict(), "status": "DONE"})


def test_config_update_keeps_the_ledger_consistent() -> None:
    cfg = config({"p": ("z1", 4, 4096, "bronze"), "q": ("z1", 2, 2048, "silver")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock(0))
    for i in range(1, 7):
        alloc.submit(req(i, "bronze"), now=i)
    alloc.step(now=10)
    alloc.submit(req(7, "silver"), now=11)
    alloc.submit(req(8, "bronze"), now=11)
    # shrink p below what it lends, drop q, drop the silver service, lower bronze's quota
    smaller = config({"p": ("z1", 2, 4096, "bronze")}, {**{k: v for k, v in SERVICES.items() if k != "silver"},
                                                         "bronze": ("bronze", 3, 100000)})  # fmt: skip
    effects = alloc.update_config(smaller, now=12)
    assert effects == [Rejected(7, "silver", 1, "unknown service 'silver' (not in the global config)")]
    alloc.check_invariants()
    usage = {p.name: p for p in alloc.pool_usage()}
    assert usage["p"].vcpus_allocated == 4 and usage["q"].retired
    assert grants(alloc.step(now=13)) == []  # over capacity and over quota: nothing new
    for reqid in (1, 2, 3, 5, 6):
        alloc.release(reqid, now=14)
    alloc.check_invariants()
    assert [p.name for p in alloc.pool_usage()] == ["p"]
    assert [g.reqid for g in grants(alloc.step(now=15))] == [8]
    # a bigger config makes room again
    alloc.submit(req(9, "bronze"), now=16)
    alloc.update_config(config({"p": ("z1", 8, 8192, "bronze")}, SERVICES), now=17)
    assert [g.reqid for g in grants(alloc.step(now=18))] == [9]
    alloc.check_invariants()


def test_check_invariants_catches_a_corrupted_ledger() -> None:
    cfg = config({"p": ("z1", 2, 4096, "bronze")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock())
    alloc.submit(req(1, "bronze"))
    alloc.step()
    alloc.check_invariants()
    alloc._pools["p"].used_mv += 5000  # simulate a lost release
    with pytest.raises(InvariantViolation) as info:
        alloc.check_invariants()
    text = " ".join(info.value.problems)
    assert "pool 'p' counts" in text and "over capacity" in text
