"""Token automaton: a hole's byte DFA lifted to a model's vocabulary.

Build, with no Python loop over tokens or states:

1. map every candidate token's bytes to the DFA's byte classes, level by level (byte ``d`` of all tokens longer
   than ``d`` at once), growing a trie of class prefixes: the children of the nodes at one level are found with
   a dense key ``parent * C + class`` (no sorting);
2. walk *all* DFA states over each new trie level at once (``trans[R[:, parent], class]``), dropping trie nodes
   that every state rejects, so the tokens under them are never looked at again;
3. the distinct class sequences that complete a token ("sequences") become the columns of the transition table
   ``next[state, sequence]``; each token maps to its sequence;
4. keep the states reachable by tokens from the initial state, dedupe the per-state allowed rows into masks
   (many states share one mask), and compute the fewest tokens from each state to an end.

A narrow language (a few words, digits: few trie nodes below the bytes it can start with) replaces steps 1-3 by a
depth-first walk over its live trie nodes in Python (:func:`_walk_narrow`), bounded in nodes: the vectorized
walk's fixed cost per depth is most of such a build.

A token is allowed in state ``s`` iff it is not ``never`` and walking its bytes from ``s`` never rejects
(reaching the stopped state mid-token is fine: the rest of the token is cut off by the runtime).
"""

from __future__ import annotations

from bisect import bisect_left

import numpy as np

from lmqc.errors import ArtifactError, ConstraintError

from .bytedfa import ByteDFA
from .charlang import unique_rows
from .vocabulary import BYTE_GROUP, Vocabulary

UNREACHABLE = np.int32(2**30)  # min_tokens_to_end of a state from which no end is reachable
_GROUP_FIRST = np.unique(BYTE_GROUP, return_index=True)[1]  # the first byte of each byte group


