"""Unit tests of the admin's global scheduler configuration (libs/common/globalconfig.py)."""

from __future__ import annotations

import pytest

from libs.common.globalconfig import GlobalConfig, GlobalConfigError, ServiceClass

NATIVE = {
    "pools": {"flame": {"zone": "flame", "vcpus": 100, "memory": 102400, "class": "gold"}},
    "services": {"svc1": {"class": "silver", "max_vcpus": 12, "max_memory": 64000}},
}


def test_classes_are_ordered_like_carina() -> None:
    assert ServiceClass.BRONZE < ServiceClass.SILVER < ServiceClass.GOLD < ServiceClass.PLATINUM
    assert [c.label for c in sorted(ServiceClass)] == ["bronze", "silver", "gold", "platinum"]
    assert ServiceClass.parse(" Gold ") is ServiceClass.GOLD
    assert ServiceClass.parse(3) is ServiceClass.PLATINUM
    with pytest.raises(ValueError, match="unknown service class 'tin'"):
        ServiceClass.parse("tin")
    with pytest.raises(ValueError):
        ServiceClass.parse(True)


def test_native_document_round_trips() -> None:
    config = GlobalConfig.parse(NATIVE)
    pool = config.pools["flame"]
    assert (pool.zone, pool.vcpus, pool.memory, pool.service_class) == ("flame", 100, 102400, ServiceClass.GOLD)
    service = config.services["svc1"]
    assert (service.service_class, service.max_vcpus, service.max_memory) == (ServiceClass.SILVER, 12, 64000)
    assert config.to_native() == {
        "pools": {"flame": {"zone": "flame", "vcpus": 100.0, "memory": 102400, "class": "gold"}},
        "services": {"svc1": {"class": "silver", "max_vcpus": 12.0, "max_memory": 64000}},
    }
    assert GlobalConfig.parse(config.to_native()) == config


def test_yaml_document() -> None:
    text = """
pools:
  p1: {zone: flame, vcpus: 8, memory: 8192, class: platinum}
services:
  s1: {class: bronze, max_vcpus: 2.5, max_memory: 1024}
"""
    config = GlobalConfig.from_yaml(text)
    assert config.pools["p1"].service_class is ServiceClass.PLATINUM
    assert config.services["s1"].max_vcpus == 2.5
    assert GlobalConfig.from_yaml("") == GlobalConfig()
    with pytest.raises(GlobalConfigError, match="not valid YAML"):
        GlobalConfig.from_yaml("pools: [unclosed")


def test_errors_name_every_bad_key_path() -> None:
    bad = {
        "pools": {"p1": {"zone": "flame", "vcpus": "lots", "memory": 1024, "class": "tin", "cpus": 4}},
        "services": {"s1": {"class": "gold", "max_vcpus": 1}},
        "extra": {},
    }
    with pytest.raises(GlobalConfigError) as info:
        GlobalConfig.parse(bad)
    paths = dict(info.value.problems)
    assert set(paths) == {"pools.p1.vcpus", "pools.p1.class", "pools.p1.cpus", "services.s1.max_memory", "extra"}
    assert paths["pools.p1.cpus"] == "unknown key"
    assert paths["services.s1.max_memory"] == "required key is missing"
    assert "tin" in paths["pools.p1.class"]
    assert "pools.p1.vcpus" in str(info.value)


@pytest.mark.parametrize(
    ("pool", "path"),
    [
        ({"zone": "z", "vcpus": 0, "memory": 1, "class": "gold"}, "pools.p.vcpus"),
        ({"zone": "z", "vcpus": 1, "memory": -5, "class": "gold"}, "pools.p.memory"),
        ({"zone": "", "vcpus": 1, "memory": 1, "class": "gold"}, "pools.p.zone"),
        ({"zone": "z", "vcpus": 1, "memory": 1.5, "class": "gold"}, "pools.p.memory"),
    ],
)
def test_pool_values_are_checked(pool: dict[str, object], path: str) -> None:
    with pytest.raises(GlobalConfigError) as info:
        GlobalConfig.parse({"pools": {"p": pool}})
    assert [p for p, _ in info.value.problems] == [path]


def test_carina_spellings_and_string_numbers() -> None:
    carina = {
        "SHAREDPOOLS": {
            "flame": {
                ":zone": "flame",
                "allocateable_cpus": "100",
                "allocateable_mem": " 102400 ",
                ":service_class": "gold",
            }
        },
        "SERVICES": {"svc1": {"priority": "silver", "maxcpus": "12", "maxmemory": "64000"}},
    }
    assert GlobalConfig.from_carina(carina) == GlobalConfig.parse(NATIVE)


def test_carina_errors_use_carina_key_names() -> None:
    carina = {
        "SHAREDPOOLS": {
            "flame": {"zone": "flame", "allocateable_cpus": "many", "allocateable_mem": "1", "priority": "gold"}
        },
        "SERVICES": {"svc1": {"priority": "gold", "maxcpus": "12"}},
    }
    with pytest.raises(GlobalConfigError) as info:
        GlobalConfig.from_carina(carina)
    paths = dict(info.value.problems)
    assert set(paths) == {"SHAREDPOOLS.flame.allocateable_cpus", "SERVICES.svc1.max_memory"}
    assert "maxmemory" in paths["SERVICES.svc1.max_memory"]


def test_carina_unknown_section_and_duplicate_spelling() -> None:
    with pytest.raises(GlobalConfigError) as info:
        GlobalConfig.from_carina({"SHAREDPOOL": {}})
    assert info.value.problems[0][0] == "SHAREDPOOL"
    dup = {"SERVICES": {"s": {"priority": "gold", "service_class": "gold", "maxcpus": 1, "maxmemory": 1}}}
    with pytest.raises(GlobalConfigError) as info:
        GlobalConfig.from_carina(dup)
    assert info.value.problems[0][0] == "SERVICES.s.service_class"
