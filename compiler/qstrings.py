"""Query strings: Python string literals decoded with the source position of every character, and the
scanner that splits a decoded query string into text, ``{expr}`` interpolations, ``{:role}`` tags and
``[VAR]`` holes (``nodes.PromptPart``). Errors point at the exact character.
"""

from __future__ import annotations

import ast
import keyword
import re
import unicodedata
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NoReturn, overload

import numpy as np

from ..errors import QuerySyntaxError, QueryTypeError
from . import nodes
from .nodes import Span

Pos = tuple[int, int]  # (line, column), 1-based


# Line numbers as shared int objects while a query is parsed: every span of a large query holds two, and each
# above 256 was a 32-byte object of its own. ``parser.parse`` empties the table when it is done.
_INTS: dict[int, int] = {}


def interned(value: int) -> int:
    return _INTS.setdefault(value, value)


def forget_interned() -> None:
    _INTS.clear()


class Positions(Sequence[Pos]):
    """The source position of each character of a run of text: two int32 arrays, 8 bytes a character.

    A list of ``(line, column)`` tuples costs ~100 bytes a character (a tuple and a column int each), which made
    a 1 MB query string need ~130 MB to parse. Indexing gives a ``Pos``; slicing gives a ``Positions`` view.

    Characters on one line at consecutive columns (most literals, and their slices) are kept as their first
    position and count, and the arrays are made only when asked for: a small literal then costs no NumPy call.
    """

    __slots__ = ("_cols", "_lines", "_run")

    def __init__(self, lines: np.ndarray, cols: np.ndarray) -> None:
        self._lines: np.ndarray | None = lines
        self._cols: np.ndarray | None = cols
        self._run: tuple[int, int, int] | None = None  # (line, first column, length) of a one-line run

    @classmethod
    def _of_run(cls, line: int, col: int, n: int) -> Positions:
        self = cls.__new__(cls)
        self._lines = self._cols = None
        self._run = (line, col, n)
        return self

    @property
    def lines(self) -> np.ndarray:
        if self._lines is None:
            self._make()
        return self._lines  # type: ignore[return-value]

    @property
    def cols(self) -> np.ndarray:
        if self._cols is None:
            self._make()
        return self._cols  # type: ignore[return-value]

    def _make(self) -> None:
        line, col, n = self._run  # type: ignore[misc]
        self._lines = np.full(n, line, np.int32)
        self._cols = np.arange(col, col + n, dtype=np.int32)

    @classmethod
    def of_text(cls, text: str, line: int, col: int) -> Positions:
        """Positions of the characters of ``text`` when its first one is at ``(line, col)``."""
        n = len(text)
        if "\n" not in text:  # most literals: one line
            return cls._of_run(line, col, n)
        newlines = np.fromiter((m.start() for m in re.finditer("\n", text)), np.int64)
        starts = np.concatenate([np.zeros(1, np.int64), newlines + 1])  # offsets where each line begins
        lengths = np.diff(np.append(starts, n))
        lines = np.repeat(np.arange(line, line + len(starts), dtype=np.int32), lengths)
        cols = (np.arange(n, dtype=np.int64) - np.repeat(starts, lengths) + 1).astype(np.int32)
        cols[: lengths[0]] += col - 1
        return cls(lines, cols)

    @classmethod
    def repeat(cls, at: Pos, n: int) -> Positions:
        return cls(np.full(n, at[0], np.int32), np.full(n, at[1], np.int32))

    @classmethod
    def concat(cls, parts: Sequence[Positions]) -> Positions:
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(0, np.int32))
        return cls(np.concatenate([p.lines for p in parts]), np.concatenate([p.cols for p in parts]))

    def take(self, index: np.ndarray) -> Positions:
        """The positions at ``index`` (an integer array)."""
        return Positions(self.lines[index], self.cols[index])

    def __len__(self) -> int:
        return self._run[2] if self._run is not None else len(self._lines)  # type: ignore[arg-type]

    @overload
    def __getitem__(self, k: int) -> Pos: ...
    @overload
    def __getitem__(self, k: slice) -> Positions: ...
    def __getitem__(self, k: int | slice) -> Pos | Positions:
        run = self._run
        if run is not None:  # a run answers by arithmetic, whether or not its arrays were made
            line, col, n = run
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step == 1:
                    return Positions._of_run(line, col + start, max(0, stop - start))
            else:
                i = k.__index__()
                if i < 0:
                    i += n
                if not 0 <= i < n:
                    raise IndexError(f"index {k} is out of bounds for axis 0 with size {n}")
                return interned(line), col + i
        if isinstance(k, slice):
            return Positions(self.lines[k], self.cols[k])
        return interned(int(self.lines[k])), int(self.cols[k])

    def __iter__(self) -> Iterator[Pos]:
        return zip(self.lines.tolist(), self.cols.tolist(), strict=True)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Positions):
            return bool(np.array_equal(self.lines, other.lines) and np.array_equal(self.cols, other.cols))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable arrays

    def __repr__(self) -> str:
        return f"Positions({list(self)[:8]}{' ...' if len(self) > 8 else ''})"

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


