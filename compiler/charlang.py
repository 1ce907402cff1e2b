"""Character-level languages: a constraint formula -> a deterministic automaton over Unicode code points.

``CharDFA`` is a DFA whose alphabet is a partition of the code points ``[0, 0x110000)`` into intervals, each
interval belonging to one symbol class; transitions are per class. Atoms are built directly where interegular
would be slow or where the structure is simple (length bounds as counters, literal sets as tries, prefixes,
substring search as a KMP automaton, ``INT``); regexes go through interegular. Boolean combinations are
products (reachable pairs only) and complements; the result is trimmed and minimized (Hopcroft).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from lmqc.errors import ConstraintError

from .nodes import (
    NOWHERE,
    And,
    Constraint,
    Contains,
    IsBool,
    IsFloat,
    IsInt,
    JsonSchema,
    LenCmp,
    Not,
    OneOf,
    Or,
    Regex,
    Span,
    StartsWith,
)

MAX_CP = 0x110000
FLOAT_PATTERN = r" ?-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]{1,3})?"  # FLOAT / [X: float]: what Python's float() reads


@dataclass(frozen=True, slots=True, eq=False)
class CharDFA:
    """A DFA over code points.

    Attributes
    ----------
    starts : int64[M]
        Sorted interval starts, ``starts[0] == 0``; interval ``i`` is ``[starts[i], starts[i+1])`` (the last one
        ends at 0x110000).
    iclass : int32[M]
        Symbol class of each interval.
    trans : int32[S, K]
        Next state per (state, class); -1 rejects.
    initial : int
    final : bool[S]
        The text read so far is a complete value.
    stopped : bool[S]
        A stop phrase has completed (only after stop rules are applied; absorbing).
    """

    starts: np.ndarray
    iclass: np.ndarray
    trans: np.ndarray
    initial: int
    final: np.ndarray
    stopped: np.ndarray

    @property
    def n_states(self) -> int:
        return self.trans.shape[0]

    @property
    def n_classes(self) -> int:
        return self.trans.shape[1]

    def class_of(self, ch: str) -> int:
        return int(self.iclass[np.searchsorted(self.starts, ord(ch), side="right") - 1])

    def run(self, text: str, state: int | None = None) -> int:
        """State after reading ``text`` (-1 if rejected); a stopped state absorbs everything."""
        s = self.initial if state is None else state
        for ch in text:
            if s < 0 or self.stopped[s]:
                return s
            s = int(self.trans[s, self.class_of(ch)])
        return s

    def accepts(self, text: str) -> bool:
        s = self.run(text)
        return s >= 0 and bool(self.final[s])

    def is_empty(self) -> bool:
        return not (self.final.any() or self.stopped.any())

    def class_ranges(self, k: int) -> list[tuple[int, int]]:
        """Inclusive code point ranges of class ``k``."""
        ends = np.append(self.starts[1:], MAX_CP) - 1
        sel = np.flatnonzero(self.iclass == k)
        return [(int(self.starts[i]), int(ends[i])) for i in sel]


def _make(starts, iclass, trans, initial, final, stopped=None) -> CharDFA:
    trans = np.asarray(trans, dtype=np.int32).reshape(len(final), -1)
    final = np.asarray(final, dtype=bool)
    stopped = np.zeros(len(final), dtype=bool) if stopped is None else np.asarray(stopped, dtype=bool)
    return CharDFA(
        np.asarray(starts, dtype=np.int64), np.asarray(iclass, dtype=np.int32), trans, int(initial), final, stopped
    )


# ----------------------------------------------------------------------------------------------------------
# Alphabets


def literal_alphabet(chars: set[str]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Intervals where every char of ``chars`` is its own class (1..n) and everything else is class 0."""
    cps = sorted({ord(c) for c in chars})
    cls_of = {chr(cp): k for k, cp in enumerate(cps, start=1)}
    starts, iclass = _point_intervals([(cp, k) for k, cp in enumerate(cps, start=1)], 0)
    return np.asarray(starts, np.int64), np.asarray(iclass, np.int32), cls_of


def _point_intervals(points: list[tuple[int, int]], default: int) -> tuple[list[int], list[int]]:
    """Interval starts and classes for sorted (code point, class) pairs; every other code point is ``default``."""
    starts: list[int] = [0]
    iclass: list[int] = [default]
    for cp, k in points:
        if starts[-1] == cp:
            iclass[-1] = k
        else:
            starts.append(cp)
            iclass.append(k)
        if cp + 1 < MAX_CP:
            starts.append(cp + 1)
            iclass.append(default)
    return starts, iclass


