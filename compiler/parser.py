"""Query source -> ``nodes.Query``.

An LMQL query is Python with a few additions, and it is parsed the way LMQL itself parses it: Python's own
``tokenize`` finds the query's parts, and Python's own ``ast`` parses every one of them.

1. *Layout* (``_split``): over Python tokens, find the optional decoder clause (``argmax``/``sample(...)``/...,
   at the start of a top-level line; Python code before it is the *prologue*), the *body*, and the trailing
   clauses ``from``, ``where`` and ``distribution`` (each at the start of a line, or after a string on the
   same line in the one-line form). Inside the body, ``"..." where ...`` and ``"..." distribution ...`` after a
   string statement are inline clauses, up to the end of the logical line.
2. *Body*: the source with everything that is not body blanked out (so every position stays the source's) is
   parsed by ``ast``; every statement-level string expression outside nested ``def``/``class``/``lambda`` is a
   query string (``nodes.PromptString``), scanned by ``qstrings`` into text, ``{expr}`` and ``[HOLE]`` parts.
3. *Clauses*: decoder arguments, the model, constraints and the distribution are parsed as Python
   expressions and normalized into ``nodes`` constraints; an argument that is not a literal (``X in options``)
   becomes a ``nodes.Dyn`` evaluated when the hole starts.

``parse`` raises only ``QuerySyntaxError`` / ``QueryTypeError`` on bad input, whatever the input is.
"""

from __future__ import annotations

import ast
import gc
import io
import re
import sys
import tokenize
import warnings
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import LmqcError
from . import checker, nodes
from .decoders import DECODERS, IGNORED_DECODER_ARGS, decoder_arg, decoder_clause
from .nodes import Span
from .qstrings import (
    Errors,
    Lit,
    Pos,
    Positions,
    PromptScanner,
    check_regex,
    closest,
    decode_literal,
    forget_interned,
    interned,
    python_message,
)

__all__ = ["DECODERS", "IGNORED_DECODER_ARGS", "MAX_QUERY_CHARS", "decoder_arg", "parse"]

CONSTRAINT_FUNCTIONS = ("INT", "FLOAT", "BOOL", "JSON", "REGEX", "STOPS_AT", "STOPS_BEFORE", "STARTS_WITH", "len",
                        "TOKENS")
_ALIASES = {"int": "INT", "float": "FLOAT", "bool": "BOOL", "json": "JSON", "regex": "REGEX", "stops_at": "STOPS_AT", "stops_before": "STOPS_BEFORE",
            "starts_with": "STARTS_WITH", "tokens": "TOKENS"}

#: Longest query source parsed, in characters. Parsing costs memory in proportion to the source, most for many
#: short query strings with holes (the parsed query keeps ~1.7 KB for each, its AST and spans): tracemalloc peak
#: ~110 MiB for 1 MB of ``"Q: [X]"`` lines, ~45 MiB for 1 MB of short query strings, ~40 MiB for 1 MB of escapes,
#: ~15 MiB for one 1 MB string. Real queries are a few kB; the limit turns a runaway input into an error instead
#: of an exhausted machine.
MAX_QUERY_CHARS = 2 << 20

_SKIP = {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER}
# After a keyword at the start of a line, these make the line a Python statement (`where = 3`, `from.x`).
_PY_AFTER_NAME = {"=", ".", ":", ",", "[", "+=", "-=", "*=", "/=", "//=", "%=", "**=", "|=", "&=", "^=", ">>=",
                  "<<=", "@="}


# --------------------------------------------------------------------------------------------------------------
# Source positions


