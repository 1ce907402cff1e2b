"""A small regular-expression toolkit for generated languages (JSON Schema, Python types, formats).

``charlang`` compiles user regexes through interegular; languages generated from a JSON Schema are much larger
(hundreds of literal keys, bounded repetitions, shared sub-structures), so they get their own path here:

* an immutable expression tree (``Node``: tuples built by :func:`lit`, :func:`cset`, :func:`seq`, :func:`alt`,
  :func:`rep`, :func:`dfa_node`, :func:`obj_node`) over character sets (sorted, merged code point intervals);
* Thompson construction into an epsilon-NFA whose character sets are interned, then one alphabet partition for
  the whole NFA (character sets -> equivalence classes as bitmasks), and a subset construction that refines the
  class bitmasks of a state's outgoing edges instead of looping over the alphabet;
* the result is a ``charlang.CharDFA`` (minimized), which the rest of the pipeline (``bytedfa``, ``automaton``)
  consumes like any other hole language;
* :func:`from_pattern` translates a regex (Python's ``re`` syntax, read with ECMA-262 meaning for ``\\d``,
  ``\\w``, ``\\s`` and ``.``) into the tree, with ``^``/``$`` anchors at its edges and search semantics
  (an unanchored pattern may be surrounded by any text), as JSON Schema's ``pattern`` requires.

A ``dfa_node`` may embed a finished ``CharDFA`` (products and intersections are computed on DFAs, see
``charlang.product``); with ``encode=True`` its characters are written as JSON string content (``"`` as
``\\"``, ``\\`` as ``\\\\``, control characters as their short escapes; others without a short escape are left
out).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache

import numpy as np

from lmqc.errors import ConstraintError

from . import charlang
from .charlang import CharDFA

MAX_CHAR = 0x10FFFF
Charset = tuple[tuple[int, int], ...]  # sorted, disjoint, non-adjacent inclusive code point intervals

# --------------------------------------------------------------------------------------------------------------
# Character sets


def cs_norm(ranges: Iterable[tuple[int, int]]) -> Charset:
    out: list[list[int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


def cs_chars(chars: str) -> Charset:
    return cs_norm((ord(c), ord(c)) for c in chars)


def cs_range(lo: str, hi: str) -> Charset:
    return ((ord(lo), ord(hi)),)


def cs_union(*sets: Charset) -> Charset:
    return cs_norm(r for s in sets for r in s)


def cs_complement(a: Charset) -> Charset:
    out = []
    lo = 0
    for x, y in a:
        if x > lo:
            out.append((lo, x - 1))
        lo = y + 1
    if lo <= MAX_CHAR:
        out.append((lo, MAX_CHAR))
    return cs_norm(out)


def cs_diff(a: Charset, b: Charset) -> Charset:
    return cs_intersect(a, cs_complement(b))


def cs_intersect(a: Charset, b: Charset) -> Charset:
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def cs_contains(a: Charset, cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in a)


SURROGATES: Charset = ((0xD800, 0xDFFF),)
ANY: Charset = cs_complement(SURROGATES)
DIGIT = cs_range("0", "9")
NONZERO = cs_range("1", "9")
HEX = cs_union(DIGIT, cs_range("a", "f"), cs_range("A", "F"))
WORD = cs_union(DIGIT, cs_range("a", "z"), cs_range("A", "Z"), cs_chars("_"))
# ECMA-262 white space and line terminators, minus U+FEFF (not whitespace for Python's re, which validators use)
SPACE = cs_norm(
    [(9, 13), (32, 32), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F),
     (0x205F, 0x205F), (0x3000, 0x3000)]
)
LINE_TERMINATORS = cs_norm([(10, 10), (13, 13), (0x2028, 0x2029)])
DOT = cs_diff(ANY, LINE_TERMINATORS)  # ECMA '.': anything but line terminators

# JSON string content: characters written as themselves, and the short escapes
JSON_PLAIN = cs_diff(ANY, cs_union(((0, 0x1F),), cs_chars('"\\')))
_SHORT_ESCAPES = {'"': '"', "\\": "\\", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}
_BACKSLASH = cs_chars("\\")
_ESCAPE_SETS = {b: cs_chars(b) for b in _SHORT_ESCAPES.values()}

# --------------------------------------------------------------------------------------------------------------
# Expression tree. Nodes are tuples, so equal trees compare and hash equal:
#   ("0",) no string   ("e",) the empty string   ("c", charset)   ("s", items)   ("a", items)
#   ("r", item, lo, hi|None)   ("d", CharDFA, encode)   ("o", ObjectSpec)

Node = tuple
EMPTY: Node = ("0",)
EPS: Node = ("e",)


def cset(cs: Charset) -> Node:
    return ("c", cs) if cs else EMPTY


def lit(text: str) -> Node:
    return seq(*(("c", ((ord(ch), ord(ch)),)) for ch in text))


def seq(*items: Node) -> Node:
    out: list[Node] = []
    for it in items:
        if it[0] == "0":
            return EMPTY
        if it[0] == "e":
            continue
        if it[0] == "s":
            out.extend(it[1])
        else:
            out.append(it)
    if not out:
        return EPS
    return out[0] if len(out) == 1 else ("s", tuple(out))


def alt(*items: Node) -> Node:
    out: list[Node] = []
    for it in items:
        if it[0] == "0":
            continue
        for x in it[1] if it[0] == "a" else (it,):
            if x not in out:
                out.append(x)
    if not out:
        return EMPTY
    # single characters merge into one set (keeps the NFA small: enums of digits, option letters)
    chars = [x for x in out if x[0] == "c"]
    if len(chars) > 1:
        merged = ("c", cs_union(*(x[1] for x in chars)))
        out = [x for x in out if x[0] != "c"]
        out.insert(0, merged)
    return out[0] if len(out) == 1 else ("a", tuple(out))


def opt(item: Node) -> Node:
    return alt(EPS, item) if item != EMPTY else EPS


def rep(item: Node, lo: int, hi: int | None) -> Node:
    """``item{lo,hi}`` (``hi=None``: unbounded)."""
    if hi is not None and hi < lo:
        return EMPTY
    if item[0] == "0":
        return EPS if lo == 0 else EMPTY
    if item[0] == "e" or hi == 0:
        return EPS
    if lo == hi == 1:
        return item
    return ("r", item, lo, hi)


def dfa_node(d: CharDFA, encode: bool = False) -> Node:
    if d.is_empty():
        return EMPTY
    return ("d", _Ref(d), encode)


class _Ref:
    """Wraps an object so that a node holding it hashes by identity (CharDFAs hold NumPy arrays)."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj


def obj_node(open_: Node, members: tuple[tuple[Node, bool], ...], sep: Node, close: Node,
             min_count: int = 0, max_count: int | None = None) -> Node:
    """``open (member (sep member)*)? close`` over ``members`` in order, each present at most once; ``required``
    members are always present; the number of members present is within ``[min_count, max_count]``.

    Built as a graph (see :func:`_emit_object`) so that each member's expression is emitted once per count
    class, not once per subset of the optional members before it.
    """
    return ("o", open_, members, sep, close, min_count, max_count)


def is_empty(n: Node) -> bool:
    return n[0] == "0"


# --------------------------------------------------------------------------------------------------------------
# Thompson construction


_EMBED_SIZE = 40  # a repeated sub-expression this large is determinized once and embedded as a DFA


def _size(node: Node, memo: dict[int, int]) -> int:
    """Rough NFA size of a node (memoized by identity: trees share sub-trees)."""
    got = memo.get(id(node))
    if got is not None:
        return got
    kind = node[0]
    if kind == "c":
        n = 1
    elif kind in ("s", "a"):
        n = sum(_size(x, memo) for x in node[1]) + 1
    elif kind == "r":
        n = _size(node[1], memo) * max(node[2], node[3] or 1, 1) + 1
    elif kind == "d":
        n = node[1].obj.n_states
    elif kind == "o":
        n = sum(_size(m, memo) for m, _ in node[2]) + 4
    else:
        n = 0
    memo[id(node)] = n
    return n


