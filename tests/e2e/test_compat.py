"""Issue #8 "Show", end to end: Carina's config.rb, groups, several zones, recreate, hypervisor neutrality, bad input.

The whole stack runs as separate processes with two fast simulated OpenNebula zones; everything goes through the
real `oneenv` CLI (or the REST API where the CLI has no command), and what the guests got is read back from the
zones with pyone and the zones' control API — the ground truth a user would check.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from libs.devstack.stack import DevStack, StackConfig
from libs.onesim.control import SimControl, selector
from tests.e2e.compat_support import (
    EXAMPLES,
    KVM_VM,
    OVZ22_VM,
    as_time,
    context_of,
    examples_config_rb,
    nic_ip,
    wait_for,
    zone_vm,
    zone_vms,
)
from tests.e2e.conftest import Stack

WATCH = ("--watch", "--timeout", "60")


TERMINAL = ("DONE", "FAIL", "ABORT")


@dataclass
class Compat:
    """The module's stack, the files uploaded to it, and the steps the tests repeat."""

    stack: Stack
    workdir: Path
    upload: subprocess.CompletedProcess[str]

    @property
    def zone1(self) -> str:
        return self.stack.dev.zone_url(0)

    @property
    def zone2(self) -> str:
        return self.stack.dev.zone_url(1)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.stack.oneenv(*args)

    def ok(self, *args: str) -> str:
        result = self.stack.oneenv(*args)
        assert result.returncode == 0, f"oneenv {' '.join(args)}: {result.returncode}\n{result.stdout}{result.stderr}"
        return result.stdout

    def start(self, name: str) -> list[tuple[int, int]]:
        """`oneenv --create NAME` (Carina's flag form); the (envid, jobid) of every member, in creation order."""
        out = self.ok("--create", name)
        members = [(int(e), int(j)) for e, j in re.findall(r"^envid (\d+)\s+jobid (\d+)", out, re.M)]
        assert members, out
        return members

    def job(self, jobid: int) -> dict[str, Any]:
        answer = self.stack.http.get(f"/api/v1/jobs/{jobid}")
        answer.raise_for_status()
        return dict(answer.json())

    def wait_jobs(self, jobids: list[int], timeout: float = 60.0, expect: str | None = "DONE") -> list[dict[str, Any]]:
        """Wait until every job has ended; with `expect`, each must have ended that way."""
        def ended() -> list[dict[str, Any]] | None:
            jobs = [self.job(j) for j in jobids]
            return jobs if all(j["status"] in TERMINAL for j in jobs) else None

        jobs = wait_for(f"jobs {jobids} to end", ended, timeout=timeout, every=0.2)
        if expect is not None:
            assert all(j["status"] == expect for j in jobs), jobs
        return jobs

    def create(self, *names: str) -> dict[str, int]:
        """Create environments side by side and wait until each is READY; their envids by name."""
        started = {name: self.start(name) for name in names}
        self.wait_jobs([j for members in started.values() for _, j in members])
        return {name: members[0][0] for name, members in started.items()}

    def operation(self, *args: str) -> dict[str, Any]:
        """A CLI operation answering `jobid N`, followed to its end through the API."""
        jobid = int(re.search(r"jobid (\d+)", self.ok(*args)).group(1))  # type: ignore[union-attr]
        return self.wait_jobs([jobid])[0]

    def show(self, envid: int) -> dict[str, Any]:
        answer = self.stack.http.get(f"/api/v1/environments/{envid}")
        answer.raise_for_status()
        return dict(answer.json())

    def stored_config(self) -> dict[str, Any]:
        answer = self.stack.http.get("/api/v1/config")
        answer.raise_for_status()
        return dict(answer.json())

    def vms(self, envid: int) -> list[dict[str, Any]]:
        return list(self.stack.json("envvms", str(envid)))


@pytest.fixture(scope="module")
def compat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compat]:
    dev = DevStack(StackConfig.for_tests(tmp_path_factory.mktemp("compat")))
    dev.start()
    try:
        stack = Stack(dev)
        work = tmp_path_factory.mktemp("compat-files")
        for vm in ("example.vm", "cassandra.vm", "openvz.vm", "hybrid-ec2.vm"):
            shutil.copy(EXAMPLES / "templates" / vm, work / vm)
        (work / "kvm.vm").write_text(KVM_VM)
        (work / "ovz22.vm").write_text(OVZ22_VM)
        for vm in ("example.vm", "cassandra.vm", "openvz.vm", "hybrid-ec2.vm", "kvm.vm", "ovz22.vm"):
            result = stack.oneenv("--upload", str(work / vm))
            assert result.returncode == 0, result.stderr
        (work / "config.rb").write_text(examples_config_rb(dev.zone_url(0), dev.zone_url(1)))
        yield Compat(stack, work, stack.oneenv("--upload", str(work / "config.rb")))
    finally:
        dev.stop()


