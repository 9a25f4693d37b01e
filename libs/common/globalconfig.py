"""The admin's global scheduler configuration: capacity pools, services with their class and quota.

An administrator uploads this document (YAML, see docs/conventions.md) through the gateway; the scheduler
(`services.scheduler`) loads it and hands it to the pure allocator (`services.scheduler.allocator`), which grants
`pool.request`s against the pools within each service's quota. `GlobalConfig.from_carina` accepts the dicts an
importer makes from Carina's `global.rb` (`SHAREDPOOLS` / `SERVICES` with Carina's key spellings and numbers
written as strings), so an existing Carina installation can be carried over unchanged.

Validation errors always name the key path (`pools.gold1.vcpus: ...`), in the spelling the user wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError

from libs.common.errors import ValidationFailed


class ServiceClass(IntEnum):
    """Service classes in Carina's order (`priclass2Index`): a higher value outranks a lower one."""

    BRONZE = 0
    SILVER = 1
    GOLD = 2
    PLATINUM = 3

    @property
    def label(self) -> str:
        """The lower-case name used in configuration files (`gold`)."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: object) -> ServiceClass:
        """Turn a configuration value into a class.

        Args:
            value: a class name in any case (`"Gold"`), a `ServiceClass`, or its index (0..3).

        Returns:
            The matching class.

        Raises:
            ValueError: the value names no class.
        """
        if isinstance(value, ServiceClass):
            return value
        if isinstance(value, str):
            key = value.strip().upper()
            if key in cls.__members__:
                return cls[key]
        elif isinstance(value, int) and not isinstance(value, bool) and value in {c.value for c in cls}:
            return cls(value)
        names = ", ".join(c.label for c in cls)
        raise ValueError(f"unknown service class {value!r} (expected one of: {names})")


def _parse_class(value: object) -> ServiceClass:
    return ServiceClass.parse(value)


ClassField = Annotated[ServiceClass, BeforeValidator(_parse_class), PlainSerializer(lambda c: c.label, return_type=str)]
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]


class PoolConfig(BaseModel):
    """Capacity in one zone that serves services of `class` and above."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    zone: Name = Field(description="zone (OpenNebula endpoint) the capacity lives in")
    vcpus: float = Field(gt=0, description="vCPUs the scheduler may grant from this pool")
    memory: int = Field(gt=0, description="memory the scheduler may grant from this pool, MiB")
    service_class: ClassField = Field(alias="class", description="lowest service class allowed to use the pool")


