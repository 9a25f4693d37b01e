"""Placement by SCHED_RANK / SCHED_REQUIREMENTS, PENDING while nothing fits, host failures."""

from __future__ import annotations

import pyone
import pytest

from libs.onesim import HostSpec, SimControl, SimZone

from .conftest import fast_config, wait_for


def host_of(one: pyone.OneServer, vid: int) -> int:
    return int(one.vm.info(vid).HISTORY_RECORDS.HISTORY[-1].HID)


def vm_text(rank: str = "", req: str = "", cpu: float = 1, mem: int = 512) -> str:
    lines = [f"CPU = {cpu}", f"MEMORY = {mem}"]
    if rank:
        lines.append(f'SCHED_RANK = "{rank}"')
    if req:
        lines.append(f"SCHED_REQUIREMENTS = {req}")
    return "\n".join(lines)


def test_pack_stripe_and_load_aware(one: pyone.OneServer) -> None:
    packed = [one.vm.allocate(vm_text("RUNNING_VMS"), False) for _ in range(3)]
    assert len({host_of(one, v) for v in packed}) == 1  # pack: all on the busiest host
    striped = [one.vm.allocate(vm_text("-RUNNING_VMS"), False) for _ in range(3)]
    assert len({host_of(one, v) for v in striped}) == 3  # stripe: emptiest host each time
    assert host_of(one, packed[0]) not in {host_of(one, v) for v in striped}
    load = one.vm.allocate(vm_text("FREE_CPU"), False)
    assert host_of(one, load) not in {host_of(one, packed[0])}  # the host with 3 CPUs used is avoided
    free = {h.ID: h.HOST_SHARE.MAX_CPU - h.HOST_SHARE.CPU_USAGE for h in one.hostpool.info().HOST}
    assert free[host_of(one, packed[0])] == 500


def test_requirements(one: pyone.OneServer) -> None:
    assert host_of(one, one.vm.allocate(vm_text(req='"ID = 3"'), False)) == 3
    assert host_of(one, one.vm.allocate(vm_text(req='"NAME = \\"host2\\""'), False)) == 2
    vid = one.vm.allocate(vm_text(req='"NAME = \\"host1\\" | ID = 2"', rank="-RUNNING_VMS"), False)
    assert host_of(one, vid) == 1  # host2 already has a VM
    vid = one.vm.allocate(vm_text(req='"HYPERVISOR = \\"kvm\\" & !(ID = 0) & FREE_CPU > 750"'), False)
    # hosts 1-3 each run a 1-CPU VM (700 free) and host0 is excluded: nothing matches, the VM stays PENDING
    assert one.vm.info(vid).STATE == 1
    assert "SCHED_MESSAGE" in one.vm.info(vid).USER_TEMPLATE
    with pytest.raises(pyone.OneException, match="ID = = 3"):
        one.vm.allocate(vm_text(req='"ID = = 3"'), False)


def test_pending_when_full_then_placed() -> None:
    cfg = fast_config(hosts=[HostSpec("only", 200, 1024)])
    with SimZone(cfg) as zone:
        one = pyone.OneServer(zone.url, session=zone.session)
        a = one.vm.allocate(vm_text(cpu=1, mem=512), False)
        b = one.vm.allocate(vm_text(cpu=1, mem=512), False)
        c = one.vm.allocate(vm_text(cpu=1, mem=512), False)
        wait_for(lambda: one.vm.info(a).LCM_STATE == 3 and one.vm.info(b).LCM_STATE == 3)
        assert (one.vm.info(c).STATE, one.vm.info(c).LCM_STATE) == (1, 0)
        one.vm.action("poweroff", a)  # POWEROFF keeps its capacity, as in oned
        wait_for(lambda: one.vm.info(a).STATE == 8)
        assert one.vm.info(c).STATE == 1
        one.vm.action("terminate", b)
        wait_for(lambda: one.vm.info(c).LCM_STATE == 3)
        assert one.vm.info(b).STATE == 6


def test_hypervisor_requirement() -> None:
    cfg = fast_config(hosts=[HostSpec("kvm0", 800, 4096, "kvm"), HostSpec("ec2-0", 800, 4096, "ec2"),
                             HostSpec("ovz0", 800, 4096, "openvz")])
    with SimZone(cfg) as zone:
        one = pyone.OneServer(zone.url, session=zone.session)
        for hyper, hid in (("ec2", 1), ("openvz", 2), ("kvm", 0)):
            vid = one.vm.allocate(vm_text(req=f'"HYPERVISOR = \\"{hyper}\\""'), False)
            assert host_of(one, vid) == hid
            assert one.host.info(hid).VM_MAD == hyper


def test_host_down_turns_vms_unknown(one: pyone.OneServer, ctl: SimControl) -> None:
    vid = one.vm.allocate(vm_text(req='"ID = 1"'), False)
    wait_for(lambda: one.vm.info(vid).LCM_STATE == 3)
    ctl.host_down(1)
    assert one.host.info(1).STATE == 3  # ERROR
    assert (one.vm.info(vid).STATE, one.vm.info(vid).LCM_STATE) == (3, 16)
    other = one.vm.allocate(vm_text(req='"ID = 1"'), False)
    assert one.vm.info(other).STATE == 1  # nothing is placed on a host in ERROR
    ctl.host_up(1)
    assert one.vm.info(vid).LCM_STATE == 3
    wait_for(lambda: one.vm.info(other).LCM_STATE == 3)
