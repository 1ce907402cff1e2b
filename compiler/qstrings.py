"""Query strings: Python string literals decoded with the source position of every character, and the
scanner that splits a decoded query string into text, ``{expr}`` interpolations, ``{:role}`` tags and
``[VAR]`` holes (``nodes.PromptPart``). Errors point at the exact character.
"""

from __future__ import annotations

import ast
import keyword
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from ..errors import QuerySyntaxError, QueryTypeError
from . import nodes
from .nodes import Span

Pos = tuple[int, int]  # (line, column), 1-based

# --------------------------------------------------------------------------------------------------------------
# Errors


class Errors:
    def __init__(self, source: str, filename: str) -> None:
        self.source = source
        self.filename = filename

    def syntax(self, message: str, line: int, column: int) -> NoReturn:
        raise QuerySyntaxError(message, source=self.source, filename=self.filename, line=line, column=column)

    def type(self, message: str, line: int, column: int) -> NoReturn:
        raise QueryTypeError(message, source=self.source, filename=self.filename, line=line, column=column)

    def syntax_at(self, message: str, at: Span | Pos) -> NoReturn:
        line, column = (at.line, at.column) if isinstance(at, Span) else at
        self.syntax(message, line, column)

    def type_at(self, message: str, at: Span | Pos) -> NoReturn:
        line, column = (at.line, at.column) if isinstance(at, Span) else at
        self.type(message, line, column)



def span_of(start: Pos, last: Pos) -> Span:
    return Span(start[0], start[1], last[0], last[1] + 1)


_SIMPLE_ESCAPES = {
    "\n": "",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}
