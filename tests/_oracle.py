"""Brute-force oracles shared by the compiler-core tests: constraint evaluation on a finished string,
random constraints and vocabularies for hypothesis."""

from __future__ import annotations

import itertools
import re

from hypothesis import strategies as st

from lmqc.compiler.bytedfa import cut_value
from lmqc.compiler.ir import HoleIR
from lmqc.compiler.nodes import (
    And,
    Contains,
    IsInt,
    LenCmp,
    Not,
    OneOf,
    Or,
    Regex,
    StartsWith,
    StopsAt,
    StopsBefore,
)

ALPHABET = "ab1 .é\n"


def value_ok(c, text: str) -> bool:
    """Does the finished value ``text`` satisfy the character-level formula ``c``?"""
    if c is None:
        return True
    if isinstance(c, And):
        return all(value_ok(i, text) for i in c.items)
    if isinstance(c, Or):
        return any(value_ok(i, text) for i in c.items)
    if isinstance(c, Not):
        return not value_ok(c.operand, text)
    if isinstance(c, LenCmp):
        n = len(text)
        return {"<": n < c.bound, "<=": n <= c.bound, ">": n > c.bound, ">=": n >= c.bound, "==": n == c.bound}[
            c.op
        ]
    if isinstance(c, OneOf):
        return text in c.options
    if isinstance(c, IsInt):
        return re.fullmatch(r" ?[0-9]+", text) is not None
    if isinstance(c, Regex):
        return re.fullmatch(c.pattern, text) is not None
    if isinstance(c, StartsWith):
        return text.startswith(c.prefix)
    if isinstance(c, Contains):
        return c.phrase in text
    raise TypeError(c)


def stream_status(ir: HoleIR, text: str) -> str:
    """'stopped' if ``text`` has hit an acceptable stop, 'final' if it is a complete value without a stop,
    'dead' if a stop was hit with a bad value, else 'open'."""
    value, stopped = cut_value(text, ir.stops)
    if stopped:
        return "stopped" if value_ok(ir.language, value) else "dead"
    return "final" if value_ok(ir.language, text) else "open"


def all_strings(max_len: int, alphabet: str = ALPHABET):
    for n in range(max_len + 1):
        for t in itertools.product(alphabet, repeat=n):
            yield "".join(t)


# -- hypothesis strategies -------------------------------------------------------------------------------------

_chars = st.sampled_from(list("ab1 .é"))
_short = st.text(alphabet=list(ALPHABET), min_size=0, max_size=3)
_nonempty = st.text(alphabet=list(ALPHABET), min_size=1, max_size=2)


def _regex_atom():
    return st.one_of(
        _chars.map(re.escape),
        st.sampled_from(["[ab]", "[^a]", ".", "[0-9]", "é", "\\n", "[a-é]"]),
    )


regexes = st.recursive(
    _regex_atom(),
    lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda t: t[0] + t[1]),
        st.tuples(inner, inner).map(lambda t: f"(?:{t[0]}|{t[1]})"),
        inner.map(lambda r: f"(?:{r})*"),
        inner.map(lambda r: f"(?:{r})+"),
        inner.map(lambda r: f"(?:{r})?"),
        st.tuples(inner, st.integers(0, 2), st.integers(0, 2)).map(
            lambda t: f"(?:{t[0]}){{{min(t[1], t[2])},{max(t[1], t[2])}}}"
        ),
    ),
    max_leaves=5,
)

atoms = st.one_of(
    st.tuples(st.sampled_from(["<", "<=", ">", ">=", "=="]), st.integers(0, 4)).map(
        lambda t: LenCmp("X", t[0], t[1])
    ),
    st.lists(_short, min_size=1, max_size=3).map(lambda o: OneOf("X", tuple(o))),
    st.just(IsInt("X")),
    regexes.map(lambda p: Regex("X", p)),
    _short.map(lambda p: StartsWith("X", p)),
    _nonempty.map(lambda p: Contains("X", p)),
)

formulas = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=2).map(lambda i: And(tuple(i))),
        st.lists(inner, min_size=2, max_size=2).map(lambda i: Or(tuple(i))),
        inner.map(Not),
    ),
    max_leaves=3,
)

stop_rules = st.lists(
    st.tuples(_nonempty, st.booleans()).map(lambda t: StopsAt("X", t[0]) if t[1] else StopsBefore("X", t[0])),
    max_size=2,
)


@st.composite
def constraints(draw):
    lang = draw(st.one_of(st.none(), formulas))
    stops = draw(stop_rules)
    items = ([lang] if lang is not None else []) + stops
    if not items:
        return None
    return items[0] if len(items) == 1 else And(tuple(items))


_piece = st.one_of(
    st.text(alphabet=list(ALPHABET), min_size=1, max_size=3).map(lambda s: s.encode()),
    st.binary(min_size=1, max_size=2),
    st.sampled_from([b"\xc3", b"\xa9", b"\xc3\xa9a", b"", b"\xff", b"a\xc3"]),
)


@st.composite
def vocabularies(draw):
    """Pieces (token 0 is EOS), optionally all 256 single bytes (then every live state can continue)."""
    pieces = [b"</s>"] + draw(st.lists(_piece, min_size=1, max_size=12))
    byte_complete = draw(st.booleans())
    if byte_complete:
        pieces += [bytes([b]) for b in range(256)]
    specials = [0]
    if draw(st.booleans()):
        pieces.append(b"<ctrl>")
        specials.append(len(pieces) - 1)
    return pieces, specials, byte_complete
