"""Policy expressions: the forms Carina and OneFlow users write, their values, and errors that point at the token."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.common.expr import (
    AVAILABILITY_VARIABLES,
    AVAILABILITY_VARIABLES_WITH_PLUGINS,
    ELASTICITY_VARIABLES,
    ExpressionError,
    compile_expression,
)


def elastic(text: str, **values: float) -> bool:
    return compile_expression(text, ELASTICITY_VARIABLES).evaluate(values).value


def test_seed_elasticity_expressions() -> None:
    assert elastic("avgcpu > 50", avgcpu=55.0)
    assert not elastic("avgcpu > 50", avgcpu=50.0)
    assert elastic("avgcpu < 20", avgcpu=19.5)


def test_oneflow_expression_with_negation_and_both_equality_spellings() -> None:
    text = "ATT > 50 && !(B = 5.5 || C <= 30)"
    assert elastic(text, ATT=60, B=1, C=40)
    assert not elastic(text, ATT=60, B=5.5, C=40)
    assert not elastic(text, ATT=60, B=1, C=30)
    assert not elastic(text, ATT=50, B=1, C=40)
    assert compile_expression(text, ELASTICITY_VARIABLES).variables == {"ATT", "B", "C"}


def test_plugin_metric_names_with_a_dot() -> None:
    expression = compile_expression("m.numConnections > 100", ELASTICITY_VARIABLES)
    assert expression.variables == {"m.numConnections"}
    assert expression.evaluate({"m.numConnections": 101}).value
    assert not expression.evaluate({"m.numConnections": 100}).value


def test_failover_ratio_uses_true_division_and_accepts_the_seed_typo_numfail() -> None:
    # Ruby's integer division made (1 + 1 + 0)/3 == 0; Carina now divides truly.
    expression = compile_expression("(numunknown + nummissing + numfail)/numvms > 0.50", AVAILABILITY_VARIABLES)
    assert expression.variables == {"numunknown", "nummissing", "numfailed", "numvms"}
    values = {"numunknown": 1, "nummissing": 1, "numfailed": 0, "numvms": 3}
    assert expression.evaluate(values).value  # 2/3 > 0.5
    assert not expression.evaluate({**values, "nummissing": 0}).value  # 1/3


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("avgcpu > 50 and not avgmem > 90", {"avgcpu": 60, "avgmem": 10}, True),
        ("avgcpu > 50 or avgmem > 90", {"avgcpu": 10, "avgmem": 95}, True),
        ("avgcpu > 50 & avgmem > 90", {"avgcpu": 60, "avgmem": 10}, False),
        ("avgcpu > 50 | avgmem > 90", {"avgcpu": 60, "avgmem": 10}, True),
        ("avgcpu <> 50", {"avgcpu": 50}, False),
        ("avgcpu != 50", {"avgcpu": 51}, True),
        ("avgcpu == 50", {"avgcpu": 50}, True),
        ("avgcpu >= 50", {"avgcpu": 50}, True),
        ("-avgcpu < -50", {"avgcpu": 60}, True),
        ("2 + 3 * 4 == 14", {}, True),
        ("(2 + 3) * 4 == 20", {}, True),
        ("10 - 2 - 3 == 5", {}, True),
        ("1 / 2 > 0.4", {}, True),
        ("avgcpu * 2 / 4 > 10", {"avgcpu": 30}, True),
        ("!avgcpu > 50", {"avgcpu": 60}, False),  # '!' binds looser than the comparison: !(avgcpu > 50)
        ("1 > 2 || 3 > 2 && 1 > 2", {}, False),  # && binds tighter than ||
        ("1e2 == 100 && .5 == 0.5", {}, True),
    ],
)
def test_operators_and_precedence(text: str, values: dict[str, float], expected: bool) -> None:
    assert elastic(text, **values) is expected


def test_rendering_shows_each_input_like_oneflow() -> None:
    result = compile_expression("avgcpu > 50", ELASTICITY_VARIABLES).evaluate({"avgcpu": 55})
    assert result.rendered == "avgcpu[55.0] > 50"
    assert result.inputs == {"avgcpu": 55.0}
    composite = compile_expression("ATT > 50 && !(B = 5.5)", ELASTICITY_VARIABLES).evaluate({"ATT": 60, "B": 5.5})
    assert composite.rendered == "ATT[60.0] > 50 && !(B[5.5] = 5.5)"


def test_missing_variable_makes_its_comparison_false_and_is_reported() -> None:
    expression = compile_expression("CPU_LOAD > 50 || avgcpu > 10", ELASTICITY_VARIABLES)
    result = expression.evaluate({"avgcpu": 20})
    assert result.value  # the other side still counts
    assert result.missing == {"CPU_LOAD"}
    assert "CPU_LOAD[n/a]" in result.rendered
    assert any("CPU_LOAD" in problem for problem in result.problems)
    assert not expression.evaluate({}).value


def test_division_by_zero_is_false_with_a_reason_not_an_exception() -> None:
    expression = compile_expression("(numunknown + nummissing)/numvms > 0.5", AVAILABILITY_VARIABLES)
    result = expression.evaluate({"numunknown": 1, "nummissing": 0, "numvms": 0})
    assert result.value is False
    assert any("division by zero" in problem for problem in result.problems)


@pytest.mark.parametrize(
    ("text", "position", "token", "fragment"),
    [
        ("(avgcpu > 50))", 13, ")", "unexpected token ')' at column 14"),
        ("avgcpu > ", 9, "", "unexpected end of expression"),
        ("avgcpu >> 50", 8, ">", "unexpected token '>'"),
        ("(avgcpu > 50", 12, "", "missing ')'"),
        ("avgcpu # 50", 7, "#", "unexpected character '#'"),
        ("avgcpu > 50 &&", 14, "", "unexpected end"),
        ("avgcpu 50", 7, "50", "unexpected token '50'"),
        ("1 < avgcpu < 3", 11, "<", "cannot be chained"),
        ("avgcpu", 0, "avgcpu", "needs a condition"),
        ("avgcpu > 50 && 3", 15, "3", "needs a condition"),
        ("(avgcpu > 1) + 2 > 1", 0, "(", "needs a number"),
        ("", 0, "", "empty expression"),
    ],
)
def test_syntax_errors_point_at_the_offending_token(text: str, position: int, token: str, fragment: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text, ELASTICITY_VARIABLES)
    error = caught.value
    assert error.position == position
    assert error.token == token
    assert fragment in str(error)
    # The caret line sits under the offending column.
    picture = str(error).splitlines()
    assert picture[-1].index("^") - 2 == position


@pytest.mark.parametrize(
    ("text", "allowed", "name", "position"),
    [
        ("avgcpuu > 50", ELASTICITY_VARIABLES, "avgcpuu", 0),
        ("avgcpu > 50 && Load > 3", ELASTICITY_VARIABLES, "Load", 15),
        ("x.y > 1", ELASTICITY_VARIABLES, "x.y", 0),
        ("numfailed > 0 || avgcpu > 50", AVAILABILITY_VARIABLES, "avgcpu", 17),
        ("nummissing > 0 || m.health < 1", AVAILABILITY_VARIABLES, "m.health", 18),
        ("CPU > 1", AVAILABILITY_VARIABLES, "CPU", 0),
        ("nummissing > 0 || numvms > 2 || nummissing > numsick", AVAILABILITY_VARIABLES, "numsick", 45),
    ],
)
def test_unknown_variables_are_refused_with_name_and_column(text: str, allowed: object, name: str,
                                                            position: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text, allowed)  # type: ignore[arg-type]
    assert caught.value.position == position
    assert caught.value.token == name
    assert f"unknown variable {name!r} at column {position + 1}" in str(caught.value)


def test_availability_may_read_plugin_metrics_only_when_plugins_are_declared() -> None:
    expression = compile_expression("m.mysqlHealth < 1", AVAILABILITY_VARIABLES_WITH_PLUGINS)
    assert expression.evaluate({"m.mysqlHealth": 0}).value


def test_error_is_a_value_error_so_validators_report_it() -> None:
    with pytest.raises(ValueError, match="avgcpuu"):
        compile_expression("avgcpuu > 1", ELASTICITY_VARIABLES)


# --- properties ----------------------------------------------------------------------------------------------------

numbers = st.integers(min_value=-1000, max_value=1000)


@st.composite
def arithmetic(draw: st.DrawFn, depth: int = 0) -> tuple[str, float]:
    """A random arithmetic expression over integers, with its value computed independently."""
    if depth >= 3 or draw(st.booleans()):
        leaf = draw(numbers)
        return (f"({leaf})" if leaf < 0 else str(leaf)), float(leaf)
    left_text, left = draw(arithmetic(depth + 1))
    right_text, right = draw(arithmetic(depth + 1))
    op = draw(st.sampled_from(["+", "-", "*"]))
    value = left + right if op == "+" else left - right if op == "-" else left * right
    return f"({left_text} {op} {right_text})", value


@given(arithmetic(), numbers)
def test_arithmetic_matches_independent_computation(pair: tuple[str, float], threshold: int) -> None:
    text, value = pair
    result = compile_expression(f"{text} > {threshold}", ELASTICITY_VARIABLES).evaluate({})
    assert result.value is (value > threshold)


@given(st.text(alphabet="avgcpu m.() <>=!&|+-*/0123456789 \t.", max_size=40))
def test_any_text_either_compiles_or_raises_expression_error(text: str) -> None:
    try:
        expression = compile_expression(text, ELASTICITY_VARIABLES)
    except ExpressionError as error:
        assert 0 <= error.position <= len(text)
    else:
        # Whatever compiled evaluates without raising, with or without values.
        expression.evaluate({})
        expression.evaluate({"avgcpu": 0.0})
