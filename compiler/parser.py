"""Query source -> ``nodes.Query``: the lark grammar (``lmql.lark``) for the outer structure, a small
hand-written scanner for the inside of prompt strings, and Python's ``ast`` for every Python fragment.

``parse`` raises only ``QuerySyntaxError`` / ``QueryTypeError`` on bad input, whatever the input is.
"""

from __future__ import annotations

import ast
import keyword
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

from lark import Lark, Token, Transformer
from lark.exceptions import (
    LarkError,
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)
from lark.lexer import LexerThread

from ..errors import LmqcError, QuerySyntaxError, QueryTypeError
from . import checker, nodes
from .nodes import Span

__all__ = ["parse"]

Pos = tuple[int, int]  # (line, column), 1-based

DECODERS: dict[str, frozenset[str]] = {
    "argmax": frozenset({"max_len"}),
    "sample": frozenset({"n", "temperature", "top_k", "top_p", "seed", "max_len"}),
    "beam": frozenset({"n", "max_len"}),
}

CONSTRAINT_FUNCTIONS = ("INT", "REGEX", "STOPS_AT", "STOPS_BEFORE", "STARTS_WITH", "len", "TOKENS")


@cache
def _lark() -> Lark:
    grammar = (Path(__file__).with_name("lmql.lark")).read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", lexer="basic", propagate_positions=False, maybe_placeholders=False)


@cache
def _lexer() -> Any:
    # Lark.lex() would rebuild (and re-verify) the lexer on every call, which costs ~0.3 s.
    return _lark()._build_lexer()


def _tokens(text: str) -> Iterator[Token]:
    return LexerThread.from_text(_lexer(), text).lex(None)


# --------------------------------------------------------------------------------------------------------------
# Layout: logical lines and indentation (lark's Indenter cannot look ahead, and we need one token of it to
# let a line that starts with `and`/`or` continue the constraint above it).

_OPEN = {"LPAR": ")", "LSQB": "]", "LBRACE": "}"}
_CLOSE = {"RPAR", "RSQB", "RBRACE"}
_CONTINUE_AFTER = {"WHERE", "FROM", "DISTRIBUTION", "AND", "OR", "NOT", "IN"}
_CONTINUE_BEFORE = {"AND", "OR"}
_LINE_START = {"_NL", "_INDENT", "_DEDENT"}


def _indent_width(ws: str) -> int:
    return len(ws.replace("\f", "").expandtabs(8))


class _Layout:
    """Turns the lexer's raw ``_NL`` tokens into logical line ends and ``_INDENT``/``_DEDENT`` tokens."""

    def __init__(self, text: str, err: _Errors) -> None:
        self.text = text
        self.err = err
        self.first: Token | None = None
        self.first_indent: Token | None = None  # the _INDENT right after the first logical line, if any
        self.lines_ended = 0
        self.last: Token | None = None

    def run(self, raw: Iterable[Token]) -> Iterator[Token]:
        opened: list[Token] = []
        stack: list[int] = []
        pending: Token | None = None
        clause_on_line: str | None = None
        for tok in raw:
            if tok.type == "_NL":
                if not opened:
                    pending = tok
                continue
            if self.first is None:
                if tok.type == "NAME" and tok.value.lower() in DECODERS:
                    tok = Token.new_borrow_pos("DECODER_NAME", tok.value, tok)
                self.first = tok
                # lark counts lines by "\n" only (str.splitlines would also split on \x0c, \u2028, ...)
                lines = self.text.split("\n")
                line_text = lines[tok.line - 1] if 0 < tok.line <= len(lines) else ""
                stack = [_indent_width(line_text[: tok.column - 1])]
                pending = None
            if pending is not None:
                if self.last is not None and self.last.type not in _CONTINUE_AFTER and tok.type not in _CONTINUE_BEFORE:
                    yield from self._line_end(pending, tok, stack)
                    clause_on_line = None
                pending = None
            elif (
                not opened
                and self.last is not None
                and self.last.type not in _LINE_START
                and (tok.type in ("FROM", "DISTRIBUTION") or (tok.type == "WHERE" and clause_on_line == "FROM"))
            ):
                # A one-line query (`argmax "Hi [X]" from "m" where ...`): each clause starts a logical line.
                yield self._synthetic("_NL", tok)
                self.lines_ended += 1
                while len(stack) > 1:
                    stack.pop()
                    yield self._synthetic("_DEDENT", tok)
                clause_on_line = None
            if tok.type in ("FROM", "DISTRIBUTION"):
                clause_on_line = tok.type
            if tok.type in _OPEN:
                opened.append(tok)
            elif tok.type in _CLOSE and opened:
                opened.pop()
            self.last = tok
            yield tok
        if opened:
            bracket = opened[-1]
            self.err.syntax(f"'{bracket.value}' was never closed", bracket.line, bracket.column)
        if self.last is not None:
            end = Token("_NL", "", 0, self.last.end_line, self.last.end_column, self.last.end_line, self.last.end_column)
            yield end
            self.lines_ended += 1
            for _ in stack[1:]:
                yield Token.new_borrow_pos("_DEDENT", "", end)

    def _synthetic(self, kind: str, at: Token) -> Token:
        return Token(kind, "", at.start_pos, at.line, at.column, at.line, at.column)

    def _line_end(self, nl: Token, nxt: Token, stack: list[int]) -> Iterator[Token]:
        yield nl
        self.lines_ended += 1
        segments = nl.value.replace("\r\n", "\n").rsplit("\n", 1)
        if len(segments) < 2:
            return
        width = _indent_width(segments[1])
        if width > stack[-1]:
            stack.append(width)
            indent = self._synthetic("_INDENT", nxt)
            if self.lines_ended == 1:
                self.first_indent = indent
            yield indent
            return
        while width < stack[-1]:
            stack.pop()
            yield self._synthetic("_DEDENT", nxt)
        if width != stack[-1]:
            self.err.syntax("unindent does not match any outer indentation level", nxt.line, nxt.column)


