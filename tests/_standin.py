"""Test stand-ins for the compiler's TokenAutomaton, built by brute force from a byte DFA (small vocabularies only).

``ByteDFA`` is a dict-based DFA over bytes; ``StandInAutomaton`` is its token-level product with a vocabulary,
implementing the TokenAutomaton interface the decoders use (allowed / step / step_many / is_final /
is_stopped / mask_id / masks / min_tokens_to_end / forced).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ByteDFA:
    """Transitions ``delta[state][byte] -> state`` (missing = reject), start state 0, ``finals``."""

    delta: dict[int, dict[int, int]]
    finals: set[int]
    stopped: set[int] = field(default_factory=set)

    def run(self, state: int, data: bytes) -> int:
        for b in data:
            state = self.delta.get(state, {}).get(b, -1)
            if state < 0:
                return -1
        return state


def dfa_from_predicate(accepts_byte: Callable[[int, int], int | None], n_states: int, finals: Iterable[int]) -> ByteDFA:
    delta: dict[int, dict[int, int]] = {}
    for s in range(n_states):
        row = {}
        for b in range(256):
            t = accepts_byte(s, b)
            if t is not None:
                row[b] = t
        delta[s] = row
    return ByteDFA(delta, set(finals))


def dfa_literals(words: Sequence[bytes]) -> ByteDFA:
    """A trie DFA accepting exactly ``words``."""
    delta: dict[int, dict[int, int]] = {0: {}}
    finals = set()
    for w in words:
        s = 0
        for b in w:
            nxt = delta[s].get(b)
            if nxt is None:
                nxt = len(delta)
                delta[nxt] = {}
                delta[s][b] = nxt
            s = nxt
        finals.add(s)
    return ByteDFA(delta, finals)


def dfa_int() -> ByteDFA:
    """`` ?[0-9]+``."""
    digits = set(b"0123456789")
    return dfa_from_predicate(
        lambda s, b: (1 if s == 0 and b == 32 else 2 if b in digits else None), 3, [2]
    )


def dfa_digits(n: int) -> ByteDFA:
    """``[0-9]{n}``."""
    digits = set(b"0123456789")
    return dfa_from_predicate(lambda s, b: s + 1 if s < n and b in digits else None, n + 1, [n])


def dfa_len_lt(n: int) -> ByteDFA:
    """Any bytes, fewer than ``n`` of them."""
    return dfa_from_predicate(lambda s, b: s + 1 if s + 1 < n else None, n, range(n))


def dfa_until(stop: int) -> ByteDFA:
    """``[^s]*s`` for one byte s; the state after s is 'stopped'."""
    d = dfa_from_predicate(lambda s, b: (1 if b == stop else 0) if s == 0 else None, 2, [1])
    d.stopped = {1}
    return d


class StandInAutomaton:
    """Token automaton = product of a byte DFA with a vocabulary (brute force, for tests)."""

    def __init__(
        self,
        dfa: ByteDFA,
        pieces: Sequence[bytes],
        eos_id: int,
        special_ids: Iterable[int] = (),
        exclude: Iterable[int] = (),
    ) -> None:
        self.eos_id = eos_id
        self.unconstrained = False
        V = len(pieces)
        banned = set(special_ids) | set(exclude) | {eos_id}
        # Explore reachable DFA states through whole tokens.
        index = {0: 0}
        dstates = [0]
        trans: list[dict[int, int]] = []
        k = 0
        while k < len(dstates):
            ds = dstates[k]
            row = {}
            for t in range(V):
                if t in banned or not pieces[t]:
                    continue
                if ds in dfa.stopped:
                    continue
                nd = dfa.run(ds, pieces[t])
                if nd < 0:
                    continue
                if nd not in index:
                    index[nd] = len(dstates)
                    dstates.append(nd)
                row[t] = index[nd]
            trans.append(row)
            k += 1
        S = len(dstates)
        self.initial = 0
        self._trans = trans
        self._final = np.array([d in dfa.finals for d in dstates])
        self._stopped = np.array([d in dfa.stopped for d in dstates])
        # Tokens-to-end by fixpoint iteration (Bellman-Ford on a tiny graph).
        inf = 1 << 30
        mte = np.where(self._final, 0, inf).astype(np.int64)
        changed = True
        while changed:
            changed = False
            for s in range(S):
                for nxt in trans[s].values():
                    if mte[nxt] + 1 < mte[s]:
                        mte[s] = mte[nxt] + 1
                        changed = True
        self.min_tokens_to_end = np.minimum(mte, inf).astype(np.int32)
        # prune: a token is allowed only if the value can still be completed after it (sound and complete)
        for s in range(S):
            trans[s] = {t: nxt for t, nxt in trans[s].items() if mte[nxt] < inf}
        self._allowed = []
        for s in range(S):
            ids = sorted(trans[s]) + ([eos_id] if self._final[s] and not self._stopped[s] else [])
            self._allowed.append(np.array(sorted(ids), np.int32))
        keys: dict[bytes, int] = {}
        self.masks: list[np.ndarray] = []
        self._mask_id = []
        for a in self._allowed:
            key = a.tobytes()
            if key not in keys:
                keys[key] = len(self.masks)
                self.masks.append(a)
            self._mask_id.append(keys[key])
        self.n_states = S
        self.allowed_calls = 0

    def allowed(self, state: int) -> np.ndarray:
        self.allowed_calls += 1
        return self._allowed[state]

    def step(self, state: int, tok: int) -> int:
        return self._trans[state].get(int(tok), -1)

    def step_many(self, states: np.ndarray, toks: np.ndarray) -> np.ndarray:
        return np.array([self.step(int(s), int(t)) for s, t in zip(states, toks, strict=True)], np.int64)

    def is_final(self, state: int) -> bool:
        return bool(self._final[state])

    def is_stopped(self, state: int) -> bool:
        return bool(self._stopped[state])

    def mask_id(self, state: int) -> int:
        return self._mask_id[state]

    def forced(self, state: int) -> int:
        a = self._allowed[state]
        if len(a) == 1 and not self._final[state]:
            return int(a[0])
        return -1

    def accepts(self, tokens: Sequence[int]) -> bool:
        s = self.initial
        for t in tokens:
            s = self.step(s, t)
            if s < 0:
                return False
        return self.is_final(s)


class Unconstrained:
    """The interface's unconstrained automaton (every token and EOS always allowed)."""

    unconstrained = True
    initial = 0

    def __init__(self, eos_id: int) -> None:
        self.eos_id = eos_id


def regex_ok(pattern: str, value: bytes) -> bool:
    return re.fullmatch(pattern.encode(), value, flags=re.S) is not None