# escape letter -> decoded code point for the one-letter escapes; -1: a backslash-newline (decodes to nothing)
_LETTER_CODES = np.full(128, -2, np.int32)  # -2: unknown escape, kept as written
for _letter, _decoded in _SIMPLE_ESCAPES.items():
    _LETTER_CODES[ord(_letter)] = ord(_decoded) if _decoded else -1
_NUMERIC_ESCAPES = frozenset(map(ord, "01234567xuUN"))


def _decode_simple(body: str) -> tuple[str, np.ndarray] | None:
    """Decode a literal body whose escapes are all one-letter ones (``\\n``, ``\\\\``, ``\\"``, a line
    continuation, unknown ones kept as written) with array operations: (value, source index of each decoded
    character). None when an escape needs more (octal, ``\\x``, ``\\u``, ``\\N{...}``): the loop decodes those."""
    codes = np.frombuffer(body.encode("utf-32-le", "surrogatepass"), np.int32).copy()  # code points fit
    backslashes = np.flatnonzero(codes == 92)
    # in a run of backslashes, every other one starts an escape (the first of each pair)
    run_start = np.ones(len(backslashes), bool)
    run_start[1:] = backslashes[1:] != backslashes[:-1] + 1
    first = np.flatnonzero(run_start)
    offset = np.arange(len(backslashes)) - first[np.cumsum(run_start) - 1]
    starts = backslashes[offset % 2 == 0]
    if not len(starts) or starts[-1] + 1 >= len(codes):
        return None
    letters = codes[starts + 1]
    if np.isin(letters, list(_NUMERIC_ESCAPES)).any():
        return None
    decoded = np.where(letters < 128, _LETTER_CODES[np.minimum(letters, 127)], -2)
    keep = np.ones(len(codes), bool)
    one = decoded >= 0
    codes[starts[one]] = decoded[one]
    keep[starts[one] + 1] = False
    gone = decoded == -1
    keep[starts[gone]] = False
    keep[starts[gone] + 1] = False
    index = np.flatnonzero(keep)
    value = codes[index].tobytes().decode("utf-32-le", "surrogatepass")
    return value, index


@dataclass(frozen=True, slots=True, eq=False)
class Lit:
    """A decoded string literal, with the source position of every decoded character."""

    value: str
    positions: Positions
    prefix: str
    span: Span
    close: Pos  # where the closing quote starts (errors about "the end of the string" point there)


_SURROGATE = re.compile("[\ud800-\udfff]")


