"""XML-RPC round trips through pyone 6.10.5: shapes, state numbers, errors and filters as oned answers them."""

from __future__ import annotations

import time
import xmlrpc.client

import pyone
import pytest

from libs.onesim import SimControl, SimZone

from .conftest import wait_for

VM = '''NAME = "{name}"
CPU = 0.5
VCPU = 1
MEMORY = 512
NIC = [ NETWORK = "public" ]
CONTEXT = [ NETWORK = "YES", IP = "$NIC[IP]", VMID = "$VMID", HOST = "$NAME" ]
CARINA_ENVID = "{env}"
'''


def state(one: pyone.OneServer, vid: int) -> tuple[int, int]:
    vm = one.vm.info(vid)
    return vm.STATE, vm.LCM_STATE


def running(one: pyone.OneServer, vid: int) -> bool:
    return state(one, vid) == (3, 3)


def test_system_version_and_zone(one: pyone.OneServer, zone: SimZone) -> None:
    assert one.system.version().startswith("6.10")
    z = one.zonepool.info().ZONE[0]
    assert (z.ID, z.NAME) == (0, "zone1")
    assert z.TEMPLATE["ENDPOINT"] == zone.url


def test_vm_allocate_info_fields(one: pyone.OneServer) -> None:
    vid = one.vm.allocate(VM.format(name="web", env=5), False)
    vm = one.vm.info(vid)
    assert vm.ID == vid and vm.NAME == "web"
    assert (vm.UID, vm.GID, vm.UNAME, vm.GNAME) == (0, 0, "oneadmin", "oneadmin")
    assert vm.STIME > 0 and vm.ETIME == 0
    assert vm.MONITORING.CPU is None  # nothing monitored yet
    nic = vm.TEMPLATE["NIC"]
    assert nic["NETWORK"] == "public" and nic["NETWORK_ID"] == "0" and nic["IP"].startswith("10.1.0.")
    assert nic["MAC"] == "02:00:" + ":".join(f"{int(p):02x}" for p in nic["IP"].split("."))
    ctx = vm.TEMPLATE["CONTEXT"]
    assert ctx["IP"] == nic["IP"] and ctx["VMID"] == str(vid) and ctx["HOST"] == "web"
    assert ctx["ETH0_IP"] == nic["IP"]
    assert vm.TEMPLATE["CPU"] == "0.5" and vm.TEMPLATE["MEMORY"] == "512"
    assert vm.USER_TEMPLATE["CARINA_ENVID"] == "5"

    wait_for(lambda: running(one, vid))
    vm = one.vm.info(vid)
    assert vm.DEPLOY_ID == f"one-{vid}"
    assert (vm.PREV_STATE, vm.PREV_LCM_STATE) == (3, 2)  # BOOT before RUNNING
    hist = vm.HISTORY_RECORDS.HISTORY[-1]
    assert hist.HOSTNAME.startswith("host") and hist.HID in range(4) and hist.SEQ == 0
    wait_for(lambda: one.vm.info(vid).MONITORING.CPU is not None)
    mon = one.vm.info(vid).MONITORING
    assert mon.CPU >= 0 and 0 < mon.MEMORY <= 512 * 1024 and mon.NETRX > 0 and mon.NETTX > 0