class TokenAutomaton:
    """Deterministic automaton over token ids.

    Attributes
    ----------
    initial : int
    n_states : int
    eos_id : int
    unconstrained : bool
        Every non-``never`` token allowed and EOS allowed in the single state.
    next_table : int32[S + 1, U + 1]
        ``next_table[s, u]`` is the state after a token of sequence ``u`` (-1 rejects); the last row and the
        last column are all -1 so that ``next_table[-1, ...]`` and ``tok_seq == -1`` reject without branches.
    tok_seq : int32[V]
        Token -> sequence (column), -1 for tokens never allowed anywhere.
    final, stopped : bool[S]
    mask_of_state : int32[S]
        State -> mask id.
    mask_seqs : bool[M, U]
        Sequences allowed by each mask.
    mask_final : bool[M]
        Whether the mask includes EOS.
    min_tokens_to_end : int32[S]
        Fewest tokens from each state to a final or stopped state (``UNREACHABLE`` = 2**30 if none).
    forced_token : int32[S]
        The single allowed token of a non-final state with exactly one, else -1.
    tables : object
        What the runtime derives from this automaton at decode time (``runtime.decode.masks.MaskTables``: masks,
        budget and healing tables, bounded in bytes); owned here so they live exactly as long as the automaton.
        Not serialized.
    """

    __slots__ = (
        "vocab",
        "initial",
        "eos_id",
        "unconstrained",
        "next_table",
        "_tok_seq",
        "_touched",
        "final",
        "stopped",
        "mask_of_state",
        "mask_seqs",
        "mask_final",
        "min_tokens_to_end",
        "forced_token",
        "_mask_cache",
        "_seq_groups",
        "_seq_count",
        "_sizes",
        "tables",
    )

    def __init__(
        self,
        vocab: Vocabulary | None,
        *,
        initial: int,
        unconstrained: bool,
        eos_id: int | None = None,
        next_table: np.ndarray,
        tok_seq: np.ndarray | None,
        final: np.ndarray,
        stopped: np.ndarray,
        mask_of_state: np.ndarray,
        mask_seqs: np.ndarray,
        mask_final: np.ndarray,
        min_tokens_to_end: np.ndarray,
        forced_token: np.ndarray,
        touched: tuple[np.ndarray, np.ndarray, int] | None = None,
    ) -> None:
        self.vocab = vocab
        self.initial = int(initial)
        # An artifact loaded without its model has no vocabulary object; the EOS id travels in its arrays.
        self.eos_id = int(vocab.eos_id if eos_id is None else eos_id)
        self.unconstrained = bool(unconstrained)
        self.next_table = next_table
        # ``tok_seq`` is built on first use from ``touched`` (tokens and their sequences, -1 for those never
        # allowed after all, and the vocabulary size) when the builder gives only those: a narrow language touches
        # a few hundred tokens, and filling a vocabulary-wide array belongs to the first decoding step, not to the
        # compile.
        self._tok_seq = tok_seq
        self._touched = touched
        self.final = final
        self.stopped = stopped
        self.mask_of_state = mask_of_state
        self.mask_seqs = mask_seqs
        self.mask_final = mask_final
        self.min_tokens_to_end = min_tokens_to_end
        self.forced_token = forced_token
        self._mask_cache: list[np.ndarray | None] = [None] * len(mask_seqs)
        self._seq_groups: tuple[np.ndarray, np.ndarray] | None = None
        self._seq_count: np.ndarray | None = None
        self._sizes: np.ndarray | None = None
        self.tables: object = None  # what the runtime derives from this automaton (runtime.decode.masks.MaskTables)

    # -- the runtime interface -----------------------------------------------------------------------------

    @property
    def n_states(self) -> int:
        return len(self.final)

    @property
    def tok_seq(self) -> np.ndarray:
        """int32[V]: token -> sequence (column), -1 for tokens never allowed."""
        if self._tok_seq is None:
            toks, seqs, v = self._touched
            tok_seq = np.full(v, -1, dtype=np.int32)
            tok_seq[toks] = seqs
            self._tok_seq = tok_seq
        return self._tok_seq

    def allowed(self, state: int) -> np.ndarray:
        """int32 sorted token ids allowed in ``state``; EOS included iff ``is_final(state)``."""
        return self.mask(int(self.mask_of_state[state]))

    def step(self, state: int, token_id: int) -> int:
        """Next state, or -1 if ``token_id`` is rejected (EOS is never stepped: the runtime ends the hole)."""
        seq = self._tok_seq if self._tok_seq is not None else self.tok_seq
        if state < 0 or not 0 <= token_id < len(seq):
            return -1
        # ``item`` skips NumPy scalar objects (this runs once per decoded token); column -1 rejects
        return self.next_table.item(state, seq.item(token_id))

    def step_many(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Vectorized ``step``: int32[B] states and int32[B] tokens -> int32[B] next states."""
        states = np.asarray(states, dtype=np.int64)
        tokens = np.asarray(tokens, dtype=np.int64)
        ok = (tokens >= 0) & (tokens < len(self.tok_seq))
        seq = np.where(ok, self.tok_seq[np.where(ok, tokens, 0)], -1)
        return self.next_table[states, seq]

    # ``item`` returns a Python scalar without a NumPy scalar in between: these run on every decoding step
    def is_final(self, state: int) -> bool:
        return self.final.item(state)

    def is_stopped(self, state: int) -> bool:
        return self.stopped.item(state)

    def mask_id(self, state: int) -> int:
        return self.mask_of_state.item(state)

    def forced(self, state: int) -> int:
        return self.forced_token.item(state)

    @property
    def masks(self) -> list[np.ndarray]:
        """Every distinct allowed set (materialized on first access, then cached)."""
        return [self.mask(m) for m in range(len(self.mask_seqs))]

    @property
    def n_masks(self) -> int:
        return len(self.mask_seqs)

    def mask(self, m: int) -> np.ndarray:
        """Sorted int32 token ids of mask ``m`` (EOS included iff the mask is final)."""
        got = self._mask_cache[m]
        if got is None:
            got = self._mask_cache[m] = self._materialize(m)
        return got

    def mask_size(self, m: int) -> int:
        """Number of token ids in mask ``m`` without materializing it."""
        return self._mask_sizes().item(m)

    def _mask_sizes(self) -> np.ndarray:
        """int64[M]: the number of token ids of every mask, EOS included (computed once: one product)."""
        if self._sizes is None:
            self._sizes = self.mask_seqs.astype(np.int64) @ self._seq_sizes() + self.mask_final
        return self._sizes

    def mask_sequences(self, m: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Mask ``m`` as its allowed sequences: (bool[U + 1] per sequence, the last False for tokens never allowed;
        ``tok_seq``; whether EOS is in it). A dense mask's membership test needs nothing more."""
        return np.append(self.mask_seqs[m], False), self.tok_seq, bool(self.mask_final[m])

    def _seq_sizes(self) -> np.ndarray:
        """int64[U]: the number of tokens of each sequence (computed once)."""
        if self._seq_count is None:
            seqs = self._touched[1] if self._touched is not None else self.tok_seq
            self._seq_count = np.bincount(seqs[seqs >= 0], minlength=self.mask_seqs.shape[1])
        return self._seq_count

    def _groups(self) -> tuple[np.ndarray, np.ndarray]:
        """The tokens of the sequences sparse masks allow, grouped by sequence: ``order`` (token ids, by sequence
        then id) and CSR ``ptr[U + 1]`` (other sequences' groups are empty: only sparse masks read these)."""
        if self._seq_groups is None:
            n_seq = self.mask_seqs.shape[1]
            touched = self._touched
            if touched is not None and len(touched[0]) * 8 < touched[2]:  # a narrow language: its few tokens
                toks, seqs = touched[0], touched[1]
                live = seqs >= 0
                toks, key = toks[live], seqs[live]
                order = toks[np.lexsort((toks, key))].astype(np.int32)
            else:
                # the sequences of sparse masks (a wide language's few narrow states: after a stop phrase, in a
                # number) hold few tokens: select those (one pass) rather than sort the vocabulary by sequence
                n = self._mask_sizes() - self.mask_final
                grouped = (n <= _LIST_MASK) | (n * 8 < len(self.tok_seq))  # the masks _materialize groups
                need = np.append(self.mask_seqs[grouped].any(axis=0), False)
                valid = np.flatnonzero(need.take(self.tok_seq))
                key = self.tok_seq[valid]
                order = valid[np.argsort(key, kind="stable")].astype(np.int32)
            ptr = np.zeros(n_seq + 1, dtype=np.int64)
            np.cumsum(np.bincount(key, minlength=n_seq), out=ptr[1:])
            self._seq_groups = (order, ptr)
        return self._seq_groups

    def _materialize(self, m: int) -> np.ndarray:
        allowed_seq = self.mask_seqs[m]
        n = self._mask_sizes().item(m) - int(self.mask_final[m])
        v = len(self._tok_seq) if self._tok_seq is not None else self._touched[2]  # (not filling tok_seq for it)
        if n <= _LIST_MASK:  # a few ids: their groups as Python lists (NumPy calls would cost more)
            order, ptr = self._groups()
            ids_l: list[int] = []
            for u in allowed_seq.nonzero()[0].tolist():
                ids_l += order[ptr.item(u) : ptr.item(u + 1)].tolist()
            if self.mask_final[m]:
                ids_l.append(self.eos_id)
            return np.asarray(sorted(ids_l), dtype=np.int32)
        if n * 8 < v:  # sparse: concatenate the groups of the allowed sequences
            order, ptr = self._groups()
            seqs = np.flatnonzero(allowed_seq)
            parts = [order[ptr[u] : ptr[u + 1]] for u in seqs]
            ids = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int32)
        else:  # dense: one pass over the vocabulary
            ids = np.flatnonzero(np.append(allowed_seq, False).take(self.tok_seq)).astype(np.int32)
        if self.mask_final[m]:
            ids = np.insert(ids, np.searchsorted(ids, self.eos_id), self.eos_id)
        return ids.astype(np.int32, copy=False)

    @property
    def nbytes(self) -> int:
        """Memory of the tables (plus masks materialized so far)."""
        arrays = (
            self.next_table,
            self.tok_seq,
            self.final,
            self.stopped,
            self.mask_of_state,
            self.mask_seqs,
            self.mask_final,
            self.min_tokens_to_end,
            self.forced_token,
        )
        return sum(a.nbytes for a in arrays) + sum(m.nbytes for m in self._mask_cache if m is not None)

    # -- construction --------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        dfa: ByteDFA,
        vocab: Vocabulary,
        *,
        name: str = "X",
        source: str | None = None,
        filename: str = "<query>",
        line: int | None = None,
        column: int | None = None,
    ) -> TokenAutomaton:
        """Lift ``dfa`` to ``vocab``.

        Raises
        ------
        ConstraintError
            A state reachable by tokens is neither final nor stopped and no token can continue from it
            (the message names a shortest pending text). ``name``/``source``/``line``/``column`` locate it.
        """
        if dfa.unconstrained:
            return cls._unconstrained(vocab)
        from lmqc.compiler import lazy

        if dfa.n_states > lazy.LAZY_STATES:  # a dense states x sequences table would not fit: lift on visit
            return lazy.LazyTokenAutomaton(dfa, vocab)  # type: ignore[return-value]
        got = _walk_narrow(dfa, vocab)
        next_table, toks, seqs = got if got is not None else _walk(dfa, vocab)
        s_all = dfa.n_states
        next_table[dfa.stopped] = -1  # the hole has ended in a stopped state
        reach, parent_state, parent_seq = _token_reachable(next_table, dfa.initial)
        # renumber the reachable states (initial first, BFS order)
        remap = np.full(s_all + 1, -1, dtype=np.int32)
        remap[reach] = np.arange(len(reach), dtype=np.int32)
        table = remap[next_table[reach]]
        final = dfa.final[reach]
        stopped = dfa.stopped[reach]
        live = table >= 0
        stuck = ~live.any(axis=1) & ~final & ~stopped
        if stuck.any():
            bad = int(reach[np.flatnonzero(stuck)[0]])
            text = _pending_text(bad, parent_state, parent_seq, toks, seqs, vocab)
            raise ConstraintError(
                f"the vocabulary cannot express the constraint on {name}: after {text!r} no token can continue "
                "and the value cannot end there",
                source=source,
                filename=filename,
                line=line,
                column=column,
            )
        seq_count = np.bincount(seqs, minlength=table.shape[1])
        # drop sequences no reachable state allows: their tokens keep sequence -1 (never allowed), which every
        # reader of ``touched`` skips — cheaper than filtering a quarter million tokens
        used = live.any(axis=0)
        if not used.all():
            col_map = np.full(len(used), -1, dtype=np.int32)
            col_map[np.flatnonzero(used)] = np.arange(int(used.sum()), dtype=np.int32)
            table = np.ascontiguousarray(table[:, used])
            live = live[:, used]
            seqs = col_map[seqs]
            seq_count = seq_count[used]
        n_cols = table.shape[1]
        key = np.packbits(live, axis=1)
        key = np.concatenate([key, final[:, None].astype(np.uint8)], axis=1)
        first, mask_of_state = unique_rows(key)
        mask_seqs = live[first]
        mask_final = final[first]
        n = len(final)
        ext = np.full((n + 1, n_cols + 1), -1, dtype=np.int32)
        ext[:n, :n_cols] = table
        forced = _forced(mask_seqs, mask_final, seq_count, toks, seqs)[mask_of_state]
        out = cls(
            vocab,
            initial=0,
            unconstrained=False,
            next_table=ext,
            tok_seq=None,
            touched=(toks, seqs.astype(np.int32, copy=False), vocab.size),
            final=final,
            stopped=stopped,
            mask_of_state=mask_of_state.astype(np.int32),
            mask_seqs=mask_seqs,
            mask_final=mask_final,
            min_tokens_to_end=_min_tokens_to_end(table, final | stopped),
            forced_token=forced.astype(np.int32),
        )
        out._seq_count = seq_count  # tokens per sequence, for sizing masks without a pass over the tokens
        return out

    @classmethod
    def _unconstrained(cls, vocab: Vocabulary) -> TokenAutomaton:
        return cls._unconstrained_from(vocab.never, vocab.eos_id, vocab)

    @classmethod
    def _unconstrained_from(cls, never: np.ndarray, eos_id: int, vocab: Vocabulary | None = None) -> TokenAutomaton:
        tok_seq = np.where(never, -1, 0).astype(np.int32)
        return cls(
            vocab,
            eos_id=eos_id,
            initial=0,
            unconstrained=True,
            next_table=np.asarray([[0, -1], [-1, -1]], dtype=np.int32),
            tok_seq=tok_seq,
            final=np.ones(1, bool),
            stopped=np.zeros(1, bool),
            mask_of_state=np.zeros(1, np.int32),
            mask_seqs=np.ones((1, 1), bool),
            mask_final=np.ones(1, bool),
            min_tokens_to_end=np.zeros(1, np.int32),
            forced_token=np.full(1, -1, np.int32),
        )

    # -- serialization --------------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for an npz (no pickle). The unconstrained automaton stores only its flag."""
        meta = np.asarray(
            [1, self.initial, self.eos_id, int(self.unconstrained), len(self.tok_seq)], dtype=np.int64
        )
        if self.unconstrained:
            return {"meta": meta, "never": np.packbits(self.tok_seq < 0)}
        return {
            "meta": meta,
            "next_table": self.next_table,
            "tok_seq": self.tok_seq,
            "final": self.final,
            "stopped": self.stopped,
            "mask_of_state": self.mask_of_state,
            "mask_seqs": np.packbits(self.mask_seqs, axis=1),
            "mask_final": self.mask_final,
            "min_tokens_to_end": self.min_tokens_to_end,
            "forced_token": self.forced_token,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], vocab: Vocabulary | None = None) -> TokenAutomaton:
        """Rebuild from ``to_arrays``; shapes and ranges are validated (``ArtifactError`` if inconsistent).

        Without ``vocab`` (an artifact loaded before its model), the vocabulary check is left to the runtime,
        which compares fingerprints.
        """
        try:
            meta = np.asarray(arrays["meta"], dtype=np.int64).reshape(-1)
            version, initial, eos, unconstrained, v = (int(x) for x in meta[:5])
        except (KeyError, ValueError, TypeError) as e:
            raise ArtifactError(f"automaton arrays are malformed: {e}") from None
        if version == 2:
            from lmqc.compiler.lazy import LazyTokenAutomaton

            return LazyTokenAutomaton.from_arrays(arrays, vocab)  # type: ignore[return-value]
        if version != 1:
            raise ArtifactError(f"automaton format version {version} is not supported")
        if vocab is not None and (v != vocab.size or eos != vocab.eos_id):
            raise ArtifactError("automaton was built for another vocabulary")
        if unconstrained:
            if vocab is not None:
                return cls._unconstrained(vocab)
            try:
                never = np.unpackbits(np.asarray(arrays["never"], dtype=np.uint8))[:v].astype(bool)
            except (KeyError, ValueError, TypeError) as e:
                raise ArtifactError(f"automaton arrays are malformed: {e}") from None
            if len(never) != v:
                raise ArtifactError("automaton arrays are inconsistent (corrupt artifact?)")
            return cls._unconstrained_from(never, eos)
        try:
            table = np.ascontiguousarray(arrays["next_table"], dtype=np.int32)
            tok_seq = np.ascontiguousarray(arrays["tok_seq"], dtype=np.int32)
            final = np.asarray(arrays["final"], dtype=bool)
            stopped = np.asarray(arrays["stopped"], dtype=bool)
            mask_of_state = np.asarray(arrays["mask_of_state"], dtype=np.int32)
            mask_final = np.asarray(arrays["mask_final"], dtype=bool)
            n_seq = table.shape[1] - 1
            mask_seqs = np.unpackbits(np.asarray(arrays["mask_seqs"], dtype=np.uint8), axis=1)[:, :n_seq]
            mask_seqs = mask_seqs.astype(bool)
            mte = np.asarray(arrays["min_tokens_to_end"], dtype=np.int32)
            forced = np.asarray(arrays["forced_token"], dtype=np.int32)
        except (KeyError, ValueError, TypeError) as e:
            raise ArtifactError(f"automaton arrays are malformed: {e}") from None
        s = len(final)
        ok = (
            table.ndim == 2
            and table.shape[0] == s + 1
            and len(tok_seq) == v
            and len(stopped) == s
            and len(mask_of_state) == s
            and len(mte) == s
            and len(forced) == s
            and mask_seqs.shape == (len(mask_final), n_seq)
            and 0 <= initial < s
            and table.min(initial=0) >= -1
            and table.max(initial=-1) < s
            and tok_seq.min(initial=0) >= -1
            and tok_seq.max(initial=-1) < n_seq
            and mask_of_state.min(initial=0) >= 0
            and mask_of_state.max(initial=-1) < len(mask_final)
            and forced.min(initial=-1) >= -1
            and forced.max(initial=-1) < v
        )
        if not ok:
            raise ArtifactError("automaton arrays are inconsistent (corrupt artifact?)")
        return cls(
            vocab,
            eos_id=eos,
            initial=initial,
            unconstrained=False,
            next_table=table,
            tok_seq=tok_seq,
            final=final,
            stopped=stopped,
            mask_of_state=mask_of_state,
            mask_seqs=mask_seqs,
            mask_final=mask_final,
            min_tokens_to_end=mte,
            forced_token=forced,
        )

    # -- display --------------------------------------------------------------------------------------------

    def __str__(self) -> str:
        head = (
            f"TokenAutomaton: {self.n_states} states, {self.n_masks} masks, "
            f"{self.next_table.shape[1] - 1} sequences, initial {self.initial}"
        )
        if self.unconstrained:
            return "TokenAutomaton: unconstrained (every token, EOS anywhere)"
        lines = [head]
        for s in range(self.n_states):
            mark = "!" if self.stopped[s] else ("*" if self.final[s] else " ")
            toks = self.allowed(s)
            by_target: dict[int, list[str]] = {}
            for t in toks[:40].tolist():
                if t == self.eos_id:
                    continue
                by_target.setdefault(self.step(s, t), []).append(repr(self.vocab.piece(t))[1:] if self.vocab is not None else f"#{t}")
            body = "  ".join(f"{' '.join(ps)}->{tgt}" for tgt, ps in sorted(by_target.items()))
            more = " ..." if len(toks) > 40 else ""
            eos = " EOS" if self.final[s] else ""
            mte = int(self.min_tokens_to_end[s])
            lines.append(
                f"  {s}{mark} mask {self.mask_id(s)} end>={mte if mte < UNREACHABLE else 'inf'}:{eos} {body}{more}".rstrip()
            )
        lines.append("  (* final, ! stopped)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Build steps


_SPARSE_CELLS = 1 << 15  # keys x states of a depth above which its rows are computed from their live entries
_SPARSE_DENSITY = 0.25  # ... if at most this fraction of the class nodes' entries is live


def _sparse_step(node_rows: np.ndarray, parent: np.ndarray, ucls: np.ndarray, trans_flat: np.ndarray,
                 dead: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """One depth of :func:`_walk` over the live entries of the class nodes' rows only.

    A large schema's depth has thousands of (class node, byte class) keys over thousands of states, a tenth of
    them live: the dense step gathers and hashes every cell. Here each key's row is the live entries of its
    parent's row moved by its class, hashed per key; rows with equal hashes are verified entry by entry.

    Returns ``(live, first, inv, rows, used)`` as the dense step computes them — the keys whose row is not all
    dead, the first of each group of equal rows among them (``live`` positions, numbered by first appearance)
    and every live key's group, the groups' rows ``int32[G, n_cols]``, and the columns some row uses — or
    ``None`` when the rows are too dense to gain (or a hash collision: the dense step decides).
    """
    nz = node_rows != dead
    if np.count_nonzero(nz) > _SPARSE_DENSITY * nz.size:
        return None
    r, c = nz.nonzero()  # row-major: each class node's entries contiguous, in column order
    v = node_rows[r, c]
    ptr = np.zeros(len(node_rows) + 1, dtype=np.intp)
    np.cumsum(np.bincount(r, minlength=len(node_rows)), out=ptr[1:])
    idx, counts = _ranges(ptr[parent], ptr[parent + 1])
    j = np.repeat(np.arange(len(parent)), counts)
    vv = np.take(trans_flat, np.take(v, idx) + np.take(ucls, j))
    keep = vv != dead
    j, cc, vv = j[keep], np.take(c, idx[keep]), vv[keep]
    n_cols = node_rows.shape[1]
    used = np.zeros(n_cols, dtype=bool)
    used[cc] = True
    cnt = np.bincount(j, minlength=len(parent))
    live = np.flatnonzero(cnt)
    if not len(live):
        return live, live, live, np.zeros((0, n_cols), np.int32), used
    seg = np.zeros(len(parent) + 1, dtype=np.intp)
    np.cumsum(cnt, out=seg[1:])
    with np.errstate(over="ignore"):
        e = (cc.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + vv.astype(np.uint64)) * np.uint64(0xBF58476D1CE4E5B9)
        e ^= e >> np.uint64(31)
        h = np.add.reduceat(e, seg[live])
    _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    rep = first[inv]
    dup = np.flatnonzero(rep != np.arange(len(live)))
    if len(dup):
        a, b = live[dup], live[rep[dup]]
        if not np.array_equal(cnt[a], cnt[b]):
            return None
        ia, _ = _ranges(seg[a], seg[a + 1])
        ib, _ = _ranges(seg[b], seg[b + 1])
        if not (np.array_equal(cc[ia], cc[ib]) and np.array_equal(vv[ia], vv[ib])):
            return None
    order = np.argsort(first, kind="stable")  # groups numbered by first appearance, as unique_rows does
    rank = np.empty(len(first), dtype=np.int64)
    rank[order] = np.arange(len(first))
    first = first[order]
    reps = live[first]
    at, n_at = _ranges(seg[reps], seg[reps + 1])
    rows = np.full((len(reps), n_cols), dead, dtype=np.int32)
    rows[np.repeat(np.arange(len(reps)), n_at), cc[at]] = vv[at]
    return live, first, rank[inv], rows, used


def _ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The indices ``start..stop-1`` of every range laid end to end, and each range's length (``x.repeat(counts)``
    gives each index the value of its range)."""
    # array methods rather than np.* wrappers: this runs twice per trie depth, mostly on a few dozen ranges
    counts = stops - starts
    ends = counts.cumsum()
    return (starts - ends + counts).repeat(counts) + np.arange(int(ends[-1]) if len(ends) else 0), counts


#: A narrow language (a few words, digits) is walked node by node when the trie nodes one byte below its first
#: bytes number at most this (counted once per state that takes the byte): the vectorized walk costs ~25 NumPy
#: calls per depth whatever the number of live nodes, this ~1 µs per live (node, state) pair
_NARROW_FANOUT = 1200
_NARROW_VISITS = 3000  # live trie nodes after which a narrow walk gives up (the estimate was wrong)


def _walk_narrow(dfa: ByteDFA, vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`_walk` for a narrow language, depth-first over the live trie nodes only, in Python.

    Each live node carries the (start state, current state) pairs its prefix leaves alive; only the children
    whose byte some current state takes are visited. Returns what :func:`_walk` returns (the columns in
    another order), or ``None`` when the language is not narrow (estimated from the trie's fan-out under the
    first bytes, or more than :data:`_NARROW_VISITS` live nodes).
    """
    trie = vocab.levels.trie
    if len(trie.parent) < 2:
        return None
    tv = trie.views
    # nodes one byte below each first byte, times the states that take the byte
    if float(tv.fanout @ (dfa.trans >= 0).sum(axis=0)[dfa.classes]) > _NARROW_FANOUT:
        return None
    s_n = dfa.n_states
    nxt = dfa.trans[:, dfa.classes]
    src, byt = np.nonzero(nxt >= 0)
    moves: list[dict[int, int]] = [{} for _ in range(s_n)]
    by_byte: dict[int, list[tuple[int, int]]] = {}
    for s, b, t in zip(src.tolist(), byt.tolist(), nxt[src, byt].tolist(), strict=True):
        moves[s][b] = t
        by_byte.setdefault(b, []).append((s, t))
    behaviours: dict[tuple[tuple[int, int], ...], int] = {}
    toks: list[int] = []
    seqs: list[int] = []
    child_ptr, byte, end_ptr, end_tok, root = tv.child_ptr, tv.byte, tv.end_ptr, tv.end_tok, tv.root
    n_depth = len(child_ptr)
    stack: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []

    def visit(d: int, node: int, row: tuple[tuple[int, int], ...]) -> None:
        ep = end_ptr[d]
        e0, e1 = ep[node], ep[node + 1]
        if e0 != e1:  # tokens end here: their behaviour is the row
            u = behaviours.setdefault(row, len(behaviours))
            ended = end_tok[d][e0:e1].tolist()
            toks.extend(ended)
            seqs.extend([u] * len(ended))
        stack.append((d, node, row))

    for b in sorted(by_byte):  # root nodes in trie order
        if root[b] >= 0:
            visit(0, root[b], tuple(by_byte[b]))
    visits = len(stack)
    while stack:
        d, node, row = stack.pop()
        d += 1
        if d >= n_depth:
            continue
        cp = child_ptr[d]
        lo, hi = cp[node], cp[node + 1]
        if lo == hi:
            continue
        kids = byte[d][lo:hi]
        if len(row) == 1:
            cand: dict[int, int] | set[int] = moves[row[0][1]]
        else:
            cand = set()
            for _, c in row:
                cand.update(moves[c])
        if len(cand) * 4 < len(kids):  # few bytes to follow among many children: look them up
            hits = []
            for b in cand:
                i = bisect_left(kids, b)
                if i < len(kids) and kids[i] == b:
                    hits.append((i, b))
        else:
            hits = [(i, b) for i, b in enumerate(kids) if b in cand]
        for i, b in hits:
            visit(d, lo + i, tuple((s0, moves[c][b]) for s0, c in row if b in moves[c]))
        visits += len(hits)
        if visits > _NARROW_VISITS:
            return None
    table = np.full((s_n, len(behaviours)), -1, dtype=np.int32)
    pairs = [(s0, c, u) for row, u in behaviours.items() for s0, c in row]
    if pairs:
        s0s, cs, us = zip(*pairs, strict=True)
        table[list(s0s), list(us)] = cs
    return table, np.asarray(toks, dtype=np.int32), np.asarray(seqs, dtype=np.int32)


def _group_classes(classes: np.ndarray) -> np.ndarray | None:
    """The byte class of each :data:`BYTE_GROUP` label, if ``classes`` (per byte) never tells two bytes of one
    group apart; else None."""
    by_group = classes[_GROUP_FIRST]
    return by_group if np.array_equal(by_group[BYTE_GROUP], classes) else None


def _walk(dfa: ByteDFA, vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All DFA states over the candidate tokens, through the vocabulary's byte trie.

    Every trie node (a distinct token prefix) gets a *class node*: the behaviour of its prefix, i.e. the state
    it leads each DFA state to. Prefixes with the same behaviour share a class node (the trie becomes a DAG
    as wide as the number of distinct behaviours), and a node whose prefix every state rejects is dead, with
    all its descendants: the next depth visits only the children of live nodes (one contiguous range each), so
    a narrow language (digits, a few words) touches the few thousand prefixes that can start it, not the
    vocabulary. Each depth is one vectorized step over its live nodes.

    Returns ``(next_table int32[S, U], toks int32[K], seqs int32[K])``: the state after each distinct class
    sequence from each state, and the tokens with their sequence: every token some state accepts, and perhaps
    others with a column no state allows (every token not listed is never allowed).
    """
    lv = vocab.levels
    classes = dfa.classes.astype(np.intp)
    by_group = _group_classes(classes)
    if by_group is not None:  # walk the far smaller trie of group labels
        trie, classes = lv.group_trie, by_group
    else:
        trie = lv.trie
    s_n, c_n = dfa.n_states, dfa.n_classes
    # States are carried as row offsets ``state * c_n`` into the flat table, the dead state as ``dead`` (a row
    # of its own that rejects): one add and one gather per step, no masking.
    dead = s_n * c_n
    trans_flat = np.concatenate([np.where(dfa.trans >= 0, dfa.trans * c_n, dead).reshape(-1),
                                 np.full(c_n, dead, np.int32)]).astype(np.int32)
    columns: list[np.ndarray] = []
    tok_parts: list[np.ndarray] = []
    seq_parts: list[np.ndarray] = []
    n_seq = 0
    # Live nodes of the previous depth, with their class nodes (0 = dead): either the class node of every
    # node (``cn_all``, when many live: plain gathers beat range arithmetic) or the live ones only.
    # Class node ids are intp (NumPy converts any other index dtype on every fancy index: int32 keys made the
    # per-node scatters 2.5x slower), gathered with the ``take`` method (the np.take wrapper costs about a
    # microsecond a call, and a depth makes dozens of calls)
    cn_all: np.ndarray | None = np.ones(1, dtype=np.intp)  # the root: class node 1
    mostly_live = True
    live_nodes = live_cn = np.zeros(0, dtype=np.int64)
    # one row per class node: the state its prefix leads each state to (rows, not columns: gathered whole)
    node_rows = np.full((2, s_n), dead, dtype=np.int32)
    dead_row = node_rows[:1].copy()  # class node 0 of every depth (sliced to the columns kept)
    node_rows[1] = np.arange(0, dead, c_n)
    cols = np.arange(s_n)  # the states the columns of node_rows stand for
    for d in range(len(trie.parent)):
        n_d = len(trie.parent[d])
        if cn_all is not None:
            pc = cn_all.take(trie.parent[d])
            # mostly live: dead nodes keep class node 0, whose row rejects everything (cheaper than compacting)
            idx = None if mostly_live or pc.all() else pc.nonzero()[0]
            if idx is not None:
                pc = pc[idx]
            byt = trie.byte[d] if idx is None else trie.byte[d][idx]
        else:
            ptr = trie.child_ptr[d]
            idx, counts = _ranges(ptr[live_nodes], ptr[live_nodes + 1])
            pc = live_cn.repeat(counts)
            byt = trie.byte[d][idx]
        if not len(pc):
            break
        key = classes.take(byt)
        key += pc * c_n
        n_keys = node_rows.shape[0] * c_n
        present = np.zeros(n_keys, dtype=bool)
        present[key] = True
        uniq = present.nonzero()[0]
        parent, ucls = uniq // c_n, uniq % c_n
        # Prefixes that lead every state to the same place behave the same from now on: one class node.
        got = None
        if len(uniq) * len(cols) > _SPARSE_CELLS:
            got = _sparse_step(node_rows, parent, ucls, trans_flat, dead)
        if got is not None:
            live, first, inv, rows, used = got
            if not len(live):
                break
        else:
            nxt = trans_flat[node_rows[parent] + ucls[:, None]]
            alive = nxt != dead
            live = alive.any(axis=1).nonzero()[0]
            if not len(live):
                break
            rows = nxt[live]
            used = alive.any(axis=0)
        # States no prefix of this depth leads anywhere are dead below it too: drop their columns (a few dozen
        # of a schema's thousand states read the long tokens)
        if np.count_nonzero(used) * 4 < len(cols) * 3:
            rows = rows[:, used]
            cols = cols[used]
        if got is None:
            first, inv = unique_rows(rows)
            rows = rows[first]
        new_local = np.zeros(n_keys, dtype=np.intp)
        new_local[uniq[live]] = 1 + inv
        cn = new_local.take(key)
        node_rows = np.concatenate([dead_row[:, : len(cols)], rows])
        n_live = np.count_nonzero(cn)
        mostly_live = n_live * 4 >= n_d * 3
        if n_live * 8 >= n_d:  # much of this depth lives on
            if idx is None:
                cn_all = cn
            else:
                cn_all = np.zeros(n_d, dtype=np.intp)
                cn_all[idx] = cn
            # tokens that end exactly at this depth, with their node's class node; when most are live, those at
            # dead nodes keep class node 0, whose column no state allows (the builder drops it): filtering them
            # out of a quarter million tokens costs more
            ce = cn_all.take(trie.end[d])
            toks = lv.tokens[int(lv.count[d + 1]) : int(lv.count[d])]
            if np.count_nonzero(ce) * 2 < len(ce):
                good = ce > 0
                toks, ce = toks[good], ce[good]
        else:
            ok = cn.nonzero()[0]
            live_nodes = ok if idx is None else idx[ok]
            live_cn = cn[ok]
            cn_all = None
            eptr = trie.end_ptr[d]
            at, counts = _ranges(eptr[live_nodes], eptr[live_nodes + 1])
            toks = trie.end_tok[d][at]
            ce = live_cn.repeat(counts)
        if len(ce):
            seen = np.zeros(node_rows.shape[0], dtype=bool)
            seen[ce] = True
            u_nodes = seen.nonzero()[0]
            rank = np.zeros(len(seen), dtype=np.int32)  # rank among this depth's ending class nodes
            rank[u_nodes] = np.arange(n_seq, n_seq + len(u_nodes), dtype=np.int32)
            ending = node_rows[u_nodes]
            if len(cols) < s_n:
                ending = np.full((len(u_nodes), s_n), dead, np.int32)
                ending[:, cols] = node_rows[u_nodes]
            columns.append(ending)
            tok_parts.append(toks)
            seq_parts.append(rank.take(ce))
            n_seq += len(u_nodes)
    if not n_seq:
        return np.zeros((s_n, 0), np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32)
    toks = np.concatenate(tok_parts).astype(np.int32, copy=False)
    seqs = np.concatenate(seq_parts)
    # the same behaviour can end tokens of different lengths: one column per distinct behaviour
    table = np.concatenate(columns)
    first, inv = unique_rows(table)
    table = table[first]
    table = np.where(table == dead, -1, table // c_n).astype(np.int32)  # offsets back to states
    return np.ascontiguousarray(table.T), toks, inv.astype(np.int32)[seqs]


def _token_reachable(table: np.ndarray, initial: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """States reachable by tokens from ``initial`` in BFS order, plus BFS parents (state, sequence).

    Within a BFS level, new states are in ascending order, each with the first (frontier position, sequence)
    that reaches it.
    """
    s_n = table.shape[0]
    if table.size <= _SMALL_TABLE:
        return _token_reachable_lists(table, initial)
    # forward edges as CSR in (state, sequence) order: a level costs its frontier's out-edges, so long chains
    # (thousands of tiny levels) and wide levels are both cheap
    src, col = np.nonzero(table >= 0)
    dst = table[src, col].astype(np.int64)
    indptr = np.zeros(s_n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=s_n), out=indptr[1:])
    parent_state = np.full(s_n, -1, dtype=np.int64)
    parent_seq = np.full(s_n, -1, dtype=np.int64)
    seen = np.zeros(s_n, dtype=bool)
    seen[initial] = True
    order = [np.asarray([initial], dtype=np.int64)]
    frontier = order[0]
    while len(frontier):
        offs, _ = _ranges(indptr[frontier], indptr[frontier + 1])
        if not len(offs):
            break
        tgt = dst[offs]
        fresh = ~seen[tgt]
        offs, tgt = offs[fresh], tgt[fresh]
        tgt, first = np.unique(tgt, return_index=True)  # first: the earliest (frontier position, sequence)
        offs = offs[first]
        seen[tgt] = True
        parent_state[tgt] = src[offs]
        parent_seq[tgt] = col[offs]
        frontier = tgt
        if len(tgt):
            order.append(tgt)
    return np.concatenate(order), parent_state, parent_seq


def _token_reachable_lists(table: np.ndarray, initial: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_token_reachable`` over Python lists (the same order and parents)."""
    s_n = table.shape[0]
    out: list[list[tuple[int, int]]] = [[] for _ in range(s_n)]  # (sequence, target) of each state's edges
    src, col = np.nonzero(table >= 0)  # the edges only: most cells of a narrow language's table are -1
    for s, u, t in zip(src.tolist(), col.tolist(), table[src, col].tolist(), strict=True):
        out[s].append((u, t))
    parent_state = [-1] * s_n
    parent_seq = [-1] * s_n
    seen = [False] * s_n
    seen[initial] = True
    order = [initial]
    frontier = [initial]
    while frontier:
        new: list[int] = []
        for f in frontier:
            for u, t in out[f]:
                if not seen[t]:
                    seen[t] = True
                    parent_state[t] = f
                    parent_seq[t] = u
                    new.append(t)
        new.sort()
        order.extend(new)
        frontier = new
    return (np.asarray(order, dtype=np.int64), np.asarray(parent_state, dtype=np.int64),
            np.asarray(parent_seq, dtype=np.int64))


def _pending_text(state, parent_state, parent_seq, toks, seqs, vocab: Vocabulary) -> str:
    pieces = []
    while parent_state[state] >= 0:
        tok = int(toks[np.flatnonzero(seqs == parent_seq[state])].min())
        pieces.append(vocab.piece(tok))
        state = int(parent_state[state])
    return b"".join(reversed(pieces)).decode("utf-8", errors="replace")


_LIST_MASK = 256  # masks of up to this many ids are gathered over Python lists

_SMALL_TABLE = 4096  # (states x sequences) up to which the BFS passes run over Python lists


def _min_tokens_to_end(table: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Shortest token distance to an end state: one BFS over the reversed edges (held as CSR arrays), so each
    level costs its frontier's in-edges, not a scan of every unsettled row (deep chains have thousands of levels).
    """
    s_n = table.shape[0]
    if table.size <= _SMALL_TABLE:
        return _min_tokens_to_end_lists(table, end)
    src, col = np.nonzero(table >= 0)
    dst = table[src, col]
    # in-edges grouped by target; a (source, target) pair may repeat (several columns): the frontier is deduplicated
    # per level instead of the edges up front (a sort of every edge costs seconds on a million states)
    preds = src[np.argsort(dst, kind="stable")].astype(np.int32)
    indptr = np.zeros(s_n + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=s_n), out=indptr[1:])
    dist = np.where(end, 0, UNREACHABLE).astype(np.int32)
    frontier = np.flatnonzero(end)
    level = 0
    while len(frontier):
        level += 1
        offs, _ = _ranges(indptr[frontier], indptr[frontier + 1])
        cand = preds[offs]
        cand = np.unique(cand[dist[cand] == UNREACHABLE])
        dist[cand] = level
        frontier = cand
    return dist


def _min_tokens_to_end_lists(table: np.ndarray, end: np.ndarray) -> np.ndarray:
    """``_min_tokens_to_end`` over Python lists: one BFS over the reversed edges (the same shortest distances)."""
    s_n = table.shape[0]
    rev: list[list[int]] = [[] for _ in range(s_n)]
    src, col = np.nonzero(table >= 0)  # a state may reach a target by several sequences: the BFS skips repeats
    for s, t in zip(src.tolist(), table[src, col].tolist(), strict=True):
        rev[t].append(s)
    unreachable = int(UNREACHABLE)
    dist = [0 if e else unreachable for e in end.tolist()]
    frontier = [s for s in range(s_n) if dist[s] == 0]
    level = 0
    while frontier:
        level += 1
        nxt = []
        for t in frontier:
            for s in rev[t]:
                if dist[s] == unreachable:
                    dist[s] = level
                    nxt.append(s)
        frontier = nxt
    return np.asarray(dist, dtype=np.int32)


def _forced(mask_seqs, mask_final, seq_count, toks, seqs) -> np.ndarray:
    """Per mask: the single token of a non-final mask that allows exactly one token, else -1.

    ``toks``/``seqs``: the tokens some state allows and their sequence (every other token is never allowed).
    """
    counts = mask_seqs.astype(np.int64) @ seq_count
    out = np.full(len(mask_seqs), -1, dtype=np.int64)
    single = np.flatnonzero((counts == 1) & ~mask_final)
    if len(single):
        seq = np.argmax(mask_seqs[single] & (seq_count > 0)[None, :], axis=1)
        # the one token of each such sequence (a sequence of count 1)
        tok_of = np.full(len(seq_count), -1, dtype=np.int64)
        hit = np.isin(seqs, seq)
        tok_of[seqs[hit]] = toks[hit]
        out[single] = tok_of[seq]
    return out