class _NFA:
    __slots__ = ("edges", "eps", "sets", "set_ids", "sizes", "embedded")

    def __init__(self) -> None:
        self.edges: list[list[tuple[int, int]]] = []  # per state: (charset id, target)
        self.eps: list[list[int]] = []
        self.sets: list[Charset] = []
        self.set_ids: dict[Charset, int] = {}
        self.sizes: dict[int, int] = {}
        self.embedded: dict[int, tuple[Node, CharDFA]] = {}

    def _compact(self, item: Node) -> Node:
        """A repeated item: its minimal DFA (built once) instead of a fresh Thompson copy per repetition."""
        if item[0] in ("c", "d") or _size(item, self.sizes) < _EMBED_SIZE:
            return item
        got = self.embedded.get(id(item))
        if got is None:
            got = self.embedded[id(item)] = (item, _compile_cached(item))
        return dfa_node(got[1])

    def new(self) -> int:
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def edge(self, s: int, cs: Charset, t: int) -> None:
        k = self.set_ids.get(cs)
        if k is None:
            k = self.set_ids[cs] = len(self.sets)
            self.sets.append(cs)
        self.edges[s].append((k, t))

    def emit(self, node: Node, s: int) -> int:
        """Add ``node`` starting at state ``s``; returns its end state (``-1``: no string)."""
        kind = node[0]
        if kind == "c":
            e = self.new()
            self.edge(s, node[1], e)
            return e
        if kind == "s":
            for item in node[1]:
                s = self.emit(item, s)
                if s < 0:
                    return -1
            return s
        if kind == "a":
            e = self.new()
            for item in node[1]:
                if item[0] == "e":
                    self.eps[s].append(e)
                    continue
                x = self.emit(item, s)
                if x >= 0:
                    self.eps[x].append(e)
            return e
        if kind == "e":
            return s
        if kind == "0":
            return -1
        if kind == "r":
            _, item, lo, hi = node
            if (hi or lo) > 1 or hi is None:
                item = self._compact(item)
            for _ in range(lo):
                s = self.emit(item, s)
                if s < 0:
                    return -1
            if hi is None:
                h = self.new()
                self.eps[s].append(h)
                x = self.emit(item, h)
                if x >= 0:
                    self.eps[x].append(h)
                return h
            if hi == lo:
                return s
            e = self.new()
            for _ in range(hi - lo):
                self.eps[s].append(e)
                s = self.emit(item, s)
                if s < 0:
                    return e
            self.eps[s].append(e)
            return e
        if kind == "d":
            return self._emit_dfa(node[1].obj, node[2], s)
        if kind == "o":
            return self._emit_object(node, s)
        raise ValueError(f"unknown node {kind!r}")

    def _emit_dfa(self, d: CharDFA, encode: bool, s: int) -> int:
        ids = [self.new() for _ in range(d.n_states)]
        self.eps[s].append(ids[d.initial])
        e = self.new()
        sets = [cs_norm(d.class_ranges(k)) for k in range(d.n_classes)]
        escapes: list[list[tuple[str, str]]] = [[] for _ in sets]
        if encode:
            for k, cs in enumerate(sets):
                for ch, esc in _SHORT_ESCAPES.items():
                    if cs_contains(cs, ord(ch)):
                        escapes[k].append(("\\", esc))
                sets[k] = cs_intersect(cs, JSON_PLAIN)
        trans = d.trans.tolist()
        for i, row in enumerate(trans):
            mid = -1  # after a backslash from state i: one state, the escape letter picks the target
            for k, t in enumerate(row):
                if t < 0:
                    continue
                if sets[k]:
                    self.edge(ids[i], sets[k], ids[t])
                for _, b in escapes[k]:
                    if mid < 0:
                        mid = self.new()
                        self.edge(ids[i], _BACKSLASH, mid)
                    self.edge(mid, _ESCAPE_SETS[b], ids[t])
            if d.final[i]:
                self.eps[ids[i]].append(e)
        return e

    def _slot(self, table: dict[tuple[int, int], int], key: tuple[int, int]) -> int:
        got = table.get(key)
        if got is None:
            got = table[key] = self.new()
        return got

    def _emit_object(self, node: Node, s: int) -> int:
        _, open_, members, sep, close, lo, hi = node
        s = self.emit(open_, s)
        if s < 0:
            return -1
        n_required = sum(1 for _, req in members if req)
        # count classes: the exact count up to ``cap`` (enough to check both bounds), then "cap or more"
        cap = max(1, lo, hi if hi is not None else 0)
        states: dict[tuple[int, int], int] = {(0, 0): s}
        for i, (member, required) in enumerate(members):
            nxt: dict[tuple[int, int], int] = {}
            hubs: dict[int, int] = {}  # target count class -> state before the member's own text
            remaining_required = n_required - sum(1 for _, r in members[: i + 1] if r)
            for (_, k), st in states.items():
                if not required:
                    self.eps[st].append(self._slot(nxt, (i + 1, k)))
                if hi is not None and k >= hi:
                    continue
                k2 = min(k + 1, cap)
                if hi is not None and k2 + remaining_required > hi:
                    continue
                hub = hubs.get(k2)
                if hub is None:
                    hub = hubs[k2] = self.new()
                if k == 0:
                    self.eps[st].append(hub)
                else:
                    x = self.emit(sep, st)
                    if x >= 0:
                        self.eps[x].append(hub)
            for k2, hub in hubs.items():
                x = self.emit(member, hub)
                if x >= 0:
                    self.eps[x].append(self._slot(nxt, (i + 1, k2)))
            states = nxt
            if not states:
                return -1
        e = self.new()
        ok = False
        for (_, k), st in states.items():
            if k >= lo:
                x = self.emit(close, st)
                if x >= 0:
                    self.eps[x].append(e)
                    ok = True
        return e if ok else -1