_PREFIX_CHARS = set("rRbBfFuU")
_HEX = set("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class Lit:
    """A decoded string literal, with the source position of every decoded character."""

    value: str
    positions: tuple[Pos, ...]
    prefix: str
    span: Span
    close: Pos  # where the closing quote starts (errors about "the end of the string" point there)


def decode_literal(chars: Sequence[str], pos: Sequence[Pos], err: Errors) -> Lit:
    """Decode a Python string literal given as characters with their source positions."""
    n = len(chars)
    i = 0
    while i < n and chars[i] in _PREFIX_CHARS:
        i += 1
    prefix = "".join(chars[:i]).lower()
    if i >= n or chars[i] not in "'\"":
        err.syntax_at("expected a string literal", pos[min(i, n - 1)] if n else (1, 1))
    if "b" in prefix:
        err.syntax_at("bytes literals are not allowed; use a normal string", pos[0])
    quote = chars[i]
    qlen = 3 if "".join(chars[i : i + 3]) == quote * 3 and n - i >= 6 else 1
    body_start, body_end = i + qlen, n - qlen
    span = span_of(pos[0], pos[-1])
    out: list[str] = []
    out_pos: list[Pos] = []
    j = body_start
    raw = "r" in prefix
    while j < body_end:
        ch = chars[j]
        if ch != "\\" or raw:
            out.append(ch)
            out_pos.append(pos[j])
            if raw and ch == "\\" and j + 1 < body_end:
                # In a raw string a backslash still protects the next character (kept verbatim).
                out.append(chars[j + 1])
                out_pos.append(pos[j + 1])
                j += 1
            j += 1
            continue
        at = pos[j]
        nxt = chars[j + 1] if j + 1 < body_end else ""
        if nxt in _SIMPLE_ESCAPES:
            decoded = _SIMPLE_ESCAPES[nxt]
            j += 2
        elif nxt in "01234567" and nxt:
            k = j + 1
            while k < body_end and k < j + 4 and chars[k] in "01234567":
                k += 1
            decoded = chr(int("".join(chars[j + 1 : k]), 8))
            j = k
        elif nxt in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[nxt]
            digits = "".join(chars[j + 2 : j + 2 + width])
            if len(digits) != width or not set(digits) <= _HEX or j + 2 + width > body_end:
                err.syntax_at(f"truncated \\{nxt} escape (needs {width} hex digits)", at)
            code = int(digits, 16)
            if code > 0x10FFFF:
                err.syntax_at(f"illegal Unicode character in \\{nxt} escape", at)
            decoded = chr(code)
            j += 2 + width
        elif nxt == "N":
            close = j + 2
            while close < body_end and chars[close] != "}":
                close += 1
            if j + 2 >= body_end or chars[j + 2] != "{" or close >= body_end:
                err.syntax_at("malformed \\N{...} escape", at)
            name = "".join(chars[j + 3 : close])
            try:
                decoded = unicodedata.lookup(name)
            except KeyError:
                err.syntax_at(f"unknown Unicode character name {name!r}", at)
            j = close + 1
        else:
            # Python keeps unknown escapes (`"\d"`) verbatim, which regexes written without r"" rely on.
            decoded = "\\"
            j += 1
        for c in decoded:
            out.append(c)
            out_pos.append(at)
    for c, at in zip(out, out_pos, strict=True):
        if "\ud800" <= c <= "\udfff":
            # prompts, stop phrases and options are UTF-8 text for the model; a lone surrogate has no encoding
            err.syntax_at(f"lone surrogate {c!r} in a query string cannot be encoded as UTF-8", at)
    return Lit("".join(out), tuple(out_pos), prefix, span, pos[body_end] if body_end < n else pos[-1])


def check_regex(pattern: str, positions: Sequence[Pos], fallback: Pos, err: Errors) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        where = positions[e.pos] if e.pos is not None and e.pos < len(positions) else fallback
        err.type_at(f"invalid regular expression: {e.msg}", where)
    except (OverflowError, RecursionError, ValueError, MemoryError) as e:
        err.type_at(f"invalid regular expression: {e}", fallback)


def python_error_pos(e: SyntaxError, base: Sequence[Pos], shift: int = 0) -> Pos:
    """Map a SyntaxError in a fragment (first line shifted by ``shift`` wrapper chars) onto the source."""
    if not base:
        return (1, 1)
    lineno = e.lineno or 1
    offset = max(1, (e.offset or 1))
    if lineno == 1:
        idx = offset - 1 - shift
    else:
        idx, seen = 0, 1
        # base holds one position per fragment character; walk to the error's line in the fragment
        while idx < len(base) - 1 and seen < lineno:
            if base[idx + 1][0] != base[idx][0]:
                seen += 1
            idx += 1
        idx += offset - 1
    return base[max(0, min(idx, len(base) - 1))]


def python_message(e: BaseException) -> str:
    msg = e.msg if isinstance(e, SyntaxError) and e.msg else str(e)
    return f"invalid Python: {msg}"


class PromptScanner:
    """Splits a decoded prompt string into Text / Interp / Hole parts, keeping source positions."""

    def __init__(self, lit: Lit, err: Errors) -> None:
        self.chars = lit.value
        self.pos = lit.positions
        self.err = err
        self.end_pos: Pos = lit.close

    def at(self, i: int) -> Pos:
        return self.pos[i] if i < len(self.pos) else self.end_pos

    def scan(self) -> tuple[nodes.PromptPart, ...]:
        chars, n = self.chars, len(self.chars)
        parts: list[nodes.PromptPart] = []
        buf: list[str] = []
        buf_pos: list[Pos] = []

        def flush() -> None:
            if buf:
                parts.append(nodes.Text("".join(buf), span=span_of(buf_pos[0], buf_pos[-1])))
                buf.clear()
                buf_pos.clear()

        i = 0
        while i < n:
            ch = chars[i]
            nxt = chars[i + 1] if i + 1 < n else ""
            if ch in "[]{}" and nxt == ch:
                buf.append(ch)
                buf_pos.append(self.pos[i])
                i += 2
            elif ch == "[":
                flush()
                hole, i = self.hole(i)
                parts.append(hole)
            elif ch == "{":
                flush()
                field, i = self.interp(i)
                parts.append(field)
            elif ch in "]}":
                self.err.syntax_at(f"single '{ch}' in prompt string; write '{ch * 2}' for a literal '{ch}'", self.pos[i])
            else:
                buf.append(ch)
                buf_pos.append(self.pos[i])
                i += 1
        flush()
        return tuple(parts)

    def skip_spaces(self, j: int) -> int:
        while j < len(self.chars) and self.chars[j] in " \t":
            j += 1
        return j

    def word(self, j: int) -> int:
        while j < len(self.chars) and (self.chars[j].isalnum() or self.chars[j] == "_"):
            j += 1
        return j

    def balanced_end(self, j: int, closers: str) -> int:
        """Index of the first character in ``closers`` at bracket depth 0 from ``j`` (quotes respected), or n."""
        chars, n = self.chars, len(self.chars)
        depth = 0
        quote = ""
        while j < n:
            c = chars[j]
            if quote:
                if c == "\\":
                    j += 2
                    continue
                if chars.startswith(quote, j):
                    j += len(quote)
                    quote = ""
                    continue
            elif c in "'\"":
                quote = c * 3 if chars.startswith(c * 3, j) else c
                j += len(quote)
                continue
            elif depth == 0 and c in closers:
                return j
            elif c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            j += 1
        return n

    def hole(self, i: int) -> tuple[nodes.Hole, int]:
        """``[NAME]``, ``[NAME: int]``, ``[NAME: r"regex"]`` or ``[NAME: python_expr]`` (a tactic)."""
        chars, n = self.chars, len(self.chars)
        j = self.skip_spaces(i + 1)
        decorators: list[str] = []
        while j < n and chars[j] == "@":
            # [@fn X], [@mod.fn X], [@fn(args) X]: a Python expression applied to the value (LMQL decorators)
            k = j + 1
            while k < n and (chars[k].isalnum() or chars[k] in "_."):
                k += 1
            if k < n and chars[k] == "(":
                close = self.balanced_end(k + 1, ")")
                if close >= n:
                    self.err.syntax_at("'(' was never closed in hole decorator", self.at(k))
                k = close + 1
            expr = chars[j + 1 : k]
            try:
                tree = ast.parse(expr, mode="eval").body if expr else None
            except SyntaxError:
                tree = None
            if not isinstance(tree, ast.Name | ast.Attribute | ast.Call):
                self.err.syntax_at("expected a decorator like @fn or @fn(args) before the hole name", self.at(j))
            decorators.append(expr)
            j = self.skip_spaces(k)
        k = self.word(j)
        name = chars[j:k]
        if not name.isidentifier():
            self.err.syntax_at("expected a variable name after '['; write '[[' for a literal '['", self.at(i))
        if keyword.iskeyword(name):
            self.err.syntax_at(f"hole name '{name}' is a Python keyword", self.at(j))
        j = self.skip_spaces(k)
        annotation: nodes.IsInt | nodes.IsFloat | nodes.IsBool | nodes.Regex | None = None
        tactic: str | None = None
        if j < n and chars[j] == ":":
            start = self.skip_spaces(j + 1)
            end = self.balanced_end(start, "]")
            if end >= n:
                self.err.syntax_at(f"expected ']' to close hole [{name}", self.at(i))
            raw = chars[start:end].rstrip()
            if not raw:
                self.err.syntax_at("expected a type, a regex string or a query function after ':' in hole", self.at(start))
            try:
                tree = ast.parse(raw, mode="eval").body
            except SyntaxError as e:
                self.err.syntax_at(python_message(e), python_error_pos(e, self.pos[start:end]))
            except (ValueError, RecursionError, MemoryError, OverflowError) as e:
                self.err.syntax_at(python_message(e), self.at(start))
            ann_span = span_of(self.at(start), self.at(start + len(raw) - 1))
            if isinstance(tree, ast.Constant) and isinstance(tree.value, str):
                lit = decode_literal(raw, self.pos[start : start + len(raw)], self.err)
                check_regex(lit.value, lit.positions, self.at(start), self.err)
                annotation = nodes.Regex(name, lit.value, span=ann_span)
            elif isinstance(tree, ast.Name) and tree.id == "int":
                annotation = nodes.IsInt(name, span=ann_span)
            elif isinstance(tree, ast.Name) and tree.id == "float":
                annotation = nodes.IsFloat(name, span=ann_span)
            elif isinstance(tree, ast.Name) and tree.id == "bool":
                annotation = nodes.IsBool(name, span=ann_span)
            elif isinstance(tree, ast.Name) and tree.id == "str":
                pass  # the default type
            elif isinstance(tree, ast.Name | ast.Attribute | ast.Call | ast.Subscript) or (
                isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.BitOr)
            ):
                tactic = raw  # a query function (nested query) or a type (JSON), resolved when the hole starts
            else:
                self.err.type_at(
                    f"unsupported hole annotation '{raw}': expected int, float, bool, str, a regex string, a type "
                    "or a query function",
                    self.at(start),
                )
            j = end
        if j >= n or chars[j] != "]":
            self.err.syntax_at(f"expected ']' to close hole [{name}", self.at(j))
        hole = nodes.Hole(name, annotation, tactic, decorators=tuple(decorators), span=span_of(self.at(i), self.at(j)))
        return hole, j + 1

    def interp(self, i: int) -> tuple[nodes.Interp | nodes.Role, int]:
        """``{expr}``, ``{expr!r}``, ``{expr:spec}`` (f-string semantics) or a role tag ``{:user}``."""
        chars, n = self.chars, len(self.chars)
        j = self.balanced_end(i + 1, "}")
        if j >= n:
            self.err.syntax_at("'{' was never closed; write '{{' for a literal '{'", self.at(i))
        raw = chars[i + 1 : j]
        span = span_of(self.at(i), self.at(j))
        if raw.strip().startswith(":"):
            role = raw.strip()[1:].strip()
            if not role.isidentifier():
                self.err.syntax_at(f"invalid role tag '{{{raw}}}'; expected e.g. {{:user}}", self.at(i))
            return nodes.Role(role, span=span), j + 1
        # split off a conversion (!r) and a format spec (:...) at bracket depth 0, as f-strings do
        cut = self.balanced_end(i + 1, "!:") if j > i + 1 else j
        cut = min(cut, j)
        conversion, spec = "", ""
        expr_end = cut
        while cut < j and chars[cut] == "!" and cut + 1 < j and chars[cut + 1] == "=":
            cut = min(self.balanced_end(cut + 2, "!:"), j)  # `!=` is an operator, not a conversion
            expr_end = cut
        if cut < j and chars[cut] == "!":
            conversion = chars[cut + 1 : cut + 2]
            rest = cut + 2
            if conversion not in ("r", "s", "a") or (rest < j and chars[rest] != ":"):
                self.err.syntax_at("invalid conversion in '{...}': expected !r, !s or !a", self.at(cut))
            if rest < j:
                spec = chars[rest + 1 : j]
        elif cut < j and chars[cut] == ":":
            spec = chars[cut + 1 : j]
        raw_expr = chars[i + 1 : expr_end]
        expr = raw_expr.strip()
        lead = len(raw_expr) - len(raw_expr.lstrip())
        if not expr:
            self.err.syntax_at("empty expression in '{}'; write '{{' for a literal '{'", self.at(i))
        try:
            ast.parse(expr, mode="eval")
        except SyntaxError as e:
            base = self.pos[i + 1 + lead : expr_end]
            self.err.syntax_at(python_message(e), python_error_pos(e, base))
        except (ValueError, RecursionError, MemoryError, OverflowError) as e:
            self.err.syntax_at(python_message(e), self.at(i + 1))
        return nodes.Interp(expr, conversion, spec, span=span), j + 1


def closest(name: str, candidates: Iterable[str]) -> str | None:
    import difflib

    pool = list(candidates)
    lowered = {c.lower(): c for c in pool}
    if name.lower() in lowered:
        return lowered[name.lower()]
    match = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return match[0] if match else None