class _Text:
    """The query text with line offsets: (line, col0) <-> offset."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [0, *(m.end() for m in re.finditer("\n", text))]

    def offset(self, pos: tuple[int, int]) -> int:
        row, col = pos
        return self.starts[row - 1] + col if 0 < row <= len(self.starts) else len(self.text)

    def pos(self, offset: int) -> Pos:
        """1-based (line, column) of an offset."""
        row = bisect_left(self.starts, offset + 1) - 1
        return row + 1, offset - self.starts[row] + 1

    def positions(self, start: int, end: int) -> Positions:
        """The position of every character in ``text[start:end]``."""
        return Positions.of_text(self.text[start:end], *self.pos(start))


def _tok_span(t: tokenize.TokenInfo) -> Span:
    return Span(t.start[0], t.start[1] + 1, t.end[0], t.end[1] + 1)


def _node_span(node: ast.AST, col_base: tuple[int, int] | None = None) -> Span:
    """Span of an ast node; ``col_base`` maps positions of a fragment parsed on its own onto the source."""
    line, col = node.lineno, node.col_offset  # type: ignore[attr-defined]
    end_line = getattr(node, "end_lineno", None) or line
    end_col = getattr(node, "end_col_offset", None) or col
    if col_base is not None:
        base_line, base_col = col_base
        if line == 1:
            col += base_col
        if end_line == 1:
            end_col += base_col
        line, end_line = line + base_line - 1, end_line + base_line - 1
    return Span(interned(line), col + 1, interned(end_line), end_col + 1)


# --------------------------------------------------------------------------------------------------------------
# Layout


@dataclass(slots=True)
class _Inline:
    kind: str  # "where" | "distribution"
    start: int  # offset of the keyword
    body_start: int  # offset after the keyword
    end: int  # offset after the clause
    string_end: int  # offset where the string before it ends


@dataclass(slots=True)
class _Layout:
    prologue: tuple[int, int] | None = None
    decoder: tuple[int, int] | None = None
    body: tuple[int, int] = (0, 0)
    clauses: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # kind -> (kw start, start, end)
    inline: list[_Inline] = field(default_factory=list)
    first_body_token: _Tok | None = None


_STRING_OR_COMMENT = re.compile(r"""[#'"]""")
# a string literal's body and closing quote(s), matched possessively: no backtracking stack, constant memory
_STRING_REST = {
    (False, "'"): re.compile(r"""[^'\\\n]*+(?:\\.[^'\\\n]*+)*+'""", re.S),
    (False, '"'): re.compile(r"""[^"\\\n]*+(?:\\.[^"\\\n]*+)*+\"""", re.S),
    (True, "'"): re.compile(r"""[^'\\]*+(?:(?:\\.|'(?!''))[^'\\]*+)*+'''""", re.S),
    (True, '"'): re.compile(r'''[^"\\]*+(?:(?:\\.|"(?!""))[^"\\]*+)*+"""''', re.S),
}
# what is masked: backslashes and the string's quote character, except (one-quote strings) a backslash that
# continues the string onto the next line; everything else stays (tokenize looks at a last line's first character)
_MASK = {
    (False, "'"): re.compile(r"\\(?!\n)|'"), (False, '"'): re.compile(r'\\(?!\n)|"'),
    (True, "'"): re.compile(r"[\\']"), (True, '"'): re.compile(r'[\\"]'),
}


def _mask_strings(text: str) -> str | None:
    """``text`` with the backslashes and quotes inside string literals masked as ``x`` (``_MASK``); None if no
    string has any.

    Python 3.11's ``tokenize`` matches a string with a regex whose backtracking stack grows with every escape
    and embedded quote: 1 MB of ``\\n`` escapes took ~210 MB. Masked bodies have the same length and lines, so
    every token keeps its position; the strings' text is put back from the source (``_generate_tokens``). A
    string that is not terminated ends the masking: from there on ``tokenize`` sees the source as written.
    """
    pieces: list[str] = []
    done = 0
    i, n = 0, len(text)
    while i < n:
        m = _STRING_OR_COMMENT.search(text, i)
        if m is None:
            break
        k = m.start()
        quote = text[k]
        if quote == "#":
            i = text.find("\n", k)
            if i < 0:
                break
            continue
        triple = text.startswith(quote * 3, k)
        body = k + (3 if triple else 1)
        rest = _STRING_REST[triple, quote].match(text, body)
        if rest is None:
            break  # not terminated: the rest is left to tokenize, which reports it
        i = rest.end()
        end = i - (3 if triple else 1)
        segment = text[body:end]
        if "\\" in segment or (triple and quote in segment):
            pieces.append(text[done:body])
            pieces.append(_MASK[triple, quote].sub("x", segment))
            done = end
    if not pieces:
        return None
    pieces.append(text[done:])
    return "".join(pieces)


def _generate_tokens(text: str, starts: list[int]) -> Iterator[tokenize.TokenInfo]:
    """``tokenize.generate_tokens`` over ``text`` (line ``k`` starting at offset ``starts[k - 1]``), with string
    bodies masked while tokenizing where the pure-Python tokenizer needs it (``_mask_strings``)."""
    masked = _mask_strings(text) if sys.version_info < (3, 12) else None
    for tok in tokenize.generate_tokens(io.StringIO(masked if masked is not None else text).readline):
        if masked is not None and tok.type == tokenize.STRING:
            a = starts[tok.start[0] - 1] + tok.start[1]
            b = starts[tok.end[0] - 1] + tok.end[1]
            tok = tok._replace(string=text[a:b])
        yield tok


# The layout needs only the significant tokens (no comments, NL, INDENT/DEDENT), as (type, text, start, end)
# with start/end as offsets into the text.
_Tok = tuple[int, str, int, int]

# One token at a time, after spaces: newline, comment, the start of a string (prefix and quotes: tokenize's
# prefixes), the start of a number, a name (ASCII: a non-ASCII character outside strings and comments goes to
# tokenize), an operator (tokenize's own list). Alternatives cannot start alike except a name and a string prefix,
# and the string comes first, as in tokenize.
_FAST_TOKEN = re.compile(
    r"[ ]*(?:(\n)|(#[^\n]*)"
    r"|((?:[bB][rR]|[rR][bB]|[fF][rR]|[rR][fF]|[rRbBuUfF])?(?:'{3}|\"{3}|'|\"))"
    r"|([0-9]|\.[0-9])|([A-Za-z_][A-Za-z0-9_]*)|(" + tokenize.Special + "))"
)
_NUMBER = re.compile(tokenize.Number)
_SPACES = re.compile("[ ]*")


def _fast_tokens(text: str) -> list[_Tok] | None:
    """The significant tokens exactly as ``tokenize`` gives them, for sources where that is simple to see; None
    for anything else (tabs or form feeds outside strings, a backslash continuation, non-ASCII outside strings
    and comments, an indentation tokenize refuses, an unbalanced bracket, an unterminated string, an unknown
    character), which is left to ``tokenize`` and its error reporting.

    ``tokenize`` costs ~50 us for a one-line query (a generator over lines, a namedtuple per token, masking);
    this is one regex match per token. Strings are matched by the possessive ``_STRING_REST`` patterns: with no
    backslash-newline in the text they end where tokenize's line-by-line matching ends them."""
    if "\\\n" in text:
        return None
    out: list[_Tok] = []
    n = len(text)
    pos = depth = 0
    indents = [0]
    line_start = True
    match = _FAST_TOKEN.match
    while True:
        if line_start and depth == 0:  # a new statement: blank and comment lines, then indentation
            p = _SPACES.match(text, pos).end()  # type: ignore[union-attr]
            if p == n:
                break
            if text[p] in "#\n":
                end = text.find("\n", p)
                if end < 0:
                    break
                pos = end + 1
                continue
            column = p - pos
            if column > indents[-1]:
                indents.append(column)
            while column < indents[-1]:
                indents.pop()
                if column > indents[-1]:
                    return None  # "unindent does not match any outer indentation level"
            pos = p
        line_start = False
        m = match(text, pos)
        if m is None:
            if text[pos:].strip(" "):
                return None
            break
        kind = m.lastindex
        start = m.start(kind)  # type: ignore[arg-type]
        pos = m.end()
        if kind == 1:
            if depth == 0:
                out.append((tokenize.NEWLINE, "\n", start, pos))
            line_start = True
        elif kind == 3:
            opening = m.group(3)
            quote = opening[-1]
            triple = opening.endswith(quote * 3)
            rest = _STRING_REST[triple, quote].match(text, pos)
            if rest is None:
                return None
            pos = rest.end()
            out.append((tokenize.STRING, text[start:pos], start, pos))
        elif kind == 4:
            pos = _NUMBER.match(text, start).end()  # type: ignore[union-attr]
            out.append((tokenize.NUMBER, text[start:pos], start, pos))
        elif kind == 5:
            out.append((tokenize.NAME, m.group(5), start, pos))
        elif kind == 6:
            op = m.group(6)
            if op in "([{":
                depth += 1
            elif op in ")]}":
                depth -= 1
                if depth < 0:
                    return None
            out.append((tokenize.OP, op, start, pos))
    if depth:
        return None
    # tokenize ends a last line without a newline with an empty NEWLINE, unless it is blank or a comment
    last = text[text.rfind("\n") + 1 :]
    if last.strip(" ") and not last.strip().startswith("#"):
        out.append((tokenize.NEWLINE, "", n, n + 1))
    return out


def _layout_tokens(src: _Text, err: Errors) -> list[_Tok]:
    """The significant tokens (``_Tok``), from ``_fast_tokens`` when it can, else from ``tokenize``."""
    fast = _fast_tokens(src.text)
    if fast is not None:
        return fast
    offset = src.offset
    return [(t.type, t.string, offset(t.start), offset(t.end)) for t in _tokens(src, err) if t.type not in _SKIP]


def _tokens(src: _Text, err: Errors) -> list[tokenize.TokenInfo]:
    out: list[tokenize.TokenInfo] = []
    try:
        for tok in _generate_tokens(src.text, src.starts):
            if tok.type == tokenize.ERRORTOKEN and not tok.string.isspace():
                if tok.string[:1] in "'\"":
                    err.syntax("unterminated string literal", tok.start[0], tok.start[1] + 1)
                err.syntax(f"unexpected character {tok.string!r}", tok.start[0], tok.start[1] + 1)
            out.append(tok)
    except IndentationError as e:
        err.syntax(e.msg or "bad indentation", *_line_start(src, e.lineno or 1))
    except tokenize.TokenError as e:
        msg = str(e.args[0]) if e.args else "invalid syntax"
        line, col = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], tuple) else (1, 0)
        if "string" in msg:
            # point at the opening quote of the unterminated string
            start = _unterminated_string_start(src, line)
            err.syntax("unterminated triple-quoted string literal", *start)
        if "statement" in msg:
            err.syntax("unexpected end of query: a bracket was never closed", *_unclosed_bracket(out, line))
        err.syntax(msg, line, col + 1)
    except SyntaxError as e:  # 3.12+ tokenizes in C and raises SyntaxError subclasses
        msg = e.msg or "invalid syntax"
        err.syntax(msg if "unterminated" not in msg else "unterminated string literal", e.lineno or 1, e.offset or 1)
    return out


