"""Byte-level DFA of one hole: the character language with stop rules applied, expanded to UTF-8.

Stop semantics (LMQL's). Let C be the value language and P the stop phrases. A generated stream is acceptable
iff either

(a) it contains no stop phrase, is in C, and ends at EOS (a ``final`` state), or
(b) its shortest prefix ``w`` ending with a stop phrase is such that the value -- ``w`` for ``STOPS_AT``, ``w``
    minus the phrase for ``STOPS_BEFORE`` -- is in C. When several phrases end at that position, the longest one
    decides (see ``cut_value``). After ``w`` any bytes may follow inside the same token (the ``stopped`` state
    accepts every byte and loops to itself).

Construction: at the character level, the product of C with an Aho-Corasick automaton of the phrases, whose
states remember C's state where the pending phrase candidate began (so that ``STOPS_BEFORE`` can check the
value without the phrase); then minimization; then UTF-8 expansion through a per-alphabet byte trie
("template") instantiated for all states at once in NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmqc.errors import ConstraintError

from . import charlang
from .charlang import MAX_CP, CharDFA, picker
from .ir import HoleIR, Stop
from .nodes import NOWHERE, Span

# ----------------------------------------------------------------------------------------------------------
# Stop rules


def cut_value(text: str, stops: tuple[Stop, ...]) -> tuple[str, bool]:
    """Cut generated ``text`` at its first stop phrase, the way the automaton does.

    Returns ``(value, stopped)``: the value (phrase kept for ``STOPS_AT``, dropped for ``STOPS_BEFORE``; the
    longest phrase wins when several end at the same position) and whether a stop phrase occurred.
    """
    if not stops:
        return text, False
    ordered = sorted(stops, key=lambda s: -len(s.phrase))
    for end in range(1, len(text) + 1):
        head = text[:end]
        for stop in ordered:
            if stop.phrase and head.endswith(stop.phrase):
                return (head if stop.keep else head[: end - len(stop.phrase)]), True
    return text, False


def apply_stops(c: CharDFA, stops: tuple[Stop, ...]) -> CharDFA:
    """The char-level automaton of rules (a)/(b) above; ``stopped`` marks the single absorbing stop state."""
    phrases: dict[str, bool] = {}
    for s in stops:  # a phrase given twice: the first rule wins (as in cut_value)
        phrases.setdefault(s.phrase, s.keep)
    starts, iclass, kc, kp = charlang.refine(
        c.starts, c.iclass, *charlang.literal_alphabet({ch for p in phrases for ch in p})[:2]
    )
    n_cls = len(kc)
    ctab = np.concatenate([c.trans[:, kc], np.full((1, n_cls), -1, np.int32)]).tolist()  # row -1 rejects
    cfinal = c.final.tolist()

    def cls_of(ch: str) -> int:
        return int(iclass[np.searchsorted(starts, ord(ch), side="right") - 1])

    # Aho-Corasick over refined classes; a phrase char's refined class is unique to that char.
    words = {tuple(cls_of(ch) for ch in p): keep for p, keep in phrases.items()}
    prefixes = {w[:i] for w in words for i in range(len(w) + 1)}
    nodes = sorted(prefixes, key=lambda w: (len(w), w))
    node_id = {w: i for i, w in enumerate(nodes)}
    phrase_cls = sorted({k for w in words for k in w})
    goto: list[dict[int, int]] = []
    for w in nodes:
        row = {}
        for k in phrase_cls:
            cand = w + (k,)
            while cand not in node_id:
                cand = cand[1:]
            row[k] = node_id[cand]
        goto.append(row)
    by_len = sorted(words, key=len, reverse=True)
    match: list[tuple[int, bool] | None] = []
    for w in nodes:
        m = next((p for p in by_len if len(p) <= len(w) and w[len(w) - len(p) :] == p), None)
        match.append(None if m is None else (len(m), words[m]))

    def run(state: int, seq: tuple[int, ...]) -> int:
        for k in seq:
            state = ctab[state][k]  # row -1 keeps -1
        return state

    # Per (node, class), independent of C's state: the next node, the classes read before the pending phrase
    # candidate begins (C runs them), and for a completed phrase the classes of the value read after them.
    steps: list[list[tuple[int, tuple[int, ...], tuple[int, ...] | None]]] = []
    for a, label in enumerate(nodes):
        row_steps = []
        for k in range(n_cls):
            a2 = goto[a].get(k, 0)
            text = label + (k,)
            lab2 = nodes[a2]
            m = match[a2]
            value = None if m is None else lab2 if m[1] else lab2[: len(lab2) - m[0]]
            row_steps.append((a2, text[: len(text) - len(lab2)], value))
        steps.append(row_steps)

    STOP = 0  # index 0 is reserved for the stopped state
    keys: list[tuple[int, int]] = [(-1, -1), (0, c.initial)]
    index = {key: i for i, key in enumerate(keys)}
    rows: list[list[int]] = [[STOP] * n_cls]
    finals: list[bool] = [False]
    i = 1
    while i < len(keys):
        a, cs = keys[i]
        cur = run(cs, nodes[a])
        finals.append(cur >= 0 and cfinal[cur])
        crow = ctab[cs]
        row = []
        for a2, before, value in steps[a]:
            cs2 = crow[before[0]] if len(before) == 1 else run(cs, before)
            if cs2 < 0:
                row.append(-1)  # the text before any pending phrase is already outside C
            elif value is None:
                key = (a2, cs2)
                j = index.get(key)
                if j is None:
                    j = index[key] = len(keys)
                    keys.append(key)
                row.append(j)
            else:
                v = run(cs2, value)
                row.append(STOP if v >= 0 and cfinal[v] else -1)
        rows.append(row)
        i += 1
    stop_reached = any(STOP in row for row in rows[1:])
    stopped = [False] * len(keys)
    stopped[STOP] = True
    out = charlang._make(starts, iclass, rows, 1, finals, stopped)
    # every state but the stopped one was reached; when that one was too and every state can reach an end (the
    # usual case: a stop phrase can come next), the table is already trim and the NumPy trim is skipped
    if not stop_reached:
        return charlang.trim(out)
    alive = charlang._coreachable_rows(rows, [f or st for f, st in zip(finals, stopped, strict=True)])
    return out if all(alive) else charlang.trim(out)


# ----------------------------------------------------------------------------------------------------------
# UTF-8 expansion


def utf8_ranges(lo: int, hi: int) -> list[list[tuple[int, int]]]:
    """Byte-range sequences whose concatenations are exactly the UTF-8 encodings of code points ``lo..hi``.

    Surrogates (U+D800..U+DFFF) have no UTF-8 encoding and are skipped.
    """
    out: list[list[tuple[int, int]]] = []
    stack = [(lo, hi)]
    while stack:
        lo, hi = stack.pop()
        if lo > hi:
            continue
        if lo <= 0xDFFF and hi >= 0xD800:
            stack += [(max(lo, 0xE000), hi), (lo, min(hi, 0xD7FF))]
            continue
        split = next((b for b in (0x7F, 0x7FF, 0xFFFF) if lo <= b < hi), None)
        if split is not None:
            stack += [(split + 1, hi), (lo, split)]
            continue
        if hi < 0x80:
            out.append([(lo, hi)])
            continue
        n = 2 if hi < 0x800 else 3 if hi < 0x10000 else 4
        done = False
        for i in range(1, n):
            m = (1 << (6 * i)) - 1
            if lo & ~m != hi & ~m:
                if lo & m:
                    stack += [((lo | m) + 1, hi), (lo, lo | m)]
                    done = True
                    break
                if hi & m != m:
                    stack += [(hi & ~m, hi), (lo, (hi & ~m) - 1)]
                    done = True
                    break
        if not done:
            a, b = chr(lo).encode("utf-8"), chr(hi).encode("utf-8")
            out.append(list(zip(a, b, strict=True)))
    return out


class _Template:
    """A deterministic byte trie for an alphabet partition: leaves are char classes.

    ``child[n]`` is int32[256]: >= 0 another template node, -1 invalid, ``-(k + 2)`` completes class ``k``.
    Node 0 is the root; nodes are numbered so that children come after their parent.
    """

    def __init__(self, starts: np.ndarray, iclass: np.ndarray) -> None:
        ends = np.append(starts[1:], MAX_CP) - 1
        entries = []
        for lo, hi, k in zip(starts.tolist(), ends.tolist(), iclass.tolist(), strict=True):
            for seq in utf8_ranges(lo, hi):
                entries.append((tuple(seq), k))
        self.children: list[np.ndarray] = []
        self.leaves: list[np.ndarray] = []
        memo: dict[tuple, int] = {}
        self._build(tuple(sorted(entries)), memo)

    def byte_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """Bytes no node tells apart: ``(first byte of each group, ascending; group of every byte)``."""
        got = getattr(self, "_groups", None)
        if got is None:
            first, group = charlang.unique_rows(np.stack(self.children).T)
            got = self._groups = (first, group)
        return got

    def small_tables(self) -> tuple[list[list[int]], list[tuple[int, ...]], np.ndarray]:
        """For the list expansion: each node's child entry per byte group (``children[n][first byte of the
        group]``), each node's leaf classes, and the group of every byte."""
        got = getattr(self, "_small", None)
        if got is None:
            rep_bytes, group = self.byte_groups()
            got = self._small = (
                [ch[rep_bytes].tolist() for ch in self.children],
                [tuple(lv.tolist()) for lv in self.leaves],
                group,
            )
        return got

    def gather_plan(self) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """For the NumPy expansion: ``pick[n]``, node ``n``'s row as indices into a char state's (byte states of
        the T template nodes, the K class targets, -1), one per byte group (a child node ``m`` is ``m``, a
        completed class ``k`` is ``T + k``, an invalid byte ``-1``: the last entry); and the distinct sets of
        classes below the non-root nodes, each with its nodes."""
        got = getattr(self, "_plan", None)
        if got is None:
            rep_bytes, _ = self.byte_groups()
            t = len(self.children)
            ch = np.stack(self.children)[:, rep_bytes].astype(np.int64)
            pick = np.where(ch >= 0, ch, np.where(ch <= -2, t - ch - 2, -1))
            sets: dict[bytes, tuple[np.ndarray, list[int]]] = {}
            for n in range(1, t):
                sets.setdefault(self.leaves[n].tobytes(), (self.leaves[n], []))[1].append(n)
            got = self._plan = (pick, [(under, np.asarray(nodes, np.int64)) for under, nodes in sets.values()])
        return got

    def _build(self, entries: tuple, memo: dict) -> int:
        got = memo.get(entries)
        if got is not None:
            return got
        nid = len(self.children)
        memo[entries] = nid
        row = np.full(256, -1, dtype=np.int32)
        self.children.append(row)
        self.leaves.append(np.empty(0, np.int32))
        cuts = sorted({r[0][0] for r, _ in entries} | {r[0][1] + 1 for r, _ in entries})
        for p, q in zip(cuts[:-1], cuts[1:], strict=False):
            cover = [(r[1:], k) for r, k in entries if r[0][0] <= p <= r[0][1]]
            if not cover:
                continue
            if len(cover[0][0]) == 0:
                row[p:q] = -(cover[0][1] + 2)
            else:
                row[p:q] = self._build(tuple(sorted(cover)), memo)
        leaves = set((-row[row <= -2] - 2).tolist())
        for c in set(row[row >= 0].tolist()):
            leaves.update(self.leaves[c].tolist())
        self.leaves[nid] = np.asarray(sorted(leaves), dtype=np.int32)
        return nid


