"""The Ruby-hash parser: every piece of syntax Carina's config files use, errors with positions, and no evaluation."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.rubyhash import (
    MAX_DEPTH,
    RubyHashError,
    RubyValue,
    parse_constants,
    parse_document,
    parse_value,
)

# --- structure -------------------------------------------------------------------------------------------------------


def test_constants_in_file_order_including_unknown_ones() -> None:
    text = "ENDPOINT = { 'a' => 1 }\nTEMPLATE = {}\nMY_OWN = [1, 2]\nENVIRONMENT = {}\n"
    constants = parse_constants(text)
    assert list(constants) == ["ENDPOINT", "TEMPLATE", "MY_OWN", "ENVIRONMENT"]
    assert constants["MY_OWN"] == [1, 2]


def test_key_kinds_become_plain_python_keys() -> None:
    value = parse_value('{ \'single\' => 1, "double" => 2, :symbol => 3, 42 => 4, label: 5, "quoted label": 6 }')
    assert value == {"single": 1, "double": 2, "symbol": 3, 42: 4, "label": 5, "quoted label": 6}


def test_symbol_values_become_strings() -> None:
    assert parse_value('[:pack, :"time-based", :ok?]') == ["pack", "time-based", "ok?"]


def test_scalar_values() -> None:
    value = parse_value("[1, -7, 1_000, 0x1F, 0b101, 0o17, 017, 0, 2.5, -0.5, 1e3, 1.5E-2, true, false, nil]")
    assert value == [1, -7, 1000, 31, 5, 15, 15, 0, 2.5, -0.5, 1000.0, 0.015, True, False, None]
    assert [type(item) for item in value[:8]] == [int] * 8


def test_nested_hashes_and_arrays_with_trailing_commas_and_newlines_anywhere() -> None:
    text = """
    X = {
      'tomcat' =>
        {
          :windows =>
            { 'morn' => { :spec => 'Mon-Fri 0900-1300', :min => 6, }, },
          :members => [
            'hbase',
            'tomcat',
          ],
          :empty_hash => {},
          :empty_list => [],
        },
    }
    """
    assert parse_constants(text) == {
        "X": {
            "tomcat": {
                "windows": {"morn": {"spec": "Mon-Fri 0900-1300", "min": 6}},
                "members": ["hbase", "tomcat"],
                "empty_hash": {},
                "empty_list": [],
            }
        }
    }


def test_statements_separated_by_semicolons() -> None:
    assert parse_constants("A = 1; B = 'x';") == {"A": 1, "B": "x"}


# --- strings ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ruby", "expected"),
    [
        (r'"a\"b"', 'a"b'),
        (r'"back\\slash"', "back\\slash"),
        (r'"line\nbreak\ttab"', "line\nbreak\ttab"),
        (r'"\s\e\a"', " \x1b\a"),
        (r'"\u00e9\u{1F600 41}"', "é\U0001f600A"),
        (r'"\x41\101\0"', "AA\x00"),
        (r'"\q\#{not interpolated}"', "q#{not interpolated}"),
        (r'"\"MOUNTLIST=\\/vol\\/data{1-6},\""', '"MOUNTLIST=\\/vol\\/data{1-6},"'),
        (r'"hash # is not a comment"', "hash # is not a comment"),
        ('"spans\ntwo lines"', "spans\ntwo lines"),
        ('"joined \\\nline"', "joined line"),
    ],
)
def test_double_quoted_escapes(ruby: str, expected: str) -> None:
    assert parse_value(ruby) == expected


@pytest.mark.parametrize(
    ("ruby", "expected"),
    [
        (r"'it\'s'", "it's"),
        (r"'back\\slash'", "back\\slash"),
        (r"'no\nescape'", "no\\nescape"),
        (r"'\/vol\/data'", "\\/vol\\/data"),
        (r"'#{literal}'", "#{literal}"),
    ],
)
def test_single_quoted_strings_follow_ruby_rules(ruby: str, expected: str) -> None:
    assert parse_value(ruby) == expected


def test_adjacent_strings_on_one_line_are_joined() -> None:
    assert parse_value('{ :a => "abc" \'def\' "g" }') == {"a": "abcdefg"}


def test_line_continuation_joins_strings_across_lines() -> None:
    assert parse_value('{ :a => "abc" \\\n "def" }') == {"a": "abcdef"}


# --- comments --------------------------------------------------------------------------------------------------------


def test_comments_everywhere() -> None:
    text = """# leading comment