def test_lifecycle_state_numbers(one: pyone.OneServer) -> None:
    vid = one.vm.allocate(VM.format(name="lc", env=1), False)
    seen: set[tuple[int, int]] = set()

    def observe() -> bool:
        seen.add(state(one, vid))
        return (3, 3) in seen

    wait_for(observe)
    assert (1, 0) in seen or (3, 1) in seen  # PENDING or PROLOG observed on the way
    one.vm.action("poweroff", vid)
    assert state(one, vid) == (3, 18)  # SHUTDOWN_POWEROFF
    wait_for(lambda: state(one, vid) == (8, 0))  # POWEROFF
    one.vm.action("resume", vid)
    wait_for(lambda: running(one, vid))
    one.vm.action("suspend", vid)
    wait_for(lambda: state(one, vid) == (5, 0))
    one.vm.action("resume", vid)
    wait_for(lambda: running(one, vid))
    one.vm.action("undeploy", vid)
    wait_for(lambda: state(one, vid) == (9, 0))  # UNDEPLOYED
    one.vm.action("resume", vid)
    wait_for(lambda: running(one, vid))
    assert len(one.vm.info(vid).HISTORY_RECORDS.HISTORY) == 2  # placed twice
    one.vm.action("stop", vid)
    wait_for(lambda: state(one, vid) == (4, 0))  # STOPPED
    one.vm.action("resume", vid)
    wait_for(lambda: running(one, vid))
    one.vm.action("reboot", vid)
    assert running(one, vid)
    one.vm.action("terminate", vid)
    assert state(one, vid) == (3, 12)  # SHUTDOWN
    wait_for(lambda: state(one, vid) == (6, 0))  # DONE
    vm = one.vm.info(vid)
    assert vm.ETIME >= vm.STIME > 0


def test_hold_release_and_terminate_hard(one: pyone.OneServer) -> None:
    vid = one.vm.allocate(VM.format(name="held", env=1), True)
    assert state(one, vid) == (2, 0)  # HOLD
    with pytest.raises(pyone.OneActionException):
        one.vm.action("poweroff", vid)
    one.vm.action("release", vid)
    wait_for(lambda: running(one, vid))
    one.vm.action("terminate-hard", vid)
    wait_for(lambda: state(one, vid)[0] == 6)
    with pytest.raises(pyone.OneActionException):
        one.vm.action("resume", vid)
    with pytest.raises(pyone.OneApiException):
        one.vm.action("fly", vid)


def test_errors_map_to_pyone_exceptions(zone: SimZone, one: pyone.OneServer) -> None:
    with pytest.raises(pyone.OneNoExistsException):
        one.vm.info(4242)
    with pytest.raises(pyone.OneNoExistsException):
        one.template.info(77)
    with pytest.raises(pyone.OneNoExistsException):
        one.host.info(77)
    with pytest.raises(pyone.OneAuthenticationException):
        pyone.OneServer(zone.url, session="oneadmin:wrong").vm.info(0)
    with pytest.raises(pyone.OneApiException):
        one.vmpool.info(-9, -1, -1, -1)
    with pytest.raises(pyone.OneInternalException):
        one.vm.allocate('CPU = "1\nMEMORY = 1', False)  # parse error
    with pytest.raises(pyone.OneException, match="does not exist"):
        one.vm.allocate("CPU=1\nMEMORY=64\nNIC=[NETWORK_ID=9]", False)
    with pytest.raises(pyone.OneException, match="mismatch"):
        one.vm.info("0")  # xmlrpc-c rejects a string where an int is expected
    alice = pyone.OneServer(zone.url, session="alice:pw")
    vid = one.vm.allocate(VM.format(name="admins", env=1), False)
    with pytest.raises(pyone.OneAuthorizationException):
        alice.vm.action("terminate", vid)


def test_update_replace_and_merge_and_rename(one: pyone.OneServer) -> None:
    vid = one.vm.allocate(VM.format(name="u", env=3), False)
    one.vm.update(vid, 'A = "1"\nB = "2"', 1)
    ut = one.vm.info(vid).USER_TEMPLATE
    assert (ut["A"], ut["B"], ut["CARINA_ENVID"]) == ("1", "2", "3")
    one.vm.update(vid, 'B = "3"', 1)
    assert one.vm.info(vid).USER_TEMPLATE["B"] == "3"
    one.vm.update(vid, 'ONLY = "x"', 0)
    assert dict(one.vm.info(vid).USER_TEMPLATE) == {"ONLY": "x"}
    one.vm.rename(vid, "renamed")
    assert one.vm.info(vid).NAME == "renamed"


