"""Issue #4 as a user tries it: create --watch, listings, scale up and down, remove, bad input — via the CLI."""

from __future__ import annotations

import re

import pyone

from libs.onesim.control import SimControl
from tests.e2e.conftest import Stack


def zone_vms(stack: Stack, zone: int = 0) -> list[object]:
    one = pyone.OneServer(stack.dev.zone_url(zone), session="oneadmin:onesim")
    return list(one.vmpool.infoextended(-2, -1, -1, -1).VM or [])


def test_create_watch_scale_and_remove_through_the_cli(stack: Stack) -> None:
    created = stack.oneenv("create", "web", "--watch")
    assert created.returncode == 0, created.stdout + created.stderr
    out = created.stdout
    envid = int(re.search(r"envid (\d+)", out).group(1))  # type: ignore[union-attr]
    assert "MASTER_INIT_DONE" in out and "READY" in out
    app_url = re.search(r"app_url: (\S+)", out).group(1)  # type: ignore[union-attr]

    env = stack.json("show", str(envid))
    assert env["policy_status"] == "ACTIVE" and env["app_url"] == app_url
    vms = stack.json("envvms", str(envid))
    master = next(v for v in vms if v["hostname"].endswith("-m"))
    assert app_url == f"http://{master['ipaddr']}:8080/app"
    assert len(vms) == 3 and all(v["ipaddr"] for v in vms)
    listing = stack.oneenv("envs")
    assert re.search(rf"^{envid}\s+web\s+zone1\s+3\s+active", listing.stdout, re.M), listing.stdout
    assert any(j["envid"] == envid and j["type"] == "CREATE" and j["status"] == "DONE" for j in stack.json("jobs"))
    assert {v["vmid"] for v in stack.json("vms") if v["envid"] == envid} == {v["vmid"] for v in vms}

    up = stack.oneenv("scaleup", str(envid), "--watch")
    assert up.returncode == 0, up.stdout + up.stderr
    assert len(stack.json("envvms", str(envid))) == 4
    down = stack.oneenv("scaledown", str(envid), "--watch")
    assert down.returncode == 0, down.stdout + down.stderr
    after = stack.json("envvms", str(envid))
    assert len(after) == 3

    # The simulated master applied an `add` for every slave added and a `delete` for the one removed.
    record = SimControl(stack.dev.zone_url(0)).guest_record(master["vmid"])
    applied = [(n["op"], n["ip"]) for n in record["notifications"]]
    slave_ips = {v["ipaddr"] for v in vms if v["vmid"] != master["vmid"]}
    added = [ip for op, ip in applied if op == "add"]
    deleted = [ip for op, ip in applied if op == "delete"]
    assert set(added) >= slave_ips and len(added) == 3
    assert len(deleted) == 1 and deleted[0] in added and deleted[0] not in slave_ips

    removed = stack.oneenv("remove", str(envid), "--watch")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    mine = [vm for vm in zone_vms(stack) if str(vm.USER_TEMPLATE.get("CARINA_ENVID")) == str(envid)]
    assert mine == [], "every VM of the environment is terminated"
    again = stack.oneenv("remove", str(envid))
    assert again.returncode == 4 and "removed" in again.stderr


def test_environment_lands_in_the_zone_of_its_endpoint(stack: Stack) -> None:
    created = stack.oneenv("create", "web2", "--watch")
    assert created.returncode == 0, created.stdout + created.stderr
    envid = int(re.search(r"envid (\d+)", created.stdout).group(1))  # type: ignore[union-attr]
    tagged = [vm for vm in zone_vms(stack, 1) if str(vm.USER_TEMPLATE.get("CARINA_ENVID")) == str(envid)]
    assert len(tagged) == 2
    assert all(v["zone"] == "zone2" for v in stack.json("envvms", str(envid)))


def test_refusals_are_clear_and_change_nothing(stack: Stack) -> None:
    assert stack.oneenv("create", "nosuchconfig").returncode == 3
    assert stack.oneenv("scaleup", "99999").returncode == 3
    created = stack.oneenv("create", "web")
    envid = created.stdout.split()[1]
    busy = stack.oneenv("scaleup", envid)
    assert busy.returncode == 4 and "in progress" in busy.stderr.lower()
    assert stack.oneenv("remove", envid, "--watch").returncode == 0