def refine(
    a_starts: np.ndarray, a_iclass: np.ndarray, b_starts: np.ndarray, b_iclass: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Common refinement of two interval partitions.

    Returns ``(starts, iclass, ka, kb)``: the new partition and, per new class, the class in ``a`` and ``b``.
    """
    starts = np.union1d(a_starts, b_starts)
    ia = a_iclass[np.searchsorted(a_starts, starts, side="right") - 1].astype(np.int64)
    ib = b_iclass[np.searchsorted(b_starts, starts, side="right") - 1].astype(np.int64)
    nb = int(b_iclass.max()) + 1
    pair, iclass = np.unique(ia * nb + ib, return_inverse=True)
    # Merge adjacent intervals of the same class (keeps partitions short after many refinements).
    keep = np.ones(len(starts), dtype=bool)
    keep[1:] = iclass[1:] != iclass[:-1]
    return starts[keep], iclass[keep].astype(np.int32), (pair // nb).astype(np.int64), (pair % nb).astype(np.int64)


def _complete(trans: np.ndarray) -> np.ndarray:
    """Add a sink row (index S) and send every -1 there."""
    s = trans.shape[0]
    out = np.empty((s + 1, trans.shape[1]), dtype=np.int32)
    out[:s] = np.where(trans < 0, s, trans)
    out[s] = s
    return out


# ----------------------------------------------------------------------------------------------------------
# Operations


def product(a: CharDFA, b: CharDFA, op: str) -> CharDFA:
    """Intersection (``op == "and"``) or union (``"or"``) over the pairs reachable from the initial pair."""
    starts, iclass, ka, kb = refine(a.starts, a.iclass, b.starts, b.iclass)
    ta = _complete(a.trans)[:, ka]
    tb = _complete(b.trans)[:, kb]
    fa = np.append(a.final, False)
    fb = np.append(b.final, False)
    nb = tb.shape[0]
    sink_a, sink_b = ta.shape[0] - 1, nb - 1
    index: dict[int, int] = {}
    keys: list[int] = []
    rows: list[list[int]] = []

    def intern(key: int) -> int:
        i = index.get(key)
        if i is None:
            i = index[key] = len(keys)
            keys.append(key)
        return i

    intern(a.initial * nb + b.initial)
    i = 0
    while i < len(keys):  # BFS; one numpy row per state keeps the Python work per state small
        pa, pb = divmod(keys[i], nb)
        nxt = (ta[pa].astype(np.int64) * nb + tb[pb]).tolist()
        rows.append([intern(k) for k in nxt])
        i += 1
    karr = np.asarray(keys, dtype=np.int64)
    pa, pb = karr // nb, karr % nb
    final = (fa[pa] & fb[pb]) if op == "and" else (fa[pa] | fb[pb])
    trans = np.asarray(rows, dtype=np.int32).reshape(len(keys), -1)
    dead = (pa == sink_a) & (pb == sink_b) if op == "or" else (pa == sink_a) | (pb == sink_b)
    if dead.any():
        trans = np.where(dead[trans], -1, trans)
    return trim(_make(starts, iclass, trans, 0, final))


def complement(a: CharDFA) -> CharDFA:
    trans = _complete(a.trans)
    final = ~np.append(a.final, False)
    return trim(_make(a.starts, a.iclass, trans, a.initial, final))


def _coreachable(trans: np.ndarray, target: np.ndarray) -> np.ndarray:
    """bool[S]: states from which some ``target`` state is reachable."""
    src, dst = _edges(trans)
    # in-edges grouped by target
    return _search(np.flatnonzero(target).tolist(), dst, src[np.argsort(dst, kind="stable")], trans.shape[0])


def _reachable(trans: np.ndarray, initial: int) -> np.ndarray:
    """bool[S]: states reachable from ``initial``."""
    return _search([initial], *_edges(trans), trans.shape[0])


def _edges(trans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The live transitions ``(src, dst)``, grouped by source in state order."""
    flat = trans.reshape(-1)
    at = np.flatnonzero(flat >= 0)
    return at // trans.shape[1], flat[at]


def _search(seeds: list[int], owner: np.ndarray, nbr: np.ndarray, s: int) -> np.ndarray:
    """bool[s]: ``seeds`` and every state reached from them along the edges ``nbr`` grouped by ``owner`` (sorted).

    A Python search over the live edges as lists: char DFAs can be long chains (one level per state for a
    vectorized search), and a schema's DFA has one or two edges per state of dozens of columns (the whole table
    as lists cost more than the search); NumPy scalar indexing in the loop would cost ~4x more per edge.
    """
    ptr = np.zeros(s + 1, dtype=np.intp)
    np.cumsum(np.bincount(owner, minlength=s), out=ptr[1:])
    ptr_l, nbr_l = ptr.tolist(), nbr.tolist()
    seen = [False] * s
    for u in seeds:
        seen[u] = True
    stack = list(seeds)
    while stack:
        u = stack.pop()
        for t in nbr_l[ptr_l[u] : ptr_l[u + 1]]:
            if not seen[t]:
                seen[t] = True
                stack.append(t)
    return np.asarray(seen, dtype=bool)


def _coreachable_rows(rows: list[list[int]], alive: list[bool]) -> list[bool]:
    """Per state of a transition table given as lists (-1: no transition): ``alive`` or some ``alive`` state is
    reachable from it (``alive`` is extended in place and returned)."""
    preds: list[list[int]] = [[] for _ in rows]
    for u, row in enumerate(rows):
        for t in row:
            if t >= 0:
                preds[t].append(u)
    stack = [u for u, x in enumerate(alive) if x]
    while stack:
        for u in preds[stack.pop()]:
            if not alive[u]:
                alive[u] = True
                stack.append(u)
    return alive


def _reachable_rows(rows: list[list[int]], initial: int) -> list[bool]:
    """Per state of a transition table given as lists (-1: no transition): reachable from ``initial``."""
    seen = [False] * len(rows)
    seen[initial] = True
    stack = [initial]
    while stack:
        for t in rows[stack.pop()]:
            if t >= 0 and not seen[t]:
                seen[t] = True
                stack.append(t)
    return seen


_ROW_WEIGHTS: dict[tuple[int, int], np.ndarray] = {}


def unique_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a 2-D integer array, fast: ``(first, inverse)``.

    ``first[j]`` is the index of the first row of group ``j`` (groups numbered by first appearance) and
    ``inverse[i]`` the group of row ``i``. Rows are hashed (a wrapping int64 product for a table that fits in cache,
    :func:`_row_hash` for larger ones), then checked against their group's first row; on a (practically
    impossible) collision it falls back to ``np.unique(axis=0)``.
    """
    n = a.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if n * a.shape[1] <= _SMALL_ROWS:  # small tables: a dict of tuples beats a dozen NumPy calls
        groups: dict[tuple, int] = {}
        first_l: list[int] = []
        inv_l = []
        for i, row in enumerate(map(tuple, a.tolist())):
            g = groups.setdefault(row, len(first_l))
            if g == len(first_l):
                first_l.append(i)
            inv_l.append(g)
        return np.asarray(first_l, np.int64), np.asarray(inv_l, np.int64)
    if n * a.shape[1] <= _BLOCK_CELLS:  # fits in cache: one wrapping int64 product, one check (fewest calls)
        _, first, inv = np.unique(_int_hash(a), return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        if not np.array_equal(a[first[inv]], a):
            _, first, inv = np.unique(a, axis=0, return_index=True, return_inverse=True)
            inv = inv.reshape(-1)
    else:
        step = max(1, _BLOCK_CELLS // a.shape[1])
        _, first, inv = np.unique(_row_hash(a, step), return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        rep = first[inv]
        dup = np.flatnonzero(rep != np.arange(n))
        for i in range(0, len(dup), step):  # in blocks: gathering the whole table twice would not stay in cache
            d = dup[i : i + step]
            if not np.array_equal(a[d], a[rep[d]]):
                _, first, inv = np.unique(a, axis=0, return_index=True, return_inverse=True)
                inv = inv.reshape(-1)
                break
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(first), dtype=np.int64)
    rank[order] = np.arange(len(first))
    return first[order], rank[inv]


_SMALL_ROWS = 512  # cells up to which unique_rows uses a dict of tuples
_BLOCK_CELLS = 1 << 18  # cells per block of rows hashed or compared at once


def _int_hash(a: np.ndarray) -> np.ndarray:
    """A wrapping int64 row hash of ``a``: one product with random odd weights (drawn once per width)."""
    m = a.shape[1]
    w = _ROW_WEIGHTS.get((m, 0))
    if w is None:
        w = _ROW_WEIGHTS[m, 0] = np.random.default_rng(0x1A2B).integers(1, 2**62, size=m, dtype=np.int64) | 1
    with np.errstate(over="ignore"):
        return (a.astype(np.int64) + 2) @ w


def _row_hash(a: np.ndarray, step: int) -> np.ndarray:
    """A 64-bit hash of every row of ``a`` that equal rows share.

    Two float64 BLAS products with random integer weights below ``2**w``, for values below ``2**v`` in magnitude
    and fewer than ``2**c`` columns with ``w + v + c <= 53``: every product and sum is exact, so equal rows hash
    equal whatever the summation order. Wider values or tables take the wrapping int64 product small tables use
    (NumPy's integer matmul has no BLAS: slower on large ones). Rows go in blocks of ``step``: a float copy of a
    large table would not stay in cache.
    """
    n, m = a.shape
    v_bits = max(int(a.max()), -int(a.min())).bit_length()
    w_bits = min(20, 53 - v_bits - m.bit_length())
    if w_bits < 12:
        return _int_hash(a)
    key = (m, w_bits)
    w = _ROW_WEIGHTS.get(key)
    if w is None:  # drawing them costs more than hashing a small table: once per width
        w = _ROW_WEIGHTS[key] = np.random.default_rng(0x1A2B + m).integers(1, 1 << w_bits, size=(m, 2)).astype(np.float64)
    h2 = np.empty((n, 2))
    buf = np.empty((min(step, n), m))
    for i in range(0, n, step):
        blk = a[i : i + step]
        np.copyto(buf[: len(blk)], blk)
        np.matmul(buf[: len(blk)], w, out=h2[i : i + step])
    hi = h2.astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        return hi[:, 0] * np.uint64(0x9E3779B97F4A7C15) ^ hi[:, 1]


def trim(a: CharDFA) -> CharDFA:
    """Drop states that are unreachable or cannot reach a final/stopped state (transitions to them -> -1)."""
    alive = _coreachable(a.trans, a.final | a.stopped)
    if not alive[a.initial]:
        return _make(a.starts, a.iclass, np.full((1, a.n_classes), -1), 0, [False], [False])
    trans = np.where((a.trans >= 0) & alive[np.maximum(a.trans, 0)], a.trans, -1)
    keep = alive & _reachable(trans, a.initial)
    if keep.all():
        return _make(a.starts, a.iclass, trans, a.initial, a.final, a.stopped)
    new_id = np.full(a.n_states + 1, -1, dtype=np.int32)  # slot -1 maps -1 to -1
    new_id[np.flatnonzero(keep)] = np.arange(int(keep.sum()), dtype=np.int32)
    trans = new_id[trans[keep]]
    return _make(a.starts, a.iclass, trans, new_id[a.initial], a.final[keep], a.stopped[keep])


def compress_alphabet(a: CharDFA) -> CharDFA:
    """Merge classes whose transition columns are identical; number classes by their lowest code point.

    The canonical numbering makes printed automata independent of how the atoms numbered their symbols
    (interegular's numbering depends on string hashing).
    """
    first, inv = unique_rows(a.trans.T)
    cols = a.trans.T[first]
    by_cp = inv[a.iclass]  # merged class of each interval, intervals in code point order
    _, firsts = np.unique(by_cp, return_index=True)
    order = np.argsort(firsts)  # merged classes in order of first appearance
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    cols = cols[order]
    iclass = rank[by_cp].astype(np.int32)
    keep = np.ones(len(a.starts), dtype=bool)
    keep[1:] = iclass[1:] != iclass[:-1]
    return _make(a.starts[keep], iclass[keep], cols.T, a.initial, a.final, a.stopped)


def minimize(a: CharDFA) -> CharDFA:
    """Hopcroft's partition refinement; states with the same future (and the same flags) merge."""
    if _MINIMAL.get(id(a)) is a:
        return a
    if a.n_states * a.n_classes <= _SMALL_CELLS:
        return _minimize_small(a)
    return _minimize_arrays(a)


def _minimize_arrays(a: CharDFA) -> CharDFA:
    """``minimize`` in NumPy (any size)."""
    a = compress_alphabet(trim(a))
    s, k = a.trans.shape
    if s <= 1:
        return a
    trans = _complete(a.trans)  # sink = s
    labels = np.append(a.final.astype(np.int64) + 2 * a.stopped, 4)
    # Moore rounds in NumPy first (each splits blocks by their successors' blocks); most DFAs settle in a few
    # dozen rounds. Long chains (counters) that do not settle continue with Hopcroft from that partition.
    labels = np.unique(labels, return_inverse=True)[1].reshape(-1)
    n_blocks = int(labels.max()) + 1
    for _ in range(_MOORE_ROUNDS if s <= _HOPCROFT_MAX else _MOORE_ROUNDS // 4):
        _, new = unique_rows(np.concatenate([labels[:, None], labels[trans]], axis=1))
        nb = int(new.max()) + 1
        labels = new
        if nb == n_blocks:
            return _merged_classes(_renumber(a, trans, labels.astype(np.int64), n_blocks))
        n_blocks = nb
    if s > _HOPCROFT_MAX:
        return a  # long chains in a large DFA: left unminimized (correct, only larger) rather than slow
    block_of, n_blocks = _hopcroft(trans, labels.tolist())
    return _merged_classes(_renumber(a, trans, np.asarray(block_of, dtype=np.int64), n_blocks))


def _hopcroft(trans: np.ndarray, labels: list[int]) -> tuple[list[int], int]:
    """Hopcroft's refinement of the partition ``labels`` (blocks ``0..B-1``) of a complete DFA ``trans`` to the
    coarsest stable one: ``(block of every state, number of blocks)``."""
    n, k = trans.shape
    # inverse transitions per class, as CSR
    inv_ptr: list[list[int]] = []
    inv_src: list[list[int]] = []
    for c in range(k):
        dst = trans[:, c]
        order = np.argsort(dst, kind="stable")
        inv_src.append(order.tolist())
        inv_ptr.append(np.searchsorted(dst[order], np.arange(n + 1)).tolist())
    block_of = list(labels)
    blocks: list[set[int]] = [set() for _ in range(max(block_of) + 1)]
    for st, b in enumerate(block_of):
        blocks[b].add(st)
    work = {(b, c) for b in range(len(blocks)) for c in range(k)}
    while work:
        b, c = work.pop()
        ptr, srcs = inv_ptr[c], inv_src[c]
        touched: dict[int, list[int]] = {}
        for t in blocks[b]:
            for u in srcs[ptr[t] : ptr[t + 1]]:
                touched.setdefault(block_of[u], []).append(u)
        for y, inside in touched.items():
            if len(inside) == len(blocks[y]):
                continue
            moved = set(inside)
            blocks[y] -= moved
            nid = len(blocks)
            blocks.append(moved)
            for u in moved:
                block_of[u] = nid
            for cc in range(k):
                if (y, cc) in work:
                    work.add((nid, cc))
                else:
                    work.add((nid, cc) if len(moved) <= len(blocks[y]) else (y, cc))
    return block_of, len(blocks)


def _merged_classes(a: CharDFA) -> CharDFA:
    """``a`` with classes whose columns became identical when states merged made one (rare), so that the
    minimal DFA of a language is one automaton whichever construction produced it (classes are compressed
    before refinement too: that is where most merge)."""
    return compress_alphabet(a) if len(unique_rows(a.trans.T)[0]) < a.n_classes else a


_MOORE_ROUNDS = 48
_HOPCROFT_MAX = 4000
_SMALL_CELLS = 2048  # a DFA of at most this many (state, class) cells is minimized over Python lists
_SMALL_ROUNDS = 16  # Moore rounds before Hopcroft takes over (long chains settle one state per round)


def _minimize_small(a: CharDFA) -> CharDFA:
    """``minimize`` of a small DFA over Python lists, the same result as ``_minimize_arrays`` (trim, merge
    identical class columns numbered by lowest code point, Moore refinement to the coarsest stable partition,
    blocks numbered breadth-first from the initial state in class order). A DFA of a few dozen states spends
    far more in NumPy's per-call overhead than in the work itself. A DFA whose only cycles are self-loops
    (before or after trimming) is refined in one pass (``_loop_free_blocks``); refinement that does not settle
    within ``_SMALL_ROUNDS`` Moore rounds (a long chain with other cycles) finishes with Hopcroft.
    """
    got = _minimize_loop_free(a)
    if got is not None:
        return got
    rows = a.trans.tolist()
    k = a.n_classes
    flags = [int(f) + 2 * int(st) for f, st in zip(a.final.tolist(), a.stopped.tolist(), strict=True)]
    # -- trim: co-reachable from an end, then reachable from the initial state
    s = len(rows)
    alive = _coreachable_rows(rows, [f > 0 for f in flags])
    initial = a.initial
    trimmed = True
    if not alive[initial]:
        rows, flags, initial = [[-1] * k], [0], 0
    else:
        rows = [[t if t >= 0 and alive[t] else -1 for t in row] for row in rows]
        seen = _reachable_rows(rows, initial)
        keep = [i for i in range(s) if seen[i] and alive[i]]
        trimmed = len(keep) < s
        if trimmed:
            new_id = [-1] * (s + 1)
            for j, i in enumerate(keep):
                new_id[i] = j
            rows = [[new_id[t] for t in rows[i]] for i in keep]
            flags = [flags[i] for i in keep]
            initial = new_id[initial]
    # -- classes with identical columns merge; merged classes numbered by their first interval
    cols = list(zip(*rows, strict=True))
    col_group: dict[tuple, int] = {}
    inv = [col_group.setdefault(c, len(col_group)) for c in cols]
    group_cols = list(col_group)
    # merged class of each interval, numbered by first appearance; adjacent intervals of one class merge
    if len(a.iclass) <= 256:
        rank_of: dict[int, int] = {}
        by_cp = [rank_of.setdefault(inv[c], len(rank_of)) for c in a.iclass.tolist()]
        order = list(rank_of)
        keep_iv = [0] + [i for i in range(1, len(by_cp)) if by_cp[i] != by_cp[i - 1]]
        starts = a.starts[keep_iv]
        iclass = np.asarray([by_cp[i] for i in keep_iv], dtype=np.int32)
    else:  # many intervals (Unicode categories): NumPy
        by_cp_a = np.asarray(inv, dtype=np.int64)[a.iclass]
        _, firsts = np.unique(by_cp_a, return_index=True)
        order = np.argsort(firsts).tolist()
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        iclass = rank[by_cp_a].astype(np.int32)
        keep_m = np.ones(len(a.starts), dtype=bool)
        keep_m[1:] = iclass[1:] != iclass[:-1]
        starts, iclass = a.starts[keep_m], iclass[keep_m]
    rows = [list(r) for r in zip(*(group_cols[g] for g in order), strict=True)]
    s = len(rows)
    if s <= 1:
        return _make(starts, iclass, rows, initial, [f & 1 for f in flags], [f >> 1 for f in flags])
    # -- refinement (the sink is state s, label 4)
    comp = [[t if t >= 0 else s for t in row] for row in rows]
    comp.append([s] * len(order))
    # the whole DFA was not free of longer cycles (see _minimize_loop_free); without its dead or unreachable
    # states it may be
    got = _loop_free_blocks(comp, [*flags, 4]) if trimmed else None
    if got is not None:
        label, n_blocks = got
    else:  # Moore rounds
        label = [*flags, 4]
        n_blocks = len(set(label))
        for _ in range(_SMALL_ROUNDS):
            sig: dict[tuple, int] = {}
            new = [sig.setdefault((label[i], *[label[t] for t in comp[i]]), len(sig)) for i in range(s + 1)]
            label = new
            if len(sig) == n_blocks:
                break
            n_blocks = len(sig)
        else:  # a long chain: Hopcroft finishes from this partition
            label, n_blocks = _hopcroft(np.asarray(comp, dtype=np.int32), label)
    reps, trans = _quotient_rows(comp, label, n_blocks, initial)
    out = _make(starts, iclass, trans, 0, [flags[r] & 1 for r in reps], [flags[r] >> 1 for r in reps])
    return out if len(set(zip(*trans, strict=True))) == len(order) else compress_alphabet(out)


def picker(idx: tuple[int, ...]) -> Callable[[Sequence[int]], tuple[int, ...]]:
    """``lambda row: tuple(row[i] for i in idx)`` as one C call (``itemgetter`` of one index gives no tuple)."""
    if len(idx) == 1:
        i = idx[0]
        return lambda row: (row[i],)
    return itemgetter(*idx) if idx else lambda row: ()


def _minimize_loop_free(a: CharDFA) -> CharDFA | None:
    """``minimize`` of a small DFA whose only cycles are self-loops, without trimming or Moore rounds: the
    same result as ``_minimize_arrays``, or None for any other DFA (and for an empty language).

    Dead states need no trimming here: the sink is labelled like a non-final state, so a state that cannot
    reach an end joins the sink's block (its successors are all the sink or itself); unreachable states are
    left out by the breadth-first numbering. Classes are taken in order of their lowest code point (classes no
    code point belongs to are dropped), so that the numbering is the one ``_renumber`` gives after classes
    with identical columns merged.
    """
    if len(a.iclass) > 256:
        return None
    iclass = a.iclass.tolist()
    rank_of: dict[int, int] = {}
    for k in iclass:
        if k not in rank_of:
            rank_of[k] = len(rank_of)
    rows = a.trans.tolist()
    s = len(rows)
    pick = picker(tuple(rank_of))
    comp = [[t if t >= 0 else s for t in pick(row)] for row in rows]
    comp.append([s] * len(rank_of))
    flags = [int(f) + 2 * int(st) for f, st in zip(a.final.tolist(), a.stopped.tolist(), strict=True)]
    got = _loop_free_blocks(comp, [*flags, 0])
    if got is None:
        return None
    block, n_blocks = got
    if block[a.initial] == block[s]:  # the initial state is dead: an empty language
        return None
    reps, trans = _quotient_rows(comp, block, n_blocks, a.initial)
    # -- classes with identical columns merge, numbered by lowest code point; adjacent intervals of one merge
    col_group: dict[tuple, int] = {}
    merged = [col_group.setdefault(c, len(col_group)) for c in zip(*trans, strict=True)]
    if len(col_group) < len(merged):
        trans = [list(r) for r in zip(*col_group, strict=True)]
    by_cp = [merged[rank_of[k]] for k in iclass]
    keep_iv = [0] + [i for i in range(1, len(by_cp)) if by_cp[i] != by_cp[i - 1]]
    return _make(
        a.starts[keep_iv],
        [by_cp[i] for i in keep_iv],
        trans,
        0,
        [flags[r] & 1 for r in reps],
        [flags[r] >> 1 for r in reps],
    )


def _quotient_rows(comp: list[list[int]], block: list[int], n_blocks: int, initial: int) -> tuple[list[int], list[list[int]]]:
    """The quotient of a complete DFA (``comp``, the sink its last row) by a stable partition ``block``: blocks
    numbered breadth-first from the initial state's block, successors in class order, the sink's block left out
    (-1). Returns each new state's representative (the smallest state of its block) and the rows."""
    s = len(comp) - 1
    rep = [-1] * n_blocks
    for i in range(s, -1, -1):
        rep[block[i]] = i
    new_of_block = [-1] * n_blocks  # the sink's block stays -1
    sink_block = block[s]
    start = block[initial]
    new_of_block[start] = 0
    order_b = [start]
    i = 0
    while i < len(order_b):
        for t in comp[rep[order_b[i]]]:
            b = block[t]
            if b != sink_block and new_of_block[b] < 0:
                new_of_block[b] = len(order_b)
                order_b.append(b)
        i += 1
    reps = [rep[b] for b in order_b]
    new_of_state = [new_of_block[b] for b in block]
    return reps, [[*map(new_of_state.__getitem__, comp[r])] for r in reps]


def _loop_free_blocks(comp: list[list[int]], label: list[int]) -> tuple[list[int], int] | None:
    """The coarsest stable partition of a complete DFA whose only cycles are self-loops (counters, literal sets,
    dates, records: most regex and length languages), in one pass; None if another cycle exists.

    States are settled successors first (Revuz's minimization of acyclic automata), so each state's successors
    already have their final blocks and its block follows from its signature: its label and its successors'
    blocks, a self-loop written as ``-1``. A block is keyed by its signature with its own id written as ``-1``;
    a state whose successor lies in a block ``B`` with self-loops (and the state's label) may belong to ``B``
    itself, so that key is also looked up with ``B`` written as ``-1``. Moore rounds need one round per state
    of a chain (then Hopcroft); this is one round whatever the depth.

    Returns ``(block of every state, number of blocks)``.
    """
    n = len(comp)
    # successors first: Kahn's order over the edges that are not self-loops, from the states that only loop
    pending = [0] * n
    preds: list[list[int]] = [[] for _ in range(n)]
    for u, row in enumerate(comp):
        succ = set(row)
        succ.discard(u)
        pending[u] = len(succ)
        for t in succ:
            preds[t].append(u)
    ready = [u for u in range(n) if not pending[u]]
    block = [-1] * n  # -1 until settled: a state's own entry in its signature reads as a self-loop
    by_key: dict[tuple, int] = {}
    looped: dict[int, set[int]] = {}  # label -> blocks whose key has a self-loop
    done = 0
    while ready:
        u = ready.pop()
        done += 1
        lab = label[u]
        succ = [*map(block.__getitem__, comp[u])]
        key = (lab, *succ)
        b = by_key.get(key)
        if b is None:
            for c in looped.get(lab, ()):
                if c in succ and by_key.get((lab, *[-1 if x == c else x for x in succ])) == c:
                    b = c
                    break
            else:
                b = by_key[key] = len(by_key)
                if -1 in succ:
                    looped.setdefault(lab, set()).add(b)
        block[u] = b
        for p in preds[u]:
            pending[p] -= 1
            if not pending[p]:
                ready.append(p)
    if done < n:
        return None
    return block, len(by_key)


def _renumber(a: CharDFA, trans: np.ndarray, block: np.ndarray, n_blocks: int) -> CharDFA:
    """The quotient DFA of a stable partition (``trans`` completed with the sink as its last row)."""
    n = trans.shape[0]
    s = n - 1
    sink_block = block[s]
    # Renumber blocks in order of first appearance from the initial state (stable, readable goldens).
    rep = np.full(n_blocks, n, dtype=np.int64)
    np.minimum.at(rep, block, np.arange(n))  # smallest state of each block
    # breadth-first, each block's successors in class order (level by level: the same order as a FIFO queue)
    btrans = block[trans[rep]]  # block -> successor blocks
    seen = np.zeros(n_blocks, dtype=bool)
    seen[sink_block] = True
    frontier = np.asarray([block[a.initial]], dtype=np.int64)
    seen[frontier] = True
    levels = [frontier]
    while len(frontier):
        cand = btrans[frontier].reshape(-1)
        cand = cand[~seen[cand]]
        if not len(cand):
            break
        uniq, first = np.unique(cand, return_index=True)
        frontier = uniq[np.argsort(first, kind="stable")]
        seen[frontier] = True
        levels.append(frontier)
    order = np.concatenate(levels)
    new_of_block = np.full(n_blocks, -1, dtype=np.int32)
    new_of_block[order] = np.arange(len(order), dtype=np.int32)
    reps = rep[order]
    new_trans = new_of_block[block[trans[reps]]]
    return _make(a.starts, a.iclass, new_trans, 0, a.final[reps], a.stopped[reps])


# ----------------------------------------------------------------------------------------------------------
# Atoms


def universal() -> CharDFA:
    return _make([0], [0], [[0]], 0, [True])


def length_dfa(op: str, n: int) -> CharDFA:
    """``len(X) op n`` in characters, as a counter (any code point, newline included)."""
    if op == "<":
        lo, hi = 0, n - 1
    elif op == "<=":
        lo, hi = 0, n
    elif op == ">":
        lo, hi = n + 1, None
    elif op == ">=":
        lo, hi = n, None
    elif op == "==":
        lo, hi = n, n
    else:
        raise ValueError(op)
    lo = max(lo, 0)
    if hi is not None and hi < lo:
        return _make([0], [0], [[-1]], 0, [False])
    top = hi if hi is not None else lo
    idx = np.arange(top + 1, dtype=np.int32)
    trans = idx + 1
    trans[-1] = -1 if hi is not None else top  # the last counter state loops when unbounded above
    final = idx >= lo
    out = _make([0], [0], trans.reshape(-1, 1), 0, final)
    # states differ by how many characters are left (or needed), every one leads to a final state, and they are
    # numbered in breadth-first order: minimize would return the same table after a pass over every state
    _known_minimal(out)
    return out


def literal_set_dfa(options: tuple[str, ...] | list[str]) -> CharDFA:
    """A trie accepting exactly ``options``."""
    starts, iclass, cls_of = literal_alphabet({c for o in options for c in o})
    children: list[dict[int, int]] = [{}]
    final = [False]
    for o in options:
        node = 0
        for ch in o:
            k = cls_of[ch]
            nxt = children[node].get(k)
            if nxt is None:
                nxt = children[node][k] = len(children)
                children.append({})
                final.append(False)
            node = nxt
        final[node] = True
    trans = np.full((len(children), len(cls_of) + 1), -1, dtype=np.int32)
    for i, ch in enumerate(children):
        for k, t in ch.items():
            trans[i, k] = t
    return _make(starts, iclass, trans, 0, final)


def prefix_dfa(prefix: str) -> CharDFA:
    """``prefix`` followed by anything."""
    starts, iclass, cls_of = literal_alphabet(set(prefix))
    m = len(prefix)
    trans = np.full((m + 1, len(cls_of) + 1), -1, dtype=np.int32)
    for i, ch in enumerate(prefix):
        trans[i, cls_of[ch]] = i + 1
    trans[m, :] = m
    return _make(starts, iclass, trans, 0, np.arange(m + 1) == m)


def kmp_table(word: list[int]) -> list[list[int]]:
    """``delta[i][c]`` = length of the longest prefix of ``word`` that is a suffix of ``word[:i] + [c]``.

    ``word`` is over class ids ``1..K-1`` (class 0 never occurs in it), so ``delta[i][0] == 0``.
    """
    m = len(word)
    k = max(word, default=0) + 1
    delta = [[0] * k for _ in range(m + 1)]
    if m:
        delta[0][word[0]] = 1
    fail = 0
    for i in range(1, m + 1):
        for c in range(k):
            delta[i][c] = delta[fail][c]
        if i < m:
            delta[i][word[i]] = i + 1
            fail = delta[fail][word[i]]
    return delta


def contains_dfa(phrase: str) -> CharDFA:
    """Any text containing ``phrase`` (KMP automaton with an absorbing accept state)."""
    starts, iclass, cls_of = literal_alphabet(set(phrase))
    word = [cls_of[c] for c in phrase]
    m = len(word)
    k = len(cls_of) + 1
    trans = np.zeros((m + 1, k), dtype=np.int32)
    if m:
        delta = kmp_table(word)
        for i in range(m):
            trans[i, : len(delta[i])] = delta[i]
    trans[m, :] = m
    return _make(starts, iclass, trans, 0, np.arange(m + 1) == m)


def int_dfa() -> CharDFA:
    """`` ?[0-9]+``."""
    starts, iclass, cls_of = literal_alphabet(set(" 0123456789"))
    digit = [cls_of[d] for d in "0123456789"]
    trans = np.full((3, len(cls_of) + 1), -1, dtype=np.int32)
    trans[0, cls_of[" "]] = 1
    trans[:, digit] = 2
    return _make(starts, iclass, trans, 0, [False, False, True])


# -- regexes ---------------------------------------------------------------------------------------------------

_UNSUPPORTED_OPS = {
    "GROUPREF": "backreferences",
    "GROUPREF_EXISTS": "conditional groups (?(id)yes|no)",
    "ASSERT": "lookahead/lookbehind assertions",
    "ASSERT_NOT": "negative lookahead/lookbehind assertions",
    "ATOMIC_GROUP": "atomic groups",
    "POSSESSIVE_REPEAT": "possessive quantifiers",
}
_AT_NAMES = {
    "AT_BEGINNING": "the anchor '^'",
    "AT_BEGINNING_STRING": "the anchor '\\A'",
    "AT_END": "the anchor '$'",
    "AT_END_STRING": "the anchor '\\Z'",
    "AT_BOUNDARY": "word boundaries '\\b'",
    "AT_NON_BOUNDARY": "'\\B'",
}


_MARKERS = {  # how each unsupported feature is spelled, for pointing at it in the pattern text
    "GROUPREF": ("\\1", "\\2", "\\3", "\\4", "\\5", "\\6", "\\7", "\\8", "\\9", "(?P="),
    "GROUPREF_EXISTS": ("(?(",),
    "ASSERT": ("(?=", "(?<="),
    "ASSERT_NOT": ("(?!", "(?<!"),
    "ATOMIC_GROUP": ("(?>",),
    "POSSESSIVE_REPEAT": ("*+", "++", "?+", "}+"),
    "AT_BEGINNING": ("^",),
    "AT_BEGINNING_STRING": ("\\A",),
    "AT_END": ("$",),
    "AT_END_STRING": ("\\Z",),
    "AT_BOUNDARY": ("\\b",),
    "AT_NON_BOUNDARY": ("\\B",),
}


def _feature_offset(pattern: str, kind: str) -> int | None:
    """Offset of the first spelling of ``kind`` in ``pattern``, outside character classes and escapes."""
    markers = _MARKERS.get(kind, ())
    i, n = 0, len(pattern)
    while i < n:
        if any(pattern.startswith(m, i) for m in markers):
            return i
        ch = pattern[i]
        if ch == "\\":
            i += 2
        elif ch == "[":  # skip a character class: '^' and a leading ']' belong to it
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            i = j + 1
        else:
            i += 1
    return None


def _at(pattern: str, kind: str) -> str:
    off = _feature_offset(pattern, kind)
    return "" if off is None else f" (at offset {off} of the pattern: {pattern[off:off + 8]!r})"


def regex_feature_problem(pattern: str) -> str | None:
    """A message naming the first feature of ``pattern`` no DFA can express (or that lmqc does not support)."""
    try:
        from re import _parser as sre_parse  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - Python < 3.11
        import sre_parse  # type: ignore[no-redef]
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as e:
        return f"invalid regular expression: {e}"

    def walk(items) -> str | None:
        for op, av in items:
            name = str(op)
            if name in _UNSUPPORTED_OPS:
                return (
                    f"regular expression uses {_UNSUPPORTED_OPS[name]}{_at(pattern, name)}, "
                    "which no finite automaton can express"
                )
            if name == "AT":
                what = _AT_NAMES.get(str(av), str(av))
                return (
                    f"regular expression uses {what}{_at(pattern, str(av))}; anchors are not supported "
                    "(the pattern must match the whole value)"
                )
            for sub in _children(av):
                r = walk(sub)
                if r:
                    return r
        return None

    return walk(parsed)


def _children(av) -> list:
    """Sub-patterns of an sre_parse operand (SubPattern objects nested in tuples/lists)."""
    out = []
    stack = [av]
    while stack:
        x = stack.pop()
        if hasattr(x, "data") and hasattr(x, "state"):
            out.append(x)
        elif isinstance(x, tuple | list):
            stack.extend(x)
    return out


def regex_dfa(pattern: str) -> CharDFA:
    """Full-match language of a Python regex via interegular (features checked beforehand)."""
    import interegular
    from interegular.fsm import anything_else

    fsm = interegular.parse_pattern(pattern).to_fsm()
    mapping = fsm.alphabet._symbol_mapping  # symbol -> transition key
    other = mapping.get(anything_else)
    keys = sorted(set(mapping.values()))
    kpos = {k: i for i, k in enumerate(keys)}
    n_keys = len(keys) + (1 if other is None else 0)
    other_cls = kpos[other] if other is not None else len(keys)  # a class nothing transitions on
    chars = sorted((ord(c), kpos[k]) for c, k in mapping.items() if c is not anything_else)
    starts, iclass = _point_intervals(chars, other_cls)
    states = sorted(fsm.states)
    spos = {s: i for i, s in enumerate(states)}
    trans = np.full((len(states), n_keys), -1, dtype=np.int32)
    for s, row in fsm.map.items():
        for k, t in row.items():
            trans[spos[s], kpos[k]] = spos[t]
    final = np.zeros(len(states), dtype=bool)
    final[[spos[s] for s in fsm.finals]] = True
    return trim(_make(starts, iclass, trans, spos[fsm.initial], final))


_COUNTED = re.compile(r"(?s)(.+)\{(\d*)(,?)(\d*)\}")
_COUNT_MIN = 256  # above this bound a one-character repetition is built as a counter (interegular is quadratic)


def _counted_class(pattern: str) -> CharDFA | None:
    """``C{lo,hi}`` for one character class ``C`` and a large ``hi``, as a counter of ``hi + 1`` states built
    directly (interegular takes minutes for ``[a-z]{0,50000}``); None for any other pattern."""
    m = _COUNTED.fullmatch(pattern)
    if m is None or not m.group(4) and not (m.group(2) and not m.group(3)):
        return None
    lo = int(m.group(2) or 0)
    hi = int(m.group(4) or m.group(2))
    if hi < _COUNT_MIN or lo > hi:
        return None
    from re import _parser as sre_parse  # type: ignore[attr-defined]

    try:
        whole = sre_parse.parse(pattern)
        atom = sre_parse.parse(m.group(1))
    except re.error:
        return None
    # the split must be the regex's own: one repetition of exactly the atom, which is one character
    if len(whole) != 1 or len(atom) != 1 or str(atom[0][0]) not in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
        return None
    op, av = whole[0]
    if str(op) not in ("MAX_REPEAT", "MIN_REPEAT") or (av[0], av[1]) != (lo, hi) or list(av[2]) != list(atom):
        return None
    one = minimize(regex_dfa(m.group(1)))
    if one.n_states != 2 or one.final[one.initial] or (one.trans[1 - one.initial] >= 0).any():
        return None
    moves = one.trans[one.initial] >= 0  # the classes of the character set
    idx = np.arange(hi + 1, dtype=np.int32)
    trans = np.where(moves[None, :], (idx + 1)[:, None], -1).astype(np.int32)
    trans[hi] = -1
    out = _make(one.starts, one.iclass, trans, 0, idx >= lo)
    _known_minimal(out)  # a chain whose states differ by how much is left: minimal, trim, classes canonical
    return out


class _NotPositional(Exception):
    """A regex construct ``position_dfa`` leaves to interegular."""


_POS_MAX = 512  # positions (character occurrences after unrolling counted repetitions) of a position DFA
_POS_STATES = 2048  # subset states before a position DFA gives up


def _charset(op: str, av) -> tuple[tuple[int, int], ...]:
    """Inclusive code point ranges, sorted and merged, of a one-character sre item (no categories, no ANY)."""
    if op == "LITERAL":
        return ((av, av),)
    negate = op == "NOT_LITERAL"
    if negate:
        ranges = [(av, av)]
    elif op == "IN":
        ranges = []
        for i, (sub, arg) in enumerate(av):
            name = str(sub)
            if name == "NEGATE" and i == 0:
                negate = True
            elif name == "LITERAL":
                ranges.append((arg, arg))
            elif name == "RANGE":
                ranges.append(arg)
            else:  # categories (\d, \w, ...): their Unicode meaning is interegular's business
                raise _NotPositional
    else:
        raise _NotPositional
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    if not negate:
        return tuple(merged)
    out, lo = [], 0
    for a, b in merged:
        if a > lo:
            out.append((lo, a - 1))
        lo = b + 1
    if lo < MAX_CP:
        out.append((lo, MAX_CP - 1))
    return tuple(out)


def position_dfa(pattern: str) -> CharDFA | None:
    """Full-match language of a regex built from literals, character sets, concatenation, alternation, groups
    and repetition (counted ones unrolled), by the position (Glushkov) construction and subset construction;
    None for anything else (categories such as ``\\d``, ``.``, flags, large counts), which goes to interegular.

    The language is the same as ``regex_dfa``'s, so the minimized automaton is the same; this costs a fraction
    of a millisecond for the patterns of everyday constraints (dates, identifiers, small records), where
    interegular's parser takes a few.
    """
    from re import _constants as sre_constants  # type: ignore[attr-defined]
    from re import _parser as sre_parse  # type: ignore[attr-defined]

    try:
        parsed = sre_parse.parse(pattern)
    except re.error:
        return None
    if parsed.state.flags & ~sre_constants.SRE_FLAG_UNICODE:
        return None
    sets: dict[tuple, int] = {}
    pos_set: list[int] = []  # position -> character set id
    follow: list[set[int]] = []

    def new_pos(cs: tuple) -> tuple[bool, set[int], set[int]]:
        if len(pos_set) >= _POS_MAX:
            raise _NotPositional
        p = len(pos_set)
        pos_set.append(sets.setdefault(cs, len(sets)))
        follow.append(set())
        return False, {p}, {p}

    def seq(items) -> tuple[bool, set[int], set[int]]:
        nullable, first, last = True, set(), set()
        for op, av in items:
            n2, f2, l2 = one(str(op), av)
            for x in last:
                follow[x] |= f2
            first = first | f2 if nullable else first
            last = l2 | last if n2 else l2
            nullable = nullable and n2
        return nullable, first, last

    def one(op: str, av) -> tuple[bool, set[int], set[int]]:
        if op in ("LITERAL", "NOT_LITERAL", "IN"):
            return new_pos(_charset(op, av))
        if op == "SUBPATTERN":
            if av[1] or av[2]:  # inline flags
                raise _NotPositional
            return seq(av[3])
        if op == "BRANCH":
            parts = [seq(alt) for alt in av[1]]
            return (any(p[0] for p in parts), set().union(*(p[1] for p in parts)),
                    set().union(*(p[2] for p in parts)))
        if op in ("MAX_REPEAT", "MIN_REPEAT"):
            lo, hi, sub = av
            unbounded = hi == sre_constants.MAXREPEAT
            if lo + (1 if unbounded else hi - lo) > _POS_MAX:
                raise _NotPositional
            nullable, first, last = True, set(), set()
            copies = [(seq(sub), False) for _ in range(lo)]
            if unbounded:
                n2, f2, l2 = seq(sub)
                for x in l2:
                    follow[x] |= f2  # the loop
                copies.append(((True, f2, l2), True))
            else:
                copies += [((True, *seq(sub)[1:]), True) for _ in range(hi - lo)]
            for (n2, f2, l2), _ in copies:
                for x in last:
                    follow[x] |= f2
                first = first | f2 if nullable else first
                last = l2 | last if n2 else l2
                nullable = nullable and n2
            return nullable, first, last
        raise _NotPositional

    try:
        nullable, first, last = seq(parsed)
    except _NotPositional:
        return None
    # alphabet: the elementary intervals between all set boundaries; a class per set of containing sets
    cuts = sorted({0} | {b for cs in sets for lo, hi in cs for b in (lo, hi + 1) if b < MAX_CP})
    where = {b: i for i, b in enumerate(cuts)}
    member: list[list[int]] = [[] for _ in cuts]  # interval -> ids of the sets containing it
    for cs, sid in sets.items():
        for lo, hi in cs:
            for i in range(where[lo], where[hi + 1] if hi + 1 < MAX_CP else len(cuts)):
                member[i].append(sid)
    sig_class: dict[tuple, int] = {}
    iclass = [sig_class.setdefault(tuple(m), len(sig_class)) for m in member]
    set_classes: list[list[int]] = [[] for _ in sets]
    for sig, k in sig_class.items():
        for sid in sig:
            set_classes[sid].append(k)
    n_cls = len(sig_class)
    # position sets as bitmasks (Python ints): a state's move on class k is one AND with the positions of k
    class_mask = [0] * n_cls
    for q, sid in enumerate(pos_set):
        for k in set_classes[sid]:
            class_mask[k] |= 1 << q
    follow_mask = [sum(1 << x for x in f) for f in follow]
    last_mask = sum(1 << x for x in last)
    index = {0: 0}  # the initial state is 0; every other state is a nonempty set of positions
    states = [0]
    rows: list[list[int]] = []
    final: list[bool] = []
    i = 0
    while i < len(states):
        cur = states[i]
        if i == 0:
            cand = sum(1 << x for x in first)
        else:
            cand = 0
            rest = cur
            while rest:
                low = rest & -rest
                cand |= follow_mask[low.bit_length() - 1]
                rest ^= low
        row = []
        for mask in class_mask:
            key = cand & mask
            if not key:
                row.append(-1)
                continue
            j = index.get(key)
            if j is None:
                if len(states) >= _POS_STATES:
                    return None
                j = index[key] = len(states)
                states.append(key)
            row.append(j)
        rows.append(row)
        final.append(nullable if i == 0 else bool(cur & last_mask))
        i += 1
    return _make(cuts, iclass, rows, 0, final)


_MINIMAL: dict[int, CharDFA] = {}


def _known_minimal(a: CharDFA) -> None:
    """Remember ``a`` as already minimal (``minimize`` then returns it as is: a 50,000-state counter spends a
    second in trimming and refinement that cannot change it). The few most recent are kept."""
    _MINIMAL[id(a)] = a
    while len(_MINIMAL) > 8:
        _MINIMAL.pop(next(iter(_MINIMAL)))


# ----------------------------------------------------------------------------------------------------------
# Formulas


ErrorFactory = Callable[[str, Span], ConstraintError]


def _default_error(message: str, span: Span) -> ConstraintError:
    return ConstraintError(message, line=span.line or None, column=span.column or None)


def compile_language(c: Constraint | None, error: ErrorFactory = _default_error) -> CharDFA:
    """The character language of a formula (not minimized; see ``minimize``)."""
    if c is None:
        return universal()
    if isinstance(c, And | Or):
        out = compile_language(c.items[0], error)
        for item in c.items[1:]:
            out = product(out, compile_language(item, error), "and" if isinstance(c, And) else "or")
            if out.n_states > 64:
                out = minimize(out)  # keep intermediate products small
        return out
    if isinstance(c, Not):
        return complement(compile_language(c.operand, error))
    if isinstance(c, LenCmp):
        if c.tokens:
            raise error("token-count bounds cannot be combined with 'or'/'not'", c.span)
        return length_dfa(c.op, c.bound)
    if isinstance(c, OneOf):
        return literal_set_dfa(c.options)
    if isinstance(c, IsInt):
        return int_dfa()
    if isinstance(c, IsFloat | IsBool | JsonSchema):
        from . import jsonschema, regular

        if isinstance(c, IsFloat):
            return regular.compile_node(regular.from_pattern(FLOAT_PATTERN, search=False))
        if isinstance(c, IsBool):
            return literal_set_dfa(tuple(p + w for p in ("", " ") for w in ("true", "false", "True", "False")))
        try:
            return jsonschema.compile_schema(c.schema).dfa
        except jsonschema.SchemaError as e:
            raise error(str(e), c.span) from None
    if isinstance(c, Regex):
        # The direct constructions accept only patterns without any problem feature, so the check (another
        # parse of the pattern) is needed only for what goes on to interegular.
        try:
            fast = _counted_class(c.pattern) or position_dfa(c.pattern)
        except Exception:  # noqa: BLE001 - anything odd takes the checked path below
            fast = None
        if fast is not None:
            return fast
        problem = regex_feature_problem(c.pattern)
        if problem:
            raise error(problem, c.span)
        try:
            return regex_dfa(c.pattern)
        except Exception as e:  # interegular's own "Unsupported"/parse errors name the feature
            raise error(f"regular expression not supported: {e}", c.span) from None
    if isinstance(c, StartsWith):
        return prefix_dfa(c.prefix)
    if isinstance(c, Contains):
        return contains_dfa(c.phrase)
    raise error(f"constraint {c} is not a character-level constraint", getattr(c, "span", NOWHERE))