def _line_start(src: _Text, line: int) -> Pos:
    """Where a line's code starts (indentation errors point there; Python's offsets for them vary)."""
    if not 0 < line <= len(src.starts):
        return line, 1
    start = src.starts[line - 1]
    end = src.text.find("\n", start)
    text = src.text[start : end if end >= 0 else len(src.text)]
    return line, len(text) - len(text.lstrip(" \t\f")) + 1


def _string_error(src: _Text, toks: list[tokenize.TokenInfo], err: Errors, line: int | None) -> None:
    """Python reports a bad escape (``"\\xZZ"``) as a "(unicode error)" after the string; decode the string
    tokens of that line again, which raises the error at the escape itself."""
    for tok in toks:
        if tok.type == tokenize.STRING and line is not None and tok.start[0] <= line <= tok.end[0]:
            prefix = tok.string[: len(tok.string) - len(tok.string.lstrip("rRbBfFuU"))].lower()
            if "b" not in prefix:
                a, b = src.offset(tok.start), src.offset(tok.end)
                decode_literal(tok.string, src.positions(a, b), err)


def _unterminated_string_start(src: _Text, line: int) -> Pos:
    # tokenize reports the line the string started on; the first triple quote on or after it is the culprit
    offset = src.offset((line, 0))
    hits = [i for i in (src.text.find('"""', offset), src.text.find("'''", offset)) if i >= 0]
    return src.pos(min(hits)) if hits else (line, 1)


def _unclosed_bracket(toks: list[tokenize.TokenInfo], line: int) -> Pos:
    stack: list[tokenize.TokenInfo] = []
    for t in toks:
        if t.type == tokenize.OP and t.string in "([{":
            stack.append(t)
        elif t.type == tokenize.OP and t.string in ")]}" and stack:
            stack.pop()
    if stack:
        return stack[-1].start[0], stack[-1].start[1] + 1
    return line, 1


def _is_decoder_start(src: _Text, sig: list[_Tok], i: int) -> bool:
    kind, string, start, _ = sig[i]
    if kind != tokenize.NAME or string.lower() not in DECODERS or (start and src.text[start - 1] != "\n"):
        return False  # a decoder is a name in column 0
    nxt = sig[i + 1] if i + 1 < len(sig) else None
    return nxt is None or nxt[0] != tokenize.OP or nxt[1] not in _PY_AFTER_NAME


def _split(src: _Text, sig: list[_Tok], err: Errors) -> _Layout:
    lay = _Layout()
    NAME, OP, STRING, NEWLINE = tokenize.NAME, tokenize.OP, tokenize.STRING, tokenize.NEWLINE  # noqa: N806
    # line_start[i]: sig[i] starts a logical line
    line_start = [i == 0 or sig[i - 1][0] == NEWLINE for i in range(len(sig))]
    i = 0
    for j in range(len(sig)):
        if line_start[j] and _is_decoder_start(src, sig, j):
            if j > 0:
                lay.prologue = (0, sig[j][2])
            k = j + 1
            if k < len(sig) and sig[k][0] == OP and sig[k][1] == "(":
                depth = 0
                while k < len(sig):
                    if sig[k][0] == OP and sig[k][1] in "([{":
                        depth += 1
                    elif sig[k][0] == OP and sig[k][1] in ")]}":
                        depth -= 1
                        if depth == 0:
                            break
                    k += 1
                k += 1
            lay.decoder = (sig[j][2], sig[k - 1][3])
            i = k
            break
    body_start = lay.decoder[1] if lay.decoder else 0
    state = "body"
    depth = 0
    clause: tuple[str, int, int] | None = None  # current trailing clause: (kind, kw start, start)
    inline: _Inline | None = None
    body_end = len(src.text)

    def close_clause(at: int) -> None:
        nonlocal clause
        if clause is not None:
            kind, kw, start = clause
            if kind in lay.clauses:
                err.syntax_at(f"duplicate '{kind}' clause", src.pos(kw))
            lay.clauses[kind] = (kw, start, at)
            clause = None

    while i < len(sig):
        t = sig[i]
        kind, string, at, t_end = t
        prev = sig[i - 1] if i > 0 else None
        if kind == OP and string in "([{":
            depth += 1
        elif kind == OP and string in ")]}":
            depth = max(0, depth - 1)
        if inline is not None and depth == 0 and (
            kind == NEWLINE or (kind == NAME and string.lower() in ("from", "distribution"))
        ):
            inline.end = at
            lay.inline.append(inline)
            inline = None
            if kind == NEWLINE:
                i += 1
                continue
        if kind == NAME and depth == 0:
            kw = string.lower()
            nxt = sig[i + 1] if i + 1 < len(sig) else None
            py_use = nxt is not None and nxt[0] == OP and nxt[1] in _PY_AFTER_NAME
            after_string = prev is not None and prev[0] == STRING and not line_start[i]
            if kw in ("where", "distribution") and state == "body" and after_string and inline is None and not py_use:
                inline = _Inline(kw, at, t_end, len(src.text), prev[3])  # type: ignore[index]
                i += 1
                continue
            starts_clause = False
            if kw in ("where", "distribution") and not py_use and inline is None:
                starts_clause = line_start[i] or state != "body"
            elif kw == "from" and not py_use:
                line_has_import = False
                k = i + 1
                while k < len(sig) and sig[k][0] != NEWLINE:
                    if sig[k][0] == NAME and sig[k][1] == "import":
                        line_has_import = True
                    k += 1
                starts_clause = not line_has_import and (line_start[i] or after_string or state != "body")
            if starts_clause:
                if state == "body":
                    body_end = at
                close_clause(at)
                clause = (kw, at, t_end)
                state = kw
                i += 1
                continue
        if state == "body" and lay.first_body_token is None and kind != NEWLINE:
            lay.first_body_token = t
        i += 1
    if inline is not None:
        inline.end = len(src.text)
        lay.inline.append(inline)
    close_clause(len(src.text))
    lay.body = (body_start, body_end)
    return lay


