"""Reconcile passes of one environment are shared by the callers that wait for the same pass (no database here:
only the scheduling of passes is under test, so the pass itself is replaced by a recorder)."""

from __future__ import annotations

import asyncio

import pytest

from libs.common.errors import TransientError
from services.envmgr.reconcile import Timing
from services.envmgr.worker import Reconciler


class RecordingReconciler(Reconciler):
    """A pass records when it started and waits until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__(store=None, bus=None, timing=Timing())  # type: ignore[arg-type]
        self.starts: list[tuple[int, int]] = []  # (envid, number of calls made before this pass began)
        self.calls = 0
        self.release = asyncio.Event()
        self.fail_pass = 0  # the number of the pass (1, 2, …) that raises

    async def reconcile(self, envid: int) -> None:
        self.calls += 1
        await super().reconcile(envid)

    async def _reconcile_now(self, envid: int) -> None:
        self.starts.append((envid, self.calls))
        await self.release.wait()
        if len(self.starts) == self.fail_pass:
            raise TransientError("zone busy")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_callers_arriving_during_a_pass_share_one_next_pass() -> None:
    r = RecordingReconciler()
    first = asyncio.create_task(r.reconcile(1))
    await settle()
    later = [asyncio.create_task(r.reconcile(1)) for _ in range(10)]
    await settle()
    assert len(r.starts) == 1  # the first pass is still running; the others wait
    r.release.set()
    await asyncio.gather(first, *later)
    # Two passes in all, and the second began after all eleven calls: each caller's write was seen.
    assert r.starts == [(1, 1), (1, 11)]
    assert not r._locks and not r._next_pass


async def test_a_call_after_the_shared_pass_began_gets_a_pass_of_its_own() -> None:
    r = RecordingReconciler()
    first = asyncio.create_task(r.reconcile(1))
    await settle()
    second = asyncio.create_task(r.reconcile(1))
    await settle()
    r.release.set()
    await first
    await settle()  # the second pass has begun (and finished: release is set)
    third = asyncio.create_task(r.reconcile(1))
    await asyncio.gather(second, third)
    assert [calls for _, calls in r.starts] == [1, 2, 3]


async def test_environments_do_not_wait_for_each_other() -> None:
    r = RecordingReconciler()
    tasks = [asyncio.create_task(r.reconcile(envid)) for envid in (1, 2, 3)]
    await settle()
    assert sorted(envid for envid, _ in r.starts) == [1, 2, 3]
    r.release.set()
    await asyncio.gather(*tasks)


async def test_a_failed_shared_pass_fails_every_caller_that_shared_it() -> None:
    r = RecordingReconciler()
    first = asyncio.create_task(r.reconcile(1))
    await settle()
    sharers = [asyncio.create_task(r.reconcile(1)) for _ in range(3)]
    await settle()
    r.fail_pass = 2
    r.release.set()
    await first  # the first pass succeeded; the shared second one fails
    results = await asyncio.gather(*sharers, return_exceptions=True)
    assert [type(x) for x in results] == [TransientError] * 3
    assert not r._locks and not r._next_pass
    await r.reconcile(1)  # and the environment is not stuck: the next call runs a pass
    assert len(r.starts) == 3


async def test_a_cancelled_pass_does_not_leave_its_sharers_hanging() -> None:
    r = RecordingReconciler()
    first = asyncio.create_task(r.reconcile(1))
    await settle()
    owner = asyncio.create_task(r.reconcile(1))  # waits for the lock, owns the next pass
    await settle()
    sharer = asyncio.create_task(r.reconcile(1))
    await settle()
    owner.cancel()
    with pytest.raises(TransientError, match="interrupted"):
        await asyncio.wait_for(sharer, 1)
    r.release.set()
    await first
