"""Carina's `config.rb` and `global.rb` turned into Carina's native configuration documents.

Where it sits: a user (or `make run`) uploads a Carina-era `config.rb`; the gateway hands its text to
`convert_config_rb`, which parses it with `libs.common.rubyhash` (never running it) and maps the constants onto
the native service configuration described in docs/conventions.md:

    ENDPOINT    -> endpoints     (:proxy -> url, :oneauth -> credentials, zone defaults to the endpoint name)
    TEMPLATE    -> templates     (:file keeps only its base name: templates are uploaded by name)
    ENVIRONMENT -> environments  (same keys without the colon, values as written)

`convert_global_rb` does the same for the admin's `global.rb` (SHAREDPOOLS -> pools, SERVICES -> services).
The output is plain data; the gateway still validates it with the native models. This module checks what only
it can explain well: the Carina spelling of every key, with the line the value came from, e.g.
`ENVIRONMENT['tomcat'][:num_slaves]: expected an integer, got 'two' (line 14, column 40)`.

Values are kept as Carina users wrote them: context-variable strings keep their shell quoting (`"\\"A=1, B=2\\""`
stays `"A=1, B=2"` with its quotes), because the provisioner interprets them exactly as Carina's svccontroller did.
Credentials never appear in messages.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from pydantic import ValidationError

from libs.common.errors import ValidationFailed
from libs.common.policy_model import AvailabilityPolicy, ElasticityPolicy, format_validation_error
from libs.common.rubyhash import KeyPath, RubyDocument, RubyValue, parse_document

__all__ = [
    "CarinaImportError",
    "ImportResult",
    "convert_config_rb",
    "convert_global_rb",
    "import_config_rb",
    "import_global_rb",
]

logger = logging.getLogger(__name__)

CONFIG_CONSTANTS = ("ENDPOINT", "TEMPLATE", "ENVIRONMENT")
GLOBAL_CONSTANTS = ("SHAREDPOOLS", "SERVICES")
PLACEMENT_POLICIES = ("pack", "stripe", "load")
SERVICE_CLASSES = ("bronze", "silver", "gold", "platinum")

_ENDPOINT_KEYS = ("proxy", "oneauth", "zone")
_TEMPLATE_KEYS = ("file", "template_id", "cpu", "memory", "network_id", "image_id")
# Environment keys Carina's workflow reads (svccontroller gets every key as KEY=value; these are the ones it uses).
_ENV_TEXT_KEYS = (
    "type",
    "endpoint",
    "description",
    "placement_policy",
    "master_template",
    "master_context_script",
    "master_context_var",
    "slave_template",
    "slave_context_script",
    "slave_context_var",
    "slavedata",
    "adminuser",
    "app_url",
    "app_package",
)
_ENV_COUNT_KEYS = ("num_slaves", "master_setup_time")
_ENV_OTHER_KEYS = ("master_service_port", "elasticity_policy", "availability_policy")
_ENV_KEYS = _ENV_TEXT_KEYS + _ENV_COUNT_KEYS + _ENV_OTHER_KEYS
# Shell quoting in Carina's env files made a number and its digits the same thing for these keys.
_ENV_NUMBER_AS_TEXT = ("slavedata",)
_GROUP_KEYS = ("type", "description", "members", "dependencies")
# S001: names used in group dependencies become context variables (<NAME>_URL), which allow only these characters.
_CONTEXT_NAME = re.compile(r"[A-Za-z0-9_]+")

_POOL_KEYS = {
    "zone": "zone",
    "allocateable_cpus": "vcpus",
    "allocatable_cpus": "vcpus",
    "allocateable_mem": "memory",
    "allocatable_mem": "memory",
    "service_class": "class",
}
_SERVICE_KEYS = {"priority": "class", "maxcpus": "max_vcpus", "maxmemory": "max_memory"}


class CarinaImportError(ValidationFailed, ValueError):
    """A Carina configuration that parses as Ruby but does not describe a valid configuration.

    Attributes:
        path: the offending key in Ruby notation (`ENVIRONMENT['tomcat'][:num_slaves]`).
        problem: what is wrong with it.
        line: 1-based line of the value (None when the key is missing altogether).
        column: 1-based column of the value.
    """

    def __init__(self, path: str, problem: str, line: int | None = None, column: int | None = None) -> None:
        self.path = path
        self.problem = problem
        self.line = line
        self.column = column
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(f"{path}: {problem}{where}", [(path, problem)])


@dataclass(frozen=True)
class ImportResult:
    """A converted document and the warnings met on the way.

    Attributes:
        native: the native configuration (plain dicts, ready for `yaml.safe_dump` or the native models).
        warnings: things that were accepted but deserve a look (unknown keys, dangling references).
    """

    native: dict[str, Any]
    warnings: tuple[str, ...]


def convert_config_rb(text: str) -> ImportResult:
    """Convert a Carina `config.rb` into the native service configuration.

    Args:
        text: the contents of config.rb.

    Returns:
        `{"endpoints": ..., "templates": ..., "environments": ...}` and the warnings.

    Raises:
        RubyHashError: the text is not literal Ruby hash syntax (message starts with line and column).
        CarinaImportError: a value has the wrong type or a required key is missing (message names the key path).
    """
    reader = _Reader(parse_document(text))
    return reader.result(reader.config_rb())


def convert_global_rb(text: str) -> ImportResult:
    """Convert a Carina `global.rb` into the native global scheduler configuration.

    Args:
        text: the contents of global.rb.

    Returns:
        `{"pools": ..., "services": ...}` and the warnings.

    Raises:
        RubyHashError: the text is not literal Ruby hash syntax.
        CarinaImportError: a value has the wrong type or a required key is missing.
    """
    reader = _Reader(parse_document(text))
    return reader.result(reader.global_rb())


def import_config_rb(text: str, *, strict: bool = False) -> dict[str, Any]:
    """Convert a Carina `config.rb`, logging the warnings (see `convert_config_rb` to receive them).

    Args:
        text: the contents of config.rb.
        strict: raise on the first warning instead of logging it.

    Returns:
        The native service configuration.

    Raises:
        RubyHashError, CarinaImportError: as `convert_config_rb`; with `strict`, also for any warning.
    """
    return _finish(convert_config_rb(text), strict, "config.rb")


def import_global_rb(text: str, *, strict: bool = False) -> dict[str, Any]:
    """Convert a Carina `global.rb`, logging the warnings (see `convert_global_rb` to receive them).

    Args:
        text: the contents of global.rb.
        strict: raise on the first warning instead of logging it.

    Returns:
        The native global configuration.

    Raises:
        RubyHashError, CarinaImportError: as `convert_global_rb`; with `strict`, also for any warning.
    """
    return _finish(convert_global_rb(text), strict, "global.rb")


def _finish(result: ImportResult, strict: bool, source: str) -> dict[str, Any]:
    if strict and result.warnings:
        raise CarinaImportError(source, f"refused in strict mode: {result.warnings[0]}")
    for warning in result.warnings:
        logger.warning("%s: %s", source, warning)
    return result.native


def _describe_value(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "nil"}[value]
    if isinstance(value, dict):
        return "a hash"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else "a long string"
    return repr(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Reader:
    """Walks the parsed constants with their positions, collecting warnings and raising precise errors."""

    def __init__(self, doc: RubyDocument) -> None:
        self.doc = doc
        self.warnings: list[str] = list(doc.warnings)

    def result(self, native: dict[str, Any]) -> ImportResult:
        return ImportResult(native=native, warnings=tuple(self.warnings))

    # --- messages ---

    def spell(self, path: KeyPath, symbol: bool = False) -> str:
        """A path in Ruby notation; a key missing from the document is spelled as a symbol when `symbol`."""
        if path in self.doc.positions or not symbol:
            return self.doc.describe(path)
        return f"{self.doc.describe(path[:-1])}[:{path[-1]}]"

    def error(self, path: KeyPath, problem: str, symbol: bool = False) -> CarinaImportError:
        position = self.doc.position(path)
        if position is None:
            # a missing key: point at the hash that lacks it
            position = self.doc.position(path[:-1])
        line, column = position if position is not None else (None, None)
        return CarinaImportError(self.spell(path, symbol), problem, line, column)

    def warn(self, path: KeyPath, problem: str) -> None:
        position = self.doc.position(path)
        where = f" (line {position[0]})" if position is not None else ""
        self.warnings.append(f"{self.spell(path)}: {problem}{where}")

    def warn_unknown(self, path: KeyPath, known: Iterable[str], what: str, kept: bool) -> None:
        key = str(path[-1])
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f"; did you mean :{close[0]}?" if close else ""
        self.warn(path, f"not a {what} key{hint} ({'kept as written' if kept else 'ignored'})")

    # --- typed accessors ---

    def hash_at(self, value: RubyValue, path: KeyPath, what: str) -> dict[str, RubyValue]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a hash of {what}, got {_describe_value(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.error((*path, key), f"expected a name (string or symbol) as key, got {key!r}")
        return {str(key): item for key, item in value.items()}

    def text(self, value: RubyValue, path: KeyPath, *, numbers_ok: bool = False, secret: bool = False) -> str:
        if isinstance(value, str):
            return value
        if numbers_ok and (_is_int(value) or isinstance(value, float)):
            return str(value)
        got = "" if secret else f", got {_describe_value(value)}"
        raise self.error(path, f"expected a string{got}")

    def required(self, entry: Mapping[str, RubyValue], key: str, path: KeyPath) -> RubyValue:
        if key not in entry:
            raise self.error((*path, key), "required key is missing", symbol=True)
        return entry[key]

    def count(self, value: RubyValue, path: KeyPath, *, positive: bool = False) -> int:
        """A whole number; Carina's shell files made `'100'` and `100` the same, so digit strings are accepted."""
        number: int | None = None
        if _is_int(value):
            assert isinstance(value, int)
            number = value
        elif isinstance(value, str) and value.strip().isdigit():
            number = int(value.strip())
        if number is None:
            raise self.error(path, f"expected an integer, got {_describe_value(value)}")
        if number < (1 if positive else 0):
            raise self.error(path, f"expected {'a positive' if positive else 'a non-negative'} integer, got {number}")
        return number

    def amount(self, value: RubyValue, path: KeyPath, *, zero_ok: bool = False) -> int | float:
        """A number of CPUs: an integer, or a fraction (OpenNebula's CPU may be 0.5); positive unless `zero_ok`."""
        number: int | float | None = None
        if _is_int(value) or isinstance(value, float):
            assert isinstance(value, int | float)
            number = value
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                number = int(number)
        if number is None or number != number or number in (float("inf"), float("-inf")):
            raise self.error(path, f"expected a number, got {_describe_value(value)}")
        if number < 0 or (number == 0 and not zero_ok):
            raise self.error(path, f"expected a {'non-negative' if zero_ok else 'positive'} number, got {number}")
        return number

    def choice(self, value: RubyValue, path: KeyPath, allowed: tuple[str, ...], *, fold_case: bool = False) -> str:
        if isinstance(value, str) and (value.strip().lower() if fold_case else value) in allowed:
            return value.strip().lower() if fold_case else value
        raise self.error(path, f"expected one of {', '.join(allowed)}, got {_describe_value(value)}")

    def names(self, value: RubyValue, path: KeyPath, what: str) -> list[str]:
        if not isinstance(value, list):
            raise self.error(path, f"expected an array of {what}, got {_describe_value(value)}")
        result: list[str] = []
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.error((*path, index), f"expected a name, got {_describe_value(item)}")
            if item in result:
                raise self.error((*path, index), f"{item!r} is listed twice")
            result.append(item)
        return result

    def section(self, name: str, what: str) -> dict[str, RubyValue]:
        if name not in self.doc.constants:
            self.warnings.append(f"{name} is not defined; there are no {what}")
            return {}
        return self.hash_at(self.doc.constants[name], (name,), what)

    def unknown_constants(self, expected: tuple[str, ...], other: tuple[str, ...], other_file: str) -> None:
        present = [name for name in expected if name in self.doc.constants]
        if not present:
            strays = [name for name in other if name in self.doc.constants]
            hint = f"; this looks like {other_file}" if strays else ""
            raise CarinaImportError("<document>", f"defines none of {', '.join(expected)}{hint}")
        for name in self.doc.constants:
            if name not in expected:
                self.warn((name,), f"unknown constant, ignored (expected {', '.join(expected)})")

    # --- config.rb ---

    def config_rb(self) -> dict[str, Any]:
        self.unknown_constants(CONFIG_CONSTANTS, GLOBAL_CONSTANTS, "global.rb")
        endpoints = {
            name: self.endpoint(entry, ("ENDPOINT", name))
            for name, entry in self.section("ENDPOINT", "endpoints").items()
        }
        templates = {
            name: self.template(entry, ("TEMPLATE", name))
            for name, entry in self.section("TEMPLATE", "templates").items()
        }
        raw_envs = self.section("ENVIRONMENT", "environments")
        environments: dict[str, Any] = {}
        for name, entry in raw_envs.items():
            path: KeyPath = ("ENVIRONMENT", name)
            settings = self.hash_at(entry, path, "environment settings")
            if settings.get("type") == "group":
                environments[name] = self.group(settings, path, raw_envs)
            else:
                environments[name] = self.environment(settings, path, endpoints, templates)
        return {"endpoints": endpoints, "templates": templates, "environments": environments}

    def endpoint(self, entry: RubyValue, path: KeyPath) -> dict[str, Any]:
        settings = self.hash_at(entry, path, "endpoint settings")
        url = self.text(self.required(settings, "proxy", path), (*path, "proxy"))
        if not re.match(r"https?://[^/\s]+", url):
            raise self.error((*path, "proxy"), f"expected the XML-RPC URL (http://host:2633/RPC2), got {url!r}")
        credentials = self.text(self.required(settings, "oneauth", path), (*path, "oneauth"), secret=True)
        if ":" not in credentials or credentials.startswith(":"):
            raise self.error((*path, "oneauth"), "expected 'user:password'")
        zone = self.text(settings["zone"], (*path, "zone")) if "zone" in settings else str(path[-1])
        for key in settings:
            if key not in _ENDPOINT_KEYS:
                self.warn_unknown((*path, key), _ENDPOINT_KEYS, "ENDPOINT", kept=False)
        return {"url": url, "credentials": credentials, "zone": zone}

    def template(self, entry: RubyValue, path: KeyPath) -> dict[str, Any]:
        settings = self.hash_at(entry, path, "template settings")
        native: dict[str, Any] = {}
        if ("file" in settings) == ("template_id" in settings):
            raise self.error(path, "give exactly one of :file (a .vm template text) and :template_id")
        if "file" in settings:
            written = self.text(settings["file"], (*path, "file"))
            # Carina read the file from ~/vm/ on upload; here templates are uploaded by name.
            basename = PurePosixPath(written.strip()).name
            if not basename or basename in (".", "..", "~"):
                raise self.error((*path, "file"), f"expected a template file name, got {_describe_value(written)}")
            native["file"] = basename
        else:
            native["template_id"] = self.count(settings["template_id"], (*path, "template_id"))
        if "cpu" in settings:
            native["cpu"] = self.amount(settings["cpu"], (*path, "cpu"))
        if "memory" in settings:
            native["memory"] = self.count(settings["memory"], (*path, "memory"), positive=True)
        for key in ("network_id", "image_id"):
            if key in settings:
                ids = self.hash_at(settings[key], (*path, key), "ids by endpoint")
                native[key] = {ep: self.count(value, (*path, key, ep)) for ep, value in ids.items()}
        for key in settings:
            if key not in _TEMPLATE_KEYS:
                self.warn_unknown((*path, key), _TEMPLATE_KEYS, "TEMPLATE", kept=False)
        return native

    def environment(
        self,
        settings: dict[str, RubyValue],
        path: KeyPath,
        endpoints: Mapping[str, Any],
        templates: Mapping[str, Any],
    ) -> dict[str, Any]:
        native: dict[str, Any] = {}
        for key, value in settings.items():
            key_path = (*path, key)
            if key in _ENV_TEXT_KEYS:
                native[key] = self.text(value, key_path, numbers_ok=key in _ENV_NUMBER_AS_TEXT)
            elif key in _ENV_COUNT_KEYS:
                native[key] = self.count(value, key_path)
            elif key == "elasticity_policy":
                native[key] = self.policy(value, key_path, ElasticityPolicy)
            elif key == "availability_policy":
                native[key] = self.policy(value, key_path, AvailabilityPolicy)
            else:
                if key != "master_service_port":
                    self.warn_unknown(key_path, _ENV_KEYS, "Carina environment", kept=True)
                native[key] = _plain(value)
        for key in ("endpoint", "master_template"):
            self.required(settings, key, path)
        if "placement_policy" in native:
            self.choice(native["placement_policy"], (*path, "placement_policy"), PLACEMENT_POLICIES)
        self.check_references(native, path, endpoints, templates)
        return native

    def check_references(
        self, native: Mapping[str, Any], path: KeyPath, endpoints: Mapping[str, Any], templates: Mapping[str, Any]
    ) -> None:
        endpoint = native["endpoint"]
        if endpoint not in endpoints:
            self.warn((*path, "endpoint"), f"endpoint {endpoint!r} is not defined in ENDPOINT")
        for role in ("master", "slave"):
            key = f"{role}_template"
            if key not in native:
                if role == "slave" and native.get("num_slaves", 0) > 0:
                    self.warn(path, "num_slaves is above 0 but :slave_template is missing")
                continue
            template = templates.get(native[key])
            if template is None:
                self.warn((*path, key), f"template {native[key]!r} is not defined in TEMPLATE")
                continue
            for ids in ("network_id", "image_id"):
                if ids in template and endpoint not in template[ids]:
                    self.warn((*path, key), f"template {native[key]!r} has no :{ids} for endpoint {endpoint!r}")

    def policy(self, value: RubyValue, path: KeyPath, model: type[ElasticityPolicy | AvailabilityPolicy]) -> Any:
        settings = self.hash_at(value, path, "policy settings")
        plain = _plain(settings)
        try:
            model.model_validate(plain)
        except ValidationError as exc:
            problems = "; ".join(format_validation_error(exc))
            raise self.error(path, problems) from None
        return plain

    def group(self, settings: dict[str, RubyValue], path: KeyPath, all_envs: Mapping[str, RubyValue]) -> dict[str, Any]:
        native: dict[str, Any] = {"type": "group"}
        if "description" in settings:
            native["description"] = self.text(settings["description"], (*path, "description"))
        members_path = (*path, "members")
        members = self.names(self.required(settings, "members", path), members_path, "environment names")
        if not members:
            raise self.error(members_path, "a group needs at least one member")
        native["members"] = members
        for index, member in enumerate(members):
            target = all_envs.get(member)
            if target is None:
                self.warn((*members_path, index), f"{member!r} is not defined in ENVIRONMENT")
            elif isinstance(target, dict) and target.get("type") == "group":
                self.warn((*members_path, index), f"{member!r} is itself a group")
        if "dependencies" in settings:
            deps_path = (*path, "dependencies")
            raw = self.hash_at(settings["dependencies"], deps_path, "dependencies by environment")
            dependencies = {
                env: self.names(needed, (*deps_path, env), "environment names") for env, needed in raw.items()
            }
            self.check_dependencies(dependencies, members, deps_path)
            native["dependencies"] = dependencies
        for key, value in settings.items():
            if key not in _GROUP_KEYS:
                self.warn_unknown((*path, key), _GROUP_KEYS, "group", kept=True)
                native[key] = _plain(value)
        return native

    def check_dependencies(self, dependencies: Mapping[str, list[str]], members: list[str], path: KeyPath) -> None:
        order = {name: index for index, name in enumerate(members)}
        for env, needed in dependencies.items():
            if env not in order:
                self.warn((*path, env), f"{env!r} has dependencies but is not a member of the group")
            for name in (env, *needed):
                if not _CONTEXT_NAME.fullmatch(name):
                    self.warn(
                        (*path, env),
                        f"{name!r} has characters other than letters, digits and '_'; its {name.upper()}_URL "
                        "context variable would make OpenNebula refuse the VM",
                    )
            for name in needed:
                if name not in order:
                    self.warn((*path, env), f"depends on {name!r}, which is not a member of the group")
                elif env in order and order[name] > order[env]:
                    self.warn(
                        (*path, env),
                        f"depends on {name!r}, which is created after it (members are created in order); "
                        f"{name.upper()}_URL would not be known yet",
                    )

    # --- global.rb ---

    def global_rb(self) -> dict[str, Any]:
        self.unknown_constants(GLOBAL_CONSTANTS, CONFIG_CONSTANTS, "config.rb")
        pools = {
            name: self.renamed(entry, ("SHAREDPOOLS", name), _POOL_KEYS, "SHAREDPOOLS")
            for name, entry in self.section("SHAREDPOOLS", "pools").items()
        }
        services = {
            name: self.renamed(entry, ("SERVICES", name), _SERVICE_KEYS, "SERVICES")
            for name, entry in self.section("SERVICES", "services").items()
        }
        return {"pools": pools, "services": services}

    def renamed(self, entry: RubyValue, path: KeyPath, mapping: Mapping[str, str], what: str) -> dict[str, Any]:
        settings = self.hash_at(entry, path, f"{what} settings")
        native: dict[str, Any] = {}
        source: dict[str, str] = {}
        for key, value in settings.items():
            target = mapping.get(key)
            key_path = (*path, key)
            if target is None:
                self.warn_unknown(key_path, mapping, what, kept=False)
                continue
            if target in native:
                raise self.error(key_path, f"gives {target} a second time (already given as :{source[target]})")
            source[target] = key
            if target == "zone":
                native[target] = self.text(value, key_path)
            elif target == "class":
                native[target] = self.choice(value, key_path, SERVICE_CLASSES, fold_case=True)
            elif target == "vcpus":
                native[target] = self.amount(value, key_path)
            elif target == "max_vcpus":
                native[target] = self.amount(value, key_path, zero_ok=True)
            else:
                native[target] = self.count(value, key_path, positive=target == "memory")
        wanted = dict.fromkeys(mapping.values())
        for target in wanted:
            if target not in native:
                spelling = next(key for key, to in mapping.items() if to == target)
                raise self.error((*path, spelling), "required key is missing", symbol=True)
        return {target: native[target] for target in wanted}


def _plain(value: object) -> Any:
    """A deep copy with every hash key as a string, for the native document (YAML keys are strings)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