_TEMPLATES: dict[tuple[bytes, bytes], _Template] = {}
_SMALL_EXPAND = 1024  # (char states) x (template nodes) up to which the byte table is built over Python lists
_SMALL_BYTE_CELLS = 2048  # byte table cells above which the list expansion hands over to NumPy after all


def _template(starts: np.ndarray, iclass: np.ndarray) -> _Template:
    """The template of an alphabet partition, kept per partition (a pure function of it; most holes share a
    few partitions, and building one walks every UTF-8 range in Python)."""
    key = (np.asarray(starts, np.int64).tobytes(), np.asarray(iclass, np.int32).tobytes())
    got = _TEMPLATES.get(key)
    if got is None:
        if len(_TEMPLATES) >= 256:
            _TEMPLATES.pop(next(iter(_TEMPLATES)))
        got = _TEMPLATES[key] = _Template(starts, iclass)
    return got


def expand_utf8(c: CharDFA) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte table of a char DFA: ``(trans int32[Sb, 256], final bool[Sb], stopped bool[Sb])``.

    Byte states ``0..S-1`` are the char states; the rest are partial characters, one per distinct
    (template node, targets of the classes below it), shared by every char state with the same targets.
    """
    table, final, stopped, group = _expand_grouped(c)
    return table[:, group], final, stopped


def _expand_grouped(c: CharDFA) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``expand_utf8`` with one column per group of bytes the template never tells apart: ``(trans int32[Sb, G],
    final, stopped, group uint8-like int64[256])``, byte ``b``'s column being ``trans[:, group[b]]``.

    Bytes that every template node sends to the same place have identical columns, so the table (and the byte
    classes computed from it) need only one of them: a counter of 50,000 states is 3 columns wide, not 256.
    """
    s = c.n_states
    tmpl = _template(c.starts, c.iclass)
    _, group = tmpl.byte_groups()
    pick, leaf_sets = tmpl.gather_plan()
    t = len(tmpl.children)
    ctrans = c.trans.astype(np.int64)
    ctrans[c.stopped] = -1  # stopped rows are overwritten below; no partial characters needed for them
    # Partial characters: per node, the states grouped by the targets of the classes below the node, each live
    # group one byte state. Nodes with the same classes below them (all the multi-byte nodes of a language that
    # names no non-ASCII character) group the states alike: one grouping per distinct set of classes.
    local = np.full((s, t), -1, dtype=np.int64)  # a state's group at each node, live groups numbered from 0
    counts = np.zeros(t, dtype=np.int64)
    reps: list[np.ndarray] = [np.zeros(0, np.int64)] * t  # first state of each live group
    for under, nodes in leaf_sets:
        key = ctrans[:, under]
        first, inv = charlang.unique_rows(key)
        live = (key[first] >= 0).any(axis=1)
        ids = np.full(len(first), -1, dtype=np.int64)
        ids[live] = np.arange(int(live.sum()))
        local[:, nodes] = ids[inv][:, None]
        counts[nodes] = int(live.sum())
        for n in nodes:
            reps[n] = first[live]
    # byte state ids: char states, then each node's groups, nodes from last to first (children first)
    order = np.arange(t - 1, 0, -1)
    offset = np.zeros(t, dtype=np.int64)
    offset[order] = s + np.cumsum(counts[order]) - counts[order]
    inst = np.where(local >= 0, local + offset, -1)  # byte state of (char state, template node)
    # every row is one gather from its char state's (template instances, class targets, -1): the root's for
    # the char states, a node's for its partial characters
    x = np.concatenate([inst, ctrans, np.full((s, 1), -1, dtype=np.int64)], axis=1)
    part_states = np.concatenate([reps[n] for n in order]) if t > 1 else np.zeros(0, np.int64)
    part_nodes = np.repeat(order, counts[order])
    table = np.concatenate([x[:, pick[0]], x[part_states[:, None], pick[part_nodes]]])
    total = len(table)
    final = np.zeros(total, dtype=bool)
    final[:s] = c.final
    stopped = np.zeros(total, dtype=bool)
    stopped[:s] = c.stopped
    table[np.flatnonzero(stopped)] = np.flatnonzero(stopped)[:, None]  # absorbs every byte
    return table.astype(np.int32), final, stopped, group