# --- 1. the seeds' examples as config.rb ---------------------------------------------------------------------------


def test_examples_config_rb_uploads_and_creates_in_the_simulated_zones(compat: Compat) -> None:
    assert compat.upload.returncode == 0, compat.upload.stdout + compat.upload.stderr
    assert "OK: configuration revision" in compat.upload.stdout
    listed = {c["name"]: c for c in compat.stack.json("configs")}
    for name in ("tomcat", "cassandra", "hbase", "jenkins", "analytics", "tomcat_ha_active", "tomcat_ha_passive"):
        assert name in listed, f"{name} missing from `oneenv configs`: {sorted(listed)}"
    assert listed["analytics"]["type"] == "group"
    assert listed["tomcat_ha_passive"]["zone"] == "zone2" and listed["tomcat"]["zone"] == "zone1"

    envids = compat.create("tomcat", "cassandra", "tomcat_ha_active", "tomcat_ha_passive")

    # tomcat: a master and two slaves in zone1, app_url pointing at the master.
    tomcat = envids["tomcat"]
    vms = compat.vms(tomcat)
    master = next(v for v in vms if v["role"] == "master")
    assert len(vms) == 3 and {v["zone"] for v in vms} == {"zone1"}
    assert compat.show(tomcat)["app_url"] == f"http://{master['ipaddr']}:8080/gwt-petstore"
    in_zone1 = zone_vms(compat.zone1, {tomcat})
    assert {vm.ID for vm in in_zone1} == {v["vmid"] for v in vms}
    slave_ctx = [context_of(vm) for vm in in_zone1 if context_of(vm).get("CARINA_ROLE") == "slave"]
    assert sorted(c["SLAVE_ID"] for c in slave_ctx) == ["0", "1"]
    assert all(c["APP_PACKAGE"] == "gwt-petstore.war" and c["APP_CONTEXT_SCRIPT"] == "tomcat.sh" for c in slave_ctx)
    assert context_of(zone_vm(compat.zone1, master["vmid"]))["BALANCE_PORT"] == "8080"

    # cassandra: the slaves get MOUNTLIST, SLAVE_ID, NUM_SLAVES and SEEDS=<master ip>, Carina's escaping undone.
    cassandra = envids["cassandra"]
    cmaster = next(v for v in compat.vms(cassandra) if v["role"] == "master")
    ctx = {vm.ID: context_of(vm) for vm in zone_vms(compat.zone1, {cassandra})}
    assert len(ctx) == 3
    assert ctx[cmaster["vmid"]]["MOUNTLIST"] == "/vol/data{1-6}"
    slaves = [c for vmid, c in ctx.items() if vmid != cmaster["vmid"]]
    assert sorted(c["SLAVE_ID"] for c in slaves) == ["0", "1"]
    for c in slaves:
        assert c["MOUNTLIST"] == "/vol/data{1-6}" and c["NUM_SLAVES"] == "2"
        assert c["SEEDS"] == cmaster["ipaddr"] and c["MASTER"] == cmaster["ipaddr"]
    assert str(zone_vm(compat.zone1, cmaster["vmid"]).TEMPLATE.get("VCPU")) == "2"  # cassandra.vm's own attribute

    # The HA pair: the active side in zone1, the passive side (its master only) in zone2.
    active, passive = envids["tomcat_ha_active"], envids["tomcat_ha_passive"]
    assert len(zone_vms(compat.zone1, {active})) == 3 and zone_vms(compat.zone2, {active}) == []
    assert zone_vms(compat.zone2, {passive}) and zone_vms(compat.zone1, {passive}) == []
    assert {v["zone"] for v in compat.vms(passive)} == {"zone2"}


# --- 2. a group with dependencies ----------------------------------------------------------------------------------


