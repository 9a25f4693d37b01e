"""Parser for Carina's Ruby-hash configuration files (`config.rb`, `global.rb`).

Where it sits: the first step of carrying a Carina installation over. `libs.common.carina_import` calls
`parse_document` on the text a user uploads, then maps the resulting plain Python values onto the native
configuration shape. Nothing here runs Ruby or any other code: the text is split into tokens and read by a small
recursive-descent parser that only knows literal syntax, so `system("rm -rf /")`, backticks or `#{...}`
interpolation are syntax errors, not actions.

Accepted syntax (the subset Carina users wrote, plus what Ruby allows around it):

    document  := { CONSTANT "=" value ( NEWLINE | ";" ) }
    value     := hash | array | string { string } | symbol | integer | float | true | false | nil
    hash      := "{" [ pair { "," pair } [ "," ] ] "}"
    pair      := key "=>" value | NAME ":" value | string ":" value
    key       := string | symbol | integer
    array     := "[" [ value { "," value } [ "," ] ] "]"

Comments (`#` to the end of the line, `=begin`/`=end` blocks), `__END__`, line continuations and newlines inside
brackets are skipped. Strings follow Ruby's quoting rules (double quotes process escapes, single quotes only
`\\\\` and `\\'`); adjacent strings on one line are concatenated. Symbol keys and symbol values become plain
strings (`:proxy` -> `"proxy"`); the document remembers which keys were symbols so messages can spell paths the
way the user wrote them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TypeAlias

from libs.common.errors import ValidationFailed

__all__ = [
    "KeyPath",
    "RubyDocument",
    "RubyHashError",
    "RubyKey",
    "RubyValue",
    "parse_constants",
    "parse_document",
    "parse_value",
]

RubyKey: TypeAlias = str | int
RubyValue: TypeAlias = str | int | float | bool | None | list["RubyValue"] | dict[RubyKey, "RubyValue"]
KeyPath: TypeAlias = tuple[RubyKey, ...]
"""Where a value sits: the constant name, then one key (or list index) per level."""

# Deeper nesting than this is certainly not a configuration file; refusing it keeps recursion bounded.
MAX_DEPTH = 64


class RubyHashError(ValidationFailed, ValueError):
    """The text is not a literal Ruby-hash configuration.

    Attributes:
        line: 1-based line of the offending token.
        column: 1-based column of the offending token.
        reason: the message without the position prefix.
    """

    def __init__(self, reason: str, line: int, column: int) -> None:
        self.line = line
        self.column = column
        self.reason = reason
        where = f"line {line}, column {column}"
        super().__init__(f"{where}: {reason}", [(where, reason)])


@dataclass
class RubyDocument:
    """A parsed configuration file.

    Attributes:
        constants: constant name -> value, in file order.
        warnings: things Ruby accepts but that are probably mistakes (duplicate keys, reassigned constants).
        positions: key path -> (line, column) where that value starts.
        symbol_keys: key paths whose last key was written as a symbol (`:proxy` or `proxy:`).
    """

    constants: dict[str, RubyValue] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    positions: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    symbol_keys: set[KeyPath] = field(default_factory=set)

    def describe(self, path: KeyPath) -> str:
        """Spell a key path as Ruby code would index it: `ENVIRONMENT['tomcat'][:num_slaves]`.

        Args:
            path: constant name followed by keys; keys not seen in the document are shown as strings.

        Returns:
            The path in Ruby indexing notation.
        """
        if not path:
            return "<document>"
        parts = [str(path[0])]
        for depth in range(1, len(path)):
            key = path[depth]
            if isinstance(key, int):
                parts.append(f"[{key}]")
            elif path[: depth + 1] in self.symbol_keys:
                parts.append(f"[:{key}]")
            else:
                parts.append(f"[{_quote(key)}]")
        return "".join(parts)

    def position(self, path: KeyPath) -> tuple[int, int] | None:
        """Where the value at `path` starts, or None when the path is not in the document."""
        return self.positions.get(path)


def parse_document(text: str) -> RubyDocument:
    """Parse a whole configuration file made of constant assignments.

    Args:
        text: the file's contents.

    Returns:
        The constants with their values, positions and warnings.

    Raises:
        RubyHashError: the text is not literal Ruby hash syntax; the message starts with the line and column.
    """
    parser = _Parser(_Lexer(text).tokens())
    return parser.document()


def parse_constants(text: str) -> dict[str, RubyValue]:
    """Parse a configuration file and return just its constants (`{"ENDPOINT": {...}, ...}`).

    Raises:
        RubyHashError: the text is not literal Ruby hash syntax.
    """
    return parse_document(text).constants


def parse_value(text: str) -> RubyValue:
    """Parse one literal (`{ :a => [1, 'x'] }`), e.g. a fragment of a configuration file.

    Raises:
        RubyHashError: the text is not exactly one literal.
    """
    parser = _Parser(_Lexer(text).tokens())
    return parser.single_value()


# --- tokens --------------------------------------------------------------------------------------------------------

# Token kinds. "name" is a bare identifier (constant or not); "label" is `name:` or `"string":` used as a hash key.
_NAME, _LABEL, _SYMBOL, _STRING, _INT, _FLOAT, _KEYWORD, _PUNCT, _EOF = (
    "name",
    "label",
    "symbol",
    "string",
    "integer",
    "float",
    "keyword",
    "punct",
    "eof",
)
_KEYWORDS = {"true": True, "false": False, "nil": None}
_PUNCTUATION = ("=>", "==", "{", "}", "[", "]", ",", ";", "=", ":", "(", ")", ".")
_BASE_DIGITS = {2: "01", 8: "01234567", 16: "0123456789abcdefABCDEF"}
_SIMPLE_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "s": " ",
    "e": "\x1b",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
}


@dataclass(frozen=True)
class _Token:
    kind: str
    value: str | int | float | bool | None
    text: str  # as written, for messages
    line: int
    column: int
    newline_before: bool  # a line break separates this token from the previous one


def _quote(text: str, limit: int = 40) -> str:
    shown = text if len(text) <= limit else text[: limit - 3] + "..."
    return "'" + shown.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _is_name_start(char: str) -> bool:
    return char == "_" or ("a" <= char <= "z") or ("A" <= char <= "Z")


def _is_name_char(char: str) -> bool:
    return _is_name_start(char) or char.isdigit() and char.isascii()


def _is_digit(char: str) -> bool:
    return "0" <= char <= "9"


class _Lexer:
    """Turns the text into tokens, tracking line/column and whether a newline came before each token."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line_starts = [0]
        for index, char in enumerate(text):
            if char == "\n":
                self.line_starts.append(index + 1)

    def where(self, pos: int) -> tuple[int, int]:
        line_index = bisect.bisect_right(self.line_starts, pos) - 1
        return line_index + 1, pos - self.line_starts[line_index] + 1

    def error(self, reason: str, pos: int) -> RubyHashError:
        line, column = self.where(pos)
        return RubyHashError(reason, line, column)

    def at_line_start(self, pos: int) -> bool:
        return pos == 0 or self.text[pos - 1] == "\n"

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def tokens(self) -> list[_Token]:
        found: list[_Token] = []
        newline_before = True  # the first token starts a statement like one after a line break
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char == "\n":
                newline_before = True
                self.pos += 1
            elif char in " \t\r\f\v\ufeff":
                self.pos += 1
            elif char == "\\" and text.startswith(("\n", "\r\n"), self.pos + 1):
                # Ruby's explicit line continuation: the break does not end anything
                self.pos += 2 if self.peek(1) == "\n" else 3
            elif char == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif char == "=" and self.at_line_start(self.pos) and self._starts_word("=begin"):
                self._skip_block_comment()
                newline_before = True
            elif char == "_" and self.at_line_start(self.pos) and self._starts_word("__END__"):
                break  # everything after __END__ is data, not code
            else:
                found.append(self._token(newline_before))
                newline_before = False
        line, column = self.where(len(text))
        found.append(_Token(_EOF, None, "end of input", line, column, True))
        return found

    def _starts_word(self, word: str) -> bool:
        end = self.pos + len(word)
        return self.text.startswith(word, self.pos) and (end >= len(self.text) or self.text[end] in " \t\r\n")

    def _skip_block_comment(self) -> None:
        start = self.pos
        search_from = self.pos
        while True:
            newline = self.text.find("\n", search_from)
            if newline < 0:
                raise self.error("'=begin' comment is never closed by '=end'", start)
            self.pos = newline + 1
            if self._starts_word("=end"):
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
                return
            search_from = self.pos

    def _token(self, newline_before: bool) -> _Token:
        start = self.pos
        line, column = self.where(start)
        char = self.text[start]

        def make(kind: str, value: str | int | float | bool | None) -> _Token:
            return _Token(kind, value, self.text[start : self.pos], line, column, newline_before)

        if char in "\"'":
            value = self._string(char)
            if self.peek() == ":" and self.peek(1) != ":":
                self.pos += 1  # `"key": value` is a symbol key
                return make(_LABEL, value)
            return make(_STRING, value)
        if char == ":" and self.peek(1) in ('"', "'"):
            self.pos += 1
            return make(_SYMBOL, self._string(self.text[self.pos]))
        if char == ":" and _is_name_start(self.peek(1)):
            self.pos += 1
            self._name()
            if self.peek() in ("?", "!"):
                self.pos += 1
            return make(_SYMBOL, self.text[start + 1 : self.pos])
        if char == ":" and self.peek(1) == ":":
            raise self.error("'::' (constant lookup) is not supported: values must be literals", start)
        if _is_digit(char) or (char in "+-" and _is_digit(self.peek(1))):
            kind, number = self._number()
            return make(kind, number)
        if _is_name_start(char):
            name = self._name()
            if self.peek() in ("?", "!") and self.peek(1) != "=":
                # a Ruby method name such as exit! or empty?; only ever an error, but name it as written
                self.pos += 1
                return make(_NAME, self.text[start : self.pos])
            if self.peek() == ":" and self.peek(1) != ":":
                self.pos += 1
                return make(_LABEL, name)
            if name in _KEYWORDS:
                return make(_KEYWORD, _KEYWORDS[name])
            return make(_NAME, name)
        for punct in _PUNCTUATION:
            if self.text.startswith(punct, start):
                self.pos += len(punct)
                return make(_PUNCT, punct)
        raise self.error(self._unexpected_character(char), start)

    @staticmethod
    def _unexpected_character(char: str) -> str:
        if char == "`":
            return "backticks run shell commands in Ruby; they are not allowed in a configuration file"
        if char == "%":
            return "percent literals (%w, %q, %x, ...) are not supported; write strings and arrays with quotes"
        if char == "<":
            return "unexpected '<' (heredocs and operators are not supported; values must be literals)"
        if char in "@$":
            return f"unexpected {char!r} (variables are not supported; values must be literals)"
        return f"unexpected character {char!r}"

    def _name(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and _is_name_char(self.text[self.pos]):
            self.pos += 1
        return self.text[start : self.pos]

    def _number(self) -> tuple[str, int | float]:
        start = self.pos
        if self.peek() in "+-":
            self.pos += 1
        body_start = self.pos
        prefix = self.text[self.pos : self.pos + 2].lower()
        bases = {"0x": 16, "0b": 2, "0o": 8}
        if prefix in bases:
            self.pos += 2
            digits = self._digits(_BASE_DIGITS[bases[prefix]])
            self._reject_trailing(start)
            return _INT, self._to_int(self.text[start:body_start] + digits, bases[prefix], start)
        integral = self._digits("0123456789")
        is_float = False
        if self.peek() == "." and _is_digit(self.peek(1)):
            self.pos += 1
            self._digits("0123456789")
            is_float = True
        if self.peek() in ("e", "E") and (
            _is_digit(self.peek(1)) or (self.peek(1) in ("+", "-") and _is_digit(self.peek(2)))
        ):
            self.pos += 2
            self._digits("0123456789")
            is_float = True
        self._reject_trailing(start)
        written = self.text[start : self.pos]
        if "__" in written or written.endswith("_") or "_." in written or "_e" in written.lower():
            raise self.error(f"malformed number {written!r} (misplaced '_')", start)
        if is_float:
            return _FLOAT, float(written.replace("_", ""))
        if len(integral) > 1 and integral.startswith("0"):
            # Ruby reads a leading zero as octal: 010 == 8
            return _INT, self._to_int(self.text[start:body_start] + integral[1:], 8, start)
        return _INT, self._to_int(self.text[start:body_start] + integral, 10, start)

    def _digits(self, allowed: str) -> str:
        begin = self.pos
        while self.pos < len(self.text) and (self.text[self.pos] in allowed or self.text[self.pos] == "_"):
            self.pos += 1
        return self.text[begin : self.pos]

    def _reject_trailing(self, start: int) -> None:
        if self.pos < len(self.text) and _is_name_char(self.text[self.pos]):
            end = self.pos
            while end < len(self.text) and _is_name_char(self.text[end]):
                end += 1
            raise self.error(f"malformed number {self.text[start:end]!r}", start)

    def _to_int(self, digits: str, base: int, start: int) -> int:
        cleaned = digits.replace("_", "")
        try:
            return int(cleaned, base)
        except ValueError:
            raise self.error(f"malformed number {self.text[start : self.pos]!r}", start) from None

    def _string(self, quote: str) -> str:
        start = self.pos
        self.pos += 1
        pieces: list[str] = []
        text = self.text
        while True:
            if self.pos >= len(text):
                raise self.error(f"string starting here is never closed (missing {quote})", start)
            char = text[self.pos]
            if char == quote:
                self.pos += 1
                return "".join(pieces)
            if char == "\\":
                pieces.append(self._escape(quote))
                continue
            if char == "#" and quote == '"' and self.peek(1) in ("{", "@", "$"):
                follower = self.peek(2)
                if self.peek(1) == "{" or _is_name_start(follower) or follower in ("@", "$"):
                    raise self.error(
                        "string interpolation ('#{...}', '#@var') would run code and is not allowed; "
                        "escape the '#' as '\\#' or use single quotes",
                        self.pos,
                    )
            pieces.append(char)
            self.pos += 1

    def _escape(self, quote: str) -> str:
        """Read one backslash escape at self.pos and return what it stands for."""
        escaped = self.peek(1)
        if escaped == "":
            raise self.error("string ends with a lone backslash", self.pos)
        if quote == "'":
            # single quotes: only \\ and \' are escapes; any other backslash is literal
            if escaped in ("\\", "'"):
                self.pos += 2
                return escaped
            self.pos += 1
            return "\\"
        self.pos += 2
        if escaped in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[escaped]
        if escaped == "\n":
            return ""  # backslash-newline inside double quotes joins the lines
        if escaped in "01234567":
            digits = escaped
            while len(digits) < 3 and self.peek() != "" and self.peek() in "01234567":
                digits += self.peek()
                self.pos += 1
            return chr(int(digits, 8))
        if escaped == "x":
            digits = ""
            while len(digits) < 2 and self.peek() != "" and self.peek() in "0123456789abcdefABCDEF":
                digits += self.peek()
                self.pos += 1
            if not digits:
                raise self.error("invalid hex escape (expected \\xHH)", self.pos - 2)
            return chr(int(digits, 16))
        if escaped == "u":
            return self._unicode_escape()
        return escaped  # \" \\ \# and Ruby's "any other character stands for itself"

    def _unicode_escape(self) -> str:
        begin = self.pos - 2
        if self.peek() == "{":
            end = self.text.find("}", self.pos)
            if end < 0:
                raise self.error("unterminated \\u{...} escape", begin)
            codes = self.text[self.pos + 1 : end].split()
            self.pos = end + 1
        else:
            codes = [self.text[self.pos : self.pos + 4]]
            self.pos += 4
            if len(codes[0]) != 4:
                raise self.error("invalid \\u escape (expected \\uXXXX or \\u{X...})", begin)
        hex_digits = set(_BASE_DIGITS[16])
        try:
            if not codes or any(not 1 <= len(code) <= 6 or not set(code) <= hex_digits for code in codes):
                raise ValueError(codes)
            return "".join(chr(int(code, 16)) for code in codes)
        except ValueError:
            raise self.error("invalid \\u escape (expected \\uXXXX or \\u{X...})", begin) from None


# --- parser --------------------------------------------------------------------------------------------------------


def _show(text: str, limit: int = 40) -> str:
    """A token as written, shortened, in quotes unless it already is a quoted string."""
    shown = text if len(text) <= limit else text[: limit - 3] + "..."
    return shown if shown[:1] in ("'", '"') else f"'{shown}'"


def _describe_token(token: _Token) -> str:
    if token.kind == _EOF:
        return "end of input"
    return _show(token.text)


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.document_result = RubyDocument()

    # helpers

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != _EOF:
            self.index += 1
        return token

    def is_punct(self, text: str) -> bool:
        return self.current.kind == _PUNCT and self.current.value == text

    def fail(self, expected: str, token: _Token | None = None, hint: str = "") -> RubyHashError:
        token = token or self.current
        message = f"expected {expected} but found {_describe_token(token)}"
        return RubyHashError(message + (f" ({hint})" if hint else ""), token.line, token.column)

    # grammar

    def document(self) -> RubyDocument:
        doc = self.document_result
        first_seen: dict[str, int] = {}
        separated = True  # at the start, or after a newline or ';'
        while self.current.kind != _EOF:
            if self.is_punct(";"):
                self.advance()
                separated = True
                continue
            token = self.current
            if not (separated or token.newline_before):
                raise self.fail("a new line or ';' before the next assignment")
            if token.kind != _NAME or not token.text[0].isupper():
                raise self.fail("a constant assignment like NAME = { ... }", hint=self._code_hint(token))
            name = token.text
            self.advance()
            if not self.is_punct("="):
                raise self.fail(f"'=' after the constant name {name}", hint=self._code_hint(token))
            self.advance()
            path: KeyPath = (name,)
            if name in first_seen:
                self._forget(path)  # a reassigned constant must not keep the old value's positions
            value = self.value(path, depth=0)
            after = self.current
            if after.kind != _EOF and not self.is_punct(";") and not after.newline_before:
                hint = "method calls are not allowed; this file is parsed, never run" if after.text == "." else ""
                raise self.fail(f"the end of the line after the value of {name}", hint=hint)
            if name in first_seen:
                doc.warnings.append(
                    f"line {token.line}, column {token.column}: constant {name} is assigned again "
                    f"(first at line {first_seen[name]}); the later value wins"
                )
                doc.constants.pop(name)
            first_seen[name] = token.line
            doc.constants[name] = value
            separated = False
        return doc

    def single_value(self) -> RubyValue:
        value = self.value((), depth=0)
        if self.current.kind != _EOF:
            raise self.fail("end of input after the value")
        return value

    @staticmethod
    def _code_hint(token: _Token) -> str:
        if token.kind == _NAME and not token.text[0].isupper():
            return "method calls and variables are not allowed; this file is parsed, never run"
        return ""

    def value(self, path: KeyPath, depth: int) -> RubyValue:
        token = self.current
        if depth > MAX_DEPTH:
            raise RubyHashError(f"nesting deeper than {MAX_DEPTH} levels", token.line, token.column)
        self.document_result.positions[path] = (token.line, token.column)
        if self.is_punct("{"):
            return self.hash(path, depth)
        if self.is_punct("["):
            return self.array(path, depth)
        if token.kind == _STRING:
            self.advance()
            text = str(token.value)
            # Ruby joins string literals that follow each other on one line: "a" "b" == "ab"
            while self.current.kind == _STRING and not self.current.newline_before:
                text += str(self.advance().value)
            return text
        if token.kind in (_SYMBOL, _INT, _FLOAT, _KEYWORD):
            self.advance()
            return token.value
        if token.kind == _NAME and token.text[0].isupper():
            hint = "references to other constants are not supported; values must be literals"
        elif token.kind == _NAME:
            hint = "method calls and variables are not allowed; this file is parsed, never run"
        elif token.kind == _LABEL:
            hint = "'name:' is only allowed as a hash key"
        else:
            hint = ""
        raise self.fail("a value (string, symbol, number, true, false, nil, hash or array)", hint=hint)

    def hash(self, path: KeyPath, depth: int) -> dict[RubyKey, RubyValue]:
        opening = self.advance()
        result: dict[RubyKey, RubyValue] = {}
        key_lines: dict[RubyKey, int] = {}
        while True:
            token = self.current
            if self.is_punct("}"):
                self.advance()
                return result
            if token.kind == _EOF:
                raise self.fail("a hash key or '}'", hint=self._unclosed(opening))
            key, is_symbol = self.key()
            child: KeyPath = (*path, key)
            if key in result:
                self._forget(child)
            value = self.value(child, depth + 1)
            if key in result:
                self.document_result.warnings.append(
                    f"line {token.line}, column {token.column}: duplicate key {key!r} in "
                    f"{self.document_result.describe(path)} (first at line {key_lines[key]}); the later value wins"
                )
                del result[key]
            result[key] = value
            key_lines[key] = token.line
            if is_symbol:
                self.document_result.symbol_keys.add(child)
            else:
                self.document_result.symbol_keys.discard(child)
            if self.is_punct(","):
                self.advance()
                continue
            if self.is_punct("}"):
                self.advance()
                return result
            raise self.fail("',' or '}'", hint=self._separator_hint(opening))

    def key(self) -> tuple[RubyKey, bool]:
        """Read a hash key and the '=>' after it; returns (key, written as a symbol)."""
        token = self.current
        if token.kind == _LABEL:
            self.advance()
            return str(token.value), True
        if token.kind in (_STRING, _SYMBOL, _INT):
            self.advance()
            if not self.is_punct("=>"):
                hint = "a hash pair is written key => value"
                if self.is_punct(":"):
                    hint = "for the key: value form, put no space before ':'"
                raise self.fail(f"'=>' after the key {_show(token.text)}", hint=hint)
            self.advance()
            key = token.value
            assert isinstance(key, str | int)  # the token kinds above only carry str or int
            return key, token.kind == _SYMBOL
        raise self.fail("a hash key (string, symbol, integer or name:) or '}'", hint=self._code_hint(token))

    def array(self, path: KeyPath, depth: int) -> list[RubyValue]:
        opening = self.advance()
        result: list[RubyValue] = []
        while True:
            if self.is_punct("]"):
                self.advance()
                return result
            if self.current.kind == _EOF:
                raise self.fail("a value or ']'", hint=self._unclosed(opening))
            result.append(self.value((*path, len(result)), depth + 1))
            if self.is_punct(","):
                self.advance()
                continue
            if self.is_punct("]"):
                self.advance()
                return result
            raise self.fail("',' or ']'", hint=self._separator_hint(opening))

    def _forget(self, path: KeyPath) -> None:
        """Drop positions and symbol marks recorded under `path` (a value about to be replaced)."""
        doc = self.document_result
        size = len(path)
        for recorded in [p for p in doc.positions if p[:size] == path]:
            del doc.positions[recorded]
        doc.symbol_keys -= {p for p in doc.symbol_keys if p[:size] == path and len(p) > size}

    def _unclosed(self, opening: _Token) -> str:
        return f"the {opening.text!r} at line {opening.line}, column {opening.column} is never closed"

    def _separator_hint(self, opening: _Token) -> str:
        token = self.current
        if token.kind == _EOF:
            return self._unclosed(opening)
        if token.newline_before:
            return "missing ',' at the end of the previous line?"
        return ""