# --------------------------------------------------------------------------------------------------------------
# Python fragments


def _blank(text: str) -> str:
    return _NOT_NEWLINE.sub(" ", text)


_NOT_NEWLINE = re.compile(r"[^\n]")
_CODE_LINE = re.compile(r"^([^\S\n]*)[^\s#]", re.M)  # a line with code: its indentation


def _parse_body(src: _Text, lay: _Layout, err: Errors) -> tuple[ast.Module, int]:
    """Parse the body as Python, positions kept; returns the module and the body's indentation (columns)."""
    text = src.text
    start, end = lay.body
    # the source with everything but the body blanked, built from slices (a list of characters cost 8 bytes each)
    blanks = sorted([(0, start), (end, len(text)), *((inl.start, inl.end) for inl in lay.inline)])
    pieces: list[str] = []
    at = 0
    for a, b in blanks:
        a = max(a, at)
        if b > a:
            pieces += (text[at:a], _blank(text[a:b]))
            at = b
    pieces.append(text[at:])
    view = "".join(pieces)
    if lay.first_body_token is None:
        return ast.Module(body=[], type_ignores=[]), 0
    first_line, first_col = src.pos(lay.first_body_token[2])
    first_col -= 1  # 0-based, as Python's
    shift_col = 0
    indent = first_col
    edits: list[tuple[int, int, str]] = []  # (start, end, text) replacing a part of a line of the view
    if lay.decoder is not None and src.pos(lay.decoder[0])[0] == first_line:
        # one-line form (`argmax "..."`): the first body line shares the decoder's line; indent it like the
        # body's next line so Python sees one block (positions on that line are shifted back after parsing)
        rest = _CODE_LINE.search(view, src.starts[first_line]) if first_line < len(src.starts) else None
        indent = len(rest.group(1)) if rest else 0
        shift_col = first_col - indent
        line_start = src.starts[first_line - 1]
        edits.append((line_start, line_start + first_col, " " * indent))
    wrapped = indent > 0
    # an indented body is parsed as the block of an `if 1:`; written on the line before the body (blank or a
    # comment there: the decoder and prologue are blanked) it keeps every line number, where a line put in front
    # needed ast.increment_lineno over the whole tree (seconds for a large query)
    in_place = wrapped and first_line > 1
    if in_place:
        edits.insert(0, (src.starts[first_line - 2], src.starts[first_line - 1] - 1, "if 1:"))
    if edits:
        pieces = ["if 1:\n"] if wrapped and not in_place else []
        at = 0
        for a, b, new in edits:
            pieces += (view[at:a], new)
            at = b
        pieces.append(view[at:])
        code = "".join(pieces)
    else:
        code = ("if 1:\n" if wrapped else "") + view
    del pieces, view
    try:
        tree = ast.parse(code, filename=err.filename)
    except SyntaxError as e:
        line = (e.lineno or 1) - (1 if wrapped and not in_place else 0)
        col = e.offset or 1
        if line == first_line and shift_col:
            col += shift_col
        msg = e.msg or "invalid syntax"
        if msg == "unexpected indent" or msg.startswith("unindent"):
            err.syntax(msg, *_line_start(src, max(line, 1)))
        err.syntax(python_message(e), max(line, 1), col)
    except (ValueError, RecursionError, MemoryError, OverflowError) as e:
        err.syntax(python_message(e), first_line, first_col + 1)
    if wrapped:
        if not in_place:
            ast.increment_lineno(tree, -1)
        inner = tree.body[0]
        tree = ast.Module(body=inner.body, type_ignores=[])  # type: ignore[attr-defined]
    if shift_col:
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) == first_line:
                node.col_offset += shift_col  # type: ignore[attr-defined]
            if getattr(node, "end_lineno", None) == first_line:
                node.end_col_offset += shift_col  # type: ignore[attr-defined]
    return tree, indent


def _parse_expr(src: _Text, start: int, end: int, err: Errors, what: str) -> tuple[ast.expr, tuple[int, int]]:
    """Parse source[start:end] as one Python expression (line breaks allowed); returns it and its base."""
    fragment = src.text[start:end]
    stripped = fragment.strip()
    if not stripped or all(ln.strip().startswith("#") or not ln.strip() for ln in fragment.splitlines()):
        err.syntax_at(f"expected {what}", src.pos(start))
    lead = len(fragment) - len(fragment.lstrip())
    start += lead
    fragment = fragment.strip()
    line, col = src.pos(start)
    # parenthesized, so a clause may continue over several lines; column base accounts for the "("
    base = (line, col - 2)
    try:
        tree = ast.parse("(" + fragment + "\n)", mode="eval")
    except SyntaxError as e:
        eline = e.lineno or 1
        if eline > fragment.count("\n") + 1:  # on the closing ")" line: the clause ended too early
            err.syntax_at(f"invalid {what}: unexpected end of the clause", src.pos(start + len(fragment)))
        ecol = (e.offset or 1) - (1 if eline == 1 else 0)
        if eline == 1:
            ecol += col - 1
        err.syntax(f"invalid {what}: {e.msg}", line + eline - 1, max(1, ecol))
    except (ValueError, RecursionError, MemoryError, OverflowError) as e:
        err.syntax_at(f"invalid {what}: {e}", (line, col))
    return tree.body, base


# --------------------------------------------------------------------------------------------------------------
# The builder