def decode_literal(chars: str, pos: Positions, err: Errors) -> Lit:
    """Decode a Python string literal given as its source text with the position of each character.

    Text between escapes is copied in slices, and the decoded characters' positions are gathered by one index
    array into ``pos``, so a long literal costs a few bytes a character.
    """
    n = len(chars)
    i = 0
    while i < n and chars[i] in _PREFIX_CHARS:
        i += 1
    prefix = chars[:i].lower()
    if i >= n or chars[i] not in "'\"":
        err.syntax_at("expected a string literal", pos[min(i, n - 1)] if n else (1, 1))
    if "b" in prefix:
        err.syntax_at("bytes literals are not allowed; use a normal string", pos[0])
    quote = chars[i]
    qlen = 3 if chars[i : i + 3] == quote * 3 and n - i >= 6 else 1
    body_start, body_end = i + qlen, n - qlen
    span = span_of(pos[0], pos[-1])
    close = pos[body_end] if body_end < n else pos[-1]
    if "r" in prefix or "\\" not in chars[body_start:body_end]:
        # a raw string keeps every character as written (a backslash only protects the next one from ending it)
        value, out_pos = chars[body_start:body_end], pos[body_start:body_end]
    elif chars.count("\\", body_start, body_end) > 64 and (simple := _decode_simple(chars[body_start:body_end])):
        value, index = simple
        out_pos = pos.take(index + body_start)
    else:
        out: list[str] = []
        index_q = array("q")  # the source index of each decoded character
        j = body_start
        while j < body_end:
            k = chars.find("\\", j, body_end)
            if k != j:
                stop = body_end if k < 0 else k
                out.append(chars[j:stop])
                index_q.extend(range(j, stop))
                j = stop
                continue
            at = pos[j]
            nxt = chars[j + 1] if j + 1 < body_end else ""
            if nxt in _SIMPLE_ESCAPES:
                decoded = _SIMPLE_ESCAPES[nxt]
                step = 2
            elif nxt in "01234567" and nxt:
                k = j + 1
                while k < body_end and k < j + 4 and chars[k] in "01234567":
                    k += 1
                decoded = chr(int(chars[j + 1 : k], 8))
                step = k - j
            elif nxt in ("x", "u", "U"):
                width = {"x": 2, "u": 4, "U": 8}[nxt]
                digits = chars[j + 2 : j + 2 + width]
                if len(digits) != width or not set(digits) <= _HEX or j + 2 + width > body_end:
                    err.syntax_at(f"truncated \\{nxt} escape (needs {width} hex digits)", at)
                code = int(digits, 16)
                if code > 0x10FFFF:
                    err.syntax_at(f"illegal Unicode character in \\{nxt} escape", at)
                decoded = chr(code)
                step = 2 + width
            elif nxt == "N":
                close_at = chars.find("}", j + 2, body_end)
                if j + 2 >= body_end or chars[j + 2] != "{" or close_at < 0:
                    err.syntax_at("malformed \\N{...} escape", at)
                name = chars[j + 3 : close_at]
                try:
                    decoded = unicodedata.lookup(name)
                except KeyError:
                    err.syntax_at(f"unknown Unicode character name {name!r}", at)
                step = close_at + 1 - j
            else:
                # Python keeps unknown escapes (`"\d"`) verbatim, which regexes written without r"" rely on.
                decoded = "\\"
                step = 1
            out.append(decoded)
            index_q.extend([j] * len(decoded))  # decoded characters point at their escape's backslash
            j += step
        value = "".join(out)
        out_pos = pos.take(np.frombuffer(index_q, np.int64)) if index_q else Positions.concat([])
    bad = _SURROGATE.search(value)
    if bad is not None:
        # prompts, stop phrases and options are UTF-8 text for the model; a lone surrogate has no encoding
        err.syntax_at(f"lone surrogate {bad.group()!r} in a query string cannot be encoded as UTF-8", out_pos[bad.start()])
    return Lit(value, out_pos, prefix, span, close)


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


_SPECIAL = re.compile(r"[\[\]{}]")


class PromptScanner:
    """Splits a decoded prompt string into Text / Interp / Hole parts, keeping source positions."""

    def __init__(self, lit: Lit, err: Errors, first_hole: int = 0) -> None:
        self.chars = lit.value
        self.pos = lit.positions
        self.err = err
        self.end_pos: Pos = lit.close
        self.next_hole = first_hole  # ``Hole.index`` of the next hole: holes are numbered across the query

    def at(self, i: int) -> Pos:
        return self.pos[i] if i < len(self.pos) else self.end_pos

    def scan(self) -> tuple[nodes.PromptPart, ...]:
        chars, n = self.chars, len(self.chars)
        parts: list[nodes.PromptPart] = []
        buf: list[str] = []
        first: Pos | None = None  # position of the buffered text's first and last characters
        last: Pos = (0, 0)

        def add(text: str, a: int, b: int) -> None:
            nonlocal first, last
            buf.append(text)
            if first is None:
                first = self.pos[a]
            last = self.pos[b - 1]

        def flush() -> None:
            nonlocal first
            if buf:
                parts.append(nodes.Text("".join(buf), span=span_of(first, last)))  # type: ignore[arg-type]
                buf.clear()
                first = None

        i = 0
        while i < n:
            m = _SPECIAL.search(chars, i)
            k = n if m is None else m.start()
            if k > i:  # plain text up to the next bracket, copied as one slice
                add(chars[i:k], i, k)
                i = k
                continue
            ch = chars[i]
            nxt = chars[i + 1] if i + 1 < n else ""
            if nxt == ch:
                add(ch, i, i + 1)
                i += 2
            elif ch == "[":
                flush()
                hole, i = self.hole(i)
                parts.append(hole)
            elif ch == "{":
                flush()
                field, i = self.interp(i)
                parts.append(field)
            else:
                self.err.syntax_at(f"single '{ch}' in prompt string; write '{ch * 2}' for a literal '{ch}'", self.pos[i])
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
        hole = nodes.Hole(
            name, annotation, tactic, self.next_hole, decorators=tuple(decorators), span=span_of(self.at(i), self.at(j))
        )
        self.next_hole += 1
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