# --------------------------------------------------------------------------------------------------------------
# Errors


class _Errors:
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


_TERMINAL_NAMES = {
    "_NL": "end of line",
    "_INDENT": "an indented block",
    "_DEDENT": "end of block",
    "$END": "end of query",
    "NAME": "a name",
    "STRING": "a string",
    "NUMBER": "a number",
    "DECODER_NAME": "a decoder",
    "CMP_OP": "a comparison",
    "OP": "an operator",
}


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[name]
    for term in _lark().terminals:
        if term.name == name and term.pattern.type == "str":
            return repr(term.pattern.value)
    return name.lower()


def _unexpected_token(e: UnexpectedToken, layout: _Layout, text: str, err: _Errors) -> NoReturn:
    tok = e.token
    first = layout.first
    if (
        tok.type == "_INDENT"
        and tok is layout.first_indent
        and first is not None
        and first.type == "NAME"
    ):
        err.type(
            f"unknown decoder '{first.value}' (expected argmax, sample or beam)", first.line, first.column
        )
    if tok.type == "$END":
        what = "unexpected end of query"
    elif tok.type == "_NL":
        what = "unexpected end of line"
    elif tok.type == "_INDENT":
        what = "unexpected indent"
    elif tok.type == "_DEDENT":
        what = "unexpected end of indented block"
    else:
        what = f"unexpected {tok.value!r}"
    expected = sorted(e.expected or ())
    if expected == ["_INDENT"]:
        what = "expected an indented block"
    elif 0 < len(expected) <= 4:
        names = [_describe_terminal(x) for x in expected]
        what += "; expected " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1])
    line = tok.line if isinstance(tok.line, int) else 1
    column = tok.column if isinstance(tok.column, int) else 1
    err.syntax(what, line, column)


# --------------------------------------------------------------------------------------------------------------
# String literals and prompt strings


def _token_positions(tok: Token) -> list[Pos]:
    out: list[Pos] = []
    line, col = tok.line, tok.column
    for ch in tok.value:
        out.append((line, col))
        if ch == "\n":
            line, col = line + 1, 1
        else:
            col += 1
    return out


def _span_of(start: Pos, last: Pos) -> Span:
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
class _Lit:
    """A decoded string literal, with the source position of every decoded character."""

    value: str
    positions: tuple[Pos, ...]
    prefix: str
    span: Span
    close: Pos  # where the closing quote starts (errors about "the end of the string" point there)


def _decode_literal(chars: Sequence[str], pos: Sequence[Pos], err: _Errors) -> _Lit:
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
    span = _span_of(pos[0], pos[-1])
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
    return _Lit("".join(out), tuple(out_pos), prefix, span, pos[body_end] if body_end < n else pos[-1])


def _decode_token(tok: Token, err: _Errors) -> _Lit:
    return _decode_literal(tok.value, _token_positions(tok), err)