def test_pool_short_vs_extended_and_filters(one: pyone.OneServer, ctl: SimControl) -> None:
    a = one.vm.allocate(VM.format(name="web-1", env=7), False)
    b = one.vm.allocate(VM.format(name="web-2", env=8), False)
    c = one.vm.allocate(VM.format(name="db", env=7), False)
    wait_for(lambda: all(running(one, v) for v in (a, b, c)))
    short = {vm.ID: vm for vm in one.vmpool.info(-2, -1, -1, -1).VM}
    assert set(short) == {a, b, c}
    assert "CONTEXT" not in short[a].TEMPLATE and not short[a].USER_TEMPLATE
    assert short[a].TEMPLATE["NIC"]["IP"]
    ext = {vm.ID: vm for vm in one.vmpool.infoextended(-2, -1, -1, -1).VM}
    assert ext[a].TEMPLATE["CONTEXT"]["VMID"] == str(a) and ext[a].USER_TEMPLATE["CARINA_ENVID"] == "7"

    def ids(query: str, st: int = -1) -> set[int]:
        return {vm.ID for vm in one.vmpool.infoextended(-2, -1, -1, st, query).VM}

    assert ids("CARINA_ENVID=7") == {a, c}  # oned's KEY=VALUE over the search token
    assert ids("NAME=web") == {a, b}  # word-phrase match: "web" matches web-1, web-2
    assert ids("NAME=db") == {c}
    assert ids("NAME=eb") == set()
    assert ids("VM.USER_TEMPLATE.CARINA_ENVID=8") == {b}  # dotted-path extension
    assert ids("VM.NAME=web-1") == {a}
    assert ids("VM.TEMPLATE.NIC.IP=" + ext[c].TEMPLATE["NIC"]["IP"]) == {c}
    ctl.delete_vm(b)
    assert ids("") == {a, c}  # -1: everything but DONE
    assert ids("", -2) == {a, b, c}
    assert ids("", 6) == {b}
    assert {vm.ID for vm in one.vmpool.info(-2, a, a, -1).VM} == {a}
    assert len(one.vmpool.info(-2, -1, -2, -2).VM) == 2  # end < -1 limits the page size
    assert ids("CARINA_ENVID=8") == set()  # DONE VMs are hidden by the default state filter


def test_vmpool_monitoring(one: pyone.OneServer, ctl: SimControl) -> None:
    vid = one.vm.allocate(VM.format(name="m", env=1), False)
    wait_for(lambda: running(one, vid))
    ctl.set_load({"vm_id": vid}, "constant", cpu=42.0, memory=0.25)
    ctl.monitor_now()
    data = one.vmpool.monitoring(-2, 0)
    rec = [m for m in data.MONITORING if m.ID == vid][-1]
    assert float(rec.CPU) == 42.0 and rec.MEMORY == 512 * 1024 // 4 and rec.TIMESTAMP > 0


def test_load_profiles_step_and_sine(zone: SimZone, one: pyone.OneServer, ctl: SimControl) -> None:
    v1 = one.vm.allocate(VM.format(name="step", env=1), False)
    v2 = one.vm.allocate(VM.format(name="sine", env=1), False)
    wait_for(lambda: running(one, v1) and running(one, v2))
    ctl.set_load({"name": "step"}, "step", cpu=10, high=90, at=0.3)
    ctl.set_load({"name": "sine"}, "sine", cpu=50, amplitude=40, period=1.0)
    ctl.monitor_now()
    assert float(one.vm.info(v1).MONITORING.CPU) == 10
    time.sleep(0.35)
    ctl.monitor_now()
    assert float(one.vm.info(v1).MONITORING.CPU) == 90
    samples = set()
    for _ in range(6):
        ctl.monitor_now()
        samples.add(float(one.vm.info(v2).MONITORING.CPU))
        time.sleep(0.13)
    assert len(samples) > 2 and all(10 <= s <= 90 for s in samples)


