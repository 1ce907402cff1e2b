"""What one hole needs at every step of every branch: its automaton, cached masks, stops and token window.

:class:`HoleTables` answers "which tokens may come next" for a state and a count of value tokens, through the
automaton's cached :class:`~.masks.MaskTables`: the state's mask, without EOS before ``min_tokens``, filtered to the
tokens after which the value can still end within ``max_tokens``, and with stop-entering tokens blocked before the
minimum where the automaton contains its stops. It also builds the healed first-token table and the runs of text
the automaton forces.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from lmqc.errors import DecodeError

from .masks import INF_TOKENS, Dense, Mask, array_bytes, piece_ids, tables_of, unconstrained_tables
from .stops import can_stop, without_stops

if TYPE_CHECKING:
    from .request import HoleSpec

__all__ = ["HoleTables"]

_UNCON_SETS: OrderedDict[tuple, tuple[Dense, Dense]] = OrderedDict()


def _unconstrained_sets(n_vocab: int, eos: int, special: np.ndarray, eog: np.ndarray) -> tuple[Dense, Dense]:
    """The allowed sets of an unconstrained hole: every token but the control ones (other end-of-generation
    tokens included: they end the hole like EOS), and the same without EOS and those tokens (before
    ``min_tokens``). Shared by every hole over the same vocabulary (the last few vocabularies are kept), with
    the bitmaps and bias rows they come to build."""
    key = (n_vocab, eos, special.tobytes(), eog.tobytes())
    got = _UNCON_SETS.get(key)
    if got is None:
        drop = np.zeros(n_vocab, bool)  # a pass over the vocabulary: np.setdiff1d/union1d cost ~0.3 ms each
        drop[special] = True
        drop[eos] = False
        drop[eog] = False
        uncon = np.flatnonzero(drop).astype(np.int32)
        drop[eog] = True
        drop[eos] = True
        got = _UNCON_SETS[key] = (Dense(n_vocab, comp=uncon), Dense(n_vocab, comp=np.flatnonzero(drop).astype(np.int32)))
        while len(_UNCON_SETS) > 8:
            _UNCON_SETS.popitem(last=False)
    else:
        _UNCON_SETS.move_to_end(key)
    return got


class HoleTables:
    """What one branch's hole needs at every step: automaton, cached masks, stops, token window."""

    def __init__(
        self, spec: HoleSpec, n_vocab: int, eos: int, special: np.ndarray, eog: np.ndarray | None = None
    ) -> None:
        eog = np.zeros(0, np.int32) if eog is None else eog
        automaton = spec.automaton
        self.spec = spec
        self.unconstrained = spec.unconstrained
        self.eos = eos
        self.V = n_vocab
        self.min_tokens = spec.min_tokens
        self.max_tokens = spec.max_tokens
        self.stops = spec.stops
        self.maxphr = max((len(p) for p, _ in self.stops), default=0)
        # Stop phrases are ignored until the min_tokens-th value token (module docstring). The runtime's own stop
        # search simply starts then (Sequencer.check_end). A compiled automaton contains the stops too: a phrase
        # takes it to its absorbing stopped state, after which no token is accepted, and it cannot say which
        # state the text would be in had the phrase not counted. So, with a token minimum:
        # * an automaton that constrains nothing but these stop phrases (the compiler's, see without_stops) is
        #   replaced by the compiler's automaton of any text (valid UTF-8, no stops): the runtime's stop search
        #   then implements the stops exactly;
        # * any other automaton that can stop keeps its stops blocked before the minimum instead (``block_stops``:
        #   a token that would enter a stopped state is not allowed while the value would still have fewer than
        #   min_tokens tokens after it). Sound, but stricter than LMQL: the phrase cannot occur before the
        #   minimum. Ignoring it there exactly needs the compiler to emit the language without its stops too.
        self.block_stops = False
        if self.min_tokens > 0 and not self.unconstrained and can_stop(automaton):
            free = without_stops(automaton, self.stops) if self.stops else None
            if free is not None:
                automaton = free
            else:
                self.block_stops = True
        self.a = automaton
        # Unconstrained: everything but control tokens; other end-of-generation tokens (e.g. <end_of_turn>)
        # end the hole like EOS.
        self.uncon, self.uncon_noeos = _unconstrained_sets(n_vocab, eos, special, eog)
        if self.unconstrained:
            self.masks: dict[tuple[int, bool], Mask] = {}
            self.cache = None  # heal tables come from unconstrained_tables(vocabulary)
            self.mte = self.mte_need = None
            self.mte_max = 0
        else:
            if automaton.eos_id != eos:
                raise DecodeError(f"automaton built for EOS id {automaton.eos_id}, but the model's EOS is {eos}")
            self.cache = tables_of(automaton)
            self.masks = self.cache.masks
            # ``mte`` prunes tokens near the end of a budget; ``mte_need`` decides that a budget is too small. They
            # are the same exact distances, except for an automaton that only bounds them (compiler.lazy): it
            # prunes with an upper bound (``tokens_to_finish``: the value can always end in time) and refuses
            # only below a lower bound
            def tokens(a: Any) -> np.ndarray:  # INF_TOKENS where no end is reachable
                a = np.asarray(a)
                return np.where((a < 0) | (a >= INF_TOKENS), INF_TOKENS, a).astype(np.int64)

            self.mte_need = tokens(automaton.min_tokens_to_end)
            # (bounds are only read under a budget; a large lazy automaton's take a second to compute)
            finish = getattr(automaton, "tokens_to_finish", None) if self.max_tokens is not None else None
            self.mte = self.mte_need if finish is None else tokens(finish)
            finite = self.mte[self.mte < INF_TOKENS]
            self.mte_max = int(finite.max()) if len(finite) else 0
            self.warm_up(automaton)
        # From ``min_tokens`` value tokens on (EOS allowed, stops not blocked) until the budget comes near, a step's
        # allowed set is its state's mask as is: answered from a dict (most steps; the checks cost ~1 µs)
        self._plain_from = self.min_tokens
        self._plain_until = INF_TOKENS if self.max_tokens is None else self.max_tokens - self.mte_max
        self._plain: dict[int, tuple[np.ndarray | None, Dense | None]] = {}

    def warm_up(self, automaton: Any) -> None:
        """Build every distinct mask once, when the hole starts, instead of on its first visit mid-decode.

        Cached per automaton, so this is paid once per process (tens of ms for ~40 masks on 262k tokens).
        """
        mask_of_state = getattr(automaton, "mask_of_state", None)
        if mask_of_state is None or getattr(self.cache, "warm", False):
            return
        _, first = np.unique(np.asarray(mask_of_state), return_index=True)
        if len(first) <= 256:
            for state in first.tolist():
                self.mask(state)
                if automaton.is_final(state) and self.min_tokens:
                    self.mask(state).without_eos(self.V, self.eos)
        self.cache.warm = True

    def mask(self, state: int) -> Mask:
        mid = self.a.mask_id(state)
        final = bool(self.a.is_final(state))
        key = (mid, final)
        m = self.masks.get(key)
        if m is None:
            seqs = getattr(self.a, "mask_sequences", None)
            size = self.a.mask_size(mid) if seqs is not None else -1
            if size > self.V // 4:  # dense: membership by the automaton's tables, nothing vocabulary-wide built
                allowed, tok_seq, final = seqs(mid)
                m = Mask.from_sequences(allowed, tok_seq, self.eos, final, size, self.V)
            else:  # EOS is allowed exactly in final states
                m = Mask(np.asarray(self.a.allowed(state), dtype=np.int32), self.V, self.eos, has_eos=final)
            self.cache.put(self.masks, key, m, m.nbytes)
        return m

    def forced_run(self, state: int, info: tuple[np.ndarray, np.ndarray], backend: Any) -> tuple[list[int], int] | None:
        """Tokens of the text the automaton forces from ``state``, and the state after them (cached per state).

        The next byte is forced when every allowed token starts with it (a byte-level vocabulary has a
        one-byte token for every byte the language may take next, so this is exact). The forced bytes are
        tokenized as the model would tokenize them and checked against the automaton; ``None`` if nothing
        is forced or the tokenization is not accepted.
        """
        runs = self.cache.runs
        if state in runs:
            return runs[state]
        first, lengths = info
        a = self.a
        text = bytearray()
        s = state
        while len(text) < 256 and not a.is_final(s) and not a.is_stopped(s):
            m = self.mask(s)
            if m.ids is None or not 0 < len(m.ids) <= 1024:
                break
            fb = first[m.ids]
            c = int(fb[0])
            if c < 0 or not bool(np.all(fb == c)):
                break
            single = m.ids[lengths[m.ids] == 1]
            nxt = a.step(s, int(single[0])) if len(single) else -1
            if nxt < 0:
                break
            text.append(c)
            s = nxt
        result = None
        if text:
            toks = backend.tokenize(bytes(text), bos=False)
            if toks and backend.detokenize(toks) == text:
                cur = state
                for t in toks:
                    cur = a.step(cur, t)
                    if cur < 0:
                        break
                if cur >= 0:
                    result = (toks, cur)
        self.cache.put(runs, state, result, 64 + 8 * len(result[0]) if result else 64)
        return result

    def heal_table(self, h: bytes, backend: Any) -> tuple[np.ndarray, np.ndarray]:
        """First tokens of a healed hole: pieces ``h + rest`` with ``rest`` empty or a token the automaton
        allows at its start, and the automaton state after ``rest`` (cached per prefix).

        Returns ``(ids int32[K] sorted, next_state int64[K], carries int64[K])``: ``carries`` is 1 for a piece
        with bytes past ``h`` (a value token) and 0 for a piece equal to ``h`` (see :meth:`.sequences.Sequencer.push`).
        """
        cache = unconstrained_tables(backend.vocabulary) if self.unconstrained else self.cache
        hit = cache.heals.get(h)
        if hit is not None:
            return hit
        v = backend.vocabulary
        lengths = np.diff(v.offsets)
        cand = np.flatnonzero((lengths >= len(h)) & ~v.never)
        for k, byte in enumerate(h):  # vectorized prefix test, one byte column at a time
            cand = cand[v.buffer[v.offsets[cand] + k] == byte]
        if self.unconstrained:
            ids = cand.astype(np.int32)
            nxt = np.full(len(ids), -1, np.int64)
        else:
            start = int(self.a.initial)
            offs = np.asarray(v.offsets, np.int64)
            rest_id = piece_ids(v, offs[cand] + len(h), lengths[cand] - len(h))
            empty = lengths[cand] == len(h)
            rest_id[empty] = -1
            ok_first = np.zeros(self.V, bool)
            first_ids = self.mask(start).ids
            ok_first[first_ids[first_ids != self.eos]] = True
            ok = empty | ((rest_id >= 0) & ok_first[np.maximum(rest_id, 0)])
            ids = cand[ok].astype(np.int32)
            rid = rest_id[ok]
            nxt = np.full(len(ids), start, np.int64)
            body = rid >= 0
            if body.any():
                nxt[body] = np.asarray(self.a.step_many(np.full(int(body.sum()), start, np.int64), rid[body]))
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        carries = (lengths[ids] > len(h)).astype(np.int64)
        hit = (ids, nxt[order], carries)
        return cache.put(cache.heals, h, hit, array_bytes(*hit))

    def allowed(self, state: int, n: int) -> tuple[np.ndarray | None, Dense | None]:
        """Allowed set after ``n`` value tokens: ``(ids, None)`` (sparse, sorted) or ``(None, dense)``."""
        if self._plain_from <= n < self._plain_until:
            hit = self._plain.get(state)
            if hit is None:
                hit = self._plain[state] = self._allowed(state, n)
            return hit
        ids, dense = self._allowed(state, n)
        if self.block_stops and n + 1 < self.min_tokens:
            # before the minimum, no token that would enter a stopped state (see __init__)
            left = None if self.max_tokens is None else min(self.max_tokens - n - 1, self.mte_max)
            key = (state, left)
            hit = self.cache.premin.get(key)
            if hit is None:
                stopping = self.stopping(state)
                if not len(stopping):
                    hit = (ids, dense)
                else:
                    base = dense.all_ids() if ids is None else ids
                    hit = (base[~np.isin(base, stopping)], None)
                self.cache.put(self.cache.premin, key, hit, array_bytes(*hit))
            return hit
        return ids, dense

    def stopping(self, state: int) -> np.ndarray:
        """Sorted ids of the tokens that take the automaton from ``state`` to a stopped state (cached)."""
        hit = self.cache.stopping.get(state)
        if hit is None:
            m = self.mask(state)
            body = m.ids[m.ids != self.eos]
            nxt = np.asarray(self.a.step_many(np.full(len(body), state, np.int64), body))
            hit = np.sort(body[self.stopped(nxt)]).astype(np.int32)
            self.cache.put(self.cache.stopping, state, hit, hit.nbytes)
        return hit

    def stopped(self, states: np.ndarray) -> np.ndarray:
        """bool per automaton state (-1 for a rejected step is not stopped)."""
        states = np.asarray(states, np.int64)
        out = np.zeros(len(states), bool)
        ok = states >= 0
        stopped = getattr(self.a, "stopped", None)
        if isinstance(stopped, np.ndarray):
            out[ok] = stopped[states[ok]]
        else:
            uniq = np.unique(states[ok])
            flag = {int(u): self.a.is_stopped(int(u)) for u in uniq}
            out[ok] = [flag[int(u)] for u in states[ok]]
        return out

    def _allowed(self, state: int, n: int) -> tuple[np.ndarray | None, Dense | None]:
        no_eos = n < self.min_tokens
        if self.unconstrained:
            return None, (self.uncon_noeos if no_eos else self.uncon)
        m = self.mask(state)
        if no_eos and m.has_eos:
            m = m.without_eos(self.V, self.eos)
        if self.max_tokens is not None and self.max_tokens - n - 1 < self.mte_max:
            # Near the end of the budget: keep only tokens after which the value can still end in time.
            left = self.max_tokens - n - 1
            key = (state, left, no_eos)
            ids = self.cache.budget.get(key)
            if ids is None:
                ids = m.ids
                body = ids[ids != self.eos] if m.has_eos else ids
                if len(body):
                    nxt = np.asarray(self.a.step_many(np.full(len(body), state, np.int64), body))
                    ok = nxt >= 0
                    ok[ok] = self.mte[nxt[ok]] <= left
                    body = body[ok]
                if m.has_eos:
                    body = np.sort(np.concatenate([body, np.array([self.eos], np.int32)]))
                ids = body.astype(np.int32, copy=False)
                self.cache.put(self.cache.budget, key, ids, ids.nbytes)
            return ids, None
        if m.dense is not None:
            return None, m.dense
        return m.ids, None
