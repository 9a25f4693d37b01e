"""The gateway's shared watch of masters' notification numbers (pure logic, messages faked)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.gateway.notify_watch import NotifyWatch


@dataclass
class Event:
    subject: str
    data: bytes


def event(envid: int, notify_seq: int | None, message: str = "progress") -> Event:
    return Event(f"events.env.{envid}", json.dumps({"envid": envid, "notify_seq": notify_seq,
                                                    "message": message}).encode())


async def test_waiters_wake_only_when_their_environments_notification_number_changes() -> None:
    watch = NotifyWatch()
    await watch._on_event(event(7, 2))
    assert watch.seen_after(7, 1) and not watch.seen_after(7, 2) and not watch.seen_after(8, 0)
    with watch.waiter(7) as woken, watch.waiter(8) as other:
        await watch._on_event(event(7, 2, "master running"))  # same number: not for the master
        assert not woken.is_set()
        await watch._on_event(event(7, 3, "master told: add 10.0.0.5 8080"))
        assert woken.is_set() and not other.is_set()
        woken.clear()
        # A replaced master counts from 1 again: that is a change too, and never "seen after" a higher number.
        await watch._on_event(event(7, 1))
        assert woken.is_set() and not watch.seen_after(7, 3)
        await watch._on_event(Event("events.env.x", b"{}"))  # garbage is ignored
        await watch._on_event(Event("events.env.7", b"not json"))
    assert watch._waiters == {}, "waiters are removed when their poll ends"
