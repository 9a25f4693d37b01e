"""Safe policy expressions: the condition language of elasticity and availability policies.

Where it sits: configuration upload (`libs.common.policy_model`) compiles every expression once, so a typo is refused
with the column of the offending token before anything runs; the policy engine (`services.policy.engine`) evaluates
the compiled form on every tick against the metrics and VM counters of one environment. Nothing here does I/O and
nothing is ever handed to `eval`.

The language is the union of Carina's (Ruby expressions over `avgcpu`, `nummissing`, ..., `m.<metric>`) and
OneFlow's (Treetop grammar over VM attribute names):

    expr        := or
    or          := and (("||" | "|" | "or") and)*
    and         := not (("&&" | "&" | "and") not)*
    not         := ("!" | "not") not | comparison
    comparison  := sum (("==" | "=" | "!=" | "<>" | ">=" | ">" | "<=" | "<") sum)?
    sum         := product (("+" | "-") product)*
    product     := unary (("*" | "/") unary)*
    unary       := "-" unary | "+" unary | primary
    primary     := NUMBER | NAME | "(" expr ")"

`!` binds looser than a comparison, so `!a > 5` means `!(a > 5)`. Expressions are statically typed: arithmetic
and comparisons take numbers, `&& || !` take conditions, and the whole expression must be a condition. Division is
true division (Carina's Ruby integer division made `1/2 > 0.4` false; here it is true).

Evaluation follows OneFlow where values are absent: a comparison that needs a missing variable is false, and so is
one that divides by zero; both are reported in the result instead of raising.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from libs.common.errors import PermanentError

__all__ = [
    "AVAILABILITY_VARIABLES",
    "AVAILABILITY_VARIABLES_WITH_PLUGINS",
    "ELASTICITY_VARIABLES",
    "EvalResult",
    "Expression",
    "ExpressionError",
    "VariablePolicy",
    "compile_expression",
]


class ExpressionError(PermanentError, ValueError):
    """An expression that cannot be compiled.

    It is a `ValueError` so pydantic validators turn it into a field error, and a `PermanentError` so a message
    carrying it is not retried.

    Attributes:
        text: the whole expression.
        position: 0-based column of the offending token (len(text) when the expression ended too early).
        token: the offending token as written ("" at the end of the expression).
        reason: the message without the caret picture.
    """

    def __init__(self, reason: str, text: str, position: int, token: str) -> None:
        self.text = text
        self.position = position
        self.token = token
        self.reason = reason
        super().__init__(f"{reason}\n  {text}\n  {' ' * position}^")


# --- variable policies ---------------------------------------------------------------------------------------------

_PLUGIN_METRIC = re.compile(r"m\.[A-Za-z_][A-Za-z0-9_]*")
_ONEFLOW_ATTRIBUTE = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class VariablePolicy:
    """Which variable names an expression may use.

    Attributes:
        kind: what the expressions are for ("availability", "elasticity"), used in error messages.
        names: plain lower-case names that are accepted as they are.
        aliases: accepted spellings mapped to their canonical name (Carina's seed writes `numfail`).
        plugin_metrics: accept `m.<name>` (values from metric plugins or guest pushes).
        oneflow_attributes: accept all-UPPERCASE names (OneFlow-style averaged VM attributes such as CPU_LOAD).
    """

    kind: str
    names: frozenset[str]
    aliases: tuple[tuple[str, str], ...] = ()
    plugin_metrics: bool = False
    oneflow_attributes: bool = False

    def canonical(self, name: str) -> str | None:
        """Returns the canonical spelling of `name`, or None when this policy does not allow it."""
        if name in self.names:
            return name
        for alias, target in self.aliases:
            if name == alias:
                return target
        if self.plugin_metrics and _PLUGIN_METRIC.fullmatch(name):
            return name
        if self.oneflow_attributes and _ONEFLOW_ATTRIBUTE.fullmatch(name):
            return name
        return None

    def describe(self) -> str:
        """A short human list of what is allowed, for error messages."""
        parts = sorted(self.names)
        if self.plugin_metrics:
            parts.append("m.<metric>")
        if self.oneflow_attributes:
            parts.append("UPPERCASE attribute names")
        return ", ".join(parts)


AVAILABILITY_VARIABLES = VariablePolicy(
    kind="availability",
    names=frozenset({"nummissing", "numunknown", "numfailed", "numvms", "numrunning"}),
    aliases=(("numfail", "numfailed"),),
)
"""Counters of the environment's VMs by state (Carina's availability variables, plus numrunning)."""

AVAILABILITY_VARIABLES_WITH_PLUGINS = VariablePolicy(
    kind="availability",
    names=AVAILABILITY_VARIABLES.names,
    aliases=AVAILABILITY_VARIABLES.aliases,
    plugin_metrics=True,
)
"""Availability variables plus `m.<metric>`, for availability policies that declare `metric_plugins`."""

ELASTICITY_VARIABLES = VariablePolicy(
    kind="elasticity",
    names=frozenset({"avgcpu", "avgmem", "numvms"}),
    plugin_metrics=True,
    oneflow_attributes=True,
)
"""Averaged load of the environment's VMs, plugin metrics and OneFlow-style attribute names."""


