"""Faults seen through pyone as a real zone would show them; restart with a state file; the CLI process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyone
import pytest
import requests

from libs.onesim import ControlError, SimControl, SimZone

from .conftest import fast_config, wait_for

VM = "CPU = 0.5\nMEMORY = 256\nNIC = [ NETWORK_ID = 0 ]\nNAME = \"f\"\n"


def test_fail_next_calls_with_code(one: pyone.OneServer, ctl: SimControl) -> None:
    ctl.fail_calls("one.vm.allocate", count=2, code="internal")
    for _ in range(2):
        with pytest.raises(pyone.OneInternalException):
            one.vm.allocate(VM, False)
    vid = one.vm.allocate(VM, False)
    assert [vm.ID for vm in one.vmpool.info(-2, -1, -1, -2).VM] == [vid]  # failed calls created nothing
    ctl.fail_calls("one.vm.*", count=1, code=0x0400, message="[one.vm.info] Error getting virtual machine [0].")
    with pytest.raises(pyone.OneNoExistsException):
        one.vm.info(vid)
    ctl.fail_calls("one.vm.action", code="authorization")
    with pytest.raises(pyone.OneAuthorizationException):
        one.vm.action("poweroff", vid)
    assert ctl.faults() == []


def test_lost_reply_applies_the_call(one: pyone.OneServer, ctl: SimControl) -> None:
    ctl.lose_replies("one.vm.allocate")
    with pytest.raises(requests.exceptions.ConnectionError):
        one.vm.allocate('NAME = "lost"\nCPU = 1\nMEMORY = 128', False)
    found = one.vmpool.infoextended(-2, -1, -1, -1, "NAME=lost").VM
    assert len(found) == 1 and found[0].NAME == "lost"  # the VM exists although the client saw an error


def test_slow_replies(one: pyone.OneServer, ctl: SimControl) -> None:
    ctl.slow_replies("one.system.version", delay=0.4, count=1)
    t0 = time.monotonic()
    one.system.version()
    assert time.monotonic() - t0 >= 0.4
    t0 = time.monotonic()
    one.system.version()
    assert time.monotonic() - t0 < 0.3


def test_outage_refuses_then_recovers(zone: SimZone, one: pyone.OneServer, ctl: SimControl) -> None:
    vid = one.vm.allocate(VM, False)
    ctl.outage(0.6, "refuse")
    wait_for(lambda: _refused(one), timeout=2)
    with pytest.raises(requests.exceptions.ConnectionError, match="[Rr]efused"):
        one.vm.info(vid)
    wait_for(lambda: not _refused(one), timeout=5)
    assert one.vm.info(vid).ID == vid


def test_outage_reset(one: pyone.OneServer, ctl: SimControl) -> None:
    ctl.outage(0.5, "reset")
    with pytest.raises(requests.exceptions.ConnectionError):
        one.system.version()
    wait_for(lambda: not _refused(one), timeout=3)


def _refused(one: pyone.OneServer) -> bool:
    try:
        one.system.version()
    except requests.exceptions.ConnectionError:
        return True
    return False


def test_vm_failure_unknown_and_delete_behind_back(one: pyone.OneServer, ctl: SimControl) -> None:
    a, b, c = (one.vm.allocate(VM, False) for _ in range(3))
    wait_for(lambda: all(one.vm.info(v).LCM_STATE == 3 for v in (a, b, c)))
    ctl.fail_vm(a)
    assert (one.vm.info(a).STATE, one.vm.info(a).LCM_STATE) == (3, 36)  # BOOT_FAILURE
    with pytest.raises(pyone.OneActionException):
        one.vm.action("terminate", a)  # soft terminate is refused in a failure state
    one.vm.action("terminate-hard", a)
    wait_for(lambda: one.vm.info(a).STATE == 6)
    ctl.unknown_vm(b)
    assert one.vm.info(b).LCM_STATE == 16
    one.vm.action("resume", b)
    wait_for(lambda: one.vm.info(b).LCM_STATE == 3)
    ctl.delete_vm(c)
    assert one.vm.info(c).STATE == 6
    assert c not in {vm.ID for vm in one.vmpool.info(-2, -1, -1, -1).VM}
    with pytest.raises(ControlError) as exc:
        ctl.fail_vm(999)
    assert exc.value.status == 404
    with pytest.raises(ControlError) as exc:
        ctl.set_load({"bogus": 1})
    assert exc.value.status == 400


def test_state_file_survives_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "zone.json")
    with SimZone(fast_config(state_file=path)) as zone:
        one = pyone.OneServer(zone.url, session=zone.session)
        vid = one.vm.allocate(VM, False)
        tid = one.template.allocate('NAME = "keep"\nCPU = 1\nMEMORY = 64')
        wait_for(lambda: one.vm.info(vid).LCM_STATE == 3)
        one.vm.update(vid, 'CARINA_ENVID = "4"', 1)
        ip = one.vm.info(vid).TEMPLATE["NIC"]["IP"]
    assert os.path.exists(path) and not list(tmp_path.glob("*.tmp*"))
    with SimZone(fast_config(state_file=path)) as zone:
        one = pyone.OneServer(zone.url, session=zone.session)
        vm = one.vm.info(vid)
        assert (vm.STATE, vm.LCM_STATE, vm.USER_TEMPLATE["CARINA_ENVID"]) == (3, 3, "4")
        assert vm.TEMPLATE["NIC"]["IP"] == ip
        assert one.template.info(tid).NAME == "keep"
        new = one.vm.allocate(VM, False)
        assert new == vid + 1 and one.vm.info(new).TEMPLATE["NIC"]["IP"] != ip  # lease kept
        assert one.host.info(one.vm.info(vid).HISTORY_RECORDS.HISTORY[-1].HID).HOST_SHARE.RUNNING_VMS >= 1


def test_cli_process_port_zero_and_sigterm() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "libs.onesim", "--port", "0", "--name", "zcli", "--hosts", "2", "--boot-seconds", "0",
         "--network", "public:10.9.0.0/24", "--user", "admin:pw"],
        cwd=root, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("onesim zcli listening on http://127.0.0.1:") and line.endswith("/RPC2")
        url = line.rsplit(" ", 1)[1]
        one = pyone.OneServer(url, session="admin:pw")
        vid = one.vm.allocate("CPU=1\nMEMORY=64\nNIC=[NETWORK=\"public\"]", False)
        vm = one.vm.info(vid)
        assert vm.LCM_STATE == 3 and vm.TEMPLATE["NIC"]["IP"] == "10.9.0.1"
        assert len(one.hostpool.info().HOST) == 2
        assert SimControl(url).health()["name"] == "zcli"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
