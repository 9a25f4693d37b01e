"""Contextualized guests follow the guest protocol against a stand-in gateway."""

from __future__ import annotations

import time

import pyone

from libs.onesim import SimControl

from .conftest import Gateway, wait_for


def guest_vm(gw: Gateway, role: str = "master", env: int = 11, notify: str = "", slave_index: int = 0,
             token: str = "tok-secret") -> str:
    ctx = [f'CARINA_URL = "{gw.url}"', f'CARINA_TOKEN = "{token}"', f'ONEGATE_ENDPOINT = "{gw.url}"',
           f'CARINA_ROLE = "{role}"', f'ENVID = "{env}"', 'VMID = "$VMID"', 'SERVICE_NAME = "tomcat"',
           'IP = "$NIC[IP]"']
    if role == "slave":
        ctx.append(f'SLAVE_INDEX = "{slave_index}"')
    if notify:
        ctx.append(f'CARINA_NOTIFY = "{notify}"')
    return ('NAME = "g-' + role + '"\nCPU = 0.5\nMEMORY = 256\nNIC = [ NETWORK_ID = 0 ]\n'
            f'CARINA_ENVID = "{env}"\nCONTEXT = [ ' + ", ".join(ctx) + " ]\n")


def test_master_and_slave_report_in_order_with_token(one: pyone.OneServer, gateway: Gateway,
                                                     ctl: SimControl) -> None:
    master = one.vm.allocate(guest_vm(gateway), False)
    slave = one.vm.allocate(guest_vm(gateway, role="slave", slave_index=2), False)
    wait_for(lambda: gateway.of("/cgi-bin/updateappstatus.sh", slave) and
             gateway.of("/cgi-bin/updateappstatus.sh", master))
    for vid, status in ((master, "MASTER_INIT_DONE"), (slave, "SLAVE_2_INIT_DONE")):
        mine = [r for r in gateway.requests if r["query"].get("vmid") == str(vid)]
        assert [r["path"] for r in mine] == ["/cgi-bin/updatevmstatus.sh", "/cgi-bin/updateappstatus.sh"]
        vmstatus, appstatus = mine
        ip = one.vm.info(vid).TEMPLATE["NIC"]["IP"]
        assert vmstatus["query"] == {"service": "tomcat", "vmid": str(vid), "envid": "11", "newip": ip,
                                     "name": one.vm.info(vid).NAME, "token": "tok-secret"}
        assert appstatus["query"]["status"] == status and appstatus["query"]["token"] == "tok-secret"
        assert appstatus["headers"]["x-carina-token"] == "tok-secret"
    rec = ctl.guest_record(master)
    assert [r["kind"] for r in rec["reports"]] == ["updatevmstatus", "updateappstatus"]
    assert all(r["ok"] for r in rec["reports"])
    assert "tok-secret" not in str(rec)  # records never carry the token


def test_fail_outcome_and_retry(one: pyone.OneServer, gateway: Gateway, ctl: SimControl) -> None:
    ctl.set_guest_outcome({"envid": "12"}, "fail", reason="disk full")
    gateway.fail_first["/cgi-bin/updatevmstatus.sh"] = 2  # two 503s before success
    vid = one.vm.allocate(guest_vm(gateway, env=12), False)
    wait_for(lambda: gateway.of("/cgi-bin/updateappstatus.sh", vid))
    assert len(gateway.of("/cgi-bin/updatevmstatus.sh", vid)) == 3
    assert gateway.of("/cgi-bin/updateappstatus.sh", vid)[0]["query"]["status"] == "MASTER_INIT_FAIL:disk full"
    assert ctl.guest_record(vid)["reports"][0]["attempts"] == 3


def test_unreachable_gateway_is_recorded_not_fatal(one: pyone.OneServer, ctl: SimControl) -> None:
    text = ('CPU=0.1\nMEMORY=64\nNIC=[NETWORK_ID=0]\n'
            'CONTEXT=[CARINA_URL="http://127.0.0.1:9", CARINA_TOKEN="t", CARINA_ROLE="master"]')
    vid = one.vm.allocate(text, False)
    rec = wait_for(lambda: (r := ctl.guest_record(vid))["errors"] and len(r["reports"]) >= 2 and r)
    assert rec["errors"][0]["kind"] == "updatevmstatus" and not rec["reports"][0]["ok"]
    assert one.vm.info(vid).LCM_STATE == 3  # the zone carries on


def test_pull_notifications_applied_and_acked(one: pyone.OneServer, gateway: Gateway, ctl: SimControl) -> None:
    gateway.notifications = [
        {"seq": 2, "op": "add", "ip": "10.0.0.6", "data": "8080"},
        {"seq": 1, "op": "add", "ip": "10.0.0.5", "data": "8080"},
    ]
    vid = one.vm.allocate(guest_vm(gateway, env=13, notify="pull", token="pull-tok"), False)
    wait_for(lambda: gateway.acked == 2)
    polls = gateway.of("/guest/v1/notifications", vid)
    assert polls[0]["headers"]["x-onegate-token"] == "pull-tok"
    assert polls[0]["headers"]["x-onegate-vmid"] == str(vid)
    with gateway.lock:
        gateway.notifications.append({"seq": 3, "op": "delete", "ip": "10.0.0.5", "data": ""})
    wait_for(lambda: ctl.guest_record(vid)["acked_seq"] == 3)  # the guest saw its acknowledgement accepted
    assert gateway.acked == 3
    rec = ctl.guest_record(vid)
    assert [n["seq"] for n in rec["notifications"]] == [1, 2, 3]
    assert rec["members"] == {"10.0.0.6": "8080"}
    assert rec["acked_seq"] == 3
    # This fake answers at once (it does not hold polls): with nothing new, the guest pauses between polls
    # (guest_poll_seconds) instead of asking again in a tight loop.
    before = len(gateway.of("/guest/v1/notifications", vid))
    time.sleep(0.5)
    assert len(gateway.of("/guest/v1/notifications", vid)) - before <= 15
    acks = [r for r in gateway.requests if r["path"] == "/guest/v1/notifications/ack"]
    assert [int(__import__("json").loads(a["body"])["seq"]) for a in acks] == [2, 3]


def test_metrics_push_follows_load(one: pyone.OneServer, gateway: Gateway, ctl: SimControl) -> None:
    vid = one.vm.allocate(guest_vm(gateway, env=14), False)
    wait_for(lambda: gateway.of("/cgi-bin/updateappstatus.sh", vid))
    assert not gateway.of("/vm", vid)  # metrics off by default
    ctl.set_load({"vm_id": vid}, "constant", cpu=55.0, memory=0.5)
    ctl.set_metrics({"vm_id": vid}, True)
    put = wait_for(lambda: gateway.of("/vm", vid))[0]
    assert put["method"] == "PUT" and put["headers"]["x-onegate-token"] == "tok-secret"
    assert "CPU_LOAD = 55.0" in put["body"].splitlines() and "MEM_LOAD = 50.0" in put["body"].splitlines()
    one.vm.action("poweroff-hard", vid)
    wait_for(lambda: one.vm.info(vid).STATE == 8)
    count = len(gateway.of("/vm", vid))
    __import__("time").sleep(0.2)
    assert len(gateway.of("/vm", vid)) == count  # a powered-off guest stays quiet
