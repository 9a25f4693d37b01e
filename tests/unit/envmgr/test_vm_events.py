"""Which observed VM changes cost envmgr a reconcile pass (pure logic of `changes_the_plan`)."""

from __future__ import annotations

from typing import Any

import pytest

from services.envmgr.handlers.vm_events import changes_the_plan

BOOTING = {"lifecycle": "PENDING", "one_id": 7, "ip": None, "zone": "z1"}


@pytest.mark.parametrize(("before", "fields", "expected"), [
    # Usage only, or a state number, or the host: nothing the plan decides on.
    ({**BOOTING, "lifecycle": "RUNNING", "ip": "10.0.0.1"},
     {"lifecycle": "RUNNING", "ip": "10.0.0.1", "one_id": 7, "zone": "z1", "cpu": 55.0, "memory": 1024}, False),
    (BOOTING, {"lifecycle": "PENDING", "one_id": 7, "zone": "z1", "state": 1, "host": "h1"}, False),
    # One more step on the way up: still waiting the same way.
    (BOOTING, {"lifecycle": "PROLOG", "one_id": 7, "zone": "z1"}, False),
    ({**BOOTING, "lifecycle": "PROLOG"}, {"lifecycle": "BOOT", "one_id": 7, "zone": "z1"}, False),
    ({"lifecycle": None, "one_id": 7}, {"lifecycle": "PENDING", "one_id": 7}, False),
    # Up, broken, gone, a new id or address, an error: the plan moves.
    ({**BOOTING, "lifecycle": "BOOT"}, {"lifecycle": "RUNNING", "one_id": 7, "zone": "z1"}, True),
    (BOOTING, {"lifecycle": "FAILED", "one_id": 7, "zone": "z1", "error": "no host"}, True),
    ({**BOOTING, "lifecycle": "RUNNING"}, {"lifecycle": "UNKNOWN", "one_id": 7, "zone": "z1"}, True),
    ({"lifecycle": None, "one_id": None}, {"lifecycle": "PENDING", "one_id": 9}, True),
    ({**BOOTING, "lifecycle": "RUNNING"}, {"lifecycle": "RUNNING", "one_id": 7, "zone": "z1", "ip": "10.0.0.2"}, True),
])
def test_changes_the_plan(before: dict[str, Any], fields: dict[str, Any], expected: bool) -> None:
    assert changes_the_plan(before, fields) is expected