# --- tokens --------------------------------------------------------------------------------------------------------

TokenKind = Literal["num", "name", "op", "end"]

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>&&|\|\||==|!=|<>|>=|<=|[-+*/()<>=!&|])
    """,
    re.VERBOSE,
)

_WORD_OPERATORS = {"and": "&&", "or": "||", "not": "!"}
_OR = {"||", "|"}
_AND = {"&&", "&"}
_COMPARISONS = {"==", "=", "!=", "<>", ">=", ">", "<=", "<"}


@dataclass(frozen=True)
class _Token:
    kind: TokenKind
    text: str
    position: int
    op: str = ""  # normalised operator for "op" tokens and word operators


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            bad = text[position]
            raise ExpressionError(
                f"unexpected character {bad!r} at column {position + 1}", text, position, bad
            )
        kind = match.lastgroup
        lexeme = match.group()
        if kind == "num":
            tokens.append(_Token("num", lexeme, position))
        elif kind == "name":
            word = _WORD_OPERATORS.get(lexeme)
            if word is not None:
                tokens.append(_Token("op", lexeme, position, word))
            else:
                tokens.append(_Token("name", lexeme, position))
        elif kind == "op":
            tokens.append(_Token("op", lexeme, position, lexeme))
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


# --- syntax tree ---------------------------------------------------------------------------------------------------

ValueType = Literal["number", "condition"]


@dataclass(frozen=True)
class _Node:
    position: int


@dataclass(frozen=True)
class _Number(_Node):
    value: float
    lexeme: str


@dataclass(frozen=True)
class _Variable(_Node):
    name: str  # canonical
    written: str  # as the user spelled it


@dataclass(frozen=True)
class _Unary(_Node):
    op: str  # "-", "+", "!"
    operand: _Node
    written: str


@dataclass(frozen=True)
class _Binary(_Node):
    op: str  # normalised: + - * / comparisons && ||
    left: _Node
    right: _Node
    written: str


@dataclass(frozen=True)
class _Group(_Node):
    inner: _Node


def _type_of(node: _Node) -> ValueType:
    if isinstance(node, _Group):
        return _type_of(node.inner)
    if isinstance(node, _Unary):
        return "condition" if node.op == "!" else "number"
    if isinstance(node, _Binary):
        return "number" if node.op in {"+", "-", "*", "/"} else "condition"
    return "number"


class _Parser:
    """Recursive descent with one token of look-ahead; every error carries the offending token's column."""

    def __init__(self, text: str, allowed: VariablePolicy) -> None:
        self.text = text
        self.allowed = allowed
        self.tokens = _tokenize(text)
        self.index = 0
        self.variables: set[str] = set()

    # helpers
    def _peek(self) -> _Token:
        return self.tokens[self.index]

    def _advance(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def _error(self, token: _Token, reason: str | None = None) -> ExpressionError:
        if reason is None:
            if token.kind == "end":
                reason = f"unexpected end of expression at column {token.position + 1}"
            else:
                reason = f"unexpected token {token.text!r} at column {token.position + 1}"
        return ExpressionError(reason, self.text, token.position, token.text)

    def _expect_type(self, node: _Node, wanted: ValueType, context: str) -> None:
        actual = _type_of(node)
        if actual != wanted:
            article = "a number" if wanted == "number" else "a condition (a comparison such as 'avgcpu > 50')"
            token = self._token_at(node.position)
            raise ExpressionError(
                f"{context} needs {article}, found {'a number' if actual == 'number' else 'a condition'} "
                f"at column {node.position + 1}",
                self.text,
                node.position,
                token,
            )

    def _token_at(self, position: int) -> str:
        for token in self.tokens:
            if token.position == position:
                return token.text
        return ""

    # grammar
    def parse(self) -> _Node:
        if self._peek().kind == "end":
            raise ExpressionError("empty expression", self.text, 0, "")
        node = self._or()
        trailing = self._peek()
        if trailing.kind != "end":
            raise self._error(trailing)
        self._expect_type(node, "condition", "the expression")
        return node

    def _or(self) -> _Node:
        left = self._and()
        while self._peek().kind == "op" and self._peek().op in _OR:
            token = self._advance()
            right = self._and()
            self._expect_type(left, "condition", f"'{token.text}'")
            self._expect_type(right, "condition", f"'{token.text}'")
            left = _Binary(token.position, "||", left, right, token.text)
        return left

    def _and(self) -> _Node:
        left = self._not()
        while self._peek().kind == "op" and self._peek().op in _AND:
            token = self._advance()
            right = self._not()
            self._expect_type(left, "condition", f"'{token.text}'")
            self._expect_type(right, "condition", f"'{token.text}'")
            left = _Binary(token.position, "&&", left, right, token.text)
        return left

    def _not(self) -> _Node:
        token = self._peek()
        if token.kind == "op" and token.op == "!":
            self._advance()
            operand = self._not()
            self._expect_type(operand, "condition", f"'{token.text}'")
            return _Unary(token.position, "!", operand, token.text)
        return self._comparison()

    def _comparison(self) -> _Node:
        left = self._sum()
        token = self._peek()
        if token.kind == "op" and token.op in _COMPARISONS:
            self._advance()
            right = self._sum()
            self._expect_type(left, "number", f"comparison '{token.text}'")
            self._expect_type(right, "number", f"comparison '{token.text}'")
            after = self._peek()
            if after.kind == "op" and after.op in _COMPARISONS:
                raise self._error(
                    after,
                    f"comparisons cannot be chained: unexpected {after.text!r} at column {after.position + 1} "
                    "(combine them with && or ||)",
                )
            op = {"=": "==", "<>": "!="}.get(token.op, token.op)
            return _Binary(token.position, op, left, right, token.text)
        return left

    def _sum(self) -> _Node:
        left = self._product()
        while self._peek().kind == "op" and self._peek().op in {"+", "-"}:
            token = self._advance()
            right = self._product()
            self._expect_type(left, "number", f"'{token.text}'")
            self._expect_type(right, "number", f"'{token.text}'")
            left = _Binary(token.position, token.op, left, right, token.text)
        return left

    def _product(self) -> _Node:
        left = self._unary()
        while self._peek().kind == "op" and self._peek().op in {"*", "/"}:
            token = self._advance()
            right = self._unary()
            self._expect_type(left, "number", f"'{token.text}'")
            self._expect_type(right, "number", f"'{token.text}'")
            left = _Binary(token.position, token.op, left, right, token.text)
        return left

    def _unary(self) -> _Node:
        token = self._peek()
        if token.kind == "op" and token.op in {"-", "+"}:
            self._advance()
            operand = self._unary()
            self._expect_type(operand, "number", f"unary '{token.text}'")
            return _Unary(token.position, token.op, operand, token.text)
        return self._primary()

    def _primary(self) -> _Node:
        token = self._advance()
        if token.kind == "num":
            return _Number(token.position, float(token.text), token.text)
        if token.kind == "name":
            canonical = self.allowed.canonical(token.text)
            if canonical is None:
                raise ExpressionError(
                    f"unknown variable {token.text!r} at column {token.position + 1} "
                    f"({self.allowed.kind} expressions may use {self.allowed.describe()})",
                    self.text,
                    token.position,
                    token.text,
                )
            self.variables.add(canonical)
            return _Variable(token.position, canonical, token.text)
        if token.kind == "op" and token.op == "(":
            inner = self._or()
            closing = self._peek()
            if not (closing.kind == "op" and closing.op == ")"):
                if closing.kind == "end":
                    raise self._error(
                        closing,
                        f"missing ')' at column {closing.position + 1} to close '(' at column {token.position + 1}",
                    )
                raise self._error(closing)
            self._advance()
            return _Group(token.position, inner)
        raise self._error(token)


# --- evaluation ----------------------------------------------------------------------------------------------------


class _Undefined:
    """A number that could not be computed (missing variable, division by zero, overflow)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(frozen=True)
class EvalResult:
    """The outcome of evaluating an expression once.

    Attributes:
        value: the truth value of the expression.
        rendered: the expression with each variable's value in brackets, like OneFlow's `expression_evaluated`
            (`avgcpu[55.0] > 50`); a variable without a value shows as `name[n/a]`.
        inputs: the value used for each variable (None when missing).
        missing: variables that had no value; comparisons that needed them were false.
        problems: why a comparison could not be computed (missing values, division by zero).
    """

    value: bool
    rendered: str
    inputs: dict[str, float | None] = field(default_factory=dict)
    missing: frozenset[str] = frozenset()
    problems: tuple[str, ...] = ()

    @property
    def is_true(self) -> bool:
        """True when the condition holds."""
        return self.value


def _format_value(value: float) -> str:
    return repr(float(value))


class Expression:
    """A compiled, type-checked expression. Build it with `compile_expression`."""

    def __init__(self, text: str, root: _Node, variables: frozenset[str], allowed: VariablePolicy) -> None:
        self._text = text
        self._root = root
        self._variables = variables
        self._allowed = allowed

    @property
    def text(self) -> str:
        """The expression as written."""
        return self._text

    @property
    def variables(self) -> frozenset[str]:
        """Canonical names of the variables the expression reads (`numfail` is reported as `numfailed`)."""
        return self._variables

    def __repr__(self) -> str:
        return f"Expression({self._text!r})"

    def __str__(self) -> str:
        return self._text

    def evaluate(self, values: Mapping[str, float]) -> EvalResult:
        """Evaluates the expression; never raises for missing values or arithmetic problems.

        Args:
            values: variable values keyed by canonical name (`m.numConnections`, `CPU_LOAD`, `numfailed`).

        Returns:
            The truth value, a rendering with the inputs, and what could not be computed.
        """
        problems: list[str] = []
        missing: set[str] = set()
        inputs: dict[str, float | None] = {}
        for name in sorted(self._variables):
            raw = values.get(name)
            if raw is None or (isinstance(raw, float) and math.isnan(raw)):
                inputs[name] = None
                missing.add(name)
            else:
                inputs[name] = float(raw)
        truth = self._condition(self._root, inputs, problems)
        return EvalResult(
            value=truth,
            rendered=self._render(self._root, inputs),
            inputs=inputs,
            missing=frozenset(missing),
            problems=tuple(dict.fromkeys(problems)),
        )

    # evaluation helpers
    def _number(self, node: _Node, inputs: Mapping[str, float | None]) -> float | _Undefined:
        if isinstance(node, _Number):
            return node.value
        if isinstance(node, _Variable):
            value = inputs.get(node.name)
            return _Undefined(f"no value for {node.name}") if value is None else value
        if isinstance(node, _Group):
            return self._number(node.inner, inputs)
        if isinstance(node, _Unary):
            operand = self._number(node.operand, inputs)
            if isinstance(operand, _Undefined):
                return operand
            return -operand if node.op == "-" else operand
        if isinstance(node, _Binary):
            left = self._number(node.left, inputs)
            if isinstance(left, _Undefined):
                return left
            right = self._number(node.right, inputs)
            if isinstance(right, _Undefined):
                return right
            if node.op == "+":
                result = left + right
            elif node.op == "-":
                result = left - right
            elif node.op == "*":
                result = left * right
            else:
                if right == 0:
                    return _Undefined(f"division by zero at column {node.position + 1}")
                result = left / right
            if math.isinf(result) or math.isnan(result):
                return _Undefined(f"arithmetic overflow at column {node.position + 1}")
            return result
        raise TypeError(f"not a number node: {node!r}")  # unreachable: the parser type-checks

    def _condition(self, node: _Node, inputs: Mapping[str, float | None], problems: list[str]) -> bool:
        if isinstance(node, _Group):
            return self._condition(node.inner, inputs, problems)
        if isinstance(node, _Unary):
            return not self._condition(node.operand, inputs, problems)
        if isinstance(node, _Binary):
            if node.op == "&&":
                # Both sides are evaluated so every problem is reported, not just the first.
                left_and = self._condition(node.left, inputs, problems)
                right_and = self._condition(node.right, inputs, problems)
                return left_and and right_and
            if node.op == "||":
                left_or = self._condition(node.left, inputs, problems)
                right_or = self._condition(node.right, inputs, problems)
                return left_or or right_or
            left = self._number(node.left, inputs)
            right = self._number(node.right, inputs)
            for side in (left, right):
                if isinstance(side, _Undefined):
                    problems.append(f"{side.reason}: '{self._render(node, inputs)}' is false")
                    return False
            assert isinstance(left, float) and isinstance(right, float)
            return _compare(node.op, left, right)
        raise TypeError(f"not a condition node: {node!r}")  # unreachable: the parser type-checks

    def _render(self, node: _Node, inputs: Mapping[str, float | None]) -> str:
        if isinstance(node, _Number):
            return node.lexeme
        if isinstance(node, _Variable):
            value = inputs.get(node.name)
            return f"{node.written}[{'n/a' if value is None else _format_value(value)}]"
        if isinstance(node, _Group):
            return f"({self._render(node.inner, inputs)})"
        if isinstance(node, _Unary):
            separator = " " if node.written.isalpha() else ""
            return f"{node.written}{separator}{self._render(node.operand, inputs)}"
        if isinstance(node, _Binary):
            return f"{self._render(node.left, inputs)} {node.written} {self._render(node.right, inputs)}"
        raise TypeError(f"unknown node: {node!r}")


def _compare(op: str, left: float, right: float) -> bool:
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    if op == ">=":
        return left >= right
    if op == ">":
        return left > right
    if op == "<=":
        return left <= right
    return left < right


@functools.lru_cache(maxsize=1024)
def _compile_cached(text: str, allowed: VariablePolicy) -> Expression:
    parser = _Parser(text, allowed)
    root = parser.parse()
    return Expression(text, root, frozenset(parser.variables), allowed)


def compile_expression(text: str, allowed: VariablePolicy) -> Expression:
    """Parses and type-checks a policy expression.

    Args:
        text: the expression, e.g. `(numunknown + nummissing + numfailed)/numvms > 0.50`.
        allowed: which variables it may use (`AVAILABILITY_VARIABLES`, `ELASTICITY_VARIABLES`, ...).

    Returns:
        The compiled expression (compiled forms are cached, so calling this on every tick is cheap).

    Raises:
        ExpressionError: on a syntax error, a type error (e.g. `avgcpu && 1`) or a variable the policy does not
            allow; `.position` is the 0-based column of the offending token, the message shows it 1-based with a
            caret under it.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"an expression must be text, got {type(text).__name__}", "", 0, "")
    return _compile_cached(text, allowed)
