# ruff: noqa: E501  (the seed's fragments are kept verbatim, long lines included)
"""Golden test: the config.rb fragments of seed 001 ("Carina: getting started"), as a Carina user copied them.

The seed's web page lost the `NAME = {` lines and the closing braces of every fragment; the inputs below restore
only those (marked `# completed`). Everything else is verbatim, including the seed's own mistakes: the
availability example misses two commas, and the analytics group lists 'apache' while its dependencies name
'jenkins'.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.common.carina_import import convert_config_rb
from libs.common.policy_model import AvailabilityPolicy, ElasticityPolicy
from libs.common.rubyhash import RubyHashError, parse_constants

SEED = Path("/work/shared/seeds/001_ca50d5f270c2a9d1.txt")

MINIMAL = """\
ENDPOINT = {  # completed
        'flm01' => {
                :proxy   => 'http://oneserver:2633/RPC2',
                :oneauth => 'flm01-oneenv2:XXXXXX'
}}  # completed
TEMPLATE = {  # completed
         'example' => {
                :file       => '/home/oneenv2/vm/example.vm',
                :cpu        => 1,
                :memory     => 1024,
                :network_id => { 'flm01' => 21, 'hlx01' => 7},
                :image_id   => { 'flm01' => 63, 'hlx01' => 20 }
}}  # completed
ENVIRONMENT = {  # completed
         'tomcat' => {
                :type => "compute",
                :endpoint => "flm01",
                :description => "Load-balanced Tomcat cluster",
                :placement_policy  => "pack",
                :master_template   => "example",
                :master_context_script =>  "",
                :master_setup_time => 30,
                :master_context_var => "BALANCE_PORT=8080",
                :slave_template    => "example",
                :slave_context_script => "",
                :slave_context_var => "\\"APP_PACKAGE=gwt-petstore.war, SLAVE_ID=%SLAVE_INDEX%\\"",
                :num_slaves        => 2,
                :slavedata         => "8080",
                :adminuser         => "local",
                :app_url           => "http://%MASTER%:8080/gwt-petstore"
}}  # completed
"""

TIME_BASED = """\
P = {  # completed
  :elasticity_policy   => {
                           :mode => 'time-based',
                           :windows =>  {
                              'morn' => {:spec => 'Mon-Fri 0900-1300', :min => 6},
                              'aft' => {:spec => 'Mon-Fri 1300-1700', :min => 4},
                              'night' => {:spec => 'Mon-Fri 0000-0859 1700-2359', :min => 2},
}}}  # completed
"""

LOAD_BASED = """\
P = {  # completed
       :elasticity_policy   => {
                                      :mode => 'auto',
                                      :min => 2,
                                      :max => 4,
                                      :priority => 10,
                                      :period => 3,
                                      :scaleup_expr   => 'avgcpu > 50',
                                      :scaledown_expr => 'avgcpu < 20'
}}  # completed
"""

CASSANDRA = """\
ENVIRONMENT = {  # completed
  'cassandra-flm01' => {
                :master_template   => "cassandra",
                :master_context_script =>  "",
                :master_context_var => "\\"MOUNTLIST=\\\\/vol\\\\/data{1-6},\\"",
                :slave_template    => "cassandra",
                :slave_context_script => "",
                :slave_context_var       => "\\"SLAVE_ID=%SLAVE_INDEX%, NUM_SLAVES=%NUM_SLAVES%, SEEDS=%MASTER%, MOUNTLIST=\\\\/vol\\\\/data{1-6},\\"",
}}  # completed
"""

ANALYTICS = """\
ENVIRONMENT = {  # completed
    'analytics' => {
                :type => "group",
                :description => "BI Analytics environment with Hbase data store and Tomcat cluster for processing and a Jenkins build environment",
                :members => [ 'hbase' , 'tomcat', 'apache' ],
                :dependencies => { 'tomcat' => ['hbase', 'jenkins'],
                                   'jenkins' => ['hbase'] }
}}  # completed
"""

HA_PAIR = """\
ENVIRONMENT = {  # completed
           'tomcat_ha_active' => {
                       :availability_policy => {
                             :period => 3,
                             :recreate_expr => "nummissing > 0 || numunknown > 0 || numfailed > 0"
                             :failover_role => "active"
                             :failover_group => "tomcat-ha",
                             :failover_expr => "(numunknown + nummissing + numfail)/numvms > 0.50",
                             :failback_expr => "numunknown == 0",
}},  # completed

           'tomcat_ha_passive' => {
                        :availability_policy => {
                               :period => 3,
                               :failover_role => "passive"
                               :failover_group => "tomcat-ha",
}, # completed
                         :elasticity_policy   => {
                             :mode => 'time-based',
                             :windows =>  {
                                       'all'  =>   {:spec => 'Mon-Fri 0000-2359', :min => 4},
}}, # completed
                          :num_slaves   => 0,
}}  # completed
"""

FRAGMENTS = {
    "minimal": MINIMAL,
    "time-based": TIME_BASED,
    "load-based": LOAD_BASED,
    "cassandra": CASSANDRA,
    "analytics": ANALYTICS,
    "ha": HA_PAIR,
}


@pytest.mark.skipif(not SEED.exists(), reason="seed documents not available")
@pytest.mark.parametrize("name", sorted(FRAGMENTS))
def test_fragments_are_verbatim_from_the_seed(name: str) -> None:
    # every line that is not a completion must appear in the seed, in this order
    seed = SEED.read_text()
    position = 0
    for line in FRAGMENTS[name].splitlines():
        if "# completed" in line or not line.strip():
            continue
        found = seed.find(line, position)
        assert found >= 0, f"not in seed 001 (in order): {line!r}"
        position = found + len(line)


def test_minimal_example_imports_as_documented() -> None:
    result = convert_config_rb(MINIMAL)
    assert result.warnings == ()
    native = result.native
    assert native["endpoints"] == {
        "flm01": {"url": "http://oneserver:2633/RPC2", "credentials": "flm01-oneenv2:XXXXXX", "zone": "flm01"}
    }
    assert native["templates"]["example"] == {
        "file": "example.vm",
        "cpu": 1,
        "memory": 1024,
        "network_id": {"flm01": 21, "hlx01": 7},
        "image_id": {"flm01": 63, "hlx01": 20},
    }
    tomcat = native["environments"]["tomcat"]
    assert tomcat["slave_context_var"] == '"APP_PACKAGE=gwt-petstore.war, SLAVE_ID=%SLAVE_INDEX%"'
    assert tomcat["master_context_script"] == ""
    assert (tomcat["num_slaves"], tomcat["master_setup_time"], tomcat["slavedata"]) == (2, 30, "8080")
    assert tomcat["app_url"] == "http://%MASTER%:8080/gwt-petstore"


def test_elasticity_fragments_are_valid_policies() -> None:
    time_based = parse_constants(TIME_BASED)["P"]
    assert isinstance(time_based, dict)
    policy = ElasticityPolicy.model_validate(time_based["elasticity_policy"])
    assert [(name, window.min) for name, window in policy.windows.items()] == [("morn", 6), ("aft", 4), ("night", 2)]

    load_based = parse_constants(LOAD_BASED)["P"]
    assert isinstance(load_based, dict)
    auto = ElasticityPolicy.model_validate(load_based["elasticity_policy"])
    assert (auto.mode, auto.min, auto.max, auto.priority, auto.period) == ("auto", 2, 4, 10, 3)
    assert (auto.scaleup_expr, auto.scaledown_expr) == ("avgcpu > 50", "avgcpu < 20")


def test_cassandra_mountlist_keeps_its_escapes() -> None:
    env = parse_constants(CASSANDRA)["ENVIRONMENT"]
    assert isinstance(env, dict)
    cassandra = env["cassandra-flm01"]
    assert isinstance(cassandra, dict)
    # Ruby reads "\\/" as a backslash and a slash; the backslashes are for Carina's shell and sed, kept as they are
    assert cassandra["master_context_var"] == '"MOUNTLIST=\\/vol\\/data{1-6},"'
    assert cassandra["slave_context_var"] == (
        '"SLAVE_ID=%SLAVE_INDEX%, NUM_SLAVES=%NUM_SLAVES%, SEEDS=%MASTER%, MOUNTLIST=\\/vol\\/data{1-6},"'
    )


def test_analytics_group_as_written_is_flagged_as_inconsistent() -> None:
    result = convert_config_rb(ANALYTICS)
    group = result.native["environments"]["analytics"]
    assert group["members"] == ["hbase", "tomcat", "apache"]
    assert group["dependencies"] == {"tomcat": ["hbase", "jenkins"], "jenkins": ["hbase"]}
    warnings = "\n".join(result.warnings)
    assert "'jenkins' has dependencies but is not a member of the group" in warnings
    assert "depends on 'jenkins', which is not a member of the group" in warnings


def test_ha_pair_as_written_stops_at_the_first_missing_comma() -> None:
    with pytest.raises(RubyHashError) as info:
        parse_constants(HA_PAIR)
    lines = HA_PAIR.splitlines()
    failover_role_line = next(i for i, line in enumerate(lines, 1) if ':failover_role => "active"' in line)
    assert info.value.line == failover_role_line
    assert info.value.column == lines[failover_role_line - 1].index(":failover_role") + 1
    assert "expected ',' or '}' but found ':failover_role'" in str(info.value)
    assert "missing ',' at the end of the previous line?" in str(info.value)


def test_ha_pair_with_the_two_commas_restored_is_a_valid_pair() -> None:
    fixed = (
        HA_PAIR.replace('numfailed > 0"\n', 'numfailed > 0",\n')
        .replace('"active"\n', '"active",\n')
        .replace('"passive"\n', '"passive",\n')
    )
    envs = parse_constants(fixed)["ENVIRONMENT"]
    assert isinstance(envs, dict)
    active, passive = envs["tomcat_ha_active"], envs["tomcat_ha_passive"]
    assert isinstance(active, dict) and isinstance(passive, dict)
    active_policy = AvailabilityPolicy.model_validate(active["availability_policy"])
    passive_policy = AvailabilityPolicy.model_validate(passive["availability_policy"])
    assert (active_policy.failover_role, passive_policy.failover_role) == ("active", "passive")
    assert active_policy.failover_group == passive_policy.failover_group == "tomcat-ha"
    assert passive["num_slaves"] == 0
    assert ElasticityPolicy.model_validate(passive["elasticity_policy"]).mode == "time-based"
