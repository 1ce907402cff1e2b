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
from .charlang import MAX_CP, CharDFA
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
            if state < 0:
                return -1
            state = ctab[state][k]
        return state

    STOP = 0  # index 0 is reserved for the stopped state
    index: dict[tuple[int, int], int] = {}
    keys: list[tuple[int, int]] = [(-1, -1)]
    rows: list[list[int]] = [[STOP] * n_cls]
    finals: list[bool] = [False]

    def intern(key: tuple[int, int]) -> int:
        i = index.get(key)
        if i is None:
            i = index[key] = len(keys)
            keys.append(key)
        return i

    intern((0, c.initial))
    i = 1
    while i < len(keys):
        a, cs = keys[i]
        label = nodes[a]
        cur = run(cs, label)
        finals.append(cur >= 0 and cfinal[cur])
        row = []
        for k in range(n_cls):
            a2 = goto[a].get(k, 0)
            text = label + (k,)
            cs2 = run(cs, text[: len(text) - len(nodes[a2])])
            if cs2 < 0:
                row.append(-1)  # the text before any pending phrase is already outside C
                continue
            m = match[a2]
            if m is None:
                row.append(intern((a2, cs2)))
                continue
            plen, keep = m
            lab2 = nodes[a2]
            v = run(cs2, lab2 if keep else lab2[: len(lab2) - plen])
            row.append(STOP if v >= 0 and cfinal[v] else -1)
        rows.append(row)
        i += 1
    stopped = np.zeros(len(keys), dtype=bool)
    stopped[STOP] = True
    out = charlang._make(starts, iclass, np.asarray(rows, dtype=np.int32), 1, finals, stopped)
    return charlang.trim(out)


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

    def small_tables(self) -> tuple[list[list[int]], list[list[int]], np.ndarray]:
        """For the list expansion: each node's child entry per byte group (``children[n][first byte of the
        group]``), each node's leaf classes, and the group of every byte."""
        got = getattr(self, "_small", None)
        if got is None:
            rep_bytes, group = self.byte_groups()
            got = self._small = (
                [ch[rep_bytes].tolist() for ch in self.children],
                [lv.tolist() for lv in self.leaves],
                group,
            )
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
    rep_bytes, group = tmpl.byte_groups()
    t = len(tmpl.children)
    inst = np.full((s, t), -1, dtype=np.int64)  # byte state of (char state, template node)
    reps: list[tuple[int, np.ndarray]] = []
    next_id = s
    ctrans = c.trans.astype(np.int64)
    ctrans[c.stopped] = -1  # stopped rows are overwritten below; no partial characters needed for them
    # children are numbered after parents, so reverse order instantiates children first
    for n in range(t - 1, 0, -1):
        under = tmpl.leaves[n]
        key = ctrans[:, under]
        first, inv = charlang.unique_rows(key)
        uniq = key[first]
        live = (uniq >= 0).any(axis=1)
        ids = np.full(len(uniq), -1, dtype=np.int64)
        ids[live] = np.arange(next_id, next_id + int(live.sum()))
        next_id += int(live.sum())
        inst[:, n] = ids[inv]
        reps.append((n, first[live]))
    total = next_id
    g_n = len(rep_bytes)
    table = np.full((total, g_n), -1, dtype=np.int64)

    def fill(states: np.ndarray, n: int) -> np.ndarray:
        ch = tmpl.children[n][rep_bytes]
        out = np.full((len(states), g_n), -1, dtype=np.int64)
        leaf = ch <= -2
        out[:, leaf] = ctrans[states][:, -ch[leaf] - 2]
        internal = ch >= 0
        out[:, internal] = inst[states][:, ch[internal]]
        return out

    all_states = np.arange(s)
    table[:s] = fill(all_states, 0)
    for n, rep in reps:
        if len(rep):
            table[inst[rep, n]] = fill(rep, n)
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
        overhead (``_expand_grouped``, the byte classes and ``_merge_identical_rows`` step for step)."""
        child_g, leaves, group = tmpl.small_tables()
        s = c.n_states
        g_n = len(child_g[0])
        stopped_l = c.stopped.tolist()
        ctrans = [[-1] * c.n_classes if st else row for row, st in zip(c.trans.tolist(), stopped_l, strict=True)]
        inst = [[-1] * len(child_g) for _ in range(s)]
        reps: list[tuple[int, list[int]]] = []
        next_id = s
        for n in range(len(child_g) - 1, 0, -1):  # children first
            under = leaves[n]
            ids: dict[tuple, int] = {}
            rep: list[int] = []
            for st, row in enumerate(ctrans):
                key = tuple([row[k] for k in under])
                got = ids.get(key)
                if got is None:
                    got = ids[key] = next_id if key and max(key) >= 0 else -1
                    if got >= 0:
                        next_id += 1
                        rep.append(st)
                inst[st][n] = got
            reps.append((n, rep))

        def fill(st: int, n: int) -> list[int]:
            row, own = ctrans[st], inst[st]
            return [row[-ch - 2] if ch <= -2 else own[ch] if ch >= 0 else -1 for ch in child_g[n]]

        table: list[list[int]] = [fill(st, 0) for st in range(s)]
        table.extend([] for _ in range(next_id - s))
        for n, rep in reps:
            for st in rep:
                table[inst[st][n]] = fill(st, n)
        for st in range(s):
            if stopped_l[st]:
                table[st] = [st] * g_n  # absorbs every byte
        # byte classes: identical columns (numbered by first byte, as over all 256 columns)
        col_class: dict[tuple, int] = {}
        cls_of_group = [col_class.setdefault(col, len(col_class)) for col in zip(*table, strict=True)]
        firsts = [cls_of_group.index(k) for k in range(len(col_class))]
        table = [[row[j] for j in firsts] for row in table]
        final = c.final.tolist() + [False] * (next_id - s)
        stopped = stopped_l + [False] * (next_id - s)
        # partial characters with identical rows merge, until nothing changes
        while len(table) - s > 1:
            seen: dict[tuple, int] = {}
            inv = [seen.setdefault(tuple(row), len(seen)) for row in table[s:]]
            if len(seen) == len(inv):
                break
            keep = list(range(s)) + [s + inv.index(k) for k in range(len(seen))]
            remap = list(range(s)) + [s + k for k in inv]
            table = [[remap[t] if t >= 0 else -1 for t in table[i]] for i in keep]
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
