"""When the zone monitor sends a `vm.status` (pure logic of `_due`): news only, and a nudge for a slot left behind."""

from __future__ import annotations

import time

from libs.common.messages import VmStatus
from services.provisioner.monitor import REPUBLISH_AFTER, Reported, _due

SLOT = {"_id": "5:master:0:1", "lifecycle": "RUNNING", "ip": "10.0.0.5", "host": "h1", "one_id": 42}


def running(ip: str = "10.0.0.5") -> tuple[VmStatus, tuple[object, ...]]:
    status = VmStatus(envid=5, slot=SLOT["_id"], incarnation=1, zone="z1", one_id=42, lifecycle="RUNNING", ip=ip,
                      host="h1")
    return status, (status.lifecycle, status.ip, status.host, status.one_id)


def test_what_the_slot_already_shows_is_not_sent_again() -> None:
    # The provisioning reply recorded the VM RUNNING: the monitor's first look at it sends nothing.
    status, key = running()
    assert _due({}, SLOT, status, key) is False
    # A slot that does not show it yet (a new address) is told.
    status, key = running(ip="10.0.0.9")
    assert _due({}, SLOT, status, key) is True
    assert _due({}, {**SLOT, "lifecycle": "BOOT"}, *running()) is True


def test_a_sent_status_is_repeated_only_while_the_slot_disagrees_after_a_while() -> None:
    status, key = running()
    behind = {**SLOT, "lifecycle": "BOOT"}
    reported: Reported = {SLOT["_id"]: (key, time.monotonic())}
    assert _due(reported, behind, status, key) is False, "just sent: still queued for envmgr"
    reported[SLOT["_id"]] = (key, time.monotonic() - REPUBLISH_AFTER - 1)
    assert _due(reported, behind, status, key) is True, "lost, or the provisioner forgot it: sent again"
    assert _due(reported, SLOT, status, key) is False, "recorded: nothing to send"