class _Builder:
    def __init__(self, src: _Text, toks: list[_Tok], err: Errors) -> None:
        self.src = src
        self.err = err
        # string tokens as (start, end) offsets: the tokens themselves are dropped once the layout is known
        self.string_starts = [t[2] for t in toks if t[0] == tokenize.STRING]
        self.string_ends = [t[3] for t in toks if t[0] == tokenize.STRING]
        self.var_spans: dict[int, Span] = {}
        self.hole_names: set[str] = set()  # holes a constraint being parsed may mention (disambiguates `a in b`)

    # ---- decoder -------------------------------------------------------------------------------------------

    def decoder(self, start: int, end: int) -> nodes.Decoder:
        expr, base = _parse_expr(self.src, start, end, self.err, "decoder clause")
        return decoder_clause(
            expr, span=lambda n: self._span(n, base), text=lambda n: self._source(n, base), err=self.err
        )

    # ---- spans and literals --------------------------------------------------------------------------------

    def _span(self, node: ast.AST, base: tuple[int, int] | None = None) -> Span:
        return _node_span(node, base)

    def _literal(self, node: ast.Constant, base: tuple[int, int] | None) -> Lit:
        """A string constant decoded again from its source tokens, so that every character has a position."""
        span = self._span(node, base)
        start = self.src.offset((span.line, span.column - 1))
        end = self.src.offset((span.end_line, span.end_column - 1))
        k = bisect_left(self.string_starts, start)
        values: list[str] = []
        positions: list[Positions] = []
        lit: Lit | None = None
        while k < len(self.string_starts) and self.string_starts[k] < end:
            a, b = self.string_starts[k], self.string_ends[k]
            lit = decode_literal(self.src.text[a:b], self.src.positions(a, b), self.err)
            values.append(lit.value)
            positions.append(lit.positions)
            k += 1
        value = "".join(values)
        if lit is None or value != node.value:
            # not expected; fall back to Python's own decoding with positions at the literal's start
            here = (span.line, span.column)
            return Lit(node.value, Positions.repeat(here, len(node.value)), "", span, here)
        joined = positions[0] if len(positions) == 1 else Positions.concat(positions)
        return Lit(value, joined, lit.prefix, span, lit.close)

    # ---- query strings -------------------------------------------------------------------------------------

    def prompt(self, node: ast.Constant, index: int, indent: int, inline: _Inline | None, hole_base: int) -> nodes.PromptString:
        lit = self._literal(node, None)
        if "b" in lit.prefix:
            self.err.syntax_at("bytes literals are not allowed; use a normal string", lit.span)
        lit = _dedent(lit, indent, self.src)
        parts = PromptScanner(lit, self.err, hole_base).scan()
        where: nodes.Constraint | None = None
        dist: nodes.Distribution | None = None
        span = lit.span
        if inline is not None:
            expr, base = _parse_expr(self.src, inline.body_start, inline.end, self.err, f"{inline.kind} clause")
            if inline.kind == "where":
                self.hole_names = {p.name for p in parts if isinstance(p, nodes.Hole)}
                where = self.constraint(expr, base)
            else:
                dist = self.distribution(expr, base, self.src.pos(inline.start))
            end = self._span(expr, base)
            span = Span(span.line, span.column, end.end_line, end.end_column)
        return nodes.PromptString(parts, where, dist, index=index, span=span)

    # ---- from / distribution -------------------------------------------------------------------------------

    def model(self, start: int, end: int) -> str | nodes.Dyn:
        """``from "spec"``; ``from lmql.model("spec", ...)`` (LMQL's model objects: the spec, other options have no
        meaning here); any other expression is kept as a ``Dyn`` (a caller's ``model=`` is then needed)."""
        expr, base = _parse_expr(self.src, start, end, self.err, "model in from clause")
        span = self._span(expr, base)
        if (
            isinstance(expr, ast.Call)
            and (isinstance(expr.func, ast.Attribute) and expr.func.attr == "model"
                 or isinstance(expr.func, ast.Name) and expr.func.id == "model")
            and expr.args
            and isinstance(expr.args[0], ast.Constant)
        ):
            expr = expr.args[0]
        if isinstance(expr, ast.Constant):
            if not isinstance(expr.value, str):
                self.err.type_at('the from clause takes a model name string, e.g. from "gemma-3-270m"', span)
            if not expr.value.strip():
                self.err.type_at("empty model name in from clause", span)
            return expr.value
        return nodes.Dyn(self._source(expr, base), span=span)

    def distribution(self, expr: ast.expr, base: tuple[int, int], kw: Pos) -> nodes.Distribution:
        if (
            not isinstance(expr, ast.Compare)
            or len(expr.ops) != 1
            or not isinstance(expr.ops[0], ast.In)
            or not isinstance(expr.left, ast.Name)
        ):
            self.err.type_at("a distribution clause reads: distribution VAR in [\"option\", ...]", self._span(expr, base))
        right = expr.comparators[0]
        rspan = self._span(right, base)
        options: tuple[str, ...] | nodes.Dyn
        if isinstance(right, ast.List | ast.Tuple):
            if not right.elts:
                self.err.type_at("distribution needs at least one option", rspan)
            values: list[str] = []
            for item in right.elts:
                if not isinstance(item, ast.Constant) or not isinstance(item.value, str):
                    self.err.type_at("distribution options must be strings", self._span(item, base))
                if item.value in values:
                    self.err.type_at(f"duplicate distribution option {item.value!r}", self._span(item, base))
                values.append(item.value)
            options = tuple(values)
        else:
            options = nodes.Dyn(self._source(right, base), span=rspan)
        dist = nodes.Distribution(expr.left.id, options, span=Span(kw[0], kw[1], rspan.end_line, rspan.end_column))
        self.var_spans[id(dist)] = self._span(expr.left, base)
        return dist

    def _source(self, node: ast.AST, base: tuple[int, int] | None) -> str:
        span = self._span(node, base)
        a = self.src.offset((span.line, span.column - 1))
        b = self.src.offset((span.end_line, span.end_column - 1))
        return self.src.text[a:b]

    # ---- constraints ---------------------------------------------------------------------------------------

    def constraint(self, e: ast.expr, base: tuple[int, int]) -> nodes.Constraint:
        span = self._span(e, base)
        if isinstance(e, ast.BoolOp):
            kind = nodes.And if isinstance(e.op, ast.And) else nodes.Or
            items: list[nodes.Constraint] = []
            for sub in e.values:
                c = self.constraint(sub, base)
                items.extend(c.items if isinstance(c, kind) else (c,))
            return kind(tuple(items), span=span)
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
            return nodes.Not(self.constraint(e.operand, base), span=span)
        if isinstance(e, ast.Call):
            return self._call(e, base)
        if isinstance(e, ast.Compare):
            if len(e.ops) > 1:
                # a < len(X) < b: a conjunction of the pairwise comparisons
                pairs = []
                left = e.left
                for op, right in zip(e.ops, e.comparators, strict=True):
                    pairs.append(self._compare(ast.Compare(left, [op], [right], **_loc(left, right)), base))
                    left = right
                return nodes.And(tuple(pairs), span=span)
            return self._compare(e, base)
        if isinstance(e, ast.Name):
            self.err.type_at(f"'{e.id}' alone is not a constraint (try INT({e.id}) or len({e.id}) < 10)", span)
        self.err.type_at("expected a constraint here", span)

    def _func(self, e: ast.Call) -> str | None:
        if not isinstance(e.func, ast.Name):
            return None
        name = e.func.id
        return _ALIASES.get(name, name)

    def _var(self, e: ast.expr, func: str, base: tuple[int, int]) -> str:
        if not isinstance(e, ast.Name):
            self.err.type_at(f"{func} expects a variable name here", self._span(e, base))
        return e.id

    def _str_arg(self, e: ast.expr, func: str, base: tuple[int, int], what: str = "a string") -> str | nodes.Dyn:
        if isinstance(e, ast.Constant):
            if not isinstance(e.value, str):
                self.err.type_at(f"{func} expects {what} here", self._span(e, base))
            return self._utf8(e.value, e, base)
        if isinstance(e, ast.JoinedStr | ast.Name | ast.Attribute | ast.Call | ast.Subscript | ast.BinOp):
            return nodes.Dyn(self._source(e, base), span=self._span(e, base))
        self.err.type_at(f"{func} expects {what} here", self._span(e, base))

    def _utf8(self, value: str, node: ast.AST, base: tuple[int, int]) -> str:
        """Constraint text is matched as UTF-8 bytes: a lone surrogate has no encoding."""
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start]
            self.err.type_at(f"lone surrogate {bad!r} in a constraint string cannot be encoded as UTF-8", self._span(node, base))
        return value

    def _schema_arg(self, e: ast.expr, base: tuple[int, int]) -> str | nodes.Dyn:
        """A JSON schema written in the query (a dict literal or JSON text): its canonical JSON text; any other
        expression (a name, a type, a call) is a ``Dyn`` evaluated when the hole starts."""
        span = self._span(e, base)
        if isinstance(e, ast.Dict | ast.Constant):
            try:
                value = ast.literal_eval(e)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                value = None
            else:
                import json

                from .jsonschema import SchemaError, canonical

                if isinstance(value, str):
                    try:
                        value = json.loads(value)
                    except json.JSONDecodeError as exc:
                        self.err.type_at(f"JSON expects a schema; this string is not JSON ({exc})", span)
                if not isinstance(value, dict | bool):
                    self.err.type_at("JSON expects a schema (a dict, JSON text or a Python type)", span)
                try:
                    return canonical(value)
                except SchemaError as exc:
                    self.err.type_at(str(exc), span)
            if isinstance(e, ast.Constant):
                self.err.type_at("JSON expects a schema (a dict, JSON text or a Python type)", span)
        return nodes.Dyn(self._source(e, base), span=span)

    def _arity(self, e: ast.Call, func: str, n: int, usage: str, base: tuple[int, int]) -> None:
        if len(e.args) != n or e.keywords:
            plural = "s" if n != 1 else ""
            self.err.type_at(f"{func} takes {n} argument{plural} ({usage}), got {len(e.args) + len(e.keywords)}", self._span(e, base))

    def _atom(self, node: Any, var_expr: ast.AST, base: tuple[int, int]) -> Any:
        self.var_spans[id(node)] = self._span(var_expr, base)
        return node

    def _call(self, e: ast.Call, base: tuple[int, int]) -> nodes.Constraint:
        func = self._func(e)
        span = self._span(e, base)
        if func == "INT":
            self._arity(e, func, 1, "INT(VAR)", base)
            return self._atom(nodes.IsInt(self._var(e.args[0], func, base), span=span), e.args[0], base)
        if func in ("FLOAT", "BOOL"):
            self._arity(e, func, 1, f"{func}(VAR)", base)
            kind = nodes.IsFloat if func == "FLOAT" else nodes.IsBool
            return self._atom(kind(self._var(e.args[0], func, base), span=span), e.args[0], base)
        if func == "JSON":
            self._arity(e, func, 2, "JSON(VAR, schema)", base)
            var = self._var(e.args[0], func, base)
            return self._atom(nodes.JsonSchema(var, self._schema_arg(e.args[1], base), span=span), e.args[0], base)
        if func == "REGEX":
            self._arity(e, func, 2, 'REGEX(VAR, r"...")', base)
            var = self._var(e.args[0], func, base)
            pattern = self._str_arg(e.args[1], func, base, "a regex string")
            if isinstance(pattern, str):
                lit = self._literal(e.args[1], base)  # type: ignore[arg-type]
                check_regex(pattern, lit.positions, (lit.span.line, lit.span.column), self.err)
            return self._atom(nodes.Regex(var, pattern, span=span), e.args[0], base)
        if func in ("STOPS_AT", "STOPS_BEFORE", "STARTS_WITH"):
            self._arity(e, func, 2, f'{func}(VAR, "text")', base)
            var = self._var(e.args[0], func, base)
            phrase = self._str_arg(e.args[1], func, base)
            if phrase == "" and func != "STARTS_WITH":
                self.err.type_at(f"{func} needs a non-empty stop phrase", self._span(e.args[1], base))
            kind = {"STOPS_AT": nodes.StopsAt, "STOPS_BEFORE": nodes.StopsBefore, "STARTS_WITH": nodes.StartsWith}
            return self._atom(kind[func](var, phrase, span=span), e.args[0], base)
        if func in ("len", "TOKENS"):
            self.err.type_at(f"{func}(...) must be compared with a number, e.g. len(X) < 10", span)
        name = func or ast.unparse(e.func)
        hint = closest(name, CONSTRAINT_FUNCTIONS + tuple(_ALIASES))  # lowercase typos get a lowercase hint
        suggestion = f"; did you mean {hint}?" if hint else ""
        self.err.type_at(f"unknown constraint function '{name}'{suggestion}", span)

    def _length(self, e: ast.expr, base: tuple[int, int]) -> tuple[str, bool, ast.expr] | None:
        """``len(VAR)`` -> (VAR, False), ``len(TOKENS(VAR))`` -> (VAR, True), anything else -> None."""
        if not isinstance(e, ast.Call) or self._func(e) != "len":
            return None
        self._arity(e, "len", 1, "len(VAR) or len(TOKENS(VAR))", base)
        arg = e.args[0]
        if isinstance(arg, ast.Call) and self._func(arg) == "TOKENS":
            self._arity(arg, "TOKENS", 1, "TOKENS(VAR)", base)
            return self._var(arg.args[0], "TOKENS", base), True, arg.args[0]
        return self._var(arg, "len", base), False, arg

    def _compare(self, e: ast.Compare, base: tuple[int, int]) -> nodes.Constraint:
        op_node, left, right = e.ops[0], e.left, e.comparators[0]
        span = self._span(e, base)
        op_span = self._op_span(left, right, op_node, base)
        if isinstance(op_node, ast.In | ast.NotIn):
            negate = isinstance(op_node, ast.NotIn)
            # `a in b` with two names: the hole is the one constrained (`X in options`, `sep in X`)
            right_is_hole = isinstance(right, ast.Name) and right.id in self.hole_names
            if isinstance(left, ast.Name) and not (right_is_hole and left.id not in self.hole_names):
                options = self._options(right, base)
                node = self._atom(nodes.OneOf(left.id, options, span=span), left, base)
                return nodes.Not(node, span=span) if negate else node
            if isinstance(right, ast.Name):
                phrase = self._str_arg(left, "'in'", base, "a string")
                if phrase == "":
                    self.err.type_at("the searched text must not be empty", self._span(left, base))
                node = self._atom(nodes.Contains(right.id, phrase, span=span), right, base)
                return nodes.Not(node, span=span) if negate else node
            self.err.type_at('unsupported use of \'in\' (use VAR in [...] or "text" in VAR)', op_span)
        if isinstance(op_node, ast.Eq | ast.NotEq) and (isinstance(left, ast.Name) or isinstance(right, ast.Name)):
            var_node, value = (left, right) if isinstance(left, ast.Name) else (right, left)
            if self._length(value, base) is None:
                text = self._str_arg(value, "'=='", base, "a string")
                options = (text,) if isinstance(text, str) else nodes.Dyn(f"[{text.expr}]", span=text.span)
                node = self._atom(nodes.OneOf(var_node.id, options, span=span), var_node, base)
                return nodes.Not(node, span=span) if isinstance(op_node, ast.NotEq) else node
        ops = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "=="}
        op = ops.get(type(op_node))
        length, bound = self._length(left, base), right
        if length is None:
            length, bound = self._length(right, base), left
            op = _CMP_FLIP.get(op or "", op)
        if length is None:
            self.err.type_at(
                "unsupported comparison (only len(VAR) or len(TOKENS(VAR)) can be compared, or VAR == \"text\")", op_span
            )
        if op is None:
            self.err.type_at("unsupported comparison for lengths (use <, <=, >, >= or ==)", op_span)
        bspan = self._span(bound, base)
        value: int | nodes.Dyn
        if isinstance(bound, ast.Constant) or (
            isinstance(bound, ast.UnaryOp) and isinstance(bound.op, ast.USub) and isinstance(bound.operand, ast.Constant)
        ):
            v = ast.literal_eval(bound)
            if isinstance(v, bool) or not isinstance(v, int):
                self.err.type_at("a length must be compared with an integer", bspan)
            if v < 0:
                self.err.type_at(f"a length bound must not be negative, got {v}", bspan)
            value = v
        else:
            value = nodes.Dyn(self._source(bound, base), span=bspan)
        var, tokens, var_expr = length
        return self._atom(nodes.LenCmp(var, op, value, tokens=tokens, span=span), var_expr, base)

    def _op_span(self, left: ast.expr, right: ast.expr, op: ast.cmpop, base: tuple[int, int]) -> Span:
        """Where a comparison's operator is written (the first non-blank, non-')' text between its operands)."""
        a_span, b_span = self._span(left, base), self._span(right, base)
        a = self.src.offset((a_span.end_line, a_span.end_column - 1))
        b = self.src.offset((b_span.line, b_span.column - 1))
        gap = self.src.text[a:b]
        k = re.match(r"(?:[\s\\)]|#[^\n]*)*", gap).end()  # type: ignore[union-attr]
        line, col = self.src.pos(a + k) if k < len(gap) else (a_span.line, a_span.column)
        return Span(line, col, line, col + 1)

    def _options(self, e: ast.expr, base: tuple[int, int]) -> tuple[str, ...] | nodes.Dyn:
        if isinstance(e, ast.List | ast.Tuple | ast.Set) and all(
            isinstance(x, ast.Constant) for x in e.elts
        ):
            if not e.elts:
                self.err.type_at("empty list of options", self._span(e, base))
            out: list[str] = []
            for item in e.elts:
                if not isinstance(item.value, str):  # type: ignore[attr-defined]
                    self.err.type_at("options must be strings", self._span(item, base))
                if item.value not in out:  # type: ignore[attr-defined]
                    out.append(self._utf8(item.value, item, base))  # type: ignore[attr-defined]
            return tuple(out)
        if isinstance(e, ast.Constant):
            self.err.type_at("expected a list of strings after 'in', e.g. X in [\"a\", \"b\"]", self._span(e, base))
        return nodes.Dyn(self._source(e, base), span=self._span(e, base))


