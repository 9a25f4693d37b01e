"""The `oneenv` CLI as a user runs it: a subprocess against the live gateway (real NATS and MongoDB)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from gateway_helpers import ADMIN_TOKEN, CONFIG_YAML, TEMPLATE_VM, Accounts, Collector, ServerThread, plant_running_env

from libs.common.db import Store
from libs.common.messages import utcnow
from libs.devstack.procs import free_port

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


class Cli:
    def __init__(self, url: str, token: str, home: Path) -> None:
        self.env = {"CARINA_URL": url, "CARINA_TOKEN": token, "XDG_CONFIG_HOME": str(home), "HOME": str(home),
                    "PATH": "/usr/bin:/bin"}
        self.outputs: list[str] = []

    async def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "libs.cli.oneenv", *args], cwd=REPO, capture_output=True,
                                  text=True, timeout=60, env={**self.env, **(env or {})})

        done = await asyncio.to_thread(run)
        self.outputs += [done.stdout, done.stderr]
        assert "Traceback" not in done.stderr, done.stderr
        return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def cli(gateway: ServerThread, accounts: Accounts, tmp_path: Path) -> Cli:
    return Cli(gateway.url, accounts.a, tmp_path)


def _rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


async def test_upload_create_and_list(cli: Cli, tmp_path: Path, accounts: Accounts) -> None:
    (tmp_path / "small.vm").write_text(TEMPLATE_VM)
    (tmp_path / "carina.yaml").write_text(CONFIG_YAML)
    result = await cli("upload", str(tmp_path / "small.vm"))
    assert result.code == 0 and "small.vm" in result.stdout
    result = await cli("--upload", str(tmp_path / "carina.yaml"))
    assert result.code == 0 and "revision 1" in result.stdout

    result = await cli("configs")
    assert _rows(result.stdout)[0] == ["NAME", "TYPE", "ENDPOINT", "DESCRIPTION"]
    assert ["stack", "group", "-", "db", "then", "tomcat"] in _rows(result.stdout)
    as_json = json.loads((await cli("-o", "-j")).stdout)
    assert {c["name"] for c in as_json} == {"db", "stack", "tomcat"}

    result = await cli("--create", "tomcat")
    assert result.code == 0
    envid = int(result.stdout.split()[1])
    result = await cli("envs")
    rows = _rows(result.stdout)
    assert rows[0] == ["ID", "NAME", "ZONE", "VMS", "P_STATUS", "D_STATUS", "APP_URL"]
    assert rows[1] == [str(envid), "tomcat", "zone1", "0", "init", "init", "-"]
    listed = json.loads((await cli("-e", "--json")).stdout)
    assert [e["envid"] for e in listed] == [envid]
    jobs = _rows((await cli("-J")).stdout)
    assert jobs[0] == ["ID", "ENVID", "CONFIG_NAME", "TYPE", "SUBMIT_TIME", "STATUS"]
    assert jobs[1][1:4] == [str(envid), "tomcat", "CREATE"] and jobs[1][-1] == "RUNNING"
    shown = await cli("show", str(envid))
    assert shown.code == 0 and "NAME:        tomcat" in shown.stdout
    assert accounts.a not in "".join(cli.outputs)  # the token is never printed


async def test_vm_listings(cli: Cli, store: Store) -> None:
    planted = await plant_running_env(store, 9001, "alpha", slaves=1)
    await store.slots.update_one({"_id": "9001:slave:0:1"}, {"$set": {"lifecycle": "FAILED"}})
    long_status = "MASTER_CREATE_FAIL:quota_exceeded_for_user"
    await store.envs.update_one({"_id": 9001}, {"$set": {"status": long_status}})
    expected_header = ["VMID", "ENVID", "ZONE", "HOSTNAME", "IPADDR", "STATUS", "CPU"]
    for args in (("envvms", "9001"), ("-k", "9001"), ("--vms",)):
        rows = _rows((await cli(*args)).stdout)
        assert rows[0] == expected_header
        master = planted["slots"][0]
        assert rows[1] == [str(master["one_id"]), "9001", "zone1", "tomcat-9001-m", master["ip"], "master_init_done",
                           "12.5"]
        assert rows[2][5] == "fail"
    envs = _rows((await cli("envs")).stdout)
    assert envs[1][5] == "master_create_fail:qu"  # lower case, 21 characters, as Carina printed it


async def test_exit_codes(cli: Cli, store: Store, tmp_path: Path) -> None:
    await store.envs.insert_one({"_id": 9101, "version": 0, "service": "alpha", "name": "db", "status": "INIT",
                                 "policy_status": "INIT", "active": True, "created_at": utcnow(),
                                 "op": {"jobid": 99101, "type": "CREATE", "phase": "master"}})
    result = await cli("show", "424242")
    assert result.code == 3 and result.stderr.startswith("oneenv: Environment 424242 not found")
    assert len(result.stderr.strip().splitlines()) == 1
    result = await cli("-u", "9101")
    assert result.code == 4 and "in progress" in result.stderr
    assert (await cli("scaledown", "9101")).code == 4
    (tmp_path / "bad.yaml").write_text("endpoints: [\n")
    result = await cli("upload", str(tmp_path / "bad.yaml"))
    assert result.code == 2 and "line" in result.stderr
    assert (await cli("upload", str(tmp_path / "missing.yaml"))).code == 2
    assert (await cli("frobnicate")).code == 2
    result = await cli("--pools")
    assert result.code == 3 and "scheduler is not configured" in result.stderr
    result = await cli("envs", env={"CARINA_TOKEN": "wrong-token"})
    assert result.code == 2 and "not authenticated" in result.stderr
    result = await cli("envs", env={"CARINA_URL": f"http://127.0.0.1:{free_port()}"})
    assert result.code == 5 and "cannot reach" in result.stderr
    result = await cli("-r", "9101")
    assert result.code == 0 and result.stdout.startswith("jobid ")
    assert (await cli("--remove", "9101")).code == 4


async def test_config_file_and_group_removal(cli: Cli, accounts: Accounts, tmp_path: Path, gateway: ServerThread,
                                             store: Store) -> None:
    (tmp_path / "carina").mkdir()
    (tmp_path / "carina" / "cli.json").write_text(json.dumps({"url": gateway.url, "token": accounts.a}))
    (tmp_path / "small.vm").write_text(TEMPLATE_VM)
    (tmp_path / "carina.yaml").write_text(CONFIG_YAML)
    no_env = {"CARINA_URL": "", "CARINA_TOKEN": ""}
    assert (await cli("-U", str(tmp_path / "small.vm"), env=no_env)).code == 0
    assert (await cli("upload", str(tmp_path / "carina.yaml"), env=no_env)).code == 0
    created = json.loads((await cli("create", "stack", "--json", env=no_env)).stdout)
    groupid = created["envid"]
    result = await cli("--remove", f"-{groupid}", env=no_env)
    assert result.code == 0, result.stderr
    jobids = [int(j) for j in result.stdout.split()[1].split(",")]
    assert len(jobids) == 2
    assert {(j["type"], j["envid"]) async for j in store.jobs.find({"_id": {"$in": jobids}})} == {
        ("REMOVE", m["envid"]) for m in created["members"]}


async def test_carina_config_rb_is_converted(cli: Cli, tmp_path: Path) -> None:
    for name in ("example.vm", "cassandra.vm"):
        (tmp_path / name).write_text(TEMPLATE_VM)
        assert (await cli("upload", str(tmp_path / name))).code == 0
    result = await cli("--upload", str(REPO / "examples" / "config.rb"))
    assert result.code == 0, result.stderr
    names = {c["name"] for c in json.loads((await cli("configs", "--json")).stdout)}
    assert {"tomcat", "cassandra", "hbase"} <= names


async def _finish_job(store: Store, envid: int, status: str, reason: str | None, app_url: str | None) -> None:
    for _ in range(200):
        env = await store.envs.find_one({"_id": envid})
        if env and env.get("op"):
            await asyncio.sleep(0.5)
            await store.jobs.update_one({"_id": env["op"]["jobid"]}, {"$set": {"status": status, "reason": reason}})
            final = "DONE" if status == "DONE" else env["status"]
            await store.envs.update_one({"_id": envid}, {"$set": {"op": None, "app_url": app_url, "status": final}})
            return
        await asyncio.sleep(0.05)


async def test_watch_follows_the_job(cli: Cli, store: Store) -> None:
    await plant_running_env(store, 9301, "alpha", slaves=1)
    finisher = asyncio.create_task(_finish_job(store, 9301, "DONE", None, "http://10.0.0.1:8080/"))
    result = await cli("scaleup", "9301", "--watch", "--timeout", "30")
    await finisher
    assert result.code == 0, result.stderr
    assert "polling" not in result.stderr  # followed the event stream, not the fallback
    assert "SLAVE_0_INIT_DONE" in result.stdout
    assert result.stdout.strip().endswith("DONE")

    finisher = asyncio.create_task(_finish_job(store, 9301, "FAIL", "SLAVE_CREATE_FAIL: no capacity", None))
    result = await cli("--scaleup", "9301", "--watch")
    await finisher
    assert result.code == 1
    assert "FAIL: SLAVE_CREATE_FAIL: no capacity" in result.stderr


async def test_create_watch_prints_the_app_url(cli: Cli, store: Store, tmp_path: Path) -> None:
    (tmp_path / "small.vm").write_text(TEMPLATE_VM)
    (tmp_path / "carina.yaml").write_text(CONFIG_YAML)
    assert (await cli("upload", str(tmp_path / "small.vm"))).code == 0
    assert (await cli("upload", str(tmp_path / "carina.yaml"))).code == 0
    finisher = asyncio.create_task(_finish_after_create(store, "http://10.1.2.3:8080/app"))
    result = await cli("create", "db", "--watch", "--timeout", "30")
    await finisher
    assert result.code == 0, result.stderr
    assert "app_url: http://10.1.2.3:8080/app" in result.stdout


async def _finish_after_create(store: Store, app_url: str) -> None:
    for _ in range(400):
        env = await store.envs.find_one({"name": "db"})
        if env is not None:
            await _finish_job(store, env["_id"], "DONE", None, app_url)
            return
        await asyncio.sleep(0.05)


async def test_carina_long_flag_forms(cli: Cli, tmp_path: Path, store: Store) -> None:
    (tmp_path / "small.vm").write_text(TEMPLATE_VM)
    (tmp_path / "carina.yaml").write_text(CONFIG_YAML)
    assert (await cli("--upload", str(tmp_path / "small.vm"))).code == 0
    assert (await cli("--upload", str(tmp_path / "carina.yaml"))).code == 0
    assert _rows((await cli("--configs")).stdout)[0] == ["NAME", "TYPE", "ENDPOINT", "DESCRIPTION"]
    created = await cli("--create", "db")
    assert created.code == 0 and created.stdout.split()[0] == "envid"
    await plant_running_env(store, 9501, "alpha", slaves=1)
    envs = _rows((await cli("--envs")).stdout)
    assert envs[0][:2] == ["ID", "NAME"] and {r[0] for r in envs[1:]} == {created.stdout.split()[1], "9501"}
    vms = _rows((await cli("--envvms", "9501")).stdout)
    assert [r[1] for r in vms[1:]] == ["9501", "9501"]
    up = await cli("--scaleup", "9501")
    assert up.code == 0 and up.stdout.startswith("jobid ")
    await store.envs.update_one({"_id": 9501}, {"$set": {"op": None}})
    down = await cli("--scaledown", "9501", "--json")
    job = await store.jobs.find_one({"_id": json.loads(down.stdout)["jobid"]})
    assert job is not None and job["type"] == "SCALEDOWN"
    assert {r[0] for r in _rows((await cli("--jobs")).stdout)[1:]} >= {up.stdout.split()[1]}
    assert len(_rows((await cli("--vms")).stdout)) == 3
    await store.envs.update_one({"_id": 9501}, {"$set": {"op": None}})
    assert (await cli("--remove", "9501")).code == 0
    group = json.loads((await cli("--create", "stack", "--json")).stdout)
    removed = await cli("--remove", f"-{group['envid']}")
    assert removed.code == 0 and len(removed.stdout.split()[1].split(",")) == 2
    for flag in ("--services", "--pools"):
        result = await cli(flag)
        assert result.code == 3 and "not configured" in result.stderr  # no scheduler configuration yet
    assert _rows((await cli("--requests")).stdout) == [["ID", "ENVID", "SERVICE", "MEM", "VCPUS", "STATUS", "POOL"]]


async def test_scheduler_listings_and_global_upload(gateway: ServerThread, tmp_path: Path, store: Store,
                                                    accounts: Accounts) -> None:
    admin = Cli(gateway.url, ADMIN_TOKEN, tmp_path)
    service = Cli(gateway.url, accounts.a, tmp_path)
    (tmp_path / "global.yaml").write_text(
        "pools:\n  zone1: {zone: zone1, vcpus: 16, memory: 32768, class: gold}\n"
        "services:\n  alpha: {class: gold, max_vcpus: 12, max_memory: 24576}\n")
    assert (await service("upload", str(tmp_path / "global.yaml"), "--global")).code == 2  # administrator only
    result = await admin("upload", str(tmp_path / "global.yaml"))
    assert result.code == 2 and "--global" in result.stderr
    result = await admin("--upload", str(tmp_path / "global.yaml"), "--global")
    assert result.code == 0 and "revision 1" in result.stdout and "pools: zone1" in result.stdout
    (tmp_path / "global.rb").write_text("SHAREDPOOLS = {\n  'zone1' => { :zone => 'zone1', ")
    result = await admin("upload", str(tmp_path / "global.rb"), "--global")
    assert result.code == 2 and "line 2" in result.stderr
    (tmp_path / "carina").mkdir()
    result = await admin("upload", str(REPO / "examples" / "global.rb"), "--global")
    assert result.code == 0 and "services: batch, demo" in result.stdout
    assert (await admin("upload", str(tmp_path / "global.yaml"), "--global", "--json")).code == 0

    await plant_running_env(store, 9601, "alpha", slaves=0)
    await store["requests"].insert_many([
        {"_id": 801, "reqid": 801, "service": "alpha", "envid": 9601, "vcpus": 1.5, "memory": 1024, "zone": "zone1",
         "status": "ALLOCATED", "pool": "zone1", "submitted_at": 1714555800.0},
        {"_id": 802, "reqid": 802, "service": "alpha", "envid": 9601, "vcpus": 1, "memory": 512, "zone": "zone1",
         "status": "PEND", "submitted_at": 1714555900.0},
    ])
    assert _rows((await service("--pools")).stdout) == [
        ["NAME", "ZONE", "PRIORITY_CLASS", "MEM_TOT", "MEM_AVAIL", "VCPUS_TOT", "VCPUS_AVAIL"],
        ["zone1", "zone1", "gold", "32768", "31744", "16", "14.5"]]
    assert _rows((await service("-S")).stdout) == [
        ["NAME", "PRIORITY_CLASS", "MEM(ALLOC/MAX)", "VCPUS(ALLOC/MAX)", "CLIENT"],
        ["alpha", "gold", "1024/24576", "1.5/12", "NONE"]]
    assert _rows((await service("--requests")).stdout) == [
        ["ID", "ENVID", "SERVICE", "MEM", "VCPUS", "STATUS", "POOL"],
        ["802", "9601", "alpha", "512", "1", "PEND", "-"],
        ["801", "9601", "alpha", "1024", "1.5", "ALLOCATED", "zone1"]]
    pending = json.loads((await service("requests", "--status", "PEND", "--json")).stdout)
    assert [r["reqid"] for r in pending] == [802]


async def test_policy_command(cli: Cli, store: Store) -> None:
    await plant_running_env(store, 9701, "alpha", slaves=1)
    await store.envs.update_one({"_id": 9701}, {"$set": {"spec.config.elasticity_policy": {"mode": "auto"}}})
    await store["policy_state"].insert_one({
        "_id": 9701, "version": 1, "updated_at": datetime(2024, 5, 1, 9, 2),
        "state": {"scale_counter": 2, "scale_direction": "up", "recreate_counter": 1, "failover_counter": 0,
                  "failback_counter": 0, "cooldown_until": None, "last_action": None}, "recent": []})
    await store["decisions"].insert_many([
        {"envid": 9701, "service": "alpha", "policy": "availability", "action": "recreate", "source": "recreate_expr",
         "reason": "nummissing > 0", "at": datetime(2024, 5, 1, 9, 1)},
        {"envid": 9701, "service": "alpha", "policy": "elasticity", "action": "scaleup", "source": "auto",
         "reason": "avgcpu > 50 held for 2 periods", "recommend_only": True, "at": datetime(2024, 5, 1, 9, 2)}])
    result = await cli("policy", "9701")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "P_STATUS:    active" in lines and "POLICIES:    elasticity" in lines
    assert "COUNTERS:    scale 2 (up), recreate 1, failover 0, failback 0" in lines
    table_at = lines.index(next(line for line in lines if line.startswith("TIME")))
    assert lines[table_at].split() == ["TIME", "POLICY", "ACTION", "SOURCE", "REASON"]
    newest, oldest = lines[table_at + 1].split(), lines[table_at + 2].split()
    assert newest[2:5] == ["elasticity", "scaleup", "(recommended)"] and newest[-1] == "periods"
    assert oldest[2:5] == ["availability", "recreate", "recreate_expr"]
    as_json = json.loads((await cli("policy", "9701", "--json")).stdout)
    assert as_json["state"]["scale_counter"] == 2 and len(as_json["decisions"]) == 2
    assert (await cli("policy", "424242")).code == 3


async def test_recreate_replaces_one_vm(cli: Cli, store: Store, collector: Collector) -> None:
    await collector.subscribe("env.recreate")
    planted = await plant_running_env(store, 9801, "alpha", slaves=1)
    master_vmid = planted["slots"][0]["one_id"]
    result = await cli("recreate", "9801", str(master_vmid))
    assert result.code == 0, result.stderr
    jobid = int(result.stdout.split()[1])
    job = await store.jobs.find_one({"_id": jobid})
    assert job is not None and (job["type"], job["envid"], job["status"]) == ("RECREATE", 9801, "RUNNING")
    env = await store.envs.find_one({"_id": 9801})
    assert env is not None and env["op"]["params"] == {"vmid": master_vmid, "slot": "9801:master:1"}
    message = await collector.wait_for(lambda s, p: p.get("envid") == 9801)
    assert message["vmid"] == master_vmid
    busy = await cli("recreate", "9801", str(master_vmid))
    assert busy.code == 4
    await store.envs.update_one({"_id": 9801}, {"$set": {"op": None}})
    assert (await cli("recreate", "9801", "999999")).code == 3  # not a VM of this environment