def _merge_identical_rows(table: np.ndarray, final: np.ndarray, stopped: np.ndarray, fixed: int):
    """Merge partial-character states (ids >= fixed) with identical rows until nothing changes."""
    while len(table) - fixed > 1:
        first, inv = charlang.unique_rows(table[fixed:])
        if len(first) == len(table) - fixed:
            break
        remap = np.concatenate([np.arange(fixed), fixed + inv, [-1]]).astype(np.int32)
        keep = np.concatenate([np.arange(fixed), fixed + first])
        table = remap[table[keep]]
        final, stopped = final[keep], stopped[keep]
    return table, final, stopped


# ----------------------------------------------------------------------------------------------------------
# The byte DFA


@dataclass(frozen=True, slots=True, eq=False)
class ByteDFA:
    """A minimized byte-level DFA over byte equivalence classes.

    Attributes
    ----------
    trans : int32[S, C]
        Next state per (state, byte class); -1 rejects. Every state can reach a final or stopped state.
    classes : uint8[256]
        Byte -> class.
    initial : int
    final : bool[S]
        The value may end here (EOS allowed).
    stopped : bool[S]
        A stop phrase has just completed; such a state accepts every byte and loops to itself.
    unconstrained : bool
        No language and no stop rules: every token, EOS anywhere (the table is a single looping state).
    """

    trans: np.ndarray
    classes: np.ndarray
    initial: int
    final: np.ndarray
    stopped: np.ndarray
    unconstrained: bool = False

    @property
    def n_states(self) -> int:
        return int(self.trans.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.trans.shape[1])

    # -- construction ---------------------------------------------------------------------------------------

    @classmethod
    def unconstrained_dfa(cls) -> ByteDFA:
        return cls(
            np.zeros((1, 1), np.int32), np.zeros(256, np.uint8), 0, np.ones(1, bool), np.zeros(1, bool), True
        )

    @classmethod
    def from_chardfa(cls, c: CharDFA) -> ByteDFA:
        return cls._from_minimal(charlang.minimize(c))

    @classmethod
    def _from_minimal(cls, c: CharDFA) -> ByteDFA:
        tmpl = _template(c.starts, c.iclass)
        if c.n_states * len(tmpl.children) <= _SMALL_EXPAND:
            return cls._from_minimal_small(c, tmpl)
        return cls._from_minimal_arrays(c)

    @classmethod
    def _from_minimal_arrays(cls, c: CharDFA) -> ByteDFA:
        """``_from_minimal`` in NumPy (any size)."""
        table, final, stopped, group = _expand_grouped(c)
        # byte equivalence classes: identical columns (groups are in order of their first byte, so classes are
        # numbered by first byte, as over all 256 columns)
        first, inv = charlang.unique_rows(table.T)
        table, final, stopped = _merge_identical_rows(
            np.ascontiguousarray(table[:, first]), final, stopped, c.n_states
        )
        return cls(
            table.astype(np.int32),
            inv[group].astype(np.uint8),
            int(c.initial),
            final,
            stopped,
        )

    @classmethod
    def _from_minimal_small(cls, c: CharDFA, tmpl: _Template) -> ByteDFA:
        """``_from_minimal`` of a small DFA over Python lists: the same table, built without NumPy's per-call
        overhead (``_expand_grouped``, the byte classes and ``_merge_identical_rows`` step for step).

        Rows are gathered with ``operator.itemgetter`` (one C call per row instead of a comprehension over its
        cells). A table of more than ``_SMALL_BYTE_CELLS`` cells (known once the partial characters are counted:
        a counter over all of Unicode has seven per state) is built by ``_from_minimal_arrays`` instead, which is
        faster from about that size on.
        """
        child_g, leaves, group = tmpl.small_tables()
        s = c.n_states
        k_n = c.n_classes
        t_n = len(child_g)
        g_n = len(child_g[0])
        stopped_l = c.stopped.tolist()
        ctrans = [[-1] * k_n if st else row for row, st in zip(c.trans.tolist(), stopped_l, strict=True)]
        inst_cols: list[list[int]] = [[-1] * s for _ in range(t_n)]  # byte state of (template node, char state)
        reps: list[tuple[int, list[int]]] = []
        # per distinct set of classes below a node (see _expand_grouped): each state's live group, numbered
        # from 0 by first appearance, or -1; the first state of each live group
        shared: dict[tuple[int, ...], tuple[list[int], list[int]]] = {}
        next_id = s
        for n in range(t_n - 1, 0, -1):  # children first
            under = leaves[n]
            got = shared.get(under)
            if got is None:
                pick = picker(under)
                ids: dict[tuple, int] = {}
                local: list[int] = []
                rep: list[int] = []
                for st, row in enumerate(ctrans):
                    key = pick(row)
                    g = ids.get(key)
                    if g is None:
                        g = ids[key] = len(rep) if max(key, default=-1) >= 0 else -1
                        if g >= 0:
                            rep.append(st)
                    local.append(g)
                got = shared[under] = (local, rep)
            local, rep = got
            inst_cols[n] = [g + next_id if g >= 0 else -1 for g in local]
            next_id += len(rep)
            reps.append((n, rep))
        if next_id * g_n > _SMALL_BYTE_CELLS:  # many partial characters (a counter over all of Unicode)
            return cls._from_minimal_arrays(c)
        inst = list(zip(*inst_cols, strict=True))
        # a node's row for state st picks from (the state's class targets, its template instances, -1)
        fills = [
            picker(tuple(-ch - 2 if ch <= -2 else k_n + ch if ch >= 0 else k_n + t_n for ch in row))
            for row in child_g
        ]
        rows = [[*r, *i, -1] for r, i in zip(ctrans, inst, strict=True)]
        table: list[tuple[int, ...]] = list(map(fills[0], rows))
        table += [()] * (next_id - s)
        for n, rep in reps:
            fill = fills[n]
            for st in rep:
                table[inst[st][n]] = fill(rows[st])
        for st in range(s):
            if stopped_l[st]:
                table[st] = (st,) * g_n  # absorbs every byte
        # byte classes: identical columns (numbered by first byte, as over all 256 columns)
        col_class: dict[tuple, int] = {}
        cls_of_group = [col_class.setdefault(col, len(col_class)) for col in zip(*table, strict=True)]
        firsts = [cls_of_group.index(k) for k in range(len(col_class))]
        if len(firsts) < g_n:
            table = list(map(picker(tuple(firsts)), table))
        final = c.final.tolist() + [False] * (next_id - s)
        stopped = stopped_l + [False] * (next_id - s)
        # partial characters with identical rows merge, until nothing changes
        while len(table) - s > 1:
            seen: dict[tuple, int] = {}
            inv = [seen.setdefault(row, len(seen)) for row in table[s:]]
            if len(seen) == len(inv):
                break
            keep = list(range(s))
            for i, g in enumerate(inv):
                if g == len(keep) - s:  # the first row of its group
                    keep.append(s + i)
            remap = [*range(s), *[s + g for g in inv], -1]  # entry -1 keeps -1
            table = [tuple(map(remap.__getitem__, table[i])) for i in keep]
            final = [final[i] for i in keep]
            stopped = [stopped[i] for i in keep]
        return cls(
            np.asarray(table, dtype=np.int32).reshape(len(table), len(firsts)),
            np.asarray(cls_of_group, dtype=np.uint8)[group],
            int(c.initial),
            np.asarray(final, dtype=bool),
            np.asarray(stopped, dtype=bool),
        )

    @classmethod
    def from_ir(cls, ir: HoleIR, *, source: str | None = None, filename: str = "<query>") -> ByteDFA:
        """Compile a hole's language and stop rules.

        Raises
        ------
        ConstraintError
            Unsupported regex feature, or a constraint no value can satisfy.
        """

        def error(message: str, span: Span) -> ConstraintError:
            span = span if span is not NOWHERE and span.line else ir.span
            return ConstraintError(
                message,
                source=source,
                filename=filename,
                line=span.line or None,
                column=span.column or None,
            )

        if ir.language is None and not ir.stops:
            return cls.unconstrained_dfa()
        lang = charlang.minimize(charlang.compile_language(ir.language, error))
        span = getattr(ir.language, "span", ir.span) if ir.language is not None else ir.span
        if lang.is_empty():
            raise error(f"constraint on {ir.var} can never be satisfied", span)
        if ir.stops:
            lang = apply_stops(lang, ir.stops)
            if lang.is_empty():
                raise error(
                    f"constraint on {ir.var} can never be satisfied together with its stop phrases "
                    f"({', '.join(repr(s.phrase) for s in ir.stops)})",
                    span,
                )
            return cls.from_chardfa(lang)
        return cls._from_minimal(lang)  # minimized above

    @classmethod
    def from_regex(cls, pattern: str) -> ByteDFA:
        """Convenience for tests and benchmarks: the full-match language of a Python regex."""
        from .nodes import Regex

        return cls.from_ir(HoleIR("X", Regex("X", pattern)))

    # -- queries --------------------------------------------------------------------------------------------

    def run(self, data: bytes, state: int | None = None) -> int:
        """State after reading ``data`` (-1 once rejected)."""
        s = self.initial if state is None else state
        for b in data:
            if s < 0:
                return -1
            s = int(self.trans[s, self.classes[b]])
        return s

    def accepts(self, data: bytes) -> bool:
        s = self.run(data)
        return s >= 0 and bool(self.final[s])

    def class_ranges(self) -> list[list[tuple[int, int]]]:
        """Per class, its inclusive byte ranges."""
        out: list[list[tuple[int, int]]] = [[] for _ in range(self.n_classes)]
        for b in range(256):
            k = int(self.classes[b])
            if out[k] and out[k][-1][1] == b - 1:
                out[k][-1] = (out[k][-1][0], b)
            else:
                out[k].append((b, b))
        return out

    def __str__(self) -> str:
        def rng(lo: int, hi: int) -> str:
            def f(b: int) -> str:
                return chr(b) if 0x21 <= b < 0x7F and chr(b) not in "-[]\\" else f"\\x{b:02x}"

            return f(lo) if lo == hi else f"{f(lo)}-{f(hi)}"

        if self.unconstrained:
            return "ByteDFA unconstrained"
        lines = [f"ByteDFA: {self.n_states} states, {self.n_classes} classes, initial {self.initial}"]
        for k, ranges in enumerate(self.class_ranges()):
            lines.append(f"  class {k}: [{''.join(rng(a, b) for a, b in ranges)}]")
        for s in range(self.n_states):
            mark = "!" if self.stopped[s] else ("*" if self.final[s] else " ")
            edges: dict[int, list[int]] = {}
            for k in range(self.n_classes):
                t = int(self.trans[s, k])
                if t >= 0:
                    edges.setdefault(t, []).append(k)
            body = " ".join(f"{','.join(map(str, ks))}->{t}" for t, ks in sorted(edges.items()))
            lines.append(f"  {s}{mark} {body}".rstrip())
        lines.append("  (* final, ! stopped)")
        return "\n".join(lines)
