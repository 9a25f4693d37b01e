"""A service's configuration: endpoints, templates and environments (Carina's config.rb, natively in YAML).

The gateway validates an upload with `parse_service_config` before storing anything: a rejected upload returns
every problem as a `(key.path, message)` pair and changes nothing. envmgr and the provisioner read the stored,
already valid document. The shape is documented in docs/configuration.md and examples/carina.yaml; Carina's own
Ruby-hash files are converted into it by `libs.common.carina_import`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from libs.common.errors import ValidationFailed

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
# Seed 001: names used in dependencies become context variable names (<NAME>_URL); OpenNebula refuses others.
DEPENDENCY_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,63}$")
PLACEMENT_RANK = {"pack": "RUNNING_VMS", "stripe": "-RUNNING_VMS", "load": "FREE_CPU"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Endpoint(_Strict):
    """One OpenNebula zone as this service reaches it (XML-RPC URL and the service's credentials)."""

    url: str = Field(description="XML-RPC endpoint, e.g. http://oneserver:2633/RPC2")
    credentials: SecretStr = Field(description="user:password of the service's OpenNebula account")
    zone: str | None = Field(None, description="zone name; defaults to the endpoint name")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL such as http://oneserver:2633/RPC2")
        return value

    @field_validator("credentials")
    @classmethod
    def _credentials(cls, value: SecretStr) -> SecretStr:
        if ":" not in value.get_secret_value():
            raise ValueError("must be 'user:password'")
        return value


class Template(_Strict):
    """A VM template: an uploaded OpenNebula template text (`file`) or an existing template id."""

    file: str | None = Field(None, description="name of an uploaded .vm template")
    template_id: int | None = Field(None, ge=0, description="an OpenNebula template id")
    cpu: float = Field(1, gt=0)
    memory: int = Field(1024, gt=0, description="MiB")
    vcpu: int | None = Field(None, gt=0)
    network_id: dict[str, int] = Field(default_factory=dict, description="network id per endpoint")
    image_id: dict[str, int] = Field(default_factory=dict, description="image id per endpoint")

    @model_validator(mode="after")
    def _one_source(self) -> Template:
        if (self.file is None) == (self.template_id is None):
            raise ValueError("exactly one of 'file' and 'template_id' must be given")
        return self


class Environment(_Strict):
    """An environment definition: a master and N slaves (every key of Carina's seed 001)."""

    type: str = Field("compute", description="free text classifying the environment")
    endpoint: str
    description: str = ""
    placement_policy: Literal["pack", "stripe", "load"] | None = None
    master_template: str
    master_context_script: str = ""
    master_setup_time: float = Field(0, ge=0, le=86400, description="seconds between master RUNNING and its init")
    master_context_var: str = ""
    slave_template: str | None = None
    slave_context_script: str = ""
    slave_context_var: str = ""
    num_slaves: int = Field(0, ge=0, le=1000)
    slavedata: str = ""
    adminuser: str = ""
    app_url: str = ""
    master_service_port: str | None = None
    app_package: str | None = None
    elasticity_policy: dict[str, Any] | None = None
    availability_policy: dict[str, Any] | None = None

    @field_validator("slavedata", "master_service_port", "app_package", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value

    @field_validator("type")
    @classmethod
    def _not_group(cls, value: str) -> str:
        if value == "group":
            raise ValueError("'group' environments take 'members' and 'dependencies'")
        return value


class Group(_Strict):
    """A composite environment: members created in order, with app-URL dependencies between them."""

    type: Literal["group"]
    description: str = ""
    members: list[str] = Field(min_length=1)
    dependencies: dict[str, list[str]] = Field(default_factory=dict)


class ServiceConfig(_Strict):
    """Everything one service uploads."""

    endpoints: dict[str, Endpoint] = Field(min_length=1)
    templates: dict[str, Template] = Field(default_factory=dict)
    environments: dict[str, Environment | Group] = Field(default_factory=dict)

    @field_validator("environments", mode="before")
    @classmethod
    def _discriminate(cls, value: Any) -> Any:
        # Pick the model by `type` so that errors talk about the right keys.
        if not isinstance(value, dict):
            return value
        return {
            name: (Group.model_validate(body) if isinstance(body, dict) and body.get("type") == "group" else body)
            for name, body in value.items()
        }

    def zone_of(self, endpoint: str) -> str:
        return self.endpoints[endpoint].zone or endpoint


def _cross_check(config: ServiceConfig, vm_files: set[str] | None) -> list[tuple[str, str]]:
    """Reference checks pydantic cannot do field by field."""
    problems: list[tuple[str, str]] = []
    for kind, names in (("endpoints", config.endpoints), ("templates", config.templates),
                        ("environments", config.environments)):
        for name in names:
            if not NAME_RE.match(name):
                problems.append((f"{kind}.{name}", "names may use letters, digits, '_', '-' and '.' (max 63)"))
    zones: dict[str, str] = {}
    for name, endpoint in config.endpoints.items():
        zone = endpoint.zone or name
        if zone in zones and zones[zone] != endpoint.url:
            problems.append((f"endpoints.{name}.zone",
                             f"zone '{zone}' is already used by endpoint '{_endpoint_with_zone(config, zone)}' "
                             "with another URL: two zones cannot share a name"))
        zones.setdefault(zone, endpoint.url)
    for name, template in config.templates.items():
        if template.file is not None and vm_files is not None and template.file not in vm_files:
            problems.append((f"templates.{name}.file",
                             f"template file '{template.file}' has not been uploaded (oneenv upload {template.file})"))
    for name, env in config.environments.items():
        path = f"environments.{name}"
        if isinstance(env, Group):
            problems += _check_group(config, name, env)
            continue
        if env.endpoint not in config.endpoints:
            problems.append((f"{path}.endpoint", f"unknown endpoint '{env.endpoint}'"))
        for role in ("master_template", "slave_template"):
            tname = getattr(env, role)
            if tname is None:
                if role == "slave_template" and env.num_slaves > 0:
                    problems.append((f"{path}.slave_template", "required when num_slaves > 0"))
                continue
            used = config.templates.get(tname)
            if used is None:
                problems.append((f"{path}.{role}", f"unknown template '{tname}'"))
            elif used.file is not None and env.endpoint in config.endpoints:
                for key in ("network_id", "image_id"):
                    if getattr(used, key) and env.endpoint not in getattr(used, key):
                        problems.append((f"templates.{tname}.{key}",
                                         f"has no entry for endpoint '{env.endpoint}' used by environment '{name}'"))
        problems += _check_policies(path, env)
    return problems


def _endpoint_with_zone(config: ServiceConfig, zone: str) -> str:
    return next(n for n, e in config.endpoints.items() if (e.zone or n) == zone)


def _check_group(config: ServiceConfig, name: str, group: Group) -> list[tuple[str, str]]:
    path = f"environments.{name}"
    problems: list[tuple[str, str]] = []
    members = set(group.members)
    if len(members) != len(group.members):
        problems.append((f"{path}.members", "a member is listed twice"))
    for member in group.members:
        target = config.environments.get(member)
        if target is None:
            problems.append((f"{path}.members", f"unknown member '{member}'"))
        elif isinstance(target, Group):
            problems.append((f"{path}.members", f"member '{member}' is itself a group"))
    for dependant, deps in group.dependencies.items():
        if dependant not in members:
            problems.append((f"{path}.dependencies.{dependant}", f"'{dependant}' is not a member of the group"))
        for dep in deps:
            if dep not in members:
                problems.append((f"{path}.dependencies.{dependant}", f"'{dep}' is not a member of the group"))
            elif group.members.index(dep) > group.members.index(dependant) if dependant in members else False:
                problems.append((f"{path}.dependencies.{dependant}",
                                 f"'{dep}' is created after '{dependant}': list it earlier in members"))
        for member in [dependant, *deps]:
            if not DEPENDENCY_NAME_RE.match(member):
                problems.append((f"{path}.dependencies.{dependant}",
                                 f"'{member}' becomes a context variable name: use only letters, digits and '_'"))
    cycle = _find_cycle(group.dependencies)
    if cycle:
        problems.append((f"{path}.dependencies", "dependency cycle: " + " -> ".join(cycle)))
    return problems


def _find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return None

    for node in edges:
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def _check_policies(path: str, env: Environment) -> list[tuple[str, str]]:
    """Validate the policy blocks with the policy language (errors point at the key and the bad token)."""
    try:
        from libs.common import policy_model
    except ImportError:  # the policy language is optional for the rest of the configuration
        return []
    problems: list[tuple[str, str]] = []
    for key, validate in (("elasticity_policy", getattr(policy_model, "ElasticityPolicy", None)),
                          ("availability_policy", getattr(policy_model, "AvailabilityPolicy", None))):
        block = getattr(env, key)
        if block is None or validate is None:
            continue
        try:
            validate.model_validate(block)
        except ValidationError as exc:
            problems += [(f"{path}.{key}" + "".join(f".{p}" for p in err["loc"]), err["msg"]) for err in exc.errors()]
    return problems


def _pydantic_problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        # pydantic adds the union member name to the location; drop those tags for a readable path.
        loc = [str(p) for p in err["loc"] if p not in ("Environment", "Group")]
        loc = [p for p in loc if not p.startswith(("function-", "tagged-union"))]
        msg = err["msg"].removeprefix("Value error, ")
        problems.append((".".join(loc) or "(document)", msg))
    return problems


def parse_service_config(text: str | bytes, vm_files: set[str] | None = None) -> tuple[ServiceConfig, dict[str, Any]]:
    """Parse and validate a YAML (or JSON) service configuration.

    Args:
        text: the uploaded document.
        vm_files: names of the uploaded .vm templates (None: don't check file references).

    Returns:
        The model and the plain document to store.

    Raises:
        ValidationFailed: with every problem as (key path, message).
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "document"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValidationFailed(f"malformed YAML at {where}: {problem}", [(where, str(problem))]) from None
    return validate_service_config(raw, vm_files)


def validate_service_config(raw: Any, vm_files: set[str] | None = None) -> tuple[ServiceConfig, dict[str, Any]]:
    """Validate an already parsed configuration document (see `parse_service_config`)."""
    if not isinstance(raw, dict):
        raise ValidationFailed("the configuration must be a mapping with endpoints, templates and environments",
                               [("(document)", "expected a mapping")])
    try:
        config = ServiceConfig.model_validate(raw)
    except ValidationError as exc:
        problems = _pydantic_problems(exc)
        raise ValidationFailed(_summary(problems), problems) from None
    problems = _cross_check(config, vm_files)
    if problems:
        raise ValidationFailed(_summary(problems), problems)
    return config, to_document(config)


def to_document(config: ServiceConfig) -> dict[str, Any]:
    """The plain document stored in MongoDB (credentials included: the store is trusted, the API never shows them)."""
    doc = config.model_dump(mode="python", exclude_none=True)
    for name, endpoint in config.endpoints.items():
        doc["endpoints"][name]["credentials"] = endpoint.credentials.get_secret_value()
    return doc


def redact(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored configuration safe to return: credentials replaced."""
    out = {**doc, "endpoints": {n: {**e, "credentials": "********"} for n, e in doc.get("endpoints", {}).items()}}
    return out


def _summary(problems: list[tuple[str, str]]) -> str:
    first = "; ".join(f"{p}: {m}" for p, m in problems[:3])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return f"invalid configuration: {first}{more}"
