"""The `elasticity_policy` and `availability_policy` blocks of an environment, validated at upload.

Where it sits: the gateway (and the config.rb importer) validate an environment's policy blocks with these models
when a configuration is uploaded, so a bad policy is refused with an error naming the field, and never reaches the
policy service; `services.policy.engine` then reads the same models on every tick.

Both Carina's keys and OneFlow's are accepted:

* Carina: `mode` (manual | time-based | auto), `windows` {name: {spec, min}}, `min`, `max`, `priority`,
  `period`, `scaleup_expr`, `scaledown_expr`, `metric_plugins`;
* OneFlow: `min_vms`, `max_vms`, `cooldown`, `elasticity_policies[]`, `scheduled_policies[]`;
* Carina's new knobs: `recommend_only`, `cooldown_up` / `cooldown_down` (stabilization before a load-driven
  scale-up / scale-down, counted from the last scaling action), `timezone` (IANA name the windows and cron
  recurrences are read in; default UTC).

Keys are matched after dropping a leading ':' (Ruby symbols from config.rb) and folding case and '-' to '_',
so `:scaleup_expr`, `Scaleup-Expr` and `scaleup_expr` are the same key; `mode` accepts `time_based` and any case.
VM counts (`min`, `max`, window `min`, `min_vms`, `max_vms`) include the master, as in Carina.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from libs.common.expr import (
    AVAILABILITY_VARIABLES,
    AVAILABILITY_VARIABLES_WITH_PLUGINS,
    ELASTICITY_VARIABLES,
    ExpressionError,
    VariablePolicy,
    compile_expression,
)
from libs.common.timewindow import MINUTES_PER_DAY, TimeWindow, TimeWindowError

__all__ = [
    "AdjustmentType",
    "AvailabilityPolicy",
    "ElasticityPolicy",
    "ElasticityRule",
    "ScheduledRule",
    "WindowSpec",
    "format_validation_error",
]

AdjustmentType = Literal["CHANGE", "CARDINALITY", "PERCENTAGE_CHANGE"]
DEFAULT_ONEFLOW_COOLDOWN = 300
"""OneFlow's `:default_cooldown` (seconds), used when neither the policy nor the role sets `cooldown`."""


def _normalise_key(key: Any) -> Any:
    if not isinstance(key, str):
        return key
    return key.strip().lstrip(":").replace("-", "_").lower()