class ServiceConfig(BaseModel):
    """A tenant's class and quota (the most it may hold across all pools)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    service_class: ClassField = Field(alias="class", description="the service's class")
    max_vcpus: float = Field(ge=0, description="quota of vCPUs across all pools")
    max_memory: int = Field(ge=0, description="quota of memory across all pools, MiB")


#: The `configs` document holding the global configuration: the gateway writes it (admin upload); the scheduler,
#: envmgr and the policy service read it.
GLOBAL_CONFIG_ID = "global:config"


class GlobalConfigError(ValidationFailed):
    """The global configuration was refused; `problems` holds `(key path, message)` pairs."""


class GlobalConfig(BaseModel):
    """The whole admin document: `pools` and `services`, each keyed by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pools: dict[Name, PoolConfig] = Field(default_factory=dict)
    services: dict[Name, ServiceConfig] = Field(default_factory=dict)

    @classmethod
    def parse(cls, data: object) -> GlobalConfig:
        """Validate a native document (already parsed from YAML/JSON).

        Args:
            data: a mapping with `pools` and `services`.

        Returns:
            The validated configuration.

        Raises:
            GlobalConfigError: listing every problem with its key path.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _config_error(exc, rename=None) from None

    @classmethod
    def from_yaml(cls, text: str) -> GlobalConfig:
        """Validate a native document given as YAML text.

        Raises:
            GlobalConfigError: the text is not YAML, or the document is invalid.
        """
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise GlobalConfigError(f"global config is not valid YAML: {exc}", [("", str(exc))]) from None
        return cls.parse({} if data is None else data)

    @classmethod
    def from_carina(cls, data: Mapping[str, Any]) -> GlobalConfig:
        """Validate a configuration in Carina's `global.rb` shape.

        `SHAREDPOOLS` entries use `zone`, `allocateable_cpus`, `allocateable_mem`, `service_class`; `SERVICES`
        entries use `priority`, `maxcpus`, `maxmemory`. Numbers may be strings (`'100'`), symbol keys may keep
        their leading colon (`':zone'`), and native spellings are accepted too. Top-level keys are matched without
        regard to case (`SHAREDPOOLS`, `sharedpools`, `pools`).

        Args:
            data: the importer's dict.

        Returns:
            The validated configuration.

        Raises:
            GlobalConfigError: with key paths in the spelling of `data` (`SHAREDPOOLS.gold1.allocateable_cpus`).
        """
        if not isinstance(data, Mapping):
            raise GlobalConfigError("global config must be a mapping", [("", "expected a mapping")])
        native: dict[str, Any] = {}
        # (native path) -> spelling used in `data`, so errors point at what the user wrote
        rename: dict[tuple[str, ...], str] = {}
        problems: list[tuple[str, str]] = []
        for raw_top, section in data.items():
            top = _strip_symbol(str(raw_top)).lower()
            target = _CARINA_TOP.get(top)
            if target is None:
                problems.append((str(raw_top), "unknown section (expected SHAREDPOOLS and SERVICES)"))
                continue
            if target in native:
                problems.append((str(raw_top), f"section given twice (as {rename[(target,)]!r} too)"))
                continue
            rename[(target,)] = str(raw_top)
            if not isinstance(section, Mapping):
                native[target] = section  # let the model report the type error
                continue
            key_map = _CARINA_POOL_KEYS if target == "pools" else _CARINA_SERVICE_KEYS
            entries: dict[str, Any] = {}
            for name, entry in section.items():
                if not isinstance(entry, Mapping):
                    entries[str(name)] = entry
                    continue
                translated: dict[str, Any] = {}
                for raw_key, value in entry.items():
                    key = _strip_symbol(str(raw_key))
                    new_key = key_map.get(key, key)
                    if new_key in translated:
                        problems.append((f"{raw_top}.{name}.{raw_key}", f"duplicates another spelling of {new_key!r}"))
                        continue
                    translated[new_key] = value.strip() if isinstance(value, str) else value
                    rename[(target, str(name), new_key)] = str(raw_key)
                entries[str(name)] = translated
            native[target] = entries
        if problems:
            raise GlobalConfigError(_summary(problems), problems)
        try:
            return cls.model_validate(native)
        except ValidationError as exc:
            raise _config_error(exc, rename=rename) from None

    def to_native(self) -> dict[str, Any]:
        """The document in the native YAML shape (class names as strings)."""
        return self.model_dump(mode="json", by_alias=True)


_CARINA_TOP = {"sharedpools": "pools", "pools": "pools", "services": "services"}
_CARINA_POOL_KEYS = {
    "allocateable_cpus": "vcpus",
    "allocatable_cpus": "vcpus",
    "allocateable_mem": "memory",
    "allocatable_mem": "memory",
    "service_class": "class",
    "priority": "class",
}
_CARINA_SERVICE_KEYS = {
    "priority": "class",
    "service_class": "class",
    "maxcpus": "max_vcpus",
    "maxmemory": "max_memory",
}


# how Carina spelled each native key, to hint at it when one is missing from a Carina document
_CARINA_SPELLING = {
    "vcpus": "allocateable_cpus",
    "memory": "allocateable_mem",
    "class": "service_class or priority",
    "max_vcpus": "maxcpus",
    "max_memory": "maxmemory",
}


def _strip_symbol(key: str) -> str:
    return key[1:] if key.startswith(":") else key


def _config_error(exc: ValidationError, rename: dict[tuple[str, ...], str] | None) -> GlobalConfigError:
    problems: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = [str(part) for part in err["loc"]]
        if rename is not None:
            # map each prefix back to the spelling found in the Carina document
            spelled = []
            for i, part in enumerate(loc):
                spelled.append(rename.get(tuple(loc[: i + 1]), part))
            loc = spelled
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
            if rename is not None and loc and loc[-1] in _CARINA_SPELLING:
                message += f" (Carina: {_CARINA_SPELLING[loc[-1]]})"
        problems.append((".".join(loc), message))
    return GlobalConfigError(_summary(problems), problems)


def _summary(problems: list[tuple[str, str]]) -> str:
    lines = "; ".join(f"{path or '<document>'}: {message}" for path, message in problems)
    return f"invalid global config: {lines}"
