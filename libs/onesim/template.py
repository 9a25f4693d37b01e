"""OpenNebula template text: parser, XML rendering and variable resolution for the simulated zone.

Where it sits: every XML-RPC call of the simulator that takes template text (vm.allocate, template.allocate,
template.instantiate's extra template, vm.update) goes through :func:`parse_template`; every object the simulator
returns renders its TEMPLATE / USER_TEMPLATE with :meth:`Template.to_xml`. CONTEXT variables ($VMID, $NIC[IP], ...)
are resolved by :func:`resolve_context` when a VM is created.

The syntax accepted is OpenNebula's: ``KEY = value`` / ``KEY = "quoted value"`` (quoted values may span lines and
use ``\\"`` escapes), vector attributes ``KEY = [ A = "x", B = y ]`` (pairs separated by commas or new lines),
comments from ``#`` to the end of the line, and, as oned also accepts, an XML document rooted at ``<TEMPLATE>``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

Value = str | dict[str, str]

_NAME_CHARS = re.compile(r"[A-Za-z0-9_\-.]")


class TemplateSyntaxError(ValueError):
    """Raised when template text cannot be parsed; the message names the line and column."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"Parse error: {message}, at line {line}, column {column}")
        self.line = line
        self.column = column


@dataclass
class Template:
    """An ordered multimap of attributes: simple (``str``) or vector (``dict[str, str]``) values.

    Names are upper-cased, as oned does. Several attributes may share a name (two NICs, two DISKs).
    """

    items: list[tuple[str, Value]] = field(default_factory=list)

    # ----------------------------------------------------------------- access
    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the first simple value called ``name`` (case-insensitive), or ``default``."""
        key = name.upper()
        for k, v in self.items:
            if k == key and isinstance(v, str):
                return v
        return default

    def vector(self, name: str) -> dict[str, str] | None:
        """Return the first vector attribute called ``name``, or None."""
        key = name.upper()
        for k, v in self.items:
            if k == key and isinstance(v, dict):
                return v
        return None

    def vectors(self, name: str) -> list[dict[str, str]]:
        """Return every vector attribute called ``name`` in template order."""
        key = name.upper()
        return [v for k, v in self.items if k == key and isinstance(v, dict)]

    def has(self, name: str) -> bool:
        """True when any attribute is called ``name``."""
        key = name.upper()
        return any(k == key for k, _ in self.items)

    def set(self, name: str, value: Value) -> None:
        """Replace every attribute called ``name`` by one attribute with ``value``."""
        key = name.upper()
        self.items = [(k, v) for k, v in self.items if k != key]
        self.items.append((key, value))

    def remove(self, name: str) -> None:
        """Drop every attribute called ``name``."""
        key = name.upper()
        self.items = [(k, v) for k, v in self.items if k != key]

    def merge(self, other: Template) -> None:
        """Merge ``other`` into this template the way oned's ``Template::merge`` does.

        Every attribute name present in ``other`` replaces all attributes of that name here.
        """
        names = {k for k, _ in other.items}
        self.items = [(k, v) for k, v in self.items if k not in names]
        self.items.extend((k, _copy(v)) for k, v in other.items)

    def copy(self) -> Template:
        """A deep copy."""
        return Template([(k, _copy(v)) for k, v in self.items])

    def simple_items(self) -> Iterator[tuple[str, str]]:
        """Iterate over simple attributes only."""
        for k, v in self.items:
            if isinstance(v, str):
                yield k, v

    # ------------------------------------------------------------- rendering
    def to_xml(self, root: str = "TEMPLATE") -> str:
        """Render as oned does: attributes sorted by name (a multimap), values in CDATA."""
        parts = [f"<{root}>"]
        for k, v in sorted(self.items, key=lambda kv: kv[0]):
            if isinstance(v, str):
                parts.append(f"<{k}>{cdata(v)}</{k}>")
            else:
                parts.append(f"<{k}>")
                for sk in sorted(v):
                    parts.append(f"<{sk}>{cdata(v[sk])}</{sk}>")
                parts.append(f"</{k}>")
        parts.append(f"</{root}>")
        return "".join(parts)

    def to_text(self) -> str:
        """Render as template text that :func:`parse_template` reads back identically."""
        lines = []
        for k, v in self.items:
            if isinstance(v, str):
                lines.append(f"{k} = {quote(v)}")
            else:
                inner = ",\n  ".join(f"{sk} = {quote(sv)}" for sk, sv in v.items())
                lines.append(f"{k} = [\n  {inner} ]")
        return "\n".join(lines) + ("\n" if lines else "")

    def to_json(self) -> list[list[object]]:
        """A JSON-friendly form (used by the state file)."""
        return [[k, v] for k, v in self.items]

    @classmethod
    def from_json(cls, data: list[list[object]]) -> Template:
        """Inverse of :meth:`to_json`."""
        items: list[tuple[str, Value]] = []
        for k, v in data:
            if isinstance(v, dict):
                items.append((str(k), {str(a): str(b) for a, b in v.items()}))
            else:
                items.append((str(k), str(v)))
        return cls(items)


def _copy(v: Value) -> Value:
    return dict(v) if isinstance(v, dict) else v


def cdata(value: str) -> str:
    """Wrap ``value`` in CDATA, splitting any ``]]>`` it contains."""
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def quote(value: str) -> str:
    """Quote a value for template text."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------------------------------------- parser