# --------------------------------------------------------------------------------------------------------------
# Subset construction


class TooLarge(Exception):
    """The language needs more DFA states than the budget allows."""


def compile_node(node: Node, max_states: int = 200_000) -> CharDFA:
    """The minimized ``CharDFA`` of an expression tree.

    Raises
    ------
    TooLarge
        The subset construction passed ``max_states`` states.
    """
    if node[0] == "0":
        return charlang._make([0], [0], [[-1]], 0, [False])
    nfa = _NFA()
    start = nfa.new()
    end = nfa.emit(node, start)
    if end < 0:
        return charlang._make([0], [0], [[-1]], 0, [False])
    out = charlang.minimize(_determinize(nfa, start, end, max_states))
    # minimize's output is its own fixpoint: the byte-DFA builder's minimize of it returns at once (a JSON schema of
    # a million states otherwise repeats seconds of refinement that cannot change it)
    charlang._known_minimal(out)
    return out


@lru_cache(maxsize=256)
def _compile_cached(node: Node) -> CharDFA:
    """``compile_node`` for repeated sub-expressions, shared across compilations (keyed by the tree's value)."""
    return compile_node(node)


def _determinize(nfa: _NFA, start: int, end: int, max_states: int) -> CharDFA:
    # 1. one alphabet partition for every character set of the NFA: intervals with the same membership
    sets = nfa.sets
    if not sets:
        return charlang._make([0], [0], [[-1]], 0, [start == end or end in _closure_all(nfa, start)])
    # every range of every set at once (a schema's NFA has dozens of sets; NumPy calls per set cost more)
    counts = [len(cs) for cs in sets]
    flat = np.asarray([r for cs in sets for r in cs], dtype=np.int64).reshape(-1, 2)
    owner = np.repeat(np.arange(len(sets)), counts)
    ends = flat[:, 1] + 1
    starts = np.unique(np.concatenate([[0], flat[:, 0], ends[ends <= MAX_CHAR]]))
    m = len(starts)
    cover = np.zeros((m + 1, len(sets)), dtype=np.int32)
    np.add.at(cover, (np.searchsorted(starts, flat[:, 0]), owner), 1)
    np.add.at(cover, (np.searchsorted(starts, ends), owner), -1)
    member = np.cumsum(cover[:m], axis=0) > 0
    first, iclass = charlang.unique_rows(member.astype(np.int8))
    k_n = len(first)
    # class bitmask (a Python int) of every character set
    bits = np.packbits(member[first].T, axis=1, bitorder="little")  # [C, ceil(K/8)]
    set_mask: list[int] = [int.from_bytes(row.tobytes(), "little") for row in bits]
    edges = [[(set_mask[c], t) for c, t in row] for row in nfa.edges]

    # 2. epsilon closures, memoized
    closures: dict[int, frozenset[int]] = {}
    eps = nfa.eps

    def closure(s: int) -> frozenset[int]:
        got = closures.get(s)
        if got is not None:
            return got
        seen = {s}
        stack = [s]
        while stack:
            for t in eps[stack.pop()]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        # keep only states with character edges or the end state: the rest never matter
        out = frozenset(x for x in seen if edges[x] or x == end)
        closures[s] = out
        return out

    init = closure(start)
    ids: dict[frozenset[int], int] = {init: 0}
    queue: list[frozenset[int]] = [init]
    rows: list[list[tuple[int, int]]] = []
    i = 0
    while i < len(queue):
        d = queue[i]
        i += 1
        by_target: dict[int, int] = {}
        for x in d:
            for mask, t in edges[x]:
                by_target[t] = by_target.get(t, 0) | mask
        atoms: list[tuple[int, frozenset[int]]] = []
        for t, mask in by_target.items():
            ct = closure(t)
            new: list[tuple[int, frozenset[int]]] = []
            rest = mask
            for am, at in atoms:
                inter = am & mask
                if inter:
                    new.append((inter, at | ct))
                    left = am & ~mask
                    if left:
                        new.append((left, at))
                    rest &= ~am
                else:
                    new.append((am, at))
            if rest:
                new.append((rest, ct))
            atoms = new
        row = []
        for mask, target in atoms:
            tid = ids.get(target)
            if tid is None:
                tid = ids[target] = len(queue)
                queue.append(target)
                if len(queue) > max_states:
                    raise TooLarge(f"more than {max_states} states")
            row.append((mask, tid))
        rows.append(row)
    trans = np.full((len(queue), k_n), -1, dtype=np.int32)
    # one assignment per distinct class mask (a few dozen), not per transition
    by_mask: dict[int, tuple[list[int], list[int]]] = {}
    for s, row in enumerate(rows):
        for mask, tid in row:
            got = by_mask.get(mask)
            if got is None:
                got = by_mask[mask] = ([], [])
            got[0].append(s)
            got[1].append(tid)
    for mask, (srcs, tids) in by_mask.items():
        b = np.frombuffer(mask.to_bytes((k_n + 7) // 8, "little"), dtype=np.uint8)
        cols = np.flatnonzero(np.unpackbits(b, bitorder="little")[:k_n])
        trans[np.asarray(srcs)[:, None], cols] = np.asarray(tids, dtype=np.int32)[:, None]
    final = np.asarray([end in d for d in queue], dtype=bool)
    return charlang._make(starts, iclass.astype(np.int32), trans, 0, final)


def _closure_all(nfa: _NFA, s: int) -> set[int]:
    seen = {s}
    stack = [s]
    while stack:
        for t in nfa.eps[stack.pop()]:
            if t not in seen:
                seen.add(t)
                stack.append(t)
    return seen


def intersect(a: CharDFA, b: CharDFA) -> CharDFA:
    return charlang.minimize(charlang.product(a, b, "and"))


# --------------------------------------------------------------------------------------------------------------
# Regex patterns (Python syntax, ECMA-262 meaning of classes)


class PatternError(ValueError):
    """A regex feature that cannot be translated; the message names it."""


_UNSUPPORTED = {
    "GROUPREF": "backreferences",
    "GROUPREF_EXISTS": "conditional groups",
    "ASSERT": "lookahead/lookbehind assertions",
    "ASSERT_NOT": "negative lookahead/lookbehind assertions",
    "ATOMIC_GROUP": "atomic groups",
    "POSSESSIVE_REPEAT": "possessive quantifiers",
}


@lru_cache(maxsize=8)
def _unicode_category(name: str) -> Charset:
    """Code points Python's ``re`` puts in ``\\d``/``\\w``/``\\s`` (Unicode), for sound negated classes."""
    pattern = {"d": r"\d", "w": r"\w", "s": r"\s"}[name]
    text = "".join(chr(c) for c in range(0, 0xD800)) + "".join(chr(c) for c in range(0xE000, MAX_CHAR + 1))
    cps = np.asarray([ord(ch) for ch in re.findall(pattern, text)], dtype=np.int64)
    if not len(cps):
        return ()
    breaks = np.flatnonzero(np.diff(cps) != 1)
    lo = np.concatenate([[cps[0]], cps[breaks + 1]])
    hi = np.concatenate([cps[breaks], [cps[-1]]])
    return tuple(zip(lo.tolist(), hi.tolist(), strict=True))


def _category(name: str, negated_context: bool) -> Charset:
    """A ``\\d``-like class. Positive classes use ECMA's ASCII sets (a subset of Python's Unicode ones); negated
    ones (``\\D``, or ``\\d`` inside ``[^...]``) complement the Unicode set, so that whatever is generated also
    satisfies Python's ``re``, which validators use."""
    base = {"CATEGORY_DIGIT": ("d", DIGIT, False), "CATEGORY_NOT_DIGIT": ("d", DIGIT, True),
            "CATEGORY_WORD": ("w", WORD, False), "CATEGORY_NOT_WORD": ("w", WORD, True),
            "CATEGORY_SPACE": ("s", SPACE, False), "CATEGORY_NOT_SPACE": ("s", SPACE, True)}.get(name)
    if base is None:
        raise PatternError(f"unsupported character class {name}")
    key, ascii_set, negated = base
    if negated:
        return cs_diff(ANY, cs_union(ascii_set, _unicode_category(key)))
    if negated_context:
        return cs_union(ascii_set, _unicode_category(key))
    return ascii_set if key != "s" else SPACE


def _sre():
    try:
        from re import _constants as sre_constants  # type: ignore[attr-defined]
        from re import _parser as sre_parse  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - Python < 3.11
        import sre_constants  # type: ignore[no-redef]
        import sre_parse  # type: ignore[no-redef]
    return sre_parse, sre_constants


def from_pattern(pattern: str, *, search: bool = True) -> Node:
    """The tree of a regex over characters.

    ``search=True`` gives JSON Schema's ``pattern`` meaning: the pattern may match anywhere, unless anchored
    with ``^`` / ``$`` at its edges. ``search=False`` is a full match (``REGEX``).

    Raises
    ------
    PatternError
        Invalid syntax, or a feature no finite automaton expresses (backreferences, lookaround), anchors inside
        the pattern, or inline flags.
    """
    sre_parse, _ = _sre()
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as e:
        raise PatternError(f"invalid regular expression ({e})") from None
    except (RecursionError, OverflowError) as e:  # pragma: no cover - absurd patterns
        raise PatternError(f"regular expression too complex ({type(e).__name__})") from None
    if parsed.state.flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL):
        raise PatternError("regular expression uses inline flags ((?i), (?m), (?s)), which are not supported")
    return _edges(list(parsed), search)


def _edges(items: list, search: bool) -> Node:
    """A top-level sequence: anchors at its edges decide whether any text may surround it."""
    _, c = _sre()
    # a whole-pattern alternation or group: anchors are per branch
    if len(items) == 1 and str(items[0][0]) == "BRANCH":
        return alt(*(_edges(list(b), search) for b in items[0][1][1]))
    if len(items) == 1 and str(items[0][0]) == "SUBPATTERN" and _has_anchor(list(items[0][1][3])):
        _check_group_flags(items[0][1])
        return _edges(list(items[0][1][3]), search)
    # Python's parser factors a common prefix out of a top-level alternation ("^$|^a+$" is "^" then a branch of
    # "$" and "a+$"): an alternation whose branches hold anchors is distributed over the rest of the sequence
    for i, (op, av) in enumerate(items):
        if str(op) == "BRANCH" and any(_has_anchor(list(b)) for b in av[1]):
            return alt(*(_edges([*items[:i], *b, *items[i + 1:]], search) for b in av[1]))
        if str(op) == "SUBPATTERN" and (_has_anchor(list(av[3])) or _has_lookahead(list(av[3]))):
            # a group only groups: its items in place
            _check_group_flags(av)
            return _edges([*items[:i], *av[3], *items[i + 1:]], search)
    anchored_start = anchored_end = not search
    if items and str(items[0][0]) == "AT" and str(items[0][1]) in ("AT_BEGINNING", "AT_BEGINNING_STRING"):
        anchored_start = True
        items = items[1:]
    if items and str(items[-1][0]) == "AT" and str(items[-1][1]) in ("AT_END", "AT_END_STRING"):
        anchored_end = True
        items = items[:-1]
    any_text = rep(cset(ANY), 0, None)
    body = _seq_lookahead(items, EPS if anchored_end else any_text)
    return seq(EPS if anchored_start else any_text, body)


def _has_lookahead(items: list) -> bool:
    return any(str(op) in ("ASSERT", "ASSERT_NOT") for op, _ in items)


def _seq_lookahead(items: list, tail: Node) -> Node:
    """A top-level sequence followed by ``tail``, with lookaheads among its items: ``(?=X)`` / ``(?!X)`` before
    the rest ``R`` of the text is ``R`` intersected with (or minus) the texts that start with ``X``."""
    if not _has_lookahead(items):
        return seq(_seq(items), tail)
    any_text = rep(cset(ANY), 0, None)
    cur = tail
    for op, av in reversed(items):
        name = str(op)
        if name not in ("ASSERT", "ASSERT_NOT"):
            cur = seq(_item(op, av), cur)
            continue
        direction, sub = av
        if direction != 1:
            raise PatternError("regular expression uses lookbehind assertions, which are not supported")
        x_items = list(sub)
        x_tail = any_text
        if x_items and str(x_items[-1][0]) == "AT" and str(x_items[-1][1]) in ("AT_END", "AT_END_STRING"):
            x_items, x_tail = x_items[:-1], EPS  # "$" in the lookahead: X is the whole rest of the text
        rest, x = compile_node(cur), compile_node(seq(_seq(x_items), x_tail))
        cur = dfa_node(intersect(rest, x if name == "ASSERT" else charlang.complement(x)))
    return cur


def _has_anchor(items: list) -> bool:
    return any(str(op) == "AT" for op, _ in items) or (
        len(items) == 1 and str(items[0][0]) == "BRANCH"
        and any(_has_anchor(list(b)) for b in items[0][1][1])
    )


def _check_group_flags(av) -> None:
    add, remove = av[1], av[2]
    if add or remove:
        raise PatternError("regular expression uses inline flags in a group, which are not supported")


def _seq(items: list) -> Node:
    return seq(*(_item(op, av) for op, av in items))


def _item(op, av) -> Node:
    name = str(op)
    _, c = _sre()
    if name == "LITERAL":
        return cset(((av, av),))
    if name == "NOT_LITERAL":
        return cset(cs_diff(ANY, ((av, av),)))
    if name == "ANY":
        return cset(DOT)
    if name == "IN":
        return cset(_in(av))
    if name == "BRANCH":
        return alt(*(_seq(list(b)) for b in av[1]))
    if name == "SUBPATTERN":
        _check_group_flags(av)
        return _seq(list(av[3]))
    if name in ("MAX_REPEAT", "MIN_REPEAT"):
        lo, hi, sub = av
        return rep(_seq(list(sub)), lo, None if hi == c.MAXREPEAT else hi)
    if name in _UNSUPPORTED:
        raise PatternError(f"regular expression uses {_UNSUPPORTED[name]}, which no finite automaton can express")
    if name == "AT":
        raise PatternError(f"regular expression uses an anchor or word boundary ({av}) inside the pattern")
    raise PatternError(f"regular expression uses an unsupported construct ({name})")


def _in(items) -> Charset:
    negate = bool(items) and str(items[0][0]) == "NEGATE"
    parts: list[Charset] = []
    for op, av in items[1:] if negate else items:
        name = str(op)
        if name == "LITERAL":
            parts.append(((av, av),))
        elif name == "RANGE":
            parts.append(((av[0], av[1]),))
        elif name == "CATEGORY":
            parts.append(_category(str(av), negate))
        elif name == "NEGATE":
            continue
        else:
            raise PatternError(f"unsupported item in a character class ({name})")
    got = cs_union(*parts) if parts else ()
    return cs_diff(ANY, got) if negate else cs_intersect(got, ANY)


def pattern_dfa(pattern: str, *, search: bool = True, on_error: Callable[[str], Exception] | None = None) -> CharDFA:
    """Convenience: the minimized DFA of a pattern (see :func:`from_pattern`)."""
    try:
        return compile_node(from_pattern(pattern, search=search))
    except PatternError as e:
        if on_error is not None:
            raise on_error(str(e)) from None
        raise ConstraintError(str(e)) from None
