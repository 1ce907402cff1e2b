"""A token automaton lifted state by state, for byte DFAs too large to lift whole ahead of time.

``TokenAutomaton.build`` walks every DFA state over the vocabulary's byte trie at compile time and keeps a dense
``states x sequences`` table: that is what makes a decoding step a table lookup, but its time and memory grow with
the state count (a Kubernetes or Vega-Lite schema unfolds to hundreds of thousands of states, i.e. gigabytes).
Above ``LAZY_STATES`` byte-DFA states the builder returns a :class:`LazyTokenAutomaton` instead: the byte DFA is
compiled ahead of time as always, and a state's allowed tokens come from one walk of the trie from that single state
the first time decoding reaches it (cached by the runtime's mask tables like any mask).

What it gives up, against the eager automaton:

* the first visit of a state costs a trie walk (milliseconds on a 262k vocabulary) instead of a lookup;
* token budgets (``len(TOKENS(X)) < n``) use bounds instead of exact distances: a budget is refused only below
  ``min_tokens_to_end`` (fewest bytes to an end over the longest token), and near its end decoding keeps to tokens
  after which the value can still be finished by spelling a shortest completion (``tokens_to_finish``), so values
  close early rather than late;
* a state no token can continue is found when decoding reaches it (an empty allowed set), not at compile time; a
  vocabulary with byte tokens, such as Gemma's, never has one.
"""

from __future__ import annotations

import numpy as np

from lmqc.compiler.automaton import UNREACHABLE, _min_tokens_to_end, _ranges
from lmqc.compiler.bytedfa import ByteDFA
from lmqc.compiler.vocabulary import Vocabulary
from lmqc.errors import ArtifactError

LAZY_STATES = 20_000  # byte-DFA states above which the token automaton is lifted lazily (eager: ~0.3 ms each on JSON)
FORMAT = 2  # ``meta[0]`` of a lazy automaton's arrays (1 is the eager TokenAutomaton)
WALK_BYTES = 128 << 20  # walked states kept per automaton (a free-text state holds ~2 MB on a 262k vocabulary)

__all__ = ["LAZY_STATES", "LazyTokenAutomaton"]