def test_group_deploys_in_dependency_order_passes_urls_and_is_removed_whole(compat: Compat) -> None:
    members = compat.start("analytics")
    assert len(members) == 3
    envids = [e for e, _ in members]
    assert envids == sorted(envids) and [j for _, j in members] == sorted(j for _, j in members)
    chain = compat.wait_jobs([j for _, j in members])
    shown = [compat.show(e) for e in envids]
    assert [s["name"] for s in shown] == ["hbase", "jenkins", "tomcat"]
    assert {s["groupid"] for s in shown} == {envids[0]}, "group id = the first member's envid"
    assert all(s["policy_status"] in ("READY", "ACTIVE") for s in shown)
    for before, after in zip(chain, chain[1:], strict=False):
        assert after["predjob"] == before["jobid"]
        assert as_time(after["start"]) >= as_time(before["end"]), "a member starts once the one before is READY"

    hbase_url, jenkins_url = shown[0]["app_url"], shown[1]["app_url"]
    assert hbase_url and jenkins_url
    hbase, jenkins, tomcat = ([context_of(vm) for vm in zone_vms(compat.zone1, {e})] for e in envids)
    assert (len(hbase), len(jenkins), len(tomcat)) == (3, 2, 3)
    for ctx in tomcat:  # master and slaves
        assert ctx["HBASE_URL"] == hbase_url and ctx["JENKINS_URL"] == jenkins_url, ctx
    for ctx in jenkins:
        assert ctx["HBASE_URL"] == hbase_url and "JENKINS_URL" not in ctx, ctx
    assert not [k for ctx in hbase for k in ctx if k.endswith("_URL") and k != "CARINA_URL"]

    removed = compat.ok("--remove", f"-{envids[0]}")
    compat.wait_jobs([int(j) for j in re.search(r"jobid ([\d,]+)", removed).group(1).split(",")])  # type: ignore[union-attr]
    assert zone_vms(compat.zone1, set(envids)) == [], "every VM of every member is gone"
    assert not {e["envid"] for e in compat.stack.json("envs")} & set(envids)


# --- 3. a failed member aborts the waiting ones ---------------------------------------------------------------------


def test_failed_group_member_aborts_the_members_still_waiting(compat: Compat) -> None:
    SimControl(compat.zone1).set_guest_outcome(selector(name="hfail*"), "fail", reason="disk full")
    members = compat.start("doomed")
    assert len(members) == 3
    first, second, third = compat.wait_jobs([j for _, j in members], timeout=40, expect=None)
    failed = compat.show(members[0][0])
    assert first["status"] == "FAIL" and "MASTER_INIT_FAIL" in failed["status"], (first, failed["status"])
    for job in (second, third):
        assert job["status"] == "ABORT", job
        assert job["reason"], "an aborted job says why"
    assert "hfail" in second["reason"], second["reason"]
    assert zone_vms(compat.zone1, {members[1][0], members[2][0]}) == [], "aborted members created no VM"
    assert not {compat.show(e)["policy_status"] for e, _ in members[1:]} & {"READY", "ACTIVE"}


# --- 4. several zones ------------------------------------------------------------------------------------------------


def test_zones_listings_and_a_zone_name_claimed_twice(compat: Compat) -> None:
    envids = compat.create("jenkins", "tomcat_ha_passive")
    in_zone1, in_zone2 = envids["jenkins"], envids["tomcat_ha_passive"]
    listing = compat.ok("--envs")
    assert re.search(rf"^{in_zone1}\s+jenkins\s+zone1\s+2\s", listing, re.M), listing
    assert re.search(rf"^{in_zone2}\s+tomcat_ha_passive\s+zone2\s", listing, re.M), listing
    assert re.search(rf"^\d+\s+{in_zone2}\s+zone2\s+tomcat_ha_passive-", compat.ok("--envvms", str(in_zone2)), re.M)
    assert len(zone_vms(compat.zone1, {in_zone1})) == 2 and zone_vms(compat.zone2, {in_zone1}) == []
    assert zone_vms(compat.zone2, {in_zone2}) and zone_vms(compat.zone1, {in_zone2}) == []

    before = compat.stored_config()
    clash = f"""
endpoints:
  east: {{url: "{compat.zone1}", credentials: "oneadmin:onesim", zone: shared}}
  west: {{url: "{compat.zone2}", credentials: "oneadmin:onesim", zone: shared}}
templates:
  t: {{file: example.vm, cpu: 1, memory: 256, network_id: {{east: 0, west: 0}}, image_id: {{east: 0, west: 0}}}}
environments:
  e: {{endpoint: east, master_template: t, slave_template: t, num_slaves: 0, app_url: "http://%MASTER%/"}}
"""
    answer = compat.stack.http.put("/api/v1/config", content=clash, headers={"Content-Type": "application/yaml"})
    assert answer.status_code == 422, answer.text
    assert "zone 'shared'" in answer.text and "west" in answer.text, answer.text
    assert compat.stored_config() == before, "nothing stored"