_CMP_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "=="}


def _loc(a: ast.AST, b: ast.AST) -> dict[str, int]:
    return {
        "lineno": a.lineno,  # type: ignore[attr-defined]
        "col_offset": a.col_offset,  # type: ignore[attr-defined]
        "end_lineno": getattr(b, "end_lineno", None) or b.lineno,  # type: ignore[attr-defined]
        "end_col_offset": getattr(b, "end_col_offset", None) or b.col_offset,  # type: ignore[attr-defined]
    }


def _dedent(lit: Lit, indent: int, src: _Text) -> Lit:
    """Drop the body's indentation from the continuation lines of a multi-line query string, as LMQL does
    (LMQL removes the prompt's common indentation from every source line, string contents included): up to
    ``indent`` columns of a line's leading whitespace, written as such in the source (not escapes)."""
    if indent <= 0 or lit.span.end_line == lit.span.line:
        return lit  # (before the position arrays: a one-line literal need not make them)
    lines, cols = lit.positions.lines, lit.positions.cols
    if not len(lines) or int(lines.max()) == lit.span.line:
        return lit
    # candidates by position (a few per source line), then checked one by one against the source text
    cand = np.flatnonzero((lines > lit.span.line) & (cols <= indent))
    drop = [
        int(k)
        for k in cand
        if lit.value[k] in " \t" and src.text[src.starts[lines[k] - 1] : src.starts[lines[k] - 1] + cols[k]].isspace()
    ]
    if not drop:
        return lit
    keep = np.ones(len(lines), bool)
    keep[drop] = False
    pieces = []
    prev = 0
    for k in drop:
        pieces.append(lit.value[prev:k])
        prev = k + 1
    pieces.append(lit.value[prev:])
    return Lit("".join(pieces), lit.positions.take(np.flatnonzero(keep)), lit.prefix, lit.span, lit.close)


