"""`oneenv` argument handling and output: Carina's flag forms, tables, configuration lookup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from libs.cli.oneenv import EXIT_USAGE, CliError, build_parser, env_rows, load_connection, run, table, translate

COMMANDS = build_parser()[1]


@pytest.mark.parametrize(("argv", "expected"), [
    (["--create", "tomcat"], ["create", "tomcat"]),
    (["-c", "tomcat", "-j"], ["create", "tomcat", "-j"]),
    (["-j", "--envs"], ["envs", "-j"]),
    (["--remove", "-55"], ["remove", "-55"]),
    (["-r", "18"], ["remove", "18"]),
    (["--upload=config.rb"], ["upload", "config.rb"]),
    (["-U", "example.vm"], ["upload", "example.vm"]),
    (["-k", "18"], ["envvms", "18"]),
    (["-u", "18"], ["scaleup", "18"]),
    (["-d", "18"], ["scaledown", "18"]),
    (["-J"], ["jobs"]), (["-v"], ["vms"]), (["-o"], ["configs"]),
    (["-S"], ["services"]), (["-P"], ["pools"]), (["-R"], ["requests"]),
    (["--service", "envs", "envs"], ["--service", "envs", "envs"]),
    (["--upload", "config.rb"], ["upload", "config.rb"]),
    (["--upload", "global.rb", "--global"], ["upload", "global.rb", "--global"]),
    (["--envvms", "18"], ["envvms", "18"]), (["--scaleup", "18"], ["scaleup", "18"]),
    (["--scaledown", "18"], ["scaledown", "18"]), (["--remove", "18"], ["remove", "18"]),
    (["--jobs"], ["jobs"]), (["--vms"], ["vms"]), (["--configs"], ["configs"]), (["--services"], ["services"]),
    (["--pools", "--json"], ["pools", "--json"]), (["--requests"], ["requests"]),
    (["create", "tomcat", "--watch"], ["create", "tomcat", "--watch"]),
])
def test_carina_flags_become_subcommands(argv: list[str], expected: list[str]) -> None:
    assert translate(argv, COMMANDS) == expected


def test_flag_without_value() -> None:
    with pytest.raises(CliError) as info:
        translate(["--create"], COMMANDS)
    assert info.value.code == EXIT_USAGE


def test_parsed_group_removal_keeps_the_minus() -> None:
    parser, _ = build_parser()
    args = parser.parse_args(translate(["--remove", "-55", "--json"], COMMANDS))
    assert (args.command, args.envid, args.json) == ("remove", -55, True)


def test_envs_table_like_carina() -> None:
    text = env_rows([{"envid": 18, "name": "tomcat", "zone": "zone1", "numvms": 3, "policy_status": "ACTIVE",
                      "status": "SLAVE_1_SCALEUP_FAIL:ssh_to_master_failed", "app_url": None}])
    header, row = text.splitlines()
    assert header.split() == ["ID", "NAME", "ZONE", "VMS", "P_STATUS", "D_STATUS", "APP_URL"]
    assert row.split() == ["18", "tomcat", "zone1", "3", "active", "slave_1_scaleup_fail:", "-"]


def test_table_aligns_columns() -> None:
    assert table(["A", "LONGER"], [["xxxx", 1], [None, ""]]).splitlines() == ["A     LONGER", "xxxx  1", "-     -"]


def test_connection_from_environment_then_file(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert load_connection(env=env) == ("http://127.0.0.1:8080", "")
    (tmp_path / "carina").mkdir()
    (tmp_path / "carina" / "cli.json").write_text(json.dumps({"url": "http://gw:9000/", "token": "t-file"}))
    assert load_connection(env=env) == ("http://gw:9000", "t-file")
    assert load_connection(env={**env, "CARINA_TOKEN": "t-env"}) == ("http://gw:9000", "t-env")
    assert load_connection("http://cli:1", env={**env, "CARINA_URL": "http://env:2"})[0] == "http://cli:1"
    (tmp_path / "carina" / "cli.json").write_text("{broken")
    with pytest.raises(CliError) as info:
        load_connection(env=env)
    assert info.value.code == EXIT_USAGE


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([]) == EXIT_USAGE
    assert run(["scaleup", "not-a-number"]) == EXIT_USAGE
    assert run(["--help"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_scheduler_tables_like_carina() -> None:
    from libs.cli.oneenv import pools_rows, requests_rows, services_rows

    services = services_rows([{"name": "demo", "class": "gold", "allocated_memory": 1024, "max_memory": 24576,
                               "allocated_vcpus": 1.5, "max_vcpus": 12.0, "zones": ["zone1", "zone2"]}])
    assert [line.split() for line in services.splitlines()] == [
        ["NAME", "PRIORITY_CLASS", "MEM(ALLOC/MAX)", "VCPUS(ALLOC/MAX)", "CLIENT"],
        ["demo", "gold", "1024/24576", "1.5/12", "zone1,zone2"]]
    pools = pools_rows([{"name": "p", "zone": "z", "class": "bronze", "memory": 8192, "available_memory": 0,
                         "vcpus": 4.0, "available_vcpus": 0.0}])
    assert pools.splitlines()[1].split() == ["p", "z", "bronze", "8192", "0", "4", "0"]
    requests = requests_rows([{"reqid": 7, "envid": 18, "service": "demo", "memory": 512, "vcpus": 1.0,
                               "status": "PEND", "pool": None}])
    assert requests.splitlines()[1].split() == ["7", "18", "demo", "512", "1", "PEND", "-"]


def test_global_upload_needs_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "global.yaml").write_text("pools: {}\n")
    assert run(["--url", "http://127.0.0.1:9", "upload", str(tmp_path / "global.yaml")]) == EXIT_USAGE
    assert "--global" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert run(["--url", "http://127.0.0.1:9", "upload", str(tmp_path / "notes.txt"), "--global"]) == EXIT_USAGE