def _check_regex(pattern: str, positions: Sequence[Pos], fallback: Pos, err: _Errors) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        where = positions[e.pos] if e.pos is not None and e.pos < len(positions) else fallback
        err.type_at(f"invalid regular expression: {e.msg}", where)
    except (OverflowError, RecursionError, ValueError, MemoryError) as e:
        err.type_at(f"invalid regular expression: {e}", fallback)


def _python_error_pos(e: SyntaxError, base: Sequence[Pos], shift: int = 0) -> Pos:
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


def _python_message(e: BaseException) -> str:
    msg = e.msg if isinstance(e, SyntaxError) and e.msg else str(e)
    return f"invalid Python: {msg}"


class _PromptScanner:
    """Splits a decoded prompt string into Text / Interp / Hole parts, keeping source positions."""

    def __init__(self, lit: _Lit, err: _Errors) -> None:
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
                parts.append(nodes.Text("".join(buf), span=_span_of(buf_pos[0], buf_pos[-1])))
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
                interp, i = self.interp(i)
                parts.append(interp)
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

    def hole(self, i: int) -> tuple[nodes.Hole, int]:
        chars, n = self.chars, len(self.chars)
        j = self.skip_spaces(i + 1)
        k = self.word(j)
        name = chars[j:k]
        if not name.isidentifier():
            self.err.syntax_at("expected a variable name after '['; write '[[' for a literal '['", self.at(i))
        if keyword.iskeyword(name):
            self.err.syntax_at(f"hole name '{name}' is a Python keyword", self.at(j))
        j = self.skip_spaces(k)
        annotation: nodes.IsInt | nodes.Regex | None = None
        if j < n and chars[j] == ":":
            j = self.skip_spaces(j + 1)
            k = self.word(j)
            ann_start = j
            if k < n and chars[k] in "'\"" and set(chars[j:k]) <= _PREFIX_CHARS:
                end = self.literal_end(k)
                lit = _decode_literal(chars[j:end], self.pos[j:end], self.err)
                _check_regex(lit.value, lit.positions, self.at(ann_start), self.err)
                annotation = nodes.Regex(name, lit.value, span=_span_of(self.at(ann_start), self.at(end - 1)))
                j = end
            elif chars[j:k] == "int":
                annotation = nodes.IsInt(name, span=_span_of(self.at(j), self.at(k - 1)))
                j = k
            elif k > j:
                self.err.type_at(
                    f"unknown hole type '{chars[j:k]}'; expected int or a regex string like r\"[0-9]+\"", self.at(j)
                )
            else:
                self.err.syntax_at("expected int or a regex string after ':' in hole", self.at(j))
            j = self.skip_spaces(j)
        if j >= n or chars[j] != "]":
            self.err.syntax_at(f"expected ']' to close hole [{name}", self.at(j))
        return nodes.Hole(name, annotation, span=_span_of(self.at(i), self.at(j))), j + 1

    def literal_end(self, q: int) -> int:
        """Index after the string literal whose opening quote is at ``q``."""
        chars, n = self.chars, len(self.chars)
        quote = chars[q]
        delim = quote * 3 if chars[q : q + 3] == quote * 3 else quote
        j = q + len(delim)
        while j < n:
            if chars[j] == "\\":
                j += 2
                continue
            if chars.startswith(delim, j):
                return j + len(delim)
            j += 1
        self.err.syntax_at("unterminated string in hole annotation", self.at(q))

    def interp(self, i: int) -> tuple[nodes.Interp, int]:
        chars, n = self.chars, len(self.chars)
        j = i + 1
        depth = 0
        quote = ""
        while j < n:
            c = chars[j]
            if quote:
                if c == "\\":
                    j += 2
                    continue
                if c == quote:
                    quote = ""
            elif c in "'\"":
                quote = c
            elif c in "([{":
                depth += 1
            elif c in ")]}":
                if c == "}" and depth == 0:
                    break
                depth -= 1
            j += 1
        if j >= n:
            self.err.syntax_at("'{' was never closed; write '{{' for a literal '{'", self.at(i))
        raw = chars[i + 1 : j]
        expr = raw.strip()
        lead = len(raw) - len(raw.lstrip())
        if not expr:
            self.err.syntax_at("empty expression in '{}'; write '{{' for a literal '{'", self.at(i))
        try:
            ast.parse(expr, mode="eval")
        except SyntaxError as e:
            base = self.pos[i + 1 + lead : j]
            self.err.syntax_at(_python_message(e), _python_error_pos(e, base))
        except (ValueError, RecursionError, MemoryError, OverflowError) as e:
            self.err.syntax_at(_python_message(e), self.at(i + 1))
        return nodes.Interp(expr, span=_span_of(self.at(i), self.at(j))), j + 1


