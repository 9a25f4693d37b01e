"""Host selection for the simulated zone: SCHED_REQUIREMENTS and SCHED_RANK as OpenNebula's scheduler reads them.

Where it sits: the zone core calls :func:`choose_host` when a PENDING VM may be placed. Requirements are boolean
expressions over host attributes (``ID = 3``, ``NAME = "host*"``, ``HYPERVISOR = "kvm" & FREE_CPU > 100``,
``|``, ``!``, parentheses); RANK is an arithmetic expression over host attributes (``RUNNING_VMS`` = pack,
``-RUNNING_VMS`` = stripe, ``FREE_CPU`` / ``FREECPU`` = load-aware). The host with the highest rank wins; ties go to
the lowest host id.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence

HostAttrs = Mapping[str, str | float]

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>\"(?:[^\"\\]|\\.)*\")|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)"
    r"|(?P<op>!=|>=|<=|@>|=|>|<|&|\||!|\(|\)|\+|-|\*|/))"
)


class ExpressionError(ValueError):
    """A requirement or rank expression could not be parsed; the message points at the bad token."""


def _tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise ExpressionError(f"unexpected character {expr[pos]!r} at column {pos + 1} in {expr!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


class _Expr:
    def __init__(self, expr: str, attrs: HostAttrs) -> None:
        self.tokens = _tokenize(expr)
        self.i = 0
        self.attrs = attrs
        self.src = expr

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ExpressionError(f"unexpected end of expression {self.src!r}")
        self.i += 1
        return tok

    def done(self) -> None:
        if self.i != len(self.tokens):
            raise ExpressionError(f"unexpected token {self.tokens[self.i][1]!r} in {self.src!r}")

    def attr(self, name: str) -> str | float:
        return self.attrs.get(name.upper(), "")

    # boolean grammar: or := and ('|' and)* ; and := unary ('&' unary)* ; unary := '!' unary | '(' or ')' | cmp
    def boolean(self) -> bool:
        left = self.conj()
        while self.peek() == ("op", "|"):
            self.take()
            right = self.conj()
            left = left or right
        return left

    def conj(self) -> bool:
        left = self.unary()
        while self.peek() == ("op", "&"):
            self.take()
            right = self.unary()
            left = left and right
        return left

    def unary(self) -> bool:
        tok = self.peek()
        if tok == ("op", "!"):
            self.take()
            return not self.unary()
        if tok == ("op", "("):
            self.take()
            val = self.boolean()
            if self.take() != ("op", ")"):
                raise ExpressionError(f"missing ')' in {self.src!r}")
            return val
        return self.comparison()

    def comparison(self) -> bool:
        kind, name = self.take()
        if kind != "name":
            raise ExpressionError(f"expected an attribute name, found {name!r} in {self.src!r}")
        op_kind, op = self.take()
        if op_kind != "op" or op not in ("=", "!=", ">", "<", ">=", "<=", "@>"):
            raise ExpressionError(f"expected a comparison after {name!r}, found {op!r} in {self.src!r}")
        vkind, raw = self.take()
        value: str | float
        if vkind == "num":
            value = float(raw)
        elif vkind == "str":
            value = raw[1:-1].replace('\\"', '"')
        elif vkind == "name":
            value = raw
        elif (vkind, raw) == ("op", "-"):
            nk, nraw = self.take()
            if nk != "num":
                raise ExpressionError(f"expected a number after '-' in {self.src!r}")
            value = -float(nraw)
        else:
            raise ExpressionError(f"expected a value after {op!r}, found {raw!r} in {self.src!r}")
        actual = self.attr(name)
        return _compare(actual, op, value)

    # arithmetic grammar for RANK: sum := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)*
    def arith(self) -> float:
        left = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            right = self.term()
            left = left + right if op == "+" else left - right
        return left

    def term(self) -> float:
        left = self.factor()
        while self.peek() in (("op", "*"), ("op", "/")):
            op = self.take()[1]
            right = self.factor()
            left = left * right if op == "*" else (left / right if right else 0.0)
        return left

    def factor(self) -> float:
        kind, raw = self.take()
        if (kind, raw) == ("op", "-"):
            return -self.factor()
        if (kind, raw) == ("op", "("):
            val = self.arith()
            if self.take() != ("op", ")"):
                raise ExpressionError(f"missing ')' in {self.src!r}")
            return val
        if kind == "num":
            return float(raw)
        if kind == "name":
            return _num(self.attr(raw))
        raise ExpressionError(f"unexpected token {raw!r} in rank {self.src!r}")


def _num(v: str | float) -> float:
    if isinstance(v, float | int):
        return float(v)
    try:
        return float(v)
    except ValueError:
        return 0.0


def _compare(actual: str | float, op: str, expected: str | float) -> bool:
    if op in (">", "<", ">=", "<="):
        a, e = _num(actual), _num(expected)
        return {">": a > e, "<": a < e, ">=": a >= e, "<=": a <= e}[op]
    if isinstance(expected, float):
        equal = _num(actual) == expected if str(actual) != "" else False
    elif op == "@>":
        equal = str(expected) in str(actual).split(",")
    else:
        equal = fnmatch.fnmatchcase(str(actual), expected)
    return not equal if op == "!=" else equal


def check_requirements(expr: str, attrs: HostAttrs) -> bool:
    """Evaluate a SCHED_REQUIREMENTS expression against one host's attributes.

    Raises:
        ExpressionError: when the expression is malformed.
    """
    if not expr.strip():
        return True
    parser = _Expr(expr, attrs)
    result = parser.boolean()
    parser.done()
    return result


def rank(expr: str, attrs: HostAttrs) -> float:
    """Evaluate a SCHED_RANK expression (higher is better)."""
    if not expr.strip():
        return 0.0
    parser = _Expr(expr, attrs)
    result = parser.arith()
    parser.done()
    return result


def validate(requirements: str, rank_expr: str) -> None:
    """Parse both expressions against empty attributes so malformed input fails at allocation."""
    check_requirements(requirements, {})
    rank(rank_expr, {})


def choose_host(candidates: Sequence[tuple[int, HostAttrs]], requirements: str, rank_expr: str) -> int | None:
    """Pick the host id with the highest rank among those meeting ``requirements``.

    Args:
        candidates: (host id, attributes) of hosts that already have room for the VM.
        requirements: SCHED_REQUIREMENTS text (may be empty).
        rank_expr: SCHED_RANK text (may be empty: first fitting host).
    """
    best: tuple[float, int] | None = None
    for hid, attrs in candidates:
        if not check_requirements(requirements, attrs):
            continue
        score = rank(rank_expr, attrs)
        if best is None or score > best[0] or (score == best[0] and hid < best[1]):
            best = (score, hid)
    return None if best is None else best[1]