class _Parser:
    """A small hand-written recursive-descent parser; positions are tracked for error messages."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def where(self, pos: int | None = None) -> tuple[int, int]:
        p = self.pos if pos is None else pos
        line = self.text.count("\n", 0, p) + 1
        col = p - (self.text.rfind("\n", 0, p) + 1) + 1
        return line, col

    def fail(self, message: str, pos: int | None = None) -> TemplateSyntaxError:
        line, col = self.where(pos)
        return TemplateSyntaxError(message, line, col)

    def skip(self, newlines: bool = True) -> None:
        """Skip blanks and comments (and new lines when ``newlines``)."""
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif c in " \t\r" or (newlines and c == "\n"):
                self.pos += 1
            else:
                return

    def name(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and _NAME_CHARS.match(self.text[self.pos]):
            self.pos += 1
        if start == self.pos:
            found = self.text[self.pos] if self.pos < len(self.text) else "end of input"
            raise self.fail(f"expected an attribute name, found {found!r}")
        return self.text[start : self.pos].upper()

    def expect(self, char: str) -> None:
        self.skip(newlines=False)
        if self.pos >= len(self.text) or self.text[self.pos] != char:
            found = self.text[self.pos] if self.pos < len(self.text) else "end of input"
            raise self.fail(f"expected {char!r}, found {found!r}")
        self.pos += 1

    def quoted(self) -> str:
        start = self.pos
        self.pos += 1  # opening quote
        out: list[str] = []
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c == "\\" and self.pos + 1 < len(text) and text[self.pos + 1] in '"\\':
                out.append(text[self.pos + 1])
                self.pos += 2
            elif c == '"':
                self.pos += 1
                return "".join(out)
            else:
                out.append(c)
                self.pos += 1
        raise self.fail("unterminated quoted string", start)

    def bare(self, stops: str) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in stops:
            if self.text[self.pos] == "#":
                break
            self.pos += 1
        return self.text[start : self.pos].strip()

    def simple_value(self, in_vector: bool) -> str:
        self.skip(newlines=False)
        if self.pos < len(self.text) and self.text[self.pos] == '"':
            return self.quoted()
        return self.bare(",]\n" if in_vector else "\n")

    def vector(self) -> dict[str, str]:
        start = self.pos
        self.pos += 1  # '['
        values: dict[str, str] = {}
        while True:
            self.skip()
            if self.pos >= len(self.text):
                raise self.fail("unterminated vector attribute", start)
            if self.text[self.pos] == "]":
                self.pos += 1
                return values
            key = self.name()
            self.expect("=")
            values[key] = self.simple_value(in_vector=True)
            self.skip()
            if self.pos < len(self.text) and self.text[self.pos] == ",":
                self.pos += 1

    def parse(self) -> Template:
        tmpl = Template()
        while True:
            self.skip()
            if self.pos >= len(self.text):
                return tmpl
            key = self.name()
            self.expect("=")
            self.skip(newlines=False)
            if self.pos < len(self.text) and self.text[self.pos] == "[":
                tmpl.items.append((key, self.vector()))
            else:
                tmpl.items.append((key, self.simple_value(in_vector=False)))


def _from_xml(text: str) -> Template:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise TemplateSyntaxError(f"malformed XML template ({exc})", *exc.position) from exc
    tmpl = Template()
    for child in root:
        if len(child):
            tmpl.items.append((child.tag.upper(), {sub.tag.upper(): (sub.text or "") for sub in child}))
        else:
            tmpl.items.append((child.tag.upper(), child.text or ""))
    return tmpl


def parse_template(text: str) -> Template:
    """Parse OpenNebula template text (or an XML ``<TEMPLATE>`` document).

    Args:
        text: the template source.

    Returns:
        The parsed :class:`Template`.

    Raises:
        TemplateSyntaxError: with the line and column of the first problem.
    """
    if text.lstrip().startswith("<"):
        return _from_xml(text.strip())
    return _Parser(text).parse()


# ------------------------------------------------------------------------------------------- variable resolution
_VAR = re.compile(
    r"\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\[\s*(?P<attr>[A-Za-z0-9_]+)\s*(?:,\s*(?P<fkey>[A-Za-z0-9_]+)\s*=\s*\"?(?P<fval>[^\"\]]*)\"?\s*)?\])?"
)


def resolve_variables(value: str, lookup: Callable[[str, str | None, str | None, str | None], str]) -> str:
    """Replace ``$NAME``, ``$VECTOR[ATTR]`` and ``$VECTOR[ATTR, KEY=VALUE]`` references in ``value``.

    Args:
        value: text holding references.
        lookup: called as ``lookup(name, attr, filter_key, filter_value)``; returns the replacement.
    """

    def repl(m: re.Match[str]) -> str:
        return lookup(m.group("name").upper(), _up(m.group("attr")), _up(m.group("fkey")), m.group("fval"))

    return _VAR.sub(repl, value)


def _up(s: str | None) -> str | None:
    return s.upper() if s is not None else None


def resolve_context(tmpl: Template, builtins: dict[str, str]) -> None:
    """Resolve variables in the CONTEXT vector of ``tmpl`` in place, as oned does at VM creation.

    Args:
        tmpl: the VM template (NICs already leased).
        builtins: VM-level values: VMID, NAME, UID, UNAME, GID, GNAME.
    """
    ctx = tmpl.vector("CONTEXT")
    if ctx is None:
        return

    def lookup(name: str, attr: str | None, fkey: str | None, fval: str | None) -> str:
        if attr is None:
            if name in builtins:
                return builtins[name]
            return tmpl.get(name, "") or ""
        candidates = tmpl.vectors(name)
        if fkey is not None:
            candidates = [c for c in candidates if c.get(fkey, "") == (fval or "")]
        return candidates[0].get(attr, "") if candidates else ""

    for key in list(ctx):
        ctx[key] = resolve_variables(ctx[key], lookup)