# --------------------------------------------------------------------------------------------------------------
# Intermediate constraint expressions (what the c_* rules build before normalization)


@dataclass(frozen=True, slots=True)
class _Name:
    name: str
    span: Span


@dataclass(frozen=True, slots=True)
class _Str:
    lit: _Lit
    span: Span


@dataclass(frozen=True, slots=True)
class _Num:
    value: Any
    span: Span


@dataclass(frozen=True, slots=True)
class _List:
    items: tuple[_Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class _Call:
    func: str
    args: tuple[_Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class _Compare:
    left: _Expr
    op: str
    op_span: Span
    right: _Expr
    span: Span


@dataclass(frozen=True, slots=True)
class _Bool:
    op: str  # "and" | "or"
    items: tuple[_Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class _NotE:
    operand: _Expr
    span: Span


@dataclass(frozen=True, slots=True)
class _Paren:
    inner: _Expr
    span: Span


_Expr = _Name | _Str | _Num | _List | _Call | _Compare | _Bool | _NotE | _Paren


@dataclass(frozen=True, slots=True)
class _Extent:
    """Where a run of tokens starts and ends in the source."""

    start: int
    end: int
    span: Span


def _tok_span(tok: Token) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)


def _join(a: Span, b: Span) -> Span:
    return Span(a.line, a.column, b.end_line, b.end_column)


def _extent(children: Iterable[Any]) -> _Extent:
    items = [c for c in children if isinstance(c, Token | _Extent)]
    first, last = items[0], items[-1]
    start = first.start_pos if isinstance(first, Token) else first.start
    end = last.end_pos if isinstance(last, Token) else last.end
    a = _tok_span(first) if isinstance(first, Token) else first.span
    b = _tok_span(last) if isinstance(last, Token) else last.span
    return _Extent(start, end, _join(a, b))


def _span(e: Any) -> Span:
    return _tok_span(e) if isinstance(e, Token) else e.span


_CMP_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "=="}
_SIMPLE_STMTS = (
    ast.Assign,
    ast.AugAssign,
    ast.AnnAssign,
    ast.Expr,
    ast.Pass,
    ast.Break,
    ast.Continue,
    ast.Import,
    ast.ImportFrom,
    ast.Assert,
    ast.Delete,
    ast.Raise,
    ast.Global,
    ast.Nonlocal,
)


# --------------------------------------------------------------------------------------------------------------
# Tree -> nodes


class QueryBuilder(Transformer[Token, nodes.Query]):
    """One method per grammar rule (see lmql.lark); builds nodes.py nodes and reports errors with positions."""

    def __init__(self, text: str, err: _Errors) -> None:
        super().__init__()
        self.text = text
        self.err = err
        self.var_spans: dict[int, Span] = {}

    # ---- helpers -------------------------------------------------------------------------------------------

    def _positions(self, ext: _Extent) -> list[Pos]:
        out: list[Pos] = []
        line, col = ext.span.line, ext.span.column
        for ch in self.text[ext.start : ext.end]:
            out.append((line, col))
            if ch == "\n":
                line, col = line + 1, 1
            else:
                col += 1
        return out

    def _python(self, source: str, ext: _Extent, mode: str = "exec", shift: int = 0, wrapped: str = "") -> ast.AST:
        try:
            return ast.parse(wrapped or source, mode=mode)
        except SyntaxError as e:
            self.err.syntax_at(_python_message(e), _python_error_pos(e, self._positions(ext), shift))
        except (ValueError, RecursionError, MemoryError, OverflowError) as e:
            self.err.syntax_at(_python_message(e), ext.span)

    # ---- query ---------------------------------------------------------------------------------------------

    def start(self, children: list[Any]) -> nodes.Query:
        decoder = next((c for c in children if isinstance(c, nodes.Decoder)), None)
        body = next(c for c in children if isinstance(c, tuple))
        clauses: dict[str, Any] = next((c for c in children if isinstance(c, dict)), {})
        lines = self.text.splitlines() or [""]
        return nodes.Query(
            body=body,
            decoder=decoder,
            model=clauses.get("model"),
            where=clauses.get("where"),
            distribution=clauses.get("distribution"),
            source=self.text,
            filename=self.err.filename,
            span=Span(1, 1, len(lines), len(lines[-1]) + 1),
        )

    # ---- decoder -------------------------------------------------------------------------------------------

    def decoder_clause(self, children: list[Any]) -> nodes.Decoder:
        name_tok: Token = children[0]
        name = name_tok.value.lower()
        allowed = DECODERS[name]
        args: dict[str, Any] = {}
        end = _tok_span(name_tok)
        for item in children[1:]:
            if not isinstance(item, list):
                continue
            for arg_tok, value, value_span in item:
                key = arg_tok.value.lower()
                if key not in allowed:
                    self.err.type_at(
                        f"unknown argument '{arg_tok.value}' for decoder {name} "
                        f"(expected {', '.join(sorted(allowed))})",
                        _tok_span(arg_tok),
                    )
                if key in args:
                    self.err.type_at(f"duplicate decoder argument '{key}'", _tok_span(arg_tok))
                args[key] = self._decoder_arg(key, value, value_span)
                end = value_span
        return nodes.Decoder(name, tuple(sorted(args.items())), span=_join(_tok_span(name_tok), end))

    def _decoder_arg(self, key: str, value: Any, span: Span) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.err.type_at(f"decoder argument {key} must be a number, not {value!r}", span)
        if key in ("n", "max_len", "top_k", "seed"):
            if not isinstance(value, int):
                self.err.type_at(f"decoder argument {key} must be an integer, not {value!r}", span)
            low = {"n": 1, "max_len": 1, "top_k": 0, "seed": 0}[key]
            if value < low:
                self.err.type_at(f"decoder argument {key} must be >= {low}, not {value}", span)
            return value
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            self.err.type_at(f"decoder argument {key} must be finite", span)
        if key == "temperature" and number < 0:
            self.err.type_at(f"temperature must be >= 0, not {value}", span)
        if key == "top_p" and not 0 < number <= 1:
            self.err.type_at(f"top_p must be in (0, 1], not {value}", span)
        return number

    def decoder_args(self, children: list[Any]) -> list[tuple[Token, Any, Span]]:
        return [c for c in children if isinstance(c, tuple)]

    def decoder_arg(self, children: list[Any]) -> tuple[Token, Any, Span]:
        return (children[0], children[2][0], children[2][1])

    def decoder_value(self, children: list[Token]) -> tuple[Any, Span]:
        span = _join(_tok_span(children[0]), _tok_span(children[-1]))
        last = children[-1]
        if last.type == "NUMBER":
            value = self._number(last)
            return (-value if len(children) == 2 else value), span
        if last.type == "STRING":
            return _decode_token(last, self.err).value, span
        return last.value, span

    def _number(self, tok: Token) -> Any:
        try:
            value = ast.literal_eval(tok.value)
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
            self.err.syntax_at(f"invalid number {tok.value!r}", _tok_span(tok))
        return value

    # ---- prompt program ------------------------------------------------------------------------------------

    def body(self, children: list[Any]) -> tuple[nodes.Stmt, ...]:
        return tuple(c for c in children if not isinstance(c, Token))

    block = body

    def prompt_stmt(self, children: list[Any]) -> nodes.PromptString:
        tok: Token = children[0]
        lit = _decode_token(tok, self.err)
        parts = _PromptScanner(lit, self.err).scan()
        where = None
        span = _tok_span(tok)
        if len(children) > 2:
            where = self._constraint(children[2])
            span = _join(span, children[2].span)
        return nodes.PromptString(parts, where, span=span)

    def py_group(self, children: list[Any]) -> _Extent:
        return _extent(children)

    def py_header(self, children: list[Any]) -> _Extent:
        return _extent(children)

    def py_stmt(self, children: list[Any]) -> nodes.PyStmt:
        ext = _extent(children)
        source = self.text[ext.start : ext.end]
        tree = self._python(source, ext)
        body = getattr(tree, "body", [])
        if len(body) != 1:
            self.err.syntax_at("expected one Python statement per line", ext.span)
        stmt = body[0]
        if not isinstance(stmt, _SIMPLE_STMTS):
            what = type(stmt).__name__.lower()
            self.err.syntax_at(f"'{what}' statements are not supported in queries", ext.span)
        return nodes.PyStmt(source, span=ext.span)

    def for_stmt(self, children: list[Any]) -> nodes.For:
        head: _Extent = children[1]
        text = self.text[head.start : head.end]
        wrapped = f"for {text}: pass"
        tree = self._python(text, head, shift=4, wrapped=wrapped)
        loop = tree.body[0]  # type: ignore[attr-defined]
        if not isinstance(loop, ast.For):
            self.err.syntax_at("invalid for loop header", head.span)
        target = ast.get_source_segment(wrapped, loop.target) or ""
        iterable = ast.get_source_segment(wrapped, loop.iter) or ""
        body: tuple[nodes.Stmt, ...] = children[3]
        return nodes.For(target, iterable, body, span=_join(_tok_span(children[0]), _last_span(body)))

    def if_stmt(self, children: list[Any]) -> nodes.If:
        head: _Extent = children[1]
        branches: list[tuple[str | None, tuple[nodes.Stmt, ...]]] = [(self._condition(head), children[3])]
        for extra in children[4:]:
            branches.append(extra)
        return nodes.If(tuple(branches), span=_join(_tok_span(children[0]), _last_span(branches[-1][1])))

    def elif_branch(self, children: list[Any]) -> tuple[str | None, tuple[nodes.Stmt, ...]]:
        return (self._condition(children[1]), children[3])

    def else_branch(self, children: list[Any]) -> tuple[str | None, tuple[nodes.Stmt, ...]]:
        return (None, children[2])

    def _condition(self, head: _Extent) -> str:
        text = self.text[head.start : head.end]
        self._python(text, head, mode="eval")
        return text

    # ---- clauses -------------------------------------------------------------------------------------------

    def clauses(self, children: list[Any]) -> dict[str, Any]:
        return dict(children)

    def from_clause(self, children: list[Token]) -> tuple[str, str]:
        lit = _decode_token(children[1], self.err)
        if not lit.value.strip():
            self.err.type_at("empty model name in from clause", lit.span)
        return ("model", lit.value)

    def where_clause(self, children: list[Any]) -> tuple[str, nodes.Constraint]:
        return ("where", self._constraint(children[1]))

    def distribution_clause(self, children: list[Any]) -> tuple[str, nodes.Distribution]:
        var_tok: Token = children[1]
        options: _List = children[3]
        if not options.items:
            self.err.type_at("distribution needs at least one option", options.span)
        values: list[str] = []
        for item in options.items:
            if not isinstance(item, _Str):
                self.err.type_at("distribution options must be strings", item.span)
            if item.lit.value in values:
                self.err.type_at(f"duplicate distribution option {item.lit.value!r}", item.span)
            values.append(item.lit.value)
        dist = nodes.Distribution(var_tok.value, tuple(values), span=_join(_tok_span(children[0]), options.span))
        self.var_spans[id(dist)] = _tok_span(var_tok)
        return ("distribution", dist)

    # ---- constraint expressions ----------------------------------------------------------------------------

    def c_or(self, children: list[Any]) -> _Bool:
        items = tuple(c for c in children if not isinstance(c, Token))
        return _Bool("or", items, _join(items[0].span, items[-1].span))

    def c_and(self, children: list[Any]) -> _Bool:
        items = tuple(c for c in children if not isinstance(c, Token))
        return _Bool("and", items, _join(items[0].span, items[-1].span))

    def c_not(self, children: list[Any]) -> _NotE:
        return _NotE(children[1], _join(_tok_span(children[0]), children[1].span))

    def c_compare(self, children: list[Any]) -> _Compare:
        left, (op, op_span), right = children
        return _Compare(left, op, op_span, right, _join(left.span, right.span))

    def c_op(self, children: list[Token]) -> tuple[str, Span]:
        return " ".join(t.value for t in children), _join(_tok_span(children[0]), _tok_span(children[-1]))

    def c_name(self, children: list[Token]) -> _Name:
        return _Name(children[0].value, _tok_span(children[0]))

    def c_string(self, children: list[Token]) -> _Str:
        return _Str(_decode_token(children[0], self.err), _tok_span(children[0]))

    def c_number(self, children: list[Token]) -> _Num:
        value = self._number(children[-1])
        span = _join(_tok_span(children[0]), _tok_span(children[-1]))
        return _Num(-value if len(children) == 2 else value, span)

    def c_call(self, children: list[Any]) -> _Call:
        args = tuple(c for c in children[2:-1] if not isinstance(c, Token))
        return _Call(children[0].value, args, _join(_tok_span(children[0]), _tok_span(children[-1])))

    def c_list(self, children: list[Any]) -> _List:
        items = tuple(c for c in children[1:-1] if not isinstance(c, Token))
        return _List(items, _join(_tok_span(children[0]), _tok_span(children[-1])))

    def c_paren(self, children: list[Any]) -> _Paren:
        return _Paren(children[1], _join(_tok_span(children[0]), _tok_span(children[-1])))

    # ---- normalization into nodes.py constraints -----------------------------------------------------------

    def _constraint(self, e: _Expr) -> nodes.Constraint:
        if isinstance(e, _Paren):
            return self._constraint(e.inner)
        if isinstance(e, _Bool):
            items: list[nodes.Constraint] = []
            kind = nodes.And if e.op == "and" else nodes.Or
            for sub in e.items:
                c = self._constraint(sub)
                items.extend(c.items if isinstance(c, kind) else (c,))
            return kind(tuple(items), span=e.span)
        if isinstance(e, _NotE):
            return nodes.Not(self._constraint(e.operand), span=e.span)
        if isinstance(e, _Call):
            return self._call(e)
        if isinstance(e, _Compare):
            return self._compare(e)
        if isinstance(e, _Name):
            self.err.type_at(f"'{e.name}' alone is not a constraint (try INT({e.name}) or len({e.name}) < 10)", e.span)
        self.err.type_at("expected a constraint here", e.span)

    def _var(self, e: _Expr, func: str) -> str:
        if not isinstance(e, _Name):
            self.err.type_at(f"{func} expects a variable name here", e.span)
        return e.name

    def _string(self, e: _Expr, func: str, what: str = "a string") -> _Str:
        if not isinstance(e, _Str):
            self.err.type_at(f"{func} expects {what} here", e.span)
        return e

    def _arity(self, e: _Call, n: int, usage: str) -> None:
        if len(e.args) != n:
            plural = "s" if n != 1 else ""
            self.err.type_at(f"{e.func} takes {n} argument{plural} ({usage}), got {len(e.args)}", e.span)

    def _atom(self, node: Any, var_expr: _Expr) -> Any:
        self.var_spans[id(node)] = var_expr.span
        return node

    def _call(self, e: _Call) -> nodes.Constraint:
        func = e.func
        if func == "INT":
            self._arity(e, 1, "INT(VAR)")
            return self._atom(nodes.IsInt(self._var(e.args[0], func), span=e.span), e.args[0])
        if func == "REGEX":
            self._arity(e, 2, 'REGEX(VAR, r"...")')
            var = self._var(e.args[0], func)
            pattern = self._string(e.args[1], func, "a regex string")
            _check_regex(pattern.lit.value, pattern.lit.positions, (pattern.span.line, pattern.span.column), self.err)
            return self._atom(nodes.Regex(var, pattern.lit.value, span=e.span), e.args[0])
        if func in ("STOPS_AT", "STOPS_BEFORE", "STARTS_WITH"):
            self._arity(e, 2, f'{func}(VAR, "text")')
            var = self._var(e.args[0], func)
            phrase = self._string(e.args[1], func)
            if not phrase.lit.value and func != "STARTS_WITH":
                self.err.type_at(f"{func} needs a non-empty stop phrase", phrase.span)
            kind = {"STOPS_AT": nodes.StopsAt, "STOPS_BEFORE": nodes.StopsBefore, "STARTS_WITH": nodes.StartsWith}
            return self._atom(kind[func](var, phrase.lit.value, span=e.span), e.args[0])
        if func in ("len", "TOKENS"):
            self.err.type_at(f"{func}(...) must be compared with a number, e.g. len(X) < 10", e.span)
        hint = _closest(func, CONSTRAINT_FUNCTIONS)
        suggestion = f"; did you mean {hint}?" if hint else ""
        self.err.type_at(f"unknown constraint function '{func}'{suggestion}", e.span)

    def _length(self, e: _Expr) -> tuple[str, bool, _Expr] | None:
        """``len(VAR)`` -> (VAR, False), ``len(TOKENS(VAR))`` -> (VAR, True), anything else -> None."""
        if not isinstance(e, _Call) or e.func != "len":
            return None
        self._arity(e, 1, "len(VAR) or len(TOKENS(VAR))")
        arg = e.args[0]
        if isinstance(arg, _Call) and arg.func == "TOKENS":
            self._arity(arg, 1, "TOKENS(VAR)")
            return self._var(arg.args[0], "TOKENS"), True, arg.args[0]
        return self._var(arg, "len"), False, arg

    def _compare(self, e: _Compare) -> nodes.Constraint:
        if e.op in ("in", "not in"):
            if isinstance(e.left, _Name) and e.op == "in":
                if not isinstance(e.right, _List):
                    self.err.type_at(f'expected a list of strings after \'in\', e.g. {e.left.name} in ["a", "b"]', e.right.span)
                if not e.right.items:
                    self.err.type_at("empty list of options", e.right.span)
                options: list[str] = []
                for item in e.right.items:
                    if not isinstance(item, _Str):
                        self.err.type_at("options must be strings", item.span)
                    if item.lit.value not in options:
                        options.append(item.lit.value)
                return self._atom(nodes.OneOf(e.left.name, tuple(options), span=e.span), e.left)
            if isinstance(e.left, _Str):
                if not isinstance(e.right, _Name):
                    self.err.type_at(f"expected a variable name after '{e.op}'", e.right.span)
                if not e.left.lit.value:
                    self.err.type_at("the searched text must not be empty", e.left.span)
                node = self._atom(nodes.Contains(e.right.name, e.left.lit.value, span=e.span), e.right)
                return nodes.Not(node, span=e.span) if e.op == "not in" else node
            self.err.type_at(f"unsupported use of '{e.op}' (use VAR in [...] or \"text\" in VAR)", e.op_span)
        length, bound, op = self._length(e.left), e.right, e.op
        if length is None:
            length, bound = self._length(e.right), e.left
            op = _CMP_FLIP.get(op, op)
        if length is None:
            self.err.type_at(f"unsupported comparison '{e.op}' (only len(VAR) or len(TOKENS(VAR)) can be compared)", e.op_span)
        if op not in _CMP_FLIP:
            self.err.type_at(f"unsupported comparison '{e.op}' for lengths (use <, <=, >, >= or ==)", e.op_span)
        if not isinstance(bound, _Num) or isinstance(bound.value, bool) or not isinstance(bound.value, int):
            self.err.type_at("a length must be compared with an integer", bound.span)
        if bound.value < 0:
            self.err.type_at(f"a length bound must not be negative, got {bound.value}", bound.span)
        var, tokens, var_expr = length
        return self._atom(nodes.LenCmp(var, op, bound.value, tokens=tokens, span=e.span), var_expr)


def _last_span(body: Sequence[Any]) -> Span:
    return body[-1].span if body else nodes.NOWHERE


def _closest(name: str, candidates: Iterable[str]) -> str | None:
    import difflib

    pool = list(candidates)
    lowered = {c.lower(): c for c in pool}
    if name.lower() in lowered:
        return lowered[name.lower()]
    match = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return match[0] if match else None


# --------------------------------------------------------------------------------------------------------------
# Entry point


def parse(source: str, filename: str = "<query>") -> nodes.Query:
    """Parse and check a query; raise QuerySyntaxError / QueryTypeError (with FILE:LINE:COL) on bad input."""
    err = _Errors(source, filename)
    # Trailing whitespace would otherwise read as an indented line at the end of the file.
    text = source.rstrip(" \t\f\r\n")
    layout = _Layout(text, err)
    try:
        tree = _parse_tree(text, layout, err)
        builder = QueryBuilder(text, err)
        try:
            query: nodes.Query = builder.transform(tree)
        except VisitError as e:
            if isinstance(e.orig_exc, LmqcError | RecursionError):
                raise e.orig_exc from None
            raise
        query = _with_source(query, source)
        checker.check(query, builder.var_spans)
        return query
    except RecursionError:
        err.syntax("query is nested too deeply", 1, 1)


def _parse_tree(text: str, layout: _Layout, err: _Errors) -> Any:
    if not text.strip(" \t\f\r\n"):
        err.syntax("empty query: expected at least one prompt string", 1, 1)
    lark = _lark()
    try:
        interactive = lark.parse_interactive("")
        for tok in layout.run(_tokens(text)):
            interactive.feed_token(tok)
        end = layout.last
        eof = Token("$END", "", len(text), end.end_line, end.end_column) if end is not None else Token("$END", "", 0, 1, 1)
        return interactive.feed_token(eof)
    except UnexpectedCharacters as e:
        ch = text[e.pos_in_stream] if 0 <= e.pos_in_stream < len(text) else ""
        if ch in "'\"":
            err.syntax("unterminated string literal", e.line, e.column)
        err.syntax(f"unexpected character {ch!r}", e.line, e.column)
    except UnexpectedToken as e:
        _unexpected_token(e, layout, text, err)
    except UnexpectedEOF:
        lines = text.splitlines() or [""]
        err.syntax("unexpected end of query", len(lines), len(lines[-1]) + 1)
    except UnexpectedInput as e:
        err.syntax("invalid syntax", getattr(e, "line", 1) or 1, getattr(e, "column", 1) or 1)
    except LarkError as e:
        err.syntax(f"invalid syntax: {e}", 1, 1)


def _with_source(query: nodes.Query, source: str) -> nodes.Query:
    from dataclasses import replace

    return replace(query, source=source)