=begin
NOT_PARSED = { this is not ruby
=end
A = { # after the brace
  :x => 1, # after a value
  # on its own line
  :y => '#not a comment', # trailing
} # after the closing brace
=begin another block
=end
B = 2
__END__
anything { at all
"""
    assert parse_constants(text) == {"A": {"x": 1, "y": "#not a comment"}, "B": 2}


# --- document details ------------------------------------------------------------------------------------------------


def test_positions_and_ruby_spelling_of_paths() -> None:
    doc = parse_document("ENVIRONMENT = {\n  'tomcat' => {\n    :num_slaves => 2,\n    count: 3 } }\n")
    assert doc.position(("ENVIRONMENT", "tomcat", "num_slaves")) == (3, 20)
    assert doc.describe(("ENVIRONMENT", "tomcat", "num_slaves")) == "ENVIRONMENT['tomcat'][:num_slaves]"
    assert doc.describe(("ENVIRONMENT", "tomcat", "count")) == "ENVIRONMENT['tomcat'][:count]"
    assert doc.position(("ENVIRONMENT", "missing")) is None


def test_duplicates_warn_and_the_later_value_wins_as_in_ruby() -> None:
    doc = parse_document("A = { :x => 1, :x => 2 }\nA = { :y => 3 }\n")
    assert doc.constants == {"A": {"y": 3}}
    assert any("duplicate key 'x'" in w and "line 1" in w for w in doc.warnings)
    assert any("constant A is assigned again" in w for w in doc.warnings)
    # positions describe the surviving value only
    assert ("A", "x") not in doc.positions


# --- errors ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        # the classic: a missing comma at the end of a line
        ("T = {\n  'e' => {\n    :cpu => 1\n    :memory => 1024 } }", 4, 5, "expected ',' or '}' but found ':memory'"),
        ("T = { :a :b }", 1, 10, "expected '=>' after the key ':a' but found ':b'"),
        ("T = { 'a' : 1 }", 1, 11, "put no space before ':'"),
        ("T = {\n  :a => 1,\n", 3, 1, "the '{' at line 1, column 5 is never closed"),
        ("T = [1, 2", 1, 10, "the '[' at line 1, column 5 is never closed"),
        ("T = [1 2]", 1, 8, "expected ',' or ']' but found '2'"),
        ("T = { :a => 'oops }", 1, 13, "never closed"),
        ("T = { 1.5 => 2 }", 1, 7, "expected a hash key"),
        ("T = { :a => 08 }", 1, 13, "malformed number '08'"),
        ("T = { :a => 12abc }", 1, 13, "malformed number '12abc'"),
        ("T = { :a => ? }", 1, 13, "unexpected character '?'"),
        ("T = 1 U = 2", 1, 7, "expected the end of the line after the value of T"),
        ("t = 1", 1, 1, "expected a constant assignment"),
        ("T 1", 1, 3, "expected '=' after the constant name T"),
        ("T = OTHER", 1, 5, "references to other constants are not supported"),
        ("T = Foo::Bar", 1, 8, "'::'"),
        ("=begin\nnever closed", 1, 1, "'=begin' comment is never closed"),
        ("T = { :a => %w[a b] }", 1, 13, "percent literals"),
        ("T = { :a => <<EOS\nx\nEOS\n}", 1, 13, "heredocs"),
        ("T = { :a => @x }", 1, 13, "variables are not supported"),
        ('T = "\\u12"', 1, 6, "invalid \\u escape"),
        ("T = {} .freeze", 1, 8, "end of the line after the value of T"),
    ],
)
def test_errors_name_line_and_column(text: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(RubyHashError) as info:
        parse_constants(text)
    error = info.value
    assert (error.line, error.column) == (line, column), str(error)
    assert fragment in str(error)
    assert str(error).startswith(f"line {line}, column {column}: ")


def test_error_is_a_validation_failure_with_a_problem_entry() -> None:
    with pytest.raises(RubyHashError) as info:
        parse_constants("T = {")
    assert info.value.problems == [("line 1, column 6", info.value.reason)]


def test_nesting_is_bounded() -> None:
    deep = "T = " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5)
    with pytest.raises(RubyHashError, match="nesting deeper"):
        parse_constants(deep)


# --- never evaluated -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('system("rm -rf /")', "method calls and variables are not allowed"),
        ('X = system("rm -rf /")', "method calls and variables are not allowed"),
        ("X = { :a => `rm -rf /` }", "backticks run shell commands"),
        ("X = { :a => \"#{File.delete('x')}\" }", "string interpolation"),
        ('X = { :a => "#@secret" }', "string interpolation"),
        ("X = { :a => %x(rm -rf /) }", "percent literals"),
        ("require 'fileutils'", "method calls and variables are not allowed"),
        ("X = { :a => eval('1') }", "method calls and variables are not allowed"),
        ("X = { :a => 1 }; exit!", "method calls and variables are not allowed"),
    ],
)
def test_code_is_a_syntax_error_never_run(text: str, fragment: str) -> None:
    with pytest.raises(RubyHashError, match="line 1") as info:
        parse_constants(text)
    assert fragment in str(info.value)


# --- properties ------------------------------------------------------------------------------------------------------

_names = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=8).filter(
    lambda s: s not in ("true", "false", "nil")
)
_scalars = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.booleans(),
    st.none(),
)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-99, 99)), children, max_size=4),
    ),
    max_leaves=20,
)


def _ruby_string(text: str, quote: str) -> str:
    if quote == "'":
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    out = []
    for char in text:
        if char in '\\"#':
            out.append("\\" + char)
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _to_ruby(value: RubyValue, style: int) -> str:
    """A test-side writer of Ruby literals, varying the spelling with `style`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _ruby_string(value, "'" if style % 2 else '"')
    if isinstance(value, list):
        trailing = ", " if value and style % 3 == 0 else ""  # Ruby allows a trailing comma, not a lone one
        return "[" + ", ".join(_to_ruby(item, style + 1) for item in value) + trailing + "]"
    pairs = []
    for index, (key, item) in enumerate(value.items()):
        rendered = _to_ruby(item, style + index)
        if isinstance(key, str) and key.isidentifier() and key.isascii() and (style + index) % 2:
            pairs.append(f":{key} => {rendered}" if index % 2 else f"{key}: {rendered}")
        else:
            pairs.append(f"{_to_ruby(key, style + index)} =>\n  {rendered}")
    return "{\n" + ",\n".join(pairs) + ("\n}" if style % 2 or not pairs else ",  # trailing\n}")


@settings(max_examples=200, deadline=None)
@given(value=_values, style=st.integers(0, 5))
def test_round_trip_of_generated_literals(value: RubyValue, style: int) -> None:
    text = f"VALUE = {_to_ruby(value, style)}\n"
    assert parse_constants(text) == {"VALUE": value}


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("{}[]=>,:'\"#\\ \n=aZ_1.-%`@$()")), max_size=40))
def test_arbitrary_text_either_parses_or_raises_a_positioned_error(text: str) -> None:
    try:
        parse_document(text)
    except RubyHashError as error:
        assert error.line >= 1 and error.column >= 1
