"""config.rb / global.rb -> native documents: the shipped examples, key mapping, and errors that name the key path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.common.carina_import import (
    CarinaImportError,
    convert_config_rb,
    convert_global_rb,
    import_config_rb,
    import_global_rb,
)
from libs.common.globalconfig import GlobalConfig
from libs.common.rubyhash import RubyHashError, parse_constants

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

ENDPOINTS = """
ENDPOINT = {
  'zone1' => { :proxy => 'http://127.0.0.1:2633/RPC2', :oneauth => 'oneadmin:onesim' },
}
TEMPLATE = {
  'example' => { :file => '/home/oneenv2/vm/example.vm', :cpu => 1, :memory => 1024,
                 :network_id => { 'zone1' => 21 }, :image_id => { 'zone1' => 63 } },
}
"""


def env_config(body: str, name: str = "tomcat") -> str:
    """A config.rb with one environment whose settings are `body` (plus the required ones unless given)."""
    required = ""
    if ":endpoint" not in body:
        required += ":endpoint => 'zone1', "
    if ":master_template" not in body:
        required += ":master_template => 'example', "
    return ENDPOINTS + f"ENVIRONMENT = {{\n  '{name}' => {{ {required}\n{body}\n  }},\n}}\n"


# --- the shipped examples --------------------------------------------------------------------------------------------


def test_example_config_rb_imports_to_exactly_carina_yaml() -> None:
    result = convert_config_rb((EXAMPLES / "config.rb").read_text())
    assert result.warnings == ()
    assert result.native == yaml.safe_load((EXAMPLES / "carina.yaml").read_text())


def test_example_global_rb_imports_to_exactly_global_yaml() -> None:
    result = convert_global_rb((EXAMPLES / "global.rb").read_text())
    assert result.warnings == ()
    assert result.native == yaml.safe_load((EXAMPLES / "global.yaml").read_text())


def test_example_global_documents_are_accepted_by_the_scheduler_model() -> None:
    native = GlobalConfig.parse(yaml.safe_load((EXAMPLES / "global.yaml").read_text()))
    imported = GlobalConfig.parse(import_global_rb((EXAMPLES / "global.rb").read_text()))
    carina_shaped = GlobalConfig.from_carina(parse_constants((EXAMPLES / "global.rb").read_text()))
    assert imported == native == carina_shaped
    assert native.pools["zone1"].service_class.label == "gold"
    assert native.pools["zone2"].service_class.label == "gold"


def test_example_environments_are_the_ones_the_docs_promise() -> None:
    envs = yaml.safe_load((EXAMPLES / "carina.yaml").read_text())["environments"]
    assert envs["tomcat"]["num_slaves"] == 2
    assert envs["tomcat"]["app_url"] == "http://%MASTER%:8080/gwt-petstore"
    assert "MOUNTLIST=" in envs["cassandra"]["slave_context_var"]
    assert "SEEDS=%MASTER%" in envs["cassandra"]["slave_context_var"]
    assert envs["analytics"]["members"] == ["hbase", "jenkins", "tomcat"]
    assert envs["analytics"]["dependencies"] == {"tomcat": ["hbase", "jenkins"], "jenkins": ["hbase"]}
    assert envs["tomcat_ha_passive"]["endpoint"] == "zone2"
    assert envs["tomcat_ha_passive"]["num_slaves"] == 0
    assert envs["tomcat_ha_active"]["availability_policy"]["failover_group"] == "tomcat-ha"
    assert envs["tomcat_ha_passive"]["availability_policy"]["failover_group"] == "tomcat-ha"
    auto = envs["tomcat_auto"]["elasticity_policy"]
    assert (auto["mode"], auto["min"], auto["max"], auto["period"]) == ("auto", 2, 4, 3)


# --- mapping ---------------------------------------------------------------------------------------------------------


def test_endpoint_mapping_and_zone_default() -> None:
    text = """
    ENDPOINT = {
      'flm01' => { :proxy => 'http://oneserver:2633/RPC2', :oneauth => 'svc:secret' },
      'hlx02' => { proxy: 'https://other:2633/RPC2', oneauth: 'svc:secret', zone: 'helix' },
    }
    """
    native = import_config_rb(text)
    assert native["endpoints"] == {
        "flm01": {"url": "http://oneserver:2633/RPC2", "credentials": "svc:secret", "zone": "flm01"},
        "hlx02": {"url": "https://other:2633/RPC2", "credentials": "svc:secret", "zone": "helix"},
    }


@pytest.mark.parametrize(
    ("written", "expected"),
    [("/home/oneenv2/vm/example.vm", "example.vm"), ("~/vm/x.vm", "x.vm"), ("plain.vm", "plain.vm")],
)
def test_template_file_keeps_only_its_base_name(written: str, expected: str) -> None:
    native = import_config_rb(f"TEMPLATE = {{ 't' => {{ :file => '{written}', :cpu => 0.5, :memory => '512' }} }}")
    assert native["templates"]["t"] == {"file": expected, "cpu": 0.5, "memory": 512}


def test_template_by_id() -> None:
    native = import_config_rb("TEMPLATE = { 't' => { :template_id => 12, :network_id => { 'a' => '3' } } }")
    assert native["templates"]["t"] == {"template_id": 12, "network_id": {"a": 3}}


def test_environment_values_are_kept_as_written() -> None:
    body = r"""
      :slave_context_var => "\"APP_PACKAGE=gwt-petstore.war, SLAVE_ID=%SLAVE_INDEX%\"",
      :master_context_var => "\"MOUNTLIST=\\/vol\\/data{1-6},\"",
      :num_slaves => '3',
      :slavedata => 8080,
      :master_service_port => 8080,
      :elasticity_policy => { :mode => 'time-based',
                              :windows => { 'all' => { :spec => 'Mon-Fri 0000-2359', :min => 4 } } },
    """
    env = import_config_rb(env_config(body))["environments"]["tomcat"]
    assert env["slave_context_var"] == '"APP_PACKAGE=gwt-petstore.war, SLAVE_ID=%SLAVE_INDEX%"'
    assert env["master_context_var"] == '"MOUNTLIST=\\/vol\\/data{1-6},"'
    assert env["num_slaves"] == 3
    assert env["slavedata"] == "8080"
    assert env["master_service_port"] == 8080
    assert env["elasticity_policy"] == {
        "mode": "time-based",
        "windows": {"all": {"spec": "Mon-Fri 0000-2359", "min": 4}},
    }


def test_global_mapping_with_strings_and_case() -> None:
    text = """
    SHAREDPOOLS = { 'flm01' => { :zone => 'flame', :allocateable_cpus => '100', :allocateable_mem => '102400',
                                 :service_class => 'Gold' } }
    SERVICES = { 'oneenv1' => { :priority => 'silver', :maxcpus => '12', :maxmemory => 64000 } }
    """
    assert import_global_rb(text) == {
        "pools": {"flm01": {"zone": "flame", "vcpus": 100, "memory": 102400, "class": "gold"}},
        "services": {"oneenv1": {"class": "silver", "max_vcpus": 12, "max_memory": 64000}},
    }


# --- errors ----------------------------------------------------------------------------------------------------------


def test_wrong_type_names_the_key_path_and_line() -> None:
    with pytest.raises(CarinaImportError) as info:
        import_config_rb(env_config("      :num_slaves => 'two',"))
    error = info.value
    assert str(error).startswith("ENVIRONMENT['tomcat'][:num_slaves]: expected an integer, got 'two'")
    assert error.line == ENDPOINTS.count("\n") + 3
    assert error.path == "ENVIRONMENT['tomcat'][:num_slaves]"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ENDPOINT = { 'a' => { :oneauth => 'u:p' } }", "ENDPOINT['a'][:proxy]: required key is missing"),
        ("ENDPOINT = { 'a' => { :proxy => 'oneserver:2633', :oneauth => 'u:p' } }", "expected the XML-RPC URL"),
        ("ENDPOINT = { 'a' => 5 }", "ENDPOINT['a']: expected a hash of endpoint settings, got 5"),
        ("ENDPOINT = [1]", "ENDPOINT: expected a hash of endpoints, got an array"),
        ("ENDPOINT = { 1 => {} }", "ENDPOINT[1]: expected a name"),
        ("TEMPLATE = { 't' => { :cpu => 1 } }", "TEMPLATE['t']: give exactly one of :file"),
        ("TEMPLATE = { 't' => { :file => 'a.vm', :template_id => 3 } }", "give exactly one of :file"),
        ("TEMPLATE = { 't' => { :file => 'a.vm', :cpu => 0 } }", "TEMPLATE['t'][:cpu]: expected a positive number"),
        ("TEMPLATE = { 't' => { :file => 'a.vm', :memory => true } }", "expected an integer, got true"),
        ("TEMPLATE = { 't' => { :file => 'a.vm', :image_id => { 'z' => -1 } } }", "TEMPLATE['t'][:image_id]['z']"),
        (env_config(":placement_policy => 'random',"), "expected one of pack, stripe, load, got 'random'"),
        (env_config(":description => 42,"), "ENVIRONMENT['tomcat'][:description]: expected a string, got 42"),
        (env_config(":endpoint => 'zone1',", name="x").replace(":master_template => 'example', ", ""), "required"),
        (env_config(":elasticity_policy => { :mode => 'bogus' },"), "ENVIRONMENT['tomcat'][:elasticity_policy]: "),
        (
            env_config(
                ":elasticity_policy => { :mode => 'auto', :min => 1, :max => 3, :scaleup_expr => 'avgcpu > 1' },"
            ),
            "requires both scaleup_expr and scaledown_expr",
        ),
        (env_config(":availability_policy => { :recreate_expr => 'nummissing >' },"), "recreate_expr"),
        (env_config(":availability_policy => { :failover_expr => 'numvms > 1' },"), "failover_expr requires"),
        ("ENVIRONMENT = { 'g' => { :type => 'group', :members => [] } }", "a group needs at least one member"),
        ("ENVIRONMENT = { 'g' => { :type => 'group', :members => ['a', 'a'] } }", "'a' is listed twice"),
        ("ENVIRONMENT = { 'g' => { :type => 'group' } }", "ENVIRONMENT['g'][:members]: required key is missing"),
        (
            "SHAREDPOOLS = { 'p' => { :zone => 'z', :allocateable_cpus => '1', :allocateable_mem => '1' } }",
            "SHAREDPOOLS['p'][:service_class]: required key is missing",
        ),
        (
            "SERVICES = { 's' => { :priority => 'diamond', :maxcpus => '1', :maxmemory => '1' } }",
            "SERVICES['s'][:priority]: expected one of bronze, silver, gold, platinum, got 'diamond'",
        ),
        (
            "SERVICES = { 's' => { :priority => 'gold', :maxcpus => 'many', :maxmemory => '1' } }",
            "SERVICES['s'][:maxcpus]: expected a number, got 'many'",
        ),
        (
            "SHAREDPOOLS = { 'p' => { :zone => 'z', :allocateable_cpus => '1', :allocatable_cpus => '2' } }",
            "gives vcpus a second time",
        ),
    ],
)
def test_bad_values_are_refused_with_the_key_path(text: str, message: str) -> None:
    convert = convert_global_rb if ("SHAREDPOOLS" in text or "SERVICES" in text) else convert_config_rb
    with pytest.raises(CarinaImportError) as info:
        convert(text)
    assert message in str(info.value)


def test_credentials_never_appear_in_errors() -> None:
    for auth in ("'topsecretpassword'", "12345678"):
        with pytest.raises(CarinaImportError) as info:
            import_config_rb(f"ENDPOINT = {{ 'a' => {{ :proxy => 'http://h:2633/RPC2', :oneauth => {auth} }} }}")
        assert "ENDPOINT['a'][:oneauth]" in str(info.value)
        assert auth.strip("'") not in str(info.value)


def test_syntax_errors_come_from_the_parser() -> None:
    with pytest.raises(RubyHashError, match="line 2, column 3"):
        import_config_rb("ENDPOINT = { 'a' => {}\n  'b' => {} }")


def test_wrong_file_is_recognised() -> None:
    with pytest.raises(CarinaImportError, match="looks like global.rb"):
        convert_config_rb((EXAMPLES / "global.rb").read_text())
    with pytest.raises(CarinaImportError, match="looks like config.rb"):
        convert_global_rb((EXAMPLES / "config.rb").read_text())


# --- warnings --------------------------------------------------------------------------------------------------------


def test_unknown_constants_and_keys_are_reported() -> None:
    text = env_config(":num_slave => 2,") + "\nEXTRA = { 'x' => 1 }\n"
    result = convert_config_rb(text)
    assert any(w.startswith("EXTRA: unknown constant, ignored") for w in result.warnings)
    assert any("ENVIRONMENT['tomcat'][:num_slave]" in w and "did you mean :num_slaves?" in w for w in result.warnings)
    assert result.native["environments"]["tomcat"]["num_slave"] == 2  # kept: Carina passed every key to the workflow
    assert "EXTRA" not in result.native


def test_import_logs_warnings_and_strict_mode_refuses_them(caplog: pytest.LogCaptureFixture) -> None:
    text = ENDPOINTS + "EXTRA = 1\n"
    with caplog.at_level(logging.WARNING, logger="libs.common.carina_import"):
        import_config_rb(text)
    assert any("EXTRA: unknown constant" in record.getMessage() for record in caplog.records)
    with pytest.raises(CarinaImportError, match="strict"):
        import_config_rb(text, strict=True)


def test_missing_sections_are_empty_with_a_warning() -> None:
    result = convert_config_rb(ENDPOINTS)
    assert result.native["environments"] == {}
    assert "ENVIRONMENT is not defined; there are no environments" in result.warnings


def test_dangling_references_are_warnings() -> None:
    body = ":endpoint => 'nowhere', :slave_template => 'missing', :num_slaves => 1,"
    warnings = convert_config_rb(env_config(body)).warnings
    assert any("endpoint 'nowhere' is not defined in ENDPOINT" in w for w in warnings)
    assert any("template 'missing' is not defined in TEMPLATE" in w for w in warnings)
    assert any("template 'example' has no :network_id for endpoint 'nowhere'" in w for w in warnings)


def test_group_consistency_warnings() -> None:
    text = """
    ENVIRONMENT = {
      'analytics' => { :type => 'group', :members => ['tomcat', 'hbase', 'apache'],
                       :dependencies => { 'tomcat' => ['hbase', 'jenkins'], 'jenkins' => ['hbase'],
                                          'apache' => ['web-db'] } },
      'hbase' => { :endpoint => 'z', :master_template => 't' },
      'tomcat' => { :endpoint => 'z', :master_template => 't' },
    }
    """
    result = convert_config_rb(text)
    warnings = "\n".join(result.warnings)
    assert "'apache' is not defined in ENVIRONMENT" in warnings
    assert "depends on 'hbase', which is created after it" in warnings
    assert "depends on 'jenkins', which is not a member of the group" in warnings
    assert "'jenkins' has dependencies but is not a member of the group" in warnings
    assert "'web-db' has characters other than letters, digits and '_'" in warnings
    group: dict[str, Any] = result.native["environments"]["analytics"]
    assert group["members"] == ["tomcat", "hbase", "apache"]
    assert group["type"] == "group"


def test_duplicate_keys_surface_as_warnings() -> None:
    result = convert_config_rb(ENDPOINTS.replace(":cpu => 1,", ":cpu => 1, :cpu => 2,"))
    assert result.native["templates"]["example"]["cpu"] == 2
    assert any("duplicate key 'cpu'" in w for w in result.warnings)
