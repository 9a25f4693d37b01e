"""The callback service records a guest's report on its slot and wakes envmgr only when the plan can change.

Real MongoDB-wire server and nats-server; the handler is called as its consumer would call it.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Any

from libs.common.bus import Bus, Delivery
from libs.common.db import Store
from libs.common.messages import GuestReport
from services.callback.handlers.guest_report import GuestReportHandler


@dataclass
class FakeMsg:
    """Stands in for the NATS message inside `Delivery` (the handler only reads `num_delivered`)."""


def delivery(num_delivered: int = 1) -> Delivery:
    return Delivery("guest.report", num_delivered, 1, FakeMsg())  # type: ignore[arg-type]


async def wakes(bus: Bus, handler: GuestReportHandler, report: GuestReport, num_delivered: int = 1) -> list[Any]:
    """The `vm.guest` messages handling `report` published."""
    assert bus.nc is not None
    seen: list[Any] = []

    async def on(msg: Any) -> None:
        seen.append(json.loads(msg.data))

    sub = await bus.nc.subscribe("vm.guest", cb=on)
    await bus.nc.flush()
    await handler(report, delivery(num_delivered))
    await asyncio.sleep(0.3)
    await sub.unsubscribe()
    return seen


async def test_network_report_wakes_envmgr_only_when_the_address_changes(store: Store, bus: Bus) -> None:
    envid = random.randrange(100_000, 10_000_000)
    slot = f"{envid}:slave:0:1"
    await store.slots.insert_one({"_id": slot, "envid": envid, "role": "slave", "index": 0, "incarnation": 1,
                                  "live": True, "lifecycle": "RUNNING", "ip": "10.0.0.5", "one_id": 77})
    handler = GuestReportHandler(store, bus)

    def report(**params: str) -> GuestReport:
        return GuestReport(envid=envid, slot=slot, incarnation=1, one_id=77, kind="vmstatus",
                           params={"name": "web-s0", **params})

    # The zone already reported 10.0.0.5: the guest confirming it is recorded, but changes nothing envmgr reads.
    assert await wakes(bus, handler, report(newip="10.0.0.5")) == []
    recorded = await store.slots.find_one({"_id": slot})
    assert recorded is not None and recorded["guest"]["vm_status"] == "NET_CONFIG_DONE"
    assert recorded["guest"]["ip"] == "10.0.0.5" and recorded["guest"]["hostname"] == "web-s0"
    # A redelivery tells envmgr anyway (the first attempt may have stopped before publishing).
    assert len(await wakes(bus, handler, report(newip="10.0.0.5"), num_delivered=2)) == 1
    # The guest configured another address: the master must be told that one, so envmgr hears of it.
    woken = await wakes(bus, handler, report(newip="10.0.0.9"))
    assert [(w["kind"], w["ip"]) for w in woken] == [("vmstatus", "10.0.0.9")]
    # A replaced incarnation's report is dropped.
    stale = GuestReport(envid=envid, slot=slot, incarnation=2, one_id=77, kind="vmstatus", params={"newip": "1.2.3.4"})
    assert await wakes(bus, handler, stale) == []
    recorded = await store.slots.find_one({"_id": slot})
    assert recorded is not None and recorded["guest"]["ip"] == "10.0.0.9"