# --- 5. recreate ------------------------------------------------------------------------------------------------------


def _applied(compat: Compat, master_vmid: int) -> list[tuple[str, str]]:
    """The add/delete notifications the simulated master applied, in order."""
    record = SimControl(compat.zone1).guest_record(master_vmid)
    return [(str(n["op"]), str(n["ip"])) for n in record["notifications"]]


def test_recreate_a_slave_tells_the_master_delete_then_add(compat: Compat) -> None:
    envid = compat.create("tomcat")["tomcat"]
    vms = compat.vms(envid)
    master = next(v for v in vms if v["role"] == "master")
    old = next(v for v in vms if v["role"] == "slave" and v["index"] == 0)
    wait_for("the master to apply both adds", lambda: len(_applied(compat, master["vmid"])) >= 2)

    compat.operation("recreate", str(envid), str(old["vmid"]))
    after = compat.vms(envid)
    assert len(after) == 3 and old["vmid"] not in {v["vmid"] for v in after}
    new = next(v for v in after if v["role"] == "slave" and v["vmid"] not in {x["vmid"] for x in vms})
    assert new["ipaddr"] and new["ipaddr"] != old["ipaddr"]
    assert int(new["slot"].rsplit(":", 1)[1]) > int(old["slot"].rsplit(":", 1)[1]), "a new incarnation"
    assert {vm.ID for vm in zone_vms(compat.zone1, {envid})} == {v["vmid"] for v in after}, "the old VM is gone"

    def delete_then_add() -> list[tuple[str, str]] | None:
        applied = _applied(compat, master["vmid"])
        return applied if {("delete", old["ipaddr"]), ("add", new["ipaddr"])} <= set(applied[2:]) else None

    applied = wait_for("the master told delete <old ip> and add <new ip>", delete_then_add)
    assert applied.index(("delete", old["ipaddr"])) < applied.index(("add", new["ipaddr"]))


def test_recreate_the_master_re_adds_every_slave_and_moves_app_url(compat: Compat) -> None:
    envid = compat.create("tomcat")["tomcat"]
    vms = compat.vms(envid)
    master = next(v for v in vms if v["role"] == "master")
    slaves = {v["vmid"]: v["ipaddr"] for v in vms if v["role"] == "slave"}

    compat.operation("recreate", str(envid), str(master["vmid"]))
    final = compat.vms(envid)
    new_master = next(v for v in final if v["role"] == "master")
    assert new_master["vmid"] != master["vmid"] and new_master["slot"].endswith(":2")
    assert {v["vmid"]: v["ipaddr"] for v in final if v["role"] == "slave"} == slaves, "the slaves are kept"
    assert master["vmid"] not in {vm.ID for vm in zone_vms(compat.zone1, {envid})}
    wait_for("every slave re-added to the new master",
             lambda: {ip for op, ip in _applied(compat, new_master["vmid"]) if op == "add"} >= set(slaves.values()))
    assert nic_ip(zone_vm(compat.zone1, new_master["vmid"])) == new_master["ipaddr"]
    assert compat.show(envid)["app_url"] == f"http://{new_master['ipaddr']}:8080/gwt-petstore"


# --- 6. hypervisor neutrality ----------------------------------------------------------------------------------------


def _attributes(vm: Any) -> dict[str, Any]:
    """TEMPLATE and USER_TEMPLATE together: oned moves attributes it does not know into USER_TEMPLATE."""
    return {**dict(vm.USER_TEMPLATE), **dict(vm.TEMPLATE)}