class LazyTokenAutomaton:
    """The runtime interface of :class:`~lmqc.compiler.automaton.TokenAutomaton` over a byte DFA's states.

    A token-automaton state is a byte-DFA state; each state is its own mask (``mask_id(s) == s``).

    Attributes
    ----------
    dfa : ByteDFA
    initial, eos_id : int
    final, stopped : bool[S]
    min_tokens_to_end : int32[S]
        A lower bound on the tokens from each state to a final or stopped state (``UNREACHABLE`` if none).
    tokens_to_finish : int32[S]
        An upper bound on the tokens needed to end: the fewest tokens that spell one shortest byte completion.
        The runtime prunes with it near the end of a token budget, so a value always ends in time.
    """

    __slots__ = ("vocab", "dfa", "initial", "eos_id", "final", "stopped", "min_tokens_to_end", "tables", "_walks",
                 "_walk_bytes", "_finish", "_node_classes", "_dist")

    unconstrained = False

    def __init__(self, dfa: ByteDFA, vocab: Vocabulary | None, *, eos_id: int | None = None,
                 min_tokens_to_end: np.ndarray | None = None) -> None:
        if vocab is None and eos_id is None:
            raise ValueError("a lazy automaton needs its vocabulary or the EOS id")
        self.vocab = vocab
        self.dfa = dfa
        self.initial = int(dfa.initial)
        self.eos_id = int(vocab.eos_id if eos_id is None else eos_id)
        self.final = dfa.final
        self.stopped = dfa.stopped
        self._dist: np.ndarray | None = None  # byte distances, kept for tokens_to_finish when computed here
        if min_tokens_to_end is None:
            longest = int(vocab.levels.lengths.max(initial=1)) if vocab is not None else 1
            self._dist = _byte_distance(dfa)
            min_tokens_to_end = _min_tokens_lower_bound(self._dist, max(longest, 1))
        self.min_tokens_to_end = min_tokens_to_end
        self._finish: np.ndarray | None = None
        self.tables: object = None  # the runtime's mask tables (runtime.decode.masks.MaskTables)
        self._walks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._walk_bytes = 0
        self._node_classes: list[np.ndarray] | None = None

    # -- the runtime interface -----------------------------------------------------------------------------

    @property
    def n_states(self) -> int:
        return self.dfa.n_states

    @property
    def tokens_to_finish(self) -> np.ndarray:
        """int32[S] upper bounds on the tokens to an end (computed on first use, once the vocabulary is known)."""
        if self._finish is None:
            dist = self._dist if self._dist is not None else _byte_distance(self.dfa)
            self._finish = _tokens_to_finish(self.dfa, self._vocab(), dist)
            self._dist = None  # not needed again
        return self._finish

    @property
    def n_masks(self) -> int:
        return 0  # none is built ahead of time

    def mask_size(self, m: int) -> int:
        return len(self.allowed(m))

    def allowed(self, state: int) -> np.ndarray:
        """int32 sorted token ids allowed in ``state``; EOS included iff ``is_final(state)``."""
        toks, _ = self._walk(int(state))
        if self.final[state]:
            toks = np.insert(toks, np.searchsorted(toks, self.eos_id), self.eos_id)
        return toks

    def step(self, state: int, token_id: int) -> int:
        """Next state, or -1 if ``token_id`` is rejected (EOS is never stepped: the runtime ends the hole)."""
        if state < 0 or self.stopped[state]:
            return -1
        vocab = self._vocab()
        if not 0 <= token_id < vocab.size or vocab.never[token_id]:
            return -1
        data = vocab.buffer[vocab.offsets.item(token_id) : vocab.offsets.item(token_id + 1)]  # not .lengths: O(V)
        trans, classes = self.dfa.trans, self.dfa.classes
        s = int(state)
        for b in data.tolist():
            s = trans.item(s, classes.item(b))
            if s < 0:
                return -1
        return s

    def step_many(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Vectorized ``step``: int32[B] states and int32[B] tokens -> int32[B] next states."""
        states = np.asarray(states, dtype=np.int64).reshape(-1)
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        out = np.full(len(states), -1, dtype=np.int32)
        # one walk per distinct state: the allowed tokens with their next states, looked up for the batch
        for s in np.unique(states[states >= 0]).tolist():
            if self.stopped[s]:
                continue
            sel = np.flatnonzero(states == s)
            toks, nxt = self._walk(s)
            pos = np.searchsorted(toks, tokens[sel])
            pos = np.minimum(pos, max(len(toks) - 1, 0))
            hit = (toks[pos] == tokens[sel]) if len(toks) else np.zeros(len(sel), bool)
            out[sel[hit]] = nxt[pos[hit]]
        return out

    def is_final(self, state: int) -> bool:
        return self.final.item(state)

    def is_stopped(self, state: int) -> bool:
        return self.stopped.item(state)

    def mask_id(self, state: int) -> int:
        return int(state)

    def forced(self, state: int) -> int:
        return -1  # not precomputed; the runtime finds forced text from the masks themselves

    @property
    def tok_seq(self) -> np.ndarray:
        """int32[V] of zeros: only its length (the vocabulary size) is meaningful here."""
        return np.zeros(self._vocab().size, dtype=np.int32)

    @property
    def nbytes(self) -> int:
        return int(self.dfa.trans.nbytes + self.final.nbytes * 2 + self.min_tokens_to_end.nbytes + self._walk_bytes)

    # -- the walk -------------------------------------------------------------------------------------------

    def _vocab(self) -> Vocabulary:
        if self.vocab is None:
            raise ValueError("this automaton was loaded without its vocabulary; run it with its model")
        return self.vocab

    def _walk(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """The tokens allowed from ``state`` (sorted int32) and the state after each (int32)."""
        got = self._walks.get(state)
        if got is None:
            if self._node_classes is None:
                self._node_classes = _node_classes(self.dfa, self._vocab())
            got = _walk_one(self.dfa, self._vocab(), state, self._node_classes)
            if self._walk_bytes + got[0].nbytes * 2 > WALK_BYTES:  # bounded: start over rather than grow
                self._walks.clear()
                self._walk_bytes = 0
            self._walks[state] = got
            self._walk_bytes += got[0].nbytes * 2
        return got

    # -- serialization --------------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        v = self.vocab.size if self.vocab is not None else -1
        return {
            "meta": np.asarray([FORMAT, self.initial, self.eos_id, 0, v], dtype=np.int64),
            "trans": self.dfa.trans,
            "classes": self.dfa.classes,
            "final": self.final,
            "stopped": self.stopped,
            "min_tokens_to_end": self.min_tokens_to_end,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], vocab: Vocabulary | None = None) -> LazyTokenAutomaton:
        try:
            meta = np.asarray(arrays["meta"], dtype=np.int64).reshape(-1)
            version, initial, eos, _, v = (int(x) for x in meta[:5])
            trans = np.ascontiguousarray(arrays["trans"], dtype=np.int32)
            classes = np.asarray(arrays["classes"], dtype=np.uint8)
            final = np.asarray(arrays["final"], dtype=bool)
            stopped = np.asarray(arrays["stopped"], dtype=bool)
            mte = np.asarray(arrays["min_tokens_to_end"], dtype=np.int32)
        except (KeyError, ValueError, TypeError) as e:
            raise ArtifactError(f"automaton arrays are malformed: {e}") from None
        if version != FORMAT:
            raise ArtifactError(f"automaton format version {version} is not a lazy automaton")
        if vocab is not None and (v != vocab.size or eos != vocab.eos_id):
            raise ArtifactError("automaton was built for another vocabulary")
        s = len(final)
        ok = (trans.ndim == 2 and trans.shape[0] == s and len(stopped) == s and len(mte) == s
              and classes.shape == (256,) and 0 <= initial < s and trans.min(initial=0) >= -1
              and trans.max(initial=-1) < s and int(classes.max()) < trans.shape[1])
        if not ok:
            raise ArtifactError("automaton arrays are inconsistent (corrupt artifact?)")
        dfa = ByteDFA(trans=trans, classes=classes, initial=initial, final=final, stopped=stopped)
        return cls(dfa, vocab, eos_id=eos, min_tokens_to_end=mte)

    def __str__(self) -> str:
        return (f"LazyTokenAutomaton: {self.n_states} byte-DFA states, {len(self._walks)} lifted, "
                f"initial {self.initial}")


def _walk_one(dfa: ByteDFA, vocab: Vocabulary, state: int,
              node_classes: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One DFA state over the vocabulary's byte trie, depth by depth.

    A depth where many prefixes are still alive (free text: most of the trie) is one gather over all its nodes
    (the state each prefix leads to, -1 if dead); once few are alive, only the children of the live ones are
    visited (contiguous ranges of the next depth). ``node_classes[d]``: the byte class of every depth-``d`` node
    (per automaton; computed here if not given).

    Returns ``(toks int32[K] sorted, next int32[K])``. A stopped state allows nothing (the hole has ended).
    """
    empty = np.zeros(0, np.int32), np.zeros(0, np.int32)
    trie = vocab.levels.trie
    depth = len(trie.byte)
    if dfa.stopped[state] or depth == 0:
        return empty
    lv = vocab.levels
    trans = dfa.trans
    if node_classes is None:
        node_classes = _node_classes(dfa, vocab)
    toks: list[np.ndarray] = []
    nexts: list[np.ndarray] = []
    st_all: np.ndarray | None = trans[state, node_classes[0]]  # dense: per node of this depth
    nodes = st = np.zeros(0, np.int64)  # sparse: live nodes of this depth and their states
    for d in range(depth):
        if st_all is not None:
            alive = st_all >= 0
            n_alive = int(np.count_nonzero(alive))
            if not n_alive:
                break
            se = st_all[trie.end[d]]  # tokens of exactly d + 1 bytes, in level order
            good = se >= 0
            if good.any():
                toks.append(lv.tokens[int(lv.count[d + 1]) : int(lv.count[d])][good])
                nexts.append(se[good])
            if d + 1 >= depth:
                break
            if n_alive * 8 >= len(st_all):
                par = st_all[trie.parent[d + 1]]
                st_all = np.where(par >= 0, trans[np.maximum(par, 0), node_classes[d + 1]], -1)
                continue
            nodes = np.flatnonzero(alive)
            st = st_all[nodes]
            st_all = None
        else:
            eptr = trie.end_ptr[d]
            at, counts = _ranges(eptr[nodes], eptr[nodes + 1])
            if len(at):
                toks.append(trie.end_tok[d][at])
                nexts.append(st.repeat(counts))
            if d + 1 >= depth:
                break
        cptr = trie.child_ptr[d + 1]
        nodes, counts = _ranges(cptr[nodes], cptr[nodes + 1])
        st = trans[st.repeat(counts), node_classes[d + 1][nodes]]
        keep = st >= 0
        nodes, st = nodes[keep], st[keep]
        if not len(nodes):
            break
    if not toks:
        return empty
    t = np.concatenate(toks).astype(np.int32)
    n = np.concatenate(nexts).astype(np.int32)
    order = np.argsort(t, kind="stable")
    return t[order], n[order]


def _node_classes(dfa: ByteDFA, vocab: Vocabulary) -> list[np.ndarray]:
    """The DFA's byte class of every trie node, per depth (intp)."""
    classes = dfa.classes.astype(np.intp)
    return [classes[b] for b in vocab.levels.trie.byte]


def _min_tokens_lower_bound(dist: np.ndarray, longest: int) -> np.ndarray:
    """Fewest bytes to an end (``dist``, -1 if none) in tokens of at most ``longest`` bytes, rounded up: a lower
    bound on the tokens."""
    return np.where(dist < 0, UNREACHABLE, -(-dist // longest)).astype(np.int32)


def _tokens_to_finish(dfa: ByteDFA, vocab: Vocabulary, dist: np.ndarray) -> np.ndarray:
    """Per state: the fewest vocabulary tokens that spell the state's shortest byte completion (int32[S]).

    Every state follows one byte toward the nearest end (a shortest-path tree); a token of ``k`` bytes that
    spells the next ``k`` bytes of that path leads to the state ``k`` steps down it. Levels of increasing byte
    distance, each vectorized: ``U[s] = 1 + min U[succ^k(s)]`` over the ``k`` whose path bytes are a token
    (``UNREACHABLE`` where none is, e.g. a vocabulary without that byte). ``dist``: ``_byte_distance(dfa)``.
    """
    s_n, inf = dfa.n_states, int(UNREACHABLE)
    out = np.where(dist == 0, 0, inf).astype(np.int64)
    live = np.flatnonzero(dist > 0)
    if not len(live):
        return out.astype(np.int32)
    # the next byte on a shortest path: the first class whose target is one byte nearer
    d_ext = np.append(dist, -2)
    toward = d_ext[dfa.trans[live]] == (dist[live] - 1)[:, None]
    cls = toward.argmax(axis=1)
    succ = np.full(s_n, -1, dtype=np.int64)
    succ[live] = dfa.trans[live, cls]
    first_byte = np.full(dfa.n_classes, 0, dtype=np.int64)
    uniq, first = np.unique(dfa.classes, return_index=True)
    first_byte[uniq] = first
    nxt_byte = np.full(s_n, -1, dtype=np.int64)
    nxt_byte[live] = first_byte[cls]
    # walk every state's path down the trie: (state, k) pairs whose k path bytes end a token
    trie = vocab.levels.trie
    pairs_s: list[np.ndarray] = []
    pairs_t: list[np.ndarray] = []
    cur_s, at, node = live, live, np.zeros(len(live), dtype=np.int64)
    for d in range(len(trie.byte)):
        ok = dist[at] > 0  # the completion has ended: no token may run past it
        cur_s, at, node = cur_s[ok], at[ok], node[ok]
        if not len(cur_s):
            break
        key_d = trie.parent[d].astype(np.int64) * 256 + trie.byte[d]
        want = node * 256 + nxt_byte[at]
        pos = np.searchsorted(key_d, want)
        pos = np.minimum(pos, len(key_d) - 1)
        ok = key_d[pos] == want
        cur_s, at, node = cur_s[ok], succ[at[ok]], pos[ok]
        eptr = trie.end_ptr[d]
        ends = eptr[node + 1] > eptr[node]
        pairs_s.append(cur_s[ends])
        pairs_t.append(at[ends])
    ps = np.concatenate(pairs_s) if pairs_s else np.zeros(0, np.int64)
    pt = np.concatenate(pairs_t) if pairs_t else np.zeros(0, np.int64)
    order = np.argsort(dist[ps], kind="stable")
    ps, pt = ps[order], pt[order]
    bounds = np.searchsorted(dist[ps], np.arange(int(dist.max()) + 2))
    for level in range(1, int(dist.max()) + 1):
        a, b = bounds[level], bounds[level + 1]
        if a == b:
            continue
        np.minimum.at(out, ps[a:b], out[pt[a:b]] + 1)
    return np.minimum(out, inf).astype(np.int32)


def _byte_distance(dfa: ByteDFA) -> np.ndarray:
    """Fewest bytes from each state to a final or stopped state (int64[S], -1 if none): the token automaton's
    reverse breadth-first search, over the byte table."""
    dist = _min_tokens_to_end(dfa.trans, dfa.final | dfa.stopped).astype(np.int64)
    dist[dist >= UNREACHABLE] = -1
    return dist
