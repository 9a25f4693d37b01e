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