class _PolicyBlock(BaseModel):
    """Base of every policy model: unknown keys are errors, Carina/Ruby key spellings are folded."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _fold_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        folded: dict[Any, Any] = {}
        for key, value in data.items():
            name = _normalise_key(key)
            if name in folded:
                raise ValueError(f"key {key!r} given twice (as {name!r})")
            folded[name] = value
        return folded


def _check_expression(field: str, text: str | None, allowed: VariablePolicy) -> str | None:
    if text is None:
        return None
    try:
        compile_expression(text, allowed)
    except ExpressionError as error:
        raise ValueError(f"{field}: {error}") from None
    return text


def _normalise_upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _plugin_list(value: Any) -> Any:
    # Carina examples give one plugin name as a string; a list is the general form.
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# --- elasticity ----------------------------------------------------------------------------------------------------


class WindowSpec(_PolicyBlock):
    """One named time window of a `time-based` policy: while `spec` matches, keep `min` VMs (master included)."""

    spec: str
    min: int = Field(ge=1, description="number of VMs, including the master, while the window matches")

    @field_validator("spec")
    @classmethod
    def _spec_parses(cls, value: str) -> str:
        try:
            TimeWindow.parse(value)
        except TimeWindowError as error:
            raise ValueError(f"spec: {error}") from None
        return value

    def window(self) -> TimeWindow:
        """The parsed window."""
        return TimeWindow.parse(self.spec)


class ElasticityRule(_PolicyBlock):
    """One OneFlow `elasticity_policies[]` entry: adjust the cardinality when `expression` holds long enough."""

    type: AdjustmentType
    adjust: int
    min_adjust_step: int | None = Field(None, ge=1)
    expression: str
    period_number: int = Field(0, ge=0, description="consecutive true evaluations needed (0 and 1 act at once)")
    period: int = Field(0, ge=0, description="seconds between two evaluations of this rule")
    cooldown: int | None = Field(None, ge=0, description="seconds without scaling after this rule acted")

    _upper_type = field_validator("type", mode="before")(_normalise_upper)

    @field_validator("expression")
    @classmethod
    def _expression_compiles(cls, value: str) -> str:
        _check_expression("expression", value, ELASTICITY_VARIABLES)
        return value

    @model_validator(mode="after")
    def _adjust_is_meaningful(self) -> ElasticityRule:
        _check_adjust(self.type, self.adjust)
        return self


class ScheduledRule(_PolicyBlock):
    """One OneFlow `scheduled_policies[]` entry: adjust the cardinality at `start_time` or on a cron `recurrence`."""

    type: AdjustmentType
    adjust: int
    min_adjust_step: int | None = Field(None, ge=1)
    start_time: str | None = None
    recurrence: str | None = None
    cooldown: int | None = Field(None, ge=0)

    _upper_type = field_validator("type", mode="before")(_normalise_upper)

    @field_validator("start_time", mode="before")
    @classmethod
    def _start_time_text(cls, value: Any) -> Any:
        # YAML turns an unquoted epoch into an int and an unquoted timestamp into a datetime: keep them as text.
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return str(value)
        if isinstance(value, datetime):
            return value.isoformat()
        return value

    @field_validator("start_time")
    @classmethod
    def _start_time_parses(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_start_time(value, UTC)
        return value

    @field_validator("recurrence")
    @classmethod
    def _recurrence_parses(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"recurrence: {value!r} is not a valid cron expression (e.g. '0 9 * * mon-fri')")
        return value

    @model_validator(mode="after")
    def _exactly_one_time(self) -> ScheduledRule:
        if (self.start_time is None) == (self.recurrence is None):
            raise ValueError("a scheduled policy needs exactly one of start_time or recurrence")
        _check_adjust(self.type, self.adjust)
        return self

    def start_datetime(self, zone: tzinfo) -> datetime | None:
        """`start_time` as an aware datetime (epoch seconds, or ISO text read in `zone` when it has no offset)."""
        return None if self.start_time is None else _parse_start_time(self.start_time, zone)


def _check_adjust(kind: str, adjust: int) -> None:
    if kind == "CARDINALITY" and adjust < 0:
        raise ValueError(f"adjust: a CARDINALITY adjustment sets the number of VMs and cannot be negative ({adjust})")
    if kind != "CARDINALITY" and adjust == 0:
        raise ValueError(f"adjust: a {kind} adjustment of 0 would never change anything")


def _parse_start_time(text: str, zone: tzinfo) -> datetime:
    stripped = text.strip()
    if re.fullmatch(r"\d+", stripped):
        return datetime.fromtimestamp(int(stripped), UTC)
    try:
        parsed = datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(
            f"start_time: {text!r} is neither epoch seconds nor a date such as '2026-05-01 09:00:00'"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=zone)


_CARINA_MODES = {"manual", "time-based", "auto"}


class ElasticityPolicy(_PolicyBlock):
    """An environment's `elasticity_policy` block (Carina and OneFlow keys)."""

    mode: Literal["manual", "time-based", "auto"] | None = None
    windows: dict[str, WindowSpec] = Field(default_factory=dict)
    min: int | None = Field(None, ge=1)
    max: int | None = Field(None, ge=1)
    priority: int = 0
    period: int = Field(0, ge=0, description="auto: act when the expression held for more than this many ticks")
    scaleup_expr: str | None = None
    scaledown_expr: str | None = None
    metric_plugins: list[str] = Field(default_factory=list)

    min_vms: int | None = Field(None, ge=0)
    max_vms: int | None = Field(None, ge=0)
    cooldown: int | None = Field(None, ge=0)
    elasticity_policies: list[ElasticityRule] = Field(default_factory=list)
    scheduled_policies: list[ScheduledRule] = Field(default_factory=list)

    recommend_only: bool = False
    cooldown_up: int = Field(0, ge=0, description="seconds after any scaling before a load-driven scale-up")
    cooldown_down: int = Field(300, ge=0, description="seconds after any scaling before a load-driven scale-down")
    timezone: str | None = None

    @field_validator("mode", mode="before")
    @classmethod
    def _fold_mode(cls, value: Any) -> Any:
        if isinstance(value, str):
            folded = value.strip().lower().replace("_", "-").replace(" ", "-")
            if folded == "timebased":
                folded = "time-based"
            if folded not in _CARINA_MODES:
                raise ValueError(f"mode: {value!r} is not one of manual, time-based, auto")
            return folded
        return value

    _plugins = field_validator("metric_plugins", mode="before")(_plugin_list)

    @field_validator("scaleup_expr", "scaledown_expr")
    @classmethod
    def _expressions_compile(cls, value: str | None, info: Any) -> str | None:
        return _check_expression(str(info.field_name), value, ELASTICITY_VARIABLES)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"timezone: unknown time zone {value!r} (use an IANA name such as Europe/Paris)"
                ) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ElasticityPolicy:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not be greater than max ({self.max})")
        if self.min_vms is not None and self.max_vms is not None and self.min_vms > self.max_vms:
            raise ValueError(f"min_vms ({self.min_vms}) must not be greater than max_vms ({self.max_vms})")

        oneflow_keys = [
            name
            for name, given in (
                ("min_vms", self.min_vms is not None),
                ("max_vms", self.max_vms is not None),
                ("cooldown", self.cooldown is not None),
                ("elasticity_policies", bool(self.elasticity_policies)),
                ("scheduled_policies", bool(self.scheduled_policies)),
            )
            if given
        ]
        if self.mode is not None and oneflow_keys:
            raise ValueError(
                f"mode {self.mode!r} (Carina style) cannot be combined with OneFlow keys ({', '.join(oneflow_keys)}): "
                "use one style per environment"
            )
        if (self.elasticity_policies or self.scheduled_policies) and (self.min_vms is None or self.max_vms is None):
            raise ValueError("elasticity_policies and scheduled_policies require both min_vms and max_vms")

        if self.windows and self.mode != "time-based":
            raise ValueError("windows are only used by mode 'time-based'")
        if (self.scaleup_expr or self.scaledown_expr) and self.mode != "auto":
            raise ValueError("scaleup_expr and scaledown_expr are only used by mode 'auto'")

        if self.mode == "auto":
            missing = [name for name in ("scaleup_expr", "scaledown_expr") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"mode 'auto' requires both scaleup_expr and scaledown_expr (missing {missing[0]})")
            if self.min is None or self.max is None:
                raise ValueError("mode 'auto' requires min and max (VM counts including the master)")
        if self.mode == "time-based":
            if not self.windows:
                raise ValueError("mode 'time-based' requires windows, e.g. {morn: {spec: 'Mon-Fri 0900-1300', min: 6}}")
            self._check_windows()
        return self

    def _check_windows(self) -> None:
        names = list(self.windows)
        parsed = {name: self.windows[name].window() for name in names}
        for name in names:
            wanted = self.windows[name].min
            if self.max is not None and wanted > self.max:
                raise ValueError(f"windows.{name}.min ({wanted}) is greater than max ({self.max})")
            if self.min is not None and wanted < self.min:
                raise ValueError(f"windows.{name}.min ({wanted}) is less than min ({self.min})")
        for index, first in enumerate(names):
            for second in names[index + 1 :]:
                shared = parsed[first].minutes & parsed[second].minutes
                if shared:
                    raise ValueError(
                        f"windows {first!r} ({self.windows[first].spec}) and {second!r} "
                        f"({self.windows[second].spec}) overlap, e.g. at {_describe_minute(min(shared))}"
                    )

    @property
    def style(self) -> Literal["manual", "time-based", "auto", "oneflow"]:
        """Which engine applies: Carina's mode, OneFlow's rules (any OneFlow key), or manual (nothing)."""
        if self.mode is not None:
            return self.mode
        if self.min_vms is not None or self.max_vms is not None or self.elasticity_policies or self.scheduled_policies:
            return "oneflow"
        return "manual"

    def zone(self) -> tzinfo:
        """The time zone windows and cron recurrences are read in (UTC unless `timezone` is set)."""
        return ZoneInfo(self.timezone) if self.timezone else UTC


