"""Allowed-token sets and the per-automaton tables that cache them.

A :class:`Mask` is one distinct allowed set of an automaton: sparse sorted ids, or a :class:`Dense` set (membership
by binary search, the complement and a -inf bias row built only when first needed) when it covers more than a
quarter of the vocabulary. :class:`MaskTables` holds everything the decoder derives from one automaton (masks by
mask id, forced-text runs, token-budget and healing tables), so a state's allowed set is a table lookup.
Vocabulary-wide tables (first byte and length of every token, the piece -> id index) are cached per vocabulary.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = ["INF_TOKENS", "UNCONSTRAINED_TABLES", "Dense", "Mask", "MaskTables", "piece_index", "tables_of", "token_info"]

INF_TOKENS = 1 << 30  # min_tokens_to_end at or above this (or negative) means "cannot end"

class Dense:
    """A large allowed set: membership by binary search, its complement built only when first needed."""

    __slots__ = ("V", "ids", "_comp", "_bias")

    def __init__(self, V: int, ids: np.ndarray | None = None, comp: np.ndarray | None = None) -> None:
        self.V = V
        self.ids = ids  # sorted allowed ids (None when only the complement is known)
        self._comp = comp
        self._bias: np.ndarray | None = None

    @property
    def bias(self) -> np.ndarray:
        """float32[V]: 0 where allowed, -inf elsewhere (built on the first rejected argmax).

        Adding it to a logits row and taking the argmax is two streaming passes (~75 µs on 262k logits),
        where scattering -inf through a 100k-id complement into a copy costs 350-600 µs.
        """
        if self._bias is None:
            bias = np.zeros(self.V, np.float32)
            bias[self.comp] = -np.inf
            self._bias = bias
        return self._bias

    def contains(self, t: int) -> bool:
        if self.ids is not None:
            i = int(self.ids.searchsorted(np.int32(t)))
            return i < len(self.ids) and int(self.ids[i]) == t
        c = self._comp
        i = int(c.searchsorted(np.int32(t)))
        return not (i < len(c) and int(c[i]) == t)

    @property
    def comp(self) -> np.ndarray:
        """Sorted disallowed ids (int32)."""
        if self._comp is None:
            keep = np.ones(self.V, bool)
            keep[self.ids] = False
            self._comp = np.flatnonzero(keep).astype(np.int32)
        return self._comp

    def all_ids(self) -> np.ndarray:
        if self.ids is None:
            keep = np.ones(self.V, bool)
            keep[self._comp] = False
            self.ids = np.flatnonzero(keep).astype(np.int32)
        return self.ids


class Mask:
    """One distinct allowed set of an automaton: sparse ids, or a :class:`Dense` when large."""

    __slots__ = ("ids", "dense", "has_eos", "only_eos", "_noeos")

    def __init__(self, ids: np.ndarray, V: int, eos: int) -> None:
        # intp ids: NumPy converts int32 indices on every gather (65 µs vs 33 µs for 33k ids on 262k logits)
        ids = np.asarray(ids, dtype=np.intp)
        self.ids = ids
        # above a quarter of the vocabulary, a gather costs more than the argmax-first check plus a bias pass
        self.dense = Dense(V, ids) if len(ids) > V // 4 else None
        self.has_eos = bool(np.any(ids == eos))
        self.only_eos = self.has_eos and len(ids) == 1
        self._noeos: Mask | None = None

    def without_eos(self, V: int, eos: int) -> Mask:
        if self._noeos is None:
            self._noeos = Mask(self.ids[self.ids != eos], V, eos)
        return self._noeos


class MaskTables:
    """Per-automaton caches: allowed sets by (mask id, final), forced-text runs by state."""

    __slots__ = ("masks", "runs", "budget", "heals", "warm", "stopping", "premin", "stops_only")

    def __init__(self) -> None:
        self.masks: dict[tuple[int, bool], Mask] = {}
        self.runs: dict[int, tuple[list[int], int] | None] = {}
        # (state, tokens left after this one (capped), EOS excluded) -> allowed ids under the token budget
        self.budget: dict[tuple[int, int, bool], np.ndarray] = {}
        # healed prefix -> (sorted first-token ids, the automaton state after each, whether each carries value
        # bytes past the prefix)
        self.heals: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.warm = False  # every distinct mask built (see HoleTables.warm_up)
        self.stopping: dict[int, np.ndarray] = {}  # state -> sorted ids of the tokens that enter a stopped state
        # (state, tokens left after this one (capped) or None) -> allowed set before min_tokens, stops blocked
        self.premin: dict[tuple[int, int | None], tuple[np.ndarray | None, Dense | None]] = {}
        self.stops_only: dict[tuple[tuple[bytes, bool], ...], Any] = {}  # see _without_stops


UNCONSTRAINED_TABLES = MaskTables()  # heal tables of unconstrained holes (keyed by prefix; vocabulary-specific below)
_AUTO_CACHE: weakref.WeakKeyDictionary[Any, MaskTables] = weakref.WeakKeyDictionary()
_AUTO_LRU: OrderedDict[int, tuple[Any, MaskTables]] = OrderedDict()
_AUTO_LRU_SIZE = 64


def tables_of(automaton: Any) -> MaskTables:
    try:
        cache = _AUTO_CACHE.get(automaton)
        if cache is None:
            cache = MaskTables()
            _AUTO_CACHE[automaton] = cache
        return cache
    except TypeError:  # not weak-referenceable (e.g. a __slots__ class)
        pass
    entry = _AUTO_LRU.get(id(automaton))
    if entry is not None and entry[0] is automaton:
        _AUTO_LRU.move_to_end(id(automaton))
        return entry[1]
    cache = MaskTables()
    _AUTO_LRU[id(automaton)] = (automaton, cache)
    while len(_AUTO_LRU) > _AUTO_LRU_SIZE:
        _AUTO_LRU.popitem(last=False)
    return cache


# First byte (-1 if empty) and byte length of every token, per vocabulary (by identity; a few entries).
_TOKEN_INFO: OrderedDict[int, tuple[Any, tuple[np.ndarray, np.ndarray]]] = OrderedDict()


def token_info(backend: Any) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        v = backend.vocabulary
        offsets, buffer = v.offsets, v.buffer
    except (ImportError, AttributeError):
        return None  # no vocabulary arrays: forced-text runs are simply not used
    entry = _TOKEN_INFO.get(id(v))
    if entry is not None and entry[0] is v:
        return entry[1]
    lengths = np.diff(offsets)
    first = np.full(len(lengths), -1, np.int16)
    nz = lengths > 0
    first[nz] = buffer[offsets[:-1][nz]]
    _TOKEN_INFO[id(v)] = (v, (first, lengths))
    while len(_TOKEN_INFO) > 4:
        _TOKEN_INFO.popitem(last=False)
    return first, lengths


_PIECE_INDEX: OrderedDict[int, tuple[Any, tuple[bytes, dict[bytes, int]]]] = OrderedDict()


def piece_index(v: Any) -> tuple[bytes, dict[bytes, int]]:
    """The vocabulary's byte buffer and a ``piece bytes -> token id`` map (built once per vocabulary)."""
    entry = _PIECE_INDEX.get(id(v))
    if entry is not None and entry[0] is v:
        return entry[1]
    raw = v.buffer.tobytes()
    offs = v.offsets.tolist()
    never = v.never.tolist()
    index: dict[bytes, int] = {}
    for t in range(len(offs) - 2, -1, -1):  # descending, so the lowest id wins among equal pieces
        if not never[t]:
            index[raw[offs[t] : offs[t + 1]]] = t
    _PIECE_INDEX[id(v)] = (v, (raw, index))
    while len(_PIECE_INDEX) > 4:
        _PIECE_INDEX.popitem(last=False)
    return raw, index