def test_templates(one: pyone.OneServer) -> None:
    tid = one.template.allocate('NAME = "small"\nCPU = 0.25\nMEMORY = 128\nNIC = [ NETWORK_ID = 1 ]\n'
                                'CONTEXT = [ ME = "$NAME", IP = "$NIC[IP]" ]')
    t = one.template.info(tid)
    assert t.NAME == "small" and t.TEMPLATE["CPU"] == "0.25" and t.UNAME == "oneadmin"
    assert [x.ID for x in one.templatepool.info(-2, -1, -1).VMTEMPLATE] == [tid]
    with pytest.raises(pyone.OneException, match="already taken"):
        one.template.allocate('NAME = "small"\nCPU = 1\nMEMORY = 1')
    vid = one.template.instantiate(tid, "", False, 'MEMORY = 256\nCARINA_ENVID = "9"', False)
    vm = one.vm.info(vid)
    assert vm.NAME == f"small-{vid}"
    assert vm.TEMPLATE["MEMORY"] == "256" and vm.TEMPLATE["TEMPLATE_ID"] == str(tid)
    assert vm.TEMPLATE["CONTEXT"]["ME"] == vm.NAME and vm.TEMPLATE["NIC"]["IP"].startswith("192.168.50.")
    named = one.template.instantiate(tid, "given", True, "", False)
    assert one.vm.info(named).NAME == "given" and one.vm.info(named).STATE == 2
    one.template.delete(tid)
    with pytest.raises(pyone.OneNoExistsException):
        one.template.instantiate(tid, "", False, "", False)


def test_hosts_networks_images(one: pyone.OneServer) -> None:
    hosts = one.hostpool.info().HOST
    assert [h.NAME for h in hosts] == ["host0", "host1", "host2", "host3"]
    h = one.host.info(0)
    assert h.STATE == 2 and h.HOST_SHARE.MAX_CPU == 800 and h.HOST_SHARE.MAX_MEM == 8192 * 1024
    assert h.TEMPLATE["HYPERVISOR"] == "kvm"
    hid = one.host.allocate("extra", "kvm", "kvm", -1)
    assert one.host.info(hid).NAME == "extra"
    one.host.status(hid, 1)
    assert one.host.info(hid).STATE == 4  # DISABLED
    with pytest.raises(pyone.OneException, match="already taken"):
        one.host.allocate("extra", "kvm", "kvm", -1)
    nets = one.vnpool.info(-2, -1, -1).VNET
    assert [(n.ID, n.NAME) for n in nets] == [(0, "public"), (1, "private")]
    assert nets[1].AR_POOL.AR[0].SIZE == 6
    assert one.imagepool.info(-2, -1, -1).IMAGE[0].ID == 0


def test_ip_leases_released_at_done_and_exhaustion(one: pyone.OneServer) -> None:
    text = "CPU=0.1\nMEMORY=16\nNIC=[NETWORK_ID=1]"
    vids = [one.vm.allocate(text, False) for _ in range(6)]  # /29: 6 usable addresses
    ips = {one.vm.info(v).TEMPLATE["NIC"]["IP"] for v in vids}
    assert len(ips) == 6
    with pytest.raises(pyone.OneException, match="lease"):
        one.vm.allocate(text, False)
    assert one.vnpool.info(-2, -1, -1).VNET[1].USED_LEASES == 6
    one.vm.action("terminate-hard", vids[0])
    wait_for(lambda: one.vm.info(vids[0]).STATE == 6)
    again = one.vm.allocate(text, False)
    assert one.vm.info(again).TEMPLATE["NIC"]["IP"] in ips


def test_unknown_method_is_a_fault(zone: SimZone) -> None:
    proxy = xmlrpc.client.ServerProxy(zone.url)
    with pytest.raises(xmlrpc.client.Fault):
        proxy.one.vm.migrate(zone.session, 0, 1, False, False, -1, 0)