def _describe_minute(minute_of_week: int) -> str:
    day, minute = divmod(minute_of_week, MINUTES_PER_DAY)
    return f"{('Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat')[day]} {minute // 60:02d}:{minute % 60:02d}"


# --- availability --------------------------------------------------------------------------------------------------


class AvailabilityPolicy(_PolicyBlock):
    """An environment's `availability_policy` block: recreate unhealthy VMs, fail over and back."""

    period: int = Field(0, ge=0, description="act when an expression held for more than this many ticks")
    recreate_expr: str | None = None
    failover_role: Literal["active", "passive"] | None = None
    failover_group: str | None = Field(None, min_length=1)
    failover_expr: str | None = None
    failback_expr: str | None = None
    metric_plugins: list[str] = Field(default_factory=list)

    @field_validator("failover_role", mode="before")
    @classmethod
    def _fold_role(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    _plugins = field_validator("metric_plugins", mode="before")(_plugin_list)

    @model_validator(mode="after")
    def _consistent(self) -> AvailabilityPolicy:
        allowed = self.variables()
        for name in ("recreate_expr", "failover_expr", "failback_expr"):
            _check_expression(name, getattr(self, name), allowed)
        if self.failover_expr is not None and (self.failover_role is None or self.failover_group is None):
            raise ValueError("failover_expr requires failover_role and failover_group")
        if self.failover_role is not None and self.failover_group is None:
            raise ValueError("failover_role requires failover_group (the name shared by the active/passive pair)")
        for name in ("failover_expr", "failback_expr"):
            if getattr(self, name) is not None and self.failover_role != "active":
                raise ValueError(f"{name} is only evaluated for failover_role 'active'")
        return self

    def variables(self) -> VariablePolicy:
        """Variables its expressions may use (`m.<metric>` only when metric plugins are declared)."""
        return AVAILABILITY_VARIABLES_WITH_PLUGINS if self.metric_plugins else AVAILABILITY_VARIABLES


def format_validation_error(error: ValidationError, prefix: str = "") -> list[str]:
    """Turns a pydantic error into one line per problem: `elasticity_policy.windows.morn.spec: unknown day ...`.

    Args:
        error: raised by `ElasticityPolicy.model_validate` or `AvailabilityPolicy.model_validate`.
        prefix: prepended to each location (e.g. `environments.tomcat.elasticity_policy`).
    """
    lines: list[str] = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "")
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = f"unknown key {item['loc'][-1]!r}"
        elif item["loc"]:
            # Field validators name their field in the message (for plain str(error)); don't say it twice.
            message = message.removeprefix(f"{item['loc'][-1]}: ")
        lines.append(f"{location}: {message}" if location else message)
    return lines