def test_hypervisor_specific_templates_pass_through_untouched(compat: Compat) -> None:
    created = compat.create("on_kvm", "on_ec2", "on_openvz")
    found = {name: zone_vms(compat.zone1, {envid}) for name, envid in created.items()}
    assert all(len(vms) == 1 for vms in found.values()), found

    kvm = _attributes(found["on_kvm"][0])
    assert dict(kvm["OS"]) == {"ARCH": "x86_64", "BOOT": "disk0", "MACHINE": "q35"}
    assert dict(kvm["FEATURES"]) == {"ACPI": "yes", "APIC": "yes", "GUEST_AGENT": "yes"}
    assert dict(kvm["CPU_MODEL"]) == {"MODEL": "host-passthrough"}
    assert dict(kvm["RAW"]) == {"TYPE": "kvm",
                                "DATA": "<devices><serial type='pty'><target port='0'/></serial></devices>"}
    assert kvm["NIC"]["MODEL"] == "virtio" and kvm["DISK"]["DEV_PREFIX"] == "vd" and str(kvm["VCPU"]) == "2"
    assert context_of(found["on_kvm"][0])["ROLE"] == "solo"

    ec2 = _attributes(found["on_ec2"][0])
    assert dict(ec2["EC2"]) == {"AMI": "ami-6f5f1206", "BLOCKDEVICEMAPPING": "/dev/sdh=:20",
                                "INSTANCETYPE": "m1.small", "KEYPAIR": "gsg-keypair"}

    ovz_vm = found["on_openvz"][0]
    ovz = _attributes(ovz_vm)
    assert dict(ovz["OS"]) == {"ARCH": "x86_64"} and ovz["ONBOOT"] == "yes"
    assert ovz["CPUUNITS"] == "2000" and ovz["CPULIMIT"] == "25" and ovz["CPUS"] == "1"
    assert ovz["DISKSPACE"] == "10485760:11530240" and ovz["DISKINODES"] == "200000:220000"
    raw = (EXAMPLES / "templates" / "openvz.vm").read_text()
    data = re.search(r'RAW\s*=\s*\[\s*TYPE\s*=\s*"openvz",\s*DATA\s*=\s*"([^"]*)"', raw).group(1)  # type: ignore[union-attr]
    assert dict(ovz["RAW"]) == {"TYPE": "openvz", "DATA": data} and "KMEMSIZE=14372700:14790164" in data
    disks = ovz["DISK"] if isinstance(ovz["DISK"], list) else [ovz["DISK"]]
    assert any(d.get("TYPE") == "swap" and str(d.get("SIZE")) == "1024" for d in disks)
    assert context_of(ovz_vm)["HOSTNAME"] == f"{ovz_vm.NAME}.example.org"


def test_a_template_the_zone_refuses_fails_the_create_with_the_zones_reason(compat: Compat) -> None:
    [(envid, jobid)] = compat.start("on_ovz22")
    [job] = compat.wait_jobs([jobid], timeout=15, expect=None)
    assert job["status"] == "FAIL", job
    assert "numeric CPU and MEMORY" in (job["reason"] or "") + compat.show(envid)["status"]
    assert zone_vms(compat.zone1, {envid}) == []


# --- 7. bad input ----------------------------------------------------------------------------------------------------


def _refused_upload(compat: Compat, name: str, text: str) -> str:
    """Upload `text` as config.rb through the CLI: refused (exit 2, one line on stderr), nothing stored."""
    before = compat.stored_config()
    path = compat.workdir / name
    path.write_text(text)
    result = compat.run("--upload", str(path))
    assert result.returncode == 2, f"rc {result.returncode}: {result.stdout}{result.stderr}"
    assert result.stdout == "" and result.stderr.startswith("oneenv: ")
    assert compat.stored_config() == before, "nothing changed"
    return result.stderr


def test_bad_config_rb_is_refused_clearly_and_changes_nothing(compat: Compat) -> None:
    listed = compat.ok("--configs")
    good = examples_config_rb(compat.zone1, compat.zone2)

    broken = good.replace(":num_slaves            => 2,", ":num_slaves            => 2 2,", 1)
    line = next(i for i, text in enumerate(broken.splitlines(), 1) if "=> 2 2," in text)
    message = _refused_upload(compat, "broken.rb", broken)
    assert re.search(rf"line {line}, column \d+", message), message

    unknown = good.replace("[ 'hbase', 'jenkins', 'tomcat' ]", "[ 'hbase', 'nosuch', 'tomcat' ]")
    assert unknown != good
    message = _refused_upload(compat, "unknown.rb", unknown)
    assert "unknown member 'nosuch'" in message, message

    cycle = good.replace("'jenkins' => [ 'hbase' ] }", "'jenkins' => [ 'hbase' ], 'hbase' => [ 'tomcat' ] }")
    assert cycle != good
    message = _refused_upload(compat, "cycle.rb", cycle)
    assert "dependency cycle" in message and "hbase" in message and "tomcat" in message, message

    twice = good.replace(":oneauth => 'oneadmin:onesim',\n  },\n  'zone2'",
                         ":oneauth => 'oneadmin:onesim',\n    :zone    => 'zone2',\n  },\n  'zone2'", 1)
    assert twice != good
    message = _refused_upload(compat, "twice.rb", twice)
    assert "zone 'zone2'" in message, message
    assert "onesim" not in message, "credentials never appear in messages"

    assert compat.ok("--configs") == listed, "`oneenv configs` still lists the previous configuration"
    assert compat.run("--create", "nosuch").returncode == 3
