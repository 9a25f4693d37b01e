"""The policy's view of scheduler headroom (libs/common/capacity.py) agrees with what the allocator grants."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.capacity import headroom
from services.scheduler.allocator import Allocator, Request, RequestKind, RequestStatus
from tests.unit.scheduler.test_sched_allocator import SERVICES, FakeClock, config, grants, req

CLASSES = ["bronze", "silver", "gold", "platinum"]


def ledger(alloc: Allocator) -> list[dict[str, object]]:
    """The ledger as the scheduler stores it in MongoDB (the `requests` collection)."""
    return [r.to_dict() for r in alloc.snapshot()]


@settings(max_examples=150, deadline=None)
@given(
    pools=st.lists(st.tuples(st.sampled_from(["z1", "z2"]), st.integers(1, 8), st.sampled_from([512, 1024, 4096]),
                             st.sampled_from(CLASSES)), min_size=1, max_size=4),
    quota=st.tuples(st.integers(0, 12), st.sampled_from([1024, 4096, 100_000])),
    held=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([0.5, 1, 2]), st.sampled_from([128, 512])),
                  max_size=8),
    want=st.tuples(st.sampled_from([0.5, 1, 2]), st.sampled_from([128, 256, 512])),
)
def test_headroom_is_exactly_what_the_allocator_then_grants(
        pools: list[tuple[str, int, int, str]], quota: tuple[int, int], held: list[tuple[str, float, int]],
        want: tuple[float, int]) -> None:
    # Two services of one class (nothing to borrow or reclaim between them): "a" asks after both took some.
    cfg = config({f"p{i}": pool for i, pool in enumerate(pools)},
                 {"a": ("gold", quota[0], quota[1]), "b": ("gold", 100, 1_000_000)})
    alloc = Allocator(cfg, clock=FakeClock(0))
    for i, (service, vcpus, memory) in enumerate(held, start=1):
        alloc.submit(req(i, service, vcpus=vcpus, memory=memory), now=i)
    alloc.step(now=20)
    for pending in alloc.requests(RequestStatus.PEND):  # what did not fit is withdrawn, as envmgr would on timeout
        alloc.cancel(pending.service, pending.envid, now=21)
    alloc.step(now=22)

    room = headroom(cfg, ledger(alloc), "a", "z1", want[0], want[1])
    assert room is not None
    for k in range(room + 1):
        alloc.submit(req(1000 + k, "a", vcpus=want[0], memory=want[1], envid=500), now=30 + k)
    granted = grants(alloc.step(now=50))
    assert len(granted) == room, f"headroom {room}, the allocator granted {len(granted)}"


def test_capacity_a_lower_class_borrowed_counts_for_a_higher_class_only() -> None:
    cfg = config({"gold-pool": ("z1", 4, 4096, "gold"), "bronze-pool": ("z1", 2, 2048, "bronze")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock(0))
    for i in range(1, 7):
        alloc.submit(req(i, "bronze", envid=10 + i), now=i)
    assert len(grants(alloc.step(now=10))) == 6  # bronze holds both pools, 4 of it borrowed from gold
    assert headroom(cfg, ledger(alloc), "bronze", "z1", 1, 512) == 0
    assert headroom(cfg, ledger(alloc), "gold", "z1", 1, 512) == 4, "gold may reclaim what bronze borrowed"
    assert headroom(cfg, ledger(alloc), "gold", "z2", 1, 512) == 0, "no pool in that zone"


def test_a_creates_grant_is_not_reclaimable() -> None:
    cfg = config({"gold-pool": ("z1", 2, 4096, "gold")}, SERVICES)
    alloc = Allocator(cfg, clock=FakeClock(0))
    alloc.submit(Request(reqid=1, service="bronze", envid=1, vcpus=2, memory=512, zone="z1",
                         kind=RequestKind.CREATE), now=1)
    assert len(grants(alloc.step(now=2))) == 1
    assert headroom(cfg, ledger(alloc), "gold", "z1", 1, 512) == 0


def test_quota_and_pending_requests_of_the_service_count() -> None:
    cfg = config({"pool": ("z1", 10, 100_000, "bronze")}, {"svc": ("bronze", 3, 100_000)})
    alloc = Allocator(cfg, clock=FakeClock(0))
    alloc.submit(req(1, "svc"), now=1)
    alloc.step(now=2)
    alloc.submit(req(2, "svc"), now=3)  # pending: not yet granted, but it will take quota first
    assert headroom(cfg, ledger(alloc), "svc", "z1", 1, 512) == 1


def test_no_limit_when_the_scheduler_does_not_arbitrate_the_service() -> None:
    cfg = config({"pool": ("z1", 1, 1024, "bronze")}, {"svc": ("bronze", 1, 1024)})
    assert headroom(None, [], "svc", "z1", 1, 512) is None
    assert headroom(cfg, [], "other", "z1", 1, 512) is None