def find_prompts(body: ast.Module) -> list[ast.Expr]:
    """Query strings: statement-level string constants of the query body, not inside nested functions or
    classes (there they are ordinary Python, as in LMQL), in source order."""
    found: list[ast.Expr] = []
    _find_prompts(body.body, found)
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


_BLOCK_ITEMS = (ast.stmt, ast.excepthandler, ast.match_case)


def _find_prompts(stmts: list[Any], found: list[ast.Expr]) -> None:
    # statements only: an expression holds no statement (a lambda's body is an expression), so only the lists
    # of statements, handlers and match cases are walked, in field order
    for node in stmts:
        if isinstance(node, ast.Expr):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str | bytes):
                found.append(node)
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for name in node._fields:
                value = getattr(node, name, None)
                if isinstance(value, list) and value and isinstance(value[0], _BLOCK_ITEMS):
                    _find_prompts(value, found)


# --------------------------------------------------------------------------------------------------------------
# Entry point


def parse(source: str, filename: str = "<query>") -> nodes.Query:
    """Parse and check a query; raise QuerySyntaxError / QueryTypeError (with FILE:LINE:COL) on bad input."""
    gc_was_on = gc.isenabled()
    # parsing allocates many small container objects that all stay alive: the cyclic collector's full passes over
    # them made large queries superlinear (13.8 s -> 9.3 s for 8,000 query strings)
    gc.disable()
    try:
        with warnings.catch_warnings():
            # Python warns about things like "\d" in a non-raw string while compiling; queries are user input
            # and the regexes they carry rely on unknown escapes staying as written
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return _parse(source, filename)
    finally:
        forget_interned()
        if gc_was_on:
            gc.enable()


def _parse(source: str, filename: str) -> nodes.Query:
    err = Errors(source, filename)
    if len(source) > MAX_QUERY_CHARS:
        err.syntax(
            f"query too large: {len(source):,} characters (lmqc parses queries of at most {MAX_QUERY_CHARS:,})", 1, 1
        )
    if "\x00" in source:
        err.syntax_at("the query contains a NUL character", _first_pos(source, "\x00"))
    text = source.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        err.syntax("empty query: expected at least one query string", 1, 1)
    text = _loose_continuations(text)
    src = _Text(text)
    try:
        toks = _layout_tokens(src, err)
        lay = _split(src, toks, err)
        b = _Builder(src, toks, err)
        del toks
        decoder = b.decoder(*lay.decoder) if lay.decoder else None
        prologue = None
        if lay.prologue is not None:
            view = text[: lay.prologue[1]] + _blank(text[lay.prologue[1] :])
            try:
                prologue = ast.parse(view, filename=filename)
            except SyntaxError as e:
                err.syntax(python_message(e), e.lineno or 1, e.offset or 1)
        body, indent = _parse_body(src, lay, err)
        exprs = find_prompts(body)
        by_end = {inl.string_end: inl for inl in lay.inline}
        prompts: list[nodes.PromptString] = []
        hole_count = 0
        used_inline: set[int] = set()
        for expr in exprs:
            if isinstance(expr.value.value, bytes):  # type: ignore[attr-defined]
                err.syntax_at("bytes literals are not allowed as query strings", _node_span(expr))
            end = src.offset((expr.end_lineno or expr.lineno, expr.end_col_offset or 0))
            inline = by_end.get(end)
            if inline is not None:
                used_inline.add(end)
            ps = b.prompt(expr.value, len(prompts), indent, inline, hole_count)  # type: ignore[arg-type]
            hole_count += sum(isinstance(p, nodes.Hole) for p in ps.parts)
            prompts.append(ps)
        for inl in lay.inline:
            if inl.string_end not in used_inline:
                err.syntax_at(f"'{inl.kind}' must follow a query string statement", src.pos(inl.start))
        clauses: dict[str, Any] = {}
        for kind, (kw, start, end) in lay.clauses.items():
            if kind == "from":
                clauses["model"] = b.model(start, end)
            elif kind == "where":
                expr, base = _parse_expr(src, start, end, err, "where clause")
                b.hole_names = {h.name for ps in prompts for h in ps.parts if isinstance(h, nodes.Hole)}
                clauses["where"] = b.constraint(expr, base)
            else:
                expr, base = _parse_expr(src, start, end, err, "distribution clause")
                clauses["distribution"] = b.distribution(expr, base, src.pos(kw))
        last_line_start = text.rfind("\n") + 1
        query = nodes.Query(
            prompts=tuple(prompts),
            body=body,
            prologue=prologue,
            decoder=decoder,
            model=clauses.get("model"),
            where=clauses.get("where"),
            distribution=clauses.get("distribution"),
            source=source,
            filename=filename,
            span=Span(1, 1, len(src.starts), len(text) - last_line_start + 1),
        )
        checker.check(query, b.var_spans)
        return query
    except RecursionError:
        err.syntax("query is nested too deeply", 1, 1)
    except LmqcError as e:
        if "(unicode error)" in e.message:
            _string_error(src, _tokens(src, err), err, e.line)  # tokenized again: the tokens were dropped
        raise
    except (MemoryError, OverflowError) as e:
        err.syntax(f"query too large to parse ({type(e).__name__})", 1, 1)


def _loose_continuations(text: str) -> str:
    if not _LOOSE.search(text):
        return text
    return _fix_loose_continuations(text)


_LOOSE = re.compile(r"\\[ \t\f]+\n")


def _fix_loose_continuations(text: str) -> str:
    """Treat a backslash followed by trailing spaces as a line continuation (Python requires the newline right
    after it; LMQL's documentation has examples with trailing spaces). Only outside strings: the backslashes are
    the ones the tokenizer reports as unexpected characters. One tokenizer pass finds them all (Python 3.11);
    a tokenizer that stops at the first (3.12+) costs one pass per backslash, bounded."""
    for _ in range(64):
        found = _stray_backslashes(text)
        fixes = []
        for at in found:
            end = text.find("\n", at)
            end = len(text) if end < 0 else end
            if not text[at + 1 : end].strip(" \t\f") and end > at + 1:
                fixes.append((at, end))
        if not fixes:
            return text
        for at, end in reversed(fixes):
            text = text[: at + 1] + text[end:]
    return text


def _stray_backslashes(text: str) -> list[int]:
    lines = text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    out: list[int] = []
    try:
        for tok in _generate_tokens(text, starts):
            if tok.type == tokenize.ERRORTOKEN and tok.string == "\\":
                out.append(starts[tok.start[0] - 1] + tok.start[1])
    except SyntaxError as e:  # 3.12+: "unexpected character after line continuation character"
        if "continuation" in (e.msg or "") and e.lineno and e.lineno <= len(lines):
            line = lines[e.lineno - 1].rstrip(" \t\f")
            if line.endswith("\\"):
                out.append(starts[e.lineno - 1] + len(line) - 1)
    except (tokenize.TokenError, IndentationError):
        pass
    return out


def _first_pos(text: str, ch: str) -> Pos:
    i = text.index(ch)
    line = text.count("\n", 0, i) + 1
    return line, i - (text.rfind("\n", 0, i) + 1) + 1
