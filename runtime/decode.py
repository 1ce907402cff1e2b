"""Constrained decoding of one hole for a batch of branches, and option scoring for ``distribution``.

Entry points
------------
:func:`decode_hole` fills one hole for B branches (contexts) at once with ``argmax``, ``sample`` or ``beam``.
All live sequences advance together: one batched :meth:`Backend.eval` call per step, never one per sequence.
:func:`score_options` gives the log-probability of each option of a ``distribution`` clause in one call.
:class:`HoleRun` is the step-wise engine under :func:`decode_hole` (argmax and sample): ``pending()`` /
:func:`eval_seqs` / ``apply()`` per step, so ``lmqc serve`` can advance the holes of many requests with one
batched evaluation per step through the same code.

Per step and per live sequence the constraint work is a table lookup: the automaton state's mask id selects a
cached allowed set. Sparse sets (at most half the vocabulary) are applied by gathering the allowed logits;
dense ones through their complement, after first checking whether the unconstrained argmax is allowed anyway.
Unconstrained holes are dense sets whose complement is the backend's ``special_ids`` (control tokens and
pieces that print nothing), so they cost one argmax plus a binary search.

Forced tokens (the automaton allows exactly one token and the value cannot end) are appended without looking
at the model; the whole run reaches the model as part of the next step's batch. For argmax and sample without
scoring, a state whose only way on is end-of-sequence ends the hole without a model call.

Token window
------------
``min_tokens``/``max_tokens`` (``len(TOKENS(X))`` bounds) count *value tokens*. A token healed at the
prompt/hole boundary that only re-spells the prompt's last token counts zero (see :meth:`_Decoder.push`).
Stop phrases follow LMQL: they end generation only once the other constraints allow it, so while fewer than
``min_tokens`` value tokens exist a stop phrase is ignored (its text stays in the value and generation goes on);
the first occurrence that completes in a token that brings the count to ``min_tokens`` or beyond ends the hole
(see :meth:`_Decoder._check_end` and :class:`_Hole` for how automata that contain the stops are handled).

Scores
------
Beam search ranks by the model's full log-softmax (LMQL-like: the mask does not renormalize scores), summed
over every generated token including forced ones and EOS. Sampling draws from the distribution renormalized
over the allowed tokens (after temperature, top-k, top-p). Scoring costs a log-sum-exp over the vocabulary per
step (and logit rows for forced runs), so it is on by default only for beam search (``score=``).
"""

from __future__ import annotations

import bisect
import math
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lmqc.errors import DecodeError

from .backend import Backend

__all__ = [
    "Argmax",
    "Beam",
    "Completion",
    "HoleRun",
    "Sample",
    "Strategy",
    "TokenAutomatonLike",
    "decode_hole",
    "eval_seqs",
    "parse_strategy",
    "score_options",
]

_INF_TOKENS = 1 << 30  # min_tokens_to_end at or above this (or negative) means "cannot end"


class TokenAutomatonLike(Protocol):
    """The part of ``lmqc.compiler.automaton.TokenAutomaton`` the decoders use."""

    initial: int
    unconstrained: bool
    eos_id: int
    min_tokens_to_end: np.ndarray

    def allowed(self, state: int) -> np.ndarray: ...
    def step(self, state: int, token: int) -> int: ...
    def step_many(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray: ...
    def is_final(self, state: int) -> bool: ...
    def is_stopped(self, state: int) -> bool: ...
    def mask_id(self, state: int) -> int: ...
    def forced(self, state: int) -> int: ...


# -- strategies ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Argmax:
    """Greedy decoding: the most likely allowed token at every step."""


@dataclass(frozen=True, slots=True)
class Sample:
    """Ancestral sampling from the allowed tokens, renormalized after temperature, ``top_k`` and ``top_p``.

    ``top_k=0`` and ``top_p=1.0`` disable those filters; ``temperature=0`` is argmax.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise DecodeError(f"sample temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise DecodeError(f"sample top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise DecodeError(f"sample top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True, slots=True)
class Beam:
    """Beam search keeping the ``n`` best sequences by total log-probability; finished ones compete too."""

    n: int = 2

    def __post_init__(self) -> None:
        if self.n < 1:
            raise DecodeError(f"beam width must be >= 1, got {self.n}")


Strategy = Argmax | Sample | Beam


def parse_strategy(name: str, **params: Any) -> Strategy:
    """Build a strategy from a decoder name and its keyword arguments (``n``, ``temperature``, ...).

    Parameters not about token choice (``n`` for sample, ``seed``, ``max_len``) are ignored here; the caller
    replicates contexts for ``sample(n=...)`` and creates the generator from ``seed``.
    """
    if name == "argmax":
        return Argmax()
    if name == "sample":
        return Sample(
            temperature=float(params.get("temperature", 1.0)),
            top_k=int(params.get("top_k", 0) or 0),
            top_p=float(params.get("top_p", 1.0)),
        )
    if name in ("beam", "beam_search"):
        return Beam(n=int(params.get("n", 2)))
    raise DecodeError(f"unknown decoder {name!r}: use argmax, sample or beam")


# -- results -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Completion:
    """One filled hole.

    Attributes
    ----------
    parent : int
        Index of the branch (input context) this completion extends.
    tokens : list[int]
        Generated token ids, as generated (forced ones included, EOS excluded; a token crossing a stop phrase
        is kept here even though ``value`` is cut inside it; a healed first token is kept too, even one that
        only re-spells the prompt's last token and so is not a value token of ``min_tokens``/``max_tokens``).
    value : bytes
        The value: generated bytes, cut at the first stop phrase (``STOPS_AT`` keeps the phrase,
        ``STOPS_BEFORE`` drops it).
    context : list[int]
        The context to continue from: the input context plus the value's tokens. When the cut falls inside a
        token (or before it), the tokens past the cut are dropped and the kept bytes of a partly kept token are
        re-tokenized, so the context always detokenizes to prompt + value.
    logprob : float
        Sum of the model's log-probabilities (full log-softmax) of the generated tokens (and of EOS if the
        hole ended with it); NaN when the decode ran without scoring.
    score : float
        ``logprob`` plus the branch's incoming score (beam ranking key).
    ending : str
        ``"eos"`` (end of sequence, or the automaton allowed nothing but ending), ``"stop"`` (a stop phrase),
        ``"max_tokens"`` (the hole's token budget is used up), ``"max_len"`` (the context reached ``max_len``
        or the model's context size; the value may be incomplete).
    state : int
        Final automaton state (-1 for unconstrained holes).
    """

    parent: int
    tokens: list[int]
    value: bytes
    context: list[int]
    logprob: float
    score: float
    ending: str
    state: int = -1

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        """``value`` decoded as UTF-8 (invalid bytes, e.g. a cut multi-byte character, become U+FFFD)."""
        return self.value.decode("utf-8", errors="replace")


# -- per-hole tables -----------------------------------------------------------------------------------------


class _Dense:
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


class _Mask:
    """One distinct allowed set of an automaton: sparse ids, or a :class:`_Dense` when large."""

    __slots__ = ("ids", "dense", "has_eos", "only_eos", "_noeos")

    def __init__(self, ids: np.ndarray, V: int, eos: int) -> None:
        # intp ids: NumPy converts int32 indices on every gather (65 µs vs 33 µs for 33k ids on 262k logits)
        ids = np.asarray(ids, dtype=np.intp)
        self.ids = ids
        # above a quarter of the vocabulary, a gather costs more than the argmax-first check plus a bias pass
        self.dense = _Dense(V, ids) if len(ids) > V // 4 else None
        self.has_eos = bool(np.any(ids == eos))
        self.only_eos = self.has_eos and len(ids) == 1
        self._noeos: _Mask | None = None

    def without_eos(self, V: int, eos: int) -> _Mask:
        if self._noeos is None:
            self._noeos = _Mask(self.ids[self.ids != eos], V, eos)
        return self._noeos


class _AutoCache:
    """Per-automaton caches: allowed sets by (mask id, final), forced-text runs by state."""

    __slots__ = ("masks", "runs", "budget", "heals", "warm", "stopping", "premin", "stops_only")

    def __init__(self) -> None:
        self.masks: dict[tuple[int, bool], _Mask] = {}
        self.runs: dict[int, tuple[list[int], int] | None] = {}
        # (state, tokens left after this one (capped), EOS excluded) -> allowed ids under the token budget
        self.budget: dict[tuple[int, int, bool], np.ndarray] = {}
        # healed prefix -> (sorted first-token ids, the automaton state after each, whether each carries value
        # bytes past the prefix)
        self.heals: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.warm = False  # every distinct mask built (see _Hole._warm)
        self.stopping: dict[int, np.ndarray] = {}  # state -> sorted ids of the tokens that enter a stopped state
        # (state, tokens left after this one (capped) or None) -> allowed set before min_tokens, stops blocked
        self.premin: dict[tuple[int, int | None], tuple[np.ndarray | None, _Dense | None]] = {}
        self.stops_only: dict[tuple[tuple[bytes, bool], ...], Any] = {}  # see _without_stops


_UNCON_CACHE = _AutoCache()  # heal tables of unconstrained holes (keyed by prefix; vocabulary-specific below)
_AUTO_CACHE: weakref.WeakKeyDictionary[Any, _AutoCache] = weakref.WeakKeyDictionary()
_AUTO_LRU: OrderedDict[int, tuple[Any, _AutoCache]] = OrderedDict()
_AUTO_LRU_SIZE = 64


def _auto_cache(automaton: Any) -> _AutoCache:
    try:
        cache = _AUTO_CACHE.get(automaton)
        if cache is None:
            cache = _AutoCache()
            _AUTO_CACHE[automaton] = cache
        return cache
    except TypeError:  # not weak-referenceable (e.g. a __slots__ class)
        pass
    entry = _AUTO_LRU.get(id(automaton))
    if entry is not None and entry[0] is automaton:
        _AUTO_LRU.move_to_end(id(automaton))
        return entry[1]
    cache = _AutoCache()
    _AUTO_LRU[id(automaton)] = (automaton, cache)
    while len(_AUTO_LRU) > _AUTO_LRU_SIZE:
        _AUTO_LRU.popitem(last=False)
    return cache


# First byte (-1 if empty) and byte length of every token, per vocabulary (by identity; a few entries).
_TOKEN_INFO: OrderedDict[int, tuple[Any, tuple[np.ndarray, np.ndarray]]] = OrderedDict()


def _token_info(backend: Backend) -> tuple[np.ndarray, np.ndarray] | None:
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


def _piece_index(v: Any) -> tuple[bytes, dict[bytes, int]]:
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


class _Hole:
    """What one branch's hole needs at every step: automaton, cached masks, stops, token window."""

    def __init__(
        self,
        automaton: Any,
        stops: Sequence[Any],
        min_tokens: int,
        max_tokens: int | None,
        n_vocab: int,
        eos: int,
        special: np.ndarray,
        eog: np.ndarray | None = None,
    ) -> None:
        eog = np.zeros(0, np.int32) if eog is None else eog
        self.unconstrained = automaton is None or bool(getattr(automaton, "unconstrained", False))
        self.eos = eos
        self.V = n_vocab
        self.min_tokens = int(min_tokens or 0)
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.stops = [_stop_pair(s) for s in stops]
        self.maxphr = max((len(p) for p, _ in self.stops), default=0)
        # Stop phrases are ignored until the min_tokens-th value token (module docstring). The runtime's own stop
        # search simply starts then (_Decoder._check_end). A compiled automaton contains the stops too: a phrase
        # takes it to its absorbing stopped state, after which no token is accepted, and it cannot say which
        # state the text would be in had the phrase not counted. So, with a token minimum:
        # * an automaton that constrains nothing but these stop phrases (the compiler's, see _without_stops) is
        #   replaced by the compiler's automaton of any text (valid UTF-8, no stops): the runtime's stop search
        #   then implements the stops exactly;
        # * any other automaton that can stop keeps its stops blocked before the minimum instead (``block_stops``:
        #   a token that would enter a stopped state is not allowed while the value would still have fewer than
        #   min_tokens tokens after it). Sound, but stricter than LMQL: the phrase cannot occur before the
        #   minimum. Ignoring it there exactly needs the compiler to emit the language without its stops too.
        self.block_stops = False
        if self.min_tokens > 0 and not self.unconstrained and _can_stop(automaton):
            free = _without_stops(automaton, self.stops) if self.stops else None
            if free is not None:
                automaton = free
            else:
                self.block_stops = True
        self.a = automaton
        # Unconstrained: everything but control tokens; other end-of-generation tokens (e.g. <end_of_turn>)
        # end the hole like EOS.
        uncon = np.setdiff1d(special[special != eos], eog).astype(np.int32)
        self.uncon = _Dense(n_vocab, comp=uncon)
        self.uncon_noeos = _Dense(n_vocab, comp=np.union1d(uncon, np.union1d(eog, [eos])).astype(np.int32))
        if self.unconstrained:
            self.masks: dict[tuple[int, bool], _Mask] = {}
            self.cache = _UNCON_CACHE
            self.mte = None
            self.mte_max = 0
        else:
            if automaton.eos_id != eos:
                raise DecodeError(f"automaton built for EOS id {automaton.eos_id}, but the model's EOS is {eos}")
            self.cache = _auto_cache(automaton)
            self.masks = self.cache.masks
            mte = np.asarray(automaton.min_tokens_to_end)
            self.mte = np.where((mte < 0) | (mte >= _INF_TOKENS), _INF_TOKENS, mte).astype(np.int64)
            finite = self.mte[self.mte < _INF_TOKENS]
            self.mte_max = int(finite.max()) if len(finite) else 0
            self._warm(automaton)

    def _warm(self, automaton: Any) -> None:
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

    def mask(self, state: int) -> _Mask:
        key = (self.a.mask_id(state), bool(self.a.is_final(state)))
        m = self.masks.get(key)
        if m is None:
            m = _Mask(np.asarray(self.a.allowed(state), dtype=np.int32), self.V, self.eos)
            self.masks[key] = m
        return m

    def forced_run(self, state: int, info: tuple[np.ndarray, np.ndarray], backend: Backend) -> tuple[list[int], int] | None:
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
        runs[state] = result
        return result

    def heal_table(self, h: bytes, backend: Backend) -> tuple[np.ndarray, np.ndarray]:
        """First tokens of a healed hole: pieces ``h + rest`` with ``rest`` empty or a token the automaton
        allows at its start, and the automaton state after ``rest`` (cached per prefix).

        Returns ``(ids int32[K] sorted, next_state int64[K], carries int64[K])``: ``carries`` is 1 for a piece
        with bytes past ``h`` (a value token) and 0 for a piece equal to ``h`` (see :meth:`_Decoder.push`).
        """
        key = h if not self.unconstrained else h + b"\0" + str(id(backend.vocabulary)).encode()
        hit = self.cache.heals.get(key)
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
            raw, index = _piece_index(v)
            offs = v.offsets
            rest_id = np.fromiter(
                (index.get(raw[a + len(h) : b], -2) for a, b in zip(offs[cand].tolist(), offs[cand + 1].tolist(), strict=True)),
                dtype=np.int64, count=len(cand),
            )
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
        self.cache.heals[key] = hit
        return hit

    def allowed(self, state: int, n: int) -> tuple[np.ndarray | None, _Dense | None]:
        """Allowed set after ``n`` value tokens: ``(ids, None)`` (sparse, sorted) or ``(None, dense)``."""
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
                self.cache.premin[key] = hit
            return hit
        return ids, dense

    def stopping(self, state: int) -> np.ndarray:
        """Sorted ids of the tokens that take the automaton from ``state`` to a stopped state (cached)."""
        hit = self.cache.stopping.get(state)
        if hit is None:
            m = self.mask(state)
            body = m.ids[m.ids != self.eos]
            nxt = np.asarray(self.a.step_many(np.full(len(body), state, np.int64), body))
            hit = np.sort(body[self._stopped(nxt)]).astype(np.int32)
            self.cache.stopping[state] = hit
        return hit

    def _stopped(self, states: np.ndarray) -> np.ndarray:
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

    def _allowed(self, state: int, n: int) -> tuple[np.ndarray | None, _Dense | None]:
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
                self.cache.budget[key] = ids
            return ids, None
        if m.dense is not None:
            return None, m.dense
        return m.ids, None


def _is_stop_rule(x: Any) -> bool:
    if hasattr(x, "phrase") and hasattr(x, "keep"):
        return True
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], (str, bytes)) and isinstance(x[1], bool)


def _stop_pair(stop: Any) -> tuple[bytes, bool]:
    if hasattr(stop, "phrase") and hasattr(stop, "keep"):
        phrase, keep = stop.phrase, stop.keep
    else:
        phrase, keep = stop
    data = phrase.encode("utf-8") if isinstance(phrase, str) else bytes(phrase)
    if not data:
        raise DecodeError("a stop phrase cannot be empty")
    return data, bool(keep)


def _can_stop(automaton: Any) -> bool:
    """Whether an automaton may have stopped states (False only when its ``stopped`` flags say none)."""
    stopped = getattr(automaton, "stopped", None)
    return not isinstance(stopped, np.ndarray) or bool(stopped.any())


_ANY_TEXT: OrderedDict[int, tuple[Any, Any]] = OrderedDict()  # vocabulary id -> (vocabulary, automaton)
_STOPS_ONLY: OrderedDict[tuple[int, tuple[tuple[bytes, bool], ...]], tuple[Any, Any]] = OrderedDict()


def _compiled(cache: OrderedDict, key: Any, vocab: Any, build: Any) -> Any:
    """A small per-vocabulary cache of compiler-built automata (False when the build failed)."""
    entry = cache.get(key)
    if entry is not None and entry[0] is vocab:
        return entry[1]
    try:
        value = build()
    except Exception:  # noqa: BLE001 - e.g. a stop phrase that is not UTF-8: no compiled hole has it
        value = False
    cache[key] = (vocab, value)
    while len(cache) > 16:
        cache.popitem(last=False)
    return value


def _without_stops(automaton: Any, stops: list[tuple[bytes, bool]]) -> Any | None:
    """The compiler's automaton of any text over the same vocabulary (valid UTF-8, no stopped states) if
    ``automaton`` is the compiler's automaton of a hole constrained by nothing but ``stops``; else None.

    Decided exactly, by building the stop-only automaton over the same vocabulary and comparing the tables
    (once per automaton and stop list; both builds are small: about 0.1 s each on a 262k vocabulary). Another
    language, a stand-in automaton or an artifact from another compiler version gives None.
    """
    key = tuple(stops)
    cache = _auto_cache(automaton)
    if key in cache.stops_only:
        return cache.stops_only[key]
    out = None
    vocab = getattr(automaton, "vocab", None)
    fields = ("next_table", "tok_seq", "final", "stopped")
    if vocab is not None and all(isinstance(getattr(automaton, f, None), np.ndarray) for f in fields):
        from lmqc.compiler.automaton import TokenAutomaton
        from lmqc.compiler.bytedfa import ByteDFA
        from lmqc.compiler.ir import HoleIR, Stop

        ir = lambda: HoleIR("X", stops=tuple(Stop(p.decode("utf-8"), keep) for p, keep in stops))  # noqa: E731
        ref = _compiled(_STOPS_ONLY, (id(vocab), key), vocab, lambda: TokenAutomaton.build(ByteDFA.from_ir(ir()), vocab))
        if ref is not False and int(ref.initial) == int(automaton.initial) and all(
            np.array_equal(getattr(ref, f), getattr(automaton, f)) for f in fields
        ):
            out = _compiled(_ANY_TEXT, id(vocab), vocab, lambda: TokenAutomaton.build(ByteDFA.from_regex(r"(.|\n)*"), vocab))
            out = out or None
    cache.stops_only[key] = out
    return out


# -- sequences -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Seq:
    parent: int
    hole: _Hole
    context: list[int]
    start: int
    state: int
    score0: float
    tokens: list[int] = field(default_factory=list)
    value: bytearray = field(default_factory=bytearray)
    ends: list[int] = field(default_factory=list)  # byte offset in value after each token
    logprob: float = 0.0
    pending: int = 0  # trailing forced tokens whose log-probability is not yet known
    ending: str | None = None
    cut: int | None = None
    heal: bytes = b""  # bytes of the prompt's last token, taken back for token healing (see decode_hole)
    healing: bool = False  # the next token must start with ``heal``
    heal_tok: int = -1  # the prompt token taken back (restored if the hole ends before re-spelling it)
    free: int = 0  # generated tokens that are not value tokens (a healed token re-spelling only prompt bytes)

    def fork(self) -> _Seq:
        return _Seq(
            self.parent, self.hole, list(self.context), self.start, self.state, self.score0, list(self.tokens),
            bytearray(self.value), list(self.ends), self.logprob, self.pending, self.ending, self.cut,
            self.heal, self.healing, self.heal_tok, self.free,
        )

    @property
    def n_value(self) -> int:
        """Value tokens so far: what ``min_tokens``/``max_tokens`` (``len(TOKENS(X))``) count."""
        return len(self.tokens) - self.free

    @property
    def score(self) -> float:
        return self.score0 + self.logprob


class _Decoder:
    def __init__(self, backend: Backend, max_len: int | None, score: bool, forced_text: bool = True) -> None:
        self.b = backend
        self.eos = backend.eos_id
        self.max_len = backend.n_ctx if max_len is None else min(int(max_len), backend.n_ctx)
        self.scoring = score
        self.ends = {self.eos, *(int(t) for t in getattr(backend, "eog_ids", ()))}
        self.tokinfo = _token_info(backend) if forced_text else None

    # Appending a token and detecting how the hole ends ----------------------------------------------------

    def allowed(self, s: _Seq) -> tuple[np.ndarray | None, _Dense | None]:
        """The allowed set of a sequence's next token (the healed first token has its own table)."""
        h = s.hole
        if not s.healing:
            return h.allowed(s.state, s.n_value)
        ids, nxt, carries = h.heal_table(s.heal, self.b)
        if h.max_tokens is not None and not h.unconstrained:
            # a piece equal to the healed bytes costs no budget (push); one carrying value bytes costs one
            keep = h.mte[nxt] <= h.max_tokens - carries
            if h.block_stops and h.min_tokens > 1:
                keep &= ~(h._stopped(nxt) & (carries > 0))
            ids = ids[keep]
        elif h.block_stops and h.min_tokens > 1:
            ids = ids[~(h._stopped(nxt) & (carries > 0))]
        return ids, None

    def push(self, s: _Seq, tok: int) -> None:
        h = s.hole
        s.context.append(tok)
        s.tokens.append(tok)
        old = len(s.value)
        if s.healing:
            # The token re-spells the prompt's last bytes (s.heal): only what follows them belongs to the value.
            # Token window rule (LMQL: a token that only re-spells prompt text is not a token of the value):
            # the heal table's pieces are s.heal + rest, with rest empty or ONE token the automaton allows first.
            # With rest non-empty the token carries value text and counts as one value token (matching the one
            # automaton step it makes); with rest empty all its bytes lie within the prompt text taken back and
            # it counts zero: no max_tokens budget, nothing toward min_tokens (so neither toward the point from
            # which stop phrases count). A piece cannot be shorter than s.heal: it must re-spell all of it.
            s.healing = False
            rest = self.b.piece(tok)[len(s.heal) :]
            if not rest:
                s.free += 1
            s.value += rest
            s.ends.append(len(s.value))
            if not h.unconstrained:
                ids, nxt, _ = h.heal_table(s.heal, self.b)
                i = int(np.searchsorted(ids, tok))
                if i >= len(ids) or int(ids[i]) != tok:
                    raise DecodeError(f"internal error: token {tok} does not heal {s.heal!r}")
                s.state = int(nxt[i])
            self._check_end(s, old)
            return
        s.value += self.b.piece(tok)
        s.ends.append(len(s.value))
        if not h.unconstrained:
            nxt = h.a.step(s.state, tok)
            if nxt < 0:
                raise DecodeError(f"internal error: automaton rejected token {tok} it allowed in state {s.state}")
            s.state = nxt
        self._check_end(s, old)

    def _check_end(self, s: _Seq, old: int) -> None:
        """End the hole after a token that added ``s.value[old:]`` if a stop phrase, the budget or ``max_len``
        says so.

        Stop rule with a token minimum: a stop phrase counts only in a token after which the value has at
        least ``min_tokens`` tokens. The search looks at occurrences that end in this token's bytes (they may
        start in earlier ones), so an occurrence that completed in an earlier token, before the minimum, stays
        ignored for good; the value is cut at the earliest-starting occurrence completing in this token.
        """
        h = s.hole
        if h.stops and len(s.value) > old and s.n_value >= h.min_tokens:
            cut = self._find_stop(s.value, old, h)
            if cut is not None:
                s.cut, s.ending = cut, "stop"
                return
        if not h.unconstrained and h.a.is_stopped(s.state):
            s.ending = "stop"
        elif h.max_tokens is not None and s.n_value >= h.max_tokens:
            s.ending = "max_tokens"
        elif len(s.context) >= self.max_len:
            s.ending = "max_len"

    @staticmethod
    def _find_stop(value: bytearray, old: int, h: _Hole) -> int | None:
        best: tuple[int, int] | None = None
        for phrase, keep in h.stops:
            # Only occurrences ending in the new bytes: they start at or after the last len(phrase)-1 old bytes.
            i = value.find(phrase, max(0, old - len(phrase) + 1))
            if i >= 0 and (best is None or i < best[0]):
                best = (i, i + len(phrase) if keep else i)
        return None if best is None else best[1]

    def advance_forced(self, s: _Seq) -> None:
        """Append forced text and tokens (and end on an EOS-only state when not scoring) without a model call.

        The appended tokens reach the model in one batch with the next step's evaluation.
        """
        h = s.hole
        if h.unconstrained or s.healing:
            return
        a = h.a
        while s.ending is None:
            run = h.forced_run(s.state, self.tokinfo, self.b) if self.tokinfo is not None else None
            if run is not None and h.block_stops and s.n_value + len(run[0]) < h.min_tokens and a.is_stopped(run[1]):
                run = None  # its last token would stop before the minimum: the model chooses instead
            if run is not None:
                toks, end = run
                if h.max_tokens is None or len(toks) + h.mte[end] <= h.max_tokens - s.n_value:
                    for tok in toks:
                        self.push(s, tok)
                        if self.scoring:
                            s.pending += 1
                        if s.ending is not None:
                            break
                    continue
            tok = a.forced(s.state)
            if tok < 0:
                if not self.scoring and s.n_value >= h.min_tokens and h.mask(s.state).only_eos:
                    s.ending = "eos"
                return
            if h.block_stops and s.n_value + 1 < h.min_tokens:
                nxt = a.step(s.state, tok)
                if nxt < 0 or a.is_stopped(nxt):
                    s.ending = "dead"  # the only way on is a stop phrase, and the minimum is not reached
                    return
            if h.max_tokens is not None:
                r = h.max_tokens - s.n_value
                nxt = a.step(s.state, tok)
                if nxt < 0 or h.mte[nxt] > r - 1:
                    s.ending = "dead"
                    return
            self.push(s, tok)
            if self.scoring:
                s.pending += 1

    def complete(self, s: _Seq) -> Completion:
        if s.healing:  # ended before the healed token was chosen: give the prompt its token back
            s.context = s.context + [s.heal_tok]
            s.healing = False
        if s.cut is None:
            value = bytes(s.value)
            context = s.context
        else:
            value = bytes(s.value[: s.cut])
            j = bisect.bisect_right(s.ends, s.cut)  # tokens entirely inside the kept value
            context = s.context[: s.start + j]
            tail = value[(s.ends[j - 1] if j else 0) :]
            if j == 0 and s.heal:
                tail = s.heal + tail  # the healed token also carried the prompt's last bytes
            if tail:
                context = context + self.b.tokenize(tail, bos=False)
        lp = s.logprob if self.scoring else math.nan
        return Completion(
            parent=s.parent, tokens=list(s.tokens), value=value, context=list(context), logprob=lp,
            score=s.score0 + lp, ending=s.ending or "max_len", state=-1 if s.hole.unconstrained else s.state,
        )

    # Model calls ------------------------------------------------------------------------------------------

    def evaluate(self, seqs: list[_Seq]) -> tuple[np.ndarray, np.ndarray | None]:
        """Next-token logits float32[B, V] of ``seqs`` (one backend call); scores pending forced tokens.

        Returns the logits and, when scoring, the per-row log-sum-exp float64[B].
        """
        logits = eval_seqs(self.b, seqs)  # pending forced tokens exist only when scoring
        return logits, (_lse(logits) if self.scoring else None)


def _lse(x: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp of float32[B, V] -> float64[B] (float32 SIMD exp, pairwise float32 sums)."""
    m = x.max(axis=1, keepdims=True)
    buf = np.subtract(x, m, dtype=np.float32)
    np.exp(buf, out=buf)
    return np.log(buf.sum(axis=1).astype(np.float64)) + m[:, 0].astype(np.float64)


# -- token choice --------------------------------------------------------------------------------------------


_BUFFERS: dict[int, np.ndarray] = {}


def _work_row(V: int) -> np.ndarray:
    """A reusable float32[V] scratch row (decoding is single-threaded per process)."""
    buf = _BUFFERS.get(V)
    if buf is None:
        buf = _BUFFERS[V] = np.empty(V, np.float32)
    return buf


def _argmax(row: np.ndarray, ids: np.ndarray | None, dense: _Dense | None) -> int:
    if ids is not None:
        if len(ids) == 0:
            return -1
        return int(ids[int(np.argmax(np.take(row, ids)))])
    t = int(np.argmax(row))
    if dense.contains(t):  # the common case: the model's favourite is allowed anyway
        return t
    buf = _work_row(len(row))
    np.add(row, dense.bias, out=buf)
    t = int(np.argmax(buf))
    return t if np.isfinite(buf[t]) else -1


def _topn(row: np.ndarray, ids: np.ndarray | None, dense: _Dense | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n best allowed tokens of a row and their logits (unordered)."""
    if ids is not None:
        vals = row[ids]
        if len(ids) > n:
            part = np.argpartition(vals, -n)[-n:]
            return ids[part], vals[part]
        return ids, vals
    tmp = row + dense.bias
    if n <= 8:  # a few argmax passes beat a partition of the whole vocabulary
        out = []
        for _ in range(n):
            t = int(np.argmax(tmp))
            if not np.isfinite(tmp[t]):
                break
            out.append(t)
            tmp[t] = -np.inf
        top = np.asarray(out, dtype=np.int64)
    else:
        top = np.argpartition(tmp, -n)[-n:]
        top = top[np.isfinite(tmp[top])]
    return top.astype(np.int32), row[top]


_BLOCK = 512  # sampling from a full row: pick a block by its mass, then a token inside it


def _draw(w: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to the non-negative float32 weights ``w`` (exact, O(V))."""
    n = len(w)
    if n <= 4 * _BLOCK:
        cum = np.cumsum(w, dtype=np.float64)
        j = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        return min(j, int(np.flatnonzero(w)[-1]))
    pad = (-n) % _BLOCK
    ww = np.concatenate([w, np.zeros(pad, w.dtype)]) if pad else w
    blocks = ww.reshape(-1, _BLOCK).sum(axis=1)  # float32 pairwise sums: fast and accurate enough
    cb = np.cumsum(blocks, dtype=np.float64)
    u = rng.random() * cb[-1]
    k = min(int(np.searchsorted(cb, u, side="right")), int(np.flatnonzero(blocks)[-1]))
    u -= cb[k - 1] if k else 0.0
    inner = ww[k * _BLOCK : (k + 1) * _BLOCK]
    cw = np.cumsum(inner, dtype=np.float64)
    j = min(int(np.searchsorted(cw, u, side="right")), int(np.flatnonzero(inner)[-1]))
    return k * _BLOCK + j


def _nucleus(w: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest set of largest weights holding ``top_p`` of the mass (``w.max() == 1``)."""
    total = float(w.sum())
    thr = 1e-2
    while True:
        # every weight outside {w > thr} is below every weight inside, so if the inside holds top_p of the
        # mass, the nucleus lies inside it
        cand = np.flatnonzero(w > thr)
        if thr < 1e-30 or float(w[cand].sum(dtype=np.float64)) >= top_p * total:
            break
        thr *= 1e-3
    cand = cand[np.argsort(-w[cand], kind="stable")]
    cum = np.cumsum(w[cand], dtype=np.float64)
    return cand[: int(np.searchsorted(cum, top_p * total)) + 1]


def _sample(
    row: np.ndarray, ids: np.ndarray | None, dense: _Dense | None, cfg: Sample, rng: np.random.Generator
) -> int:
    """Draw from softmax(row / T) restricted to the allowed tokens, after top-k and top-p."""
    if cfg.temperature == 0:
        return _argmax(row, ids, dense)
    if ids is not None:
        if len(ids) == 0:
            return -1
        cand: np.ndarray | None = ids
        z = row[ids].astype(np.float32)
    else:
        cand = None
        z = np.add(row, dense.bias, dtype=np.float32)
    if 0 < cfg.top_k < len(z):
        part = np.argpartition(z, -cfg.top_k)[-cfg.top_k :]
        z = z[part]
        cand = part if cand is None else cand[part]
    m = z.max()
    if not np.isfinite(m):
        return -1
    # weights exp((z - max) / T) in place: max weight 1, masked tokens 0
    z -= m
    z *= np.float32(1.0 / cfg.temperature)
    np.exp(z, out=z)
    if cfg.top_p < 1.0:
        keep = _nucleus(z, cfg.top_p)
        z = z[keep]
        cand = keep if cand is None else cand[keep]
    j = _draw(z, rng)
    return int(j if cand is None else cand[j])


# -- the entry points ----------------------------------------------------------------------------------------


def _per_branch(value: Any, B: int, name: str, *, is_scalar: Any) -> list[Any]:
    if is_scalar(value):
        return [value] * B
    out = list(value)
    if len(out) != B:
        raise DecodeError(f"{name}: got {len(out)} entries for {B} branches")
    return out


def decode_hole(
    backend: Backend,
    contexts: Sequence[Sequence[int]],
    automata: Any = None,
    *,
    strategy: Strategy = Argmax(),  # noqa: B008 - frozen dataclass, safe as a default
    stops: Any = (),
    min_tokens: int | Sequence[int] = 0,
    max_tokens: int | None | Sequence[int | None] = None,
    max_len: int | None = None,
    rng: np.random.Generator | int | None = None,
    scores: Sequence[float] | None = None,
    score: bool | None = None,
    forced_text: bool = True,
    heal: bool = False,
) -> list[Completion]:
    """Fill one hole for a batch of branches.

    Parameters
    ----------
    backend : Backend
    contexts : sequence of B token-id lists
        Each branch's context (prompt so far, ending where the hole starts). For ``sample(n=k)`` pass the same
        context k times: each copy is sampled independently (the shared prefix is evaluated once).
    automata : TokenAutomaton, None, or a sequence of B of them
        The hole's automaton per branch (one value applies to every branch). ``None`` or
        ``automaton.unconstrained`` means any text up to EOS (control tokens other than EOS are never chosen).
    strategy : Argmax | Sample | Beam
    stops : per-branch or shared sequence of stop rules
        Each rule a ``compiler.ir.Stop`` (``phrase``, ``keep``) or a ``(phrase: str | bytes, keep: bool)`` pair.
        Generation ends at the first occurrence; the value is cut there (``keep`` keeps the phrase). For a
        ``HoleIR``, ``decode_hole(..., **hole_limits(hole))`` passes its stops and token window.
    min_tokens, max_tokens : int or per-branch sequence
        Token window of the value (EOS excluded): EOS is not allowed before ``min_tokens``; with ``r`` tokens
        left only tokens after which the automaton can still end within ``r - 1`` more are allowed, and the
        hole ends (``"max_tokens"``) when the budget is used.
    max_len : int, optional
        Limit on the total context length in tokens (prompt plus everything generated), as LMQL's ``max_len``;
        always capped by the model's ``n_ctx``. Reaching it ends the hole with ``"max_len"``.
    rng : numpy.random.Generator or int seed, optional
        Randomness for ``Sample`` (draws happen in branch order, so a seed reproduces the samples).
    scores : sequence of B floats, optional
        Incoming score of each branch (beam search over several holes ranks by the running total).
    score : bool, optional
        Compute log-probabilities (default: only for beam search, which needs them).
    forced_text : bool
        Fast-forward text the automaton forces (every allowed token starts with the same byte, repeatedly):
        the forced bytes are tokenized as the model tokenizes text and appended without sampling, reaching the
        model in one batch. With ``False`` only single forced tokens (``automaton.forced``) are skipped, and
        the tokenization of forced text is the decoder's choice as for free text.
    heal : bool
        Token healing at the prompt/hole boundary: the context's last token (e.g. a trailing space) is taken
        back and the first generated token must re-spell its bytes, followed by a valid start of the value
        (for a constrained hole: nothing, or one token the automaton allows first). So ``"A: "`` can continue
        with the model's natural ``" 42"`` instead of a space token followed by ``"42"``. The value and the
        returned context are unchanged in meaning: the context still detokenizes to prompt + value.

    Returns
    -------
    list[Completion]
        Argmax/sample: one per branch, in branch order. Beam: the ``n`` best (fewer if fewer sequences exist),
        best first, each naming its ``parent`` branch.

    Raises
    ------
    DecodeError
        No allowed continuation exists for a branch (e.g. the constraint cannot end within ``max_tokens``).
    """
    return HoleRun(
        backend, contexts, automata, strategy=strategy, stops=stops, min_tokens=min_tokens, max_tokens=max_tokens,
        max_len=max_len, rng=rng, scores=scores, score=score, forced_text=forced_text, heal=heal,
    ).run()


class HoleRun:
    """One :func:`decode_hole` call as a step-wise engine, so a caller can batch the steps of several holes.

    Created from the same arguments as :func:`decode_hole` (the same checks and ``DecodeError``\\ s). For
    argmax and sample, one step is::

        todo = run.pending()           # forced tokens appended; the sequences that need a model row now
        if run.done: ...               # nothing left: run.completions()
        run.apply(eval_seqs(backend, todo))   # or rows of a bigger batch, in the order of ``todo``

    :func:`decode_hole` itself runs this loop (:meth:`run`), so a caller that merges the ``todo`` lists of
    several runs into one :func:`eval_seqs` call gets each run's tokens exactly as in-process whenever the
    backend's logits do not depend on the batch (each run draws from its own generator, in branch order).
    Beam search is not step-wise (``stepwise`` is False): :meth:`run` decodes its whole hole.
    """

    def __init__(
        self,
        backend: Backend,
        contexts: Sequence[Sequence[int]],
        automata: Any = None,
        *,
        strategy: Strategy = Argmax(),  # noqa: B008 - frozen dataclass, safe as a default
        stops: Any = (),
        min_tokens: int | Sequence[int] = 0,
        max_tokens: int | None | Sequence[int | None] = None,
        max_len: int | None = None,
        rng: np.random.Generator | int | None = None,
        scores: Sequence[float] | None = None,
        score: bool | None = None,
        forced_text: bool = True,
        heal: bool = False,
    ) -> None:
        B = len(contexts)
        if isinstance(strategy, str) and B:
            strategy = parse_strategy(strategy)
        self.strategy = strategy
        self.stepwise = not isinstance(strategy, Beam)
        self.done = False
        self._todo: list[_Seq] | None = None
        self.seqs: list[_Seq] = []
        self.dec: _Decoder | None = None
        if B == 0:  # nothing to decode: no checks, no backend access (as decode_hole always did)
            self.done = True
            self.rng = None
            return
        scoring = isinstance(strategy, Beam) if score is None else bool(score)
        if isinstance(strategy, Beam) and not scoring:
            raise DecodeError("beam search needs scores (score=False given)")
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.dec = dec = _Decoder(backend, max_len, scoring, forced_text)
        autos = _per_branch(automata, B, "automata", is_scalar=lambda v: v is None or hasattr(v, "initial"))
        shared_stops = isinstance(stops, (str, bytes)) or _is_stop_rule(stops) or len(stops) == 0 or _is_stop_rule(stops[0])
        if isinstance(stops, (str, bytes)) or _is_stop_rule(stops):
            raise DecodeError("stops must be a sequence of stop rules, e.g. [Stop('\\n', keep=False)]")
        stop_lists = [stops] * B if shared_stops else _per_branch(stops, B, "stops", is_scalar=lambda v: False)
        mins = _per_branch(min_tokens, B, "min_tokens", is_scalar=lambda v: isinstance(v, (int, np.integer)))
        maxs = _per_branch(max_tokens, B, "max_tokens", is_scalar=lambda v: v is None or isinstance(v, (int, np.integer)))
        init = [0.0] * B if scores is None else [float(x) for x in scores]

        special = np.asarray(backend.special_ids, dtype=np.int32)
        eog = np.asarray(getattr(backend, "eog_ids", ()), dtype=np.int32)
        holes: dict[tuple[int, int, int, int | None], _Hole] = {}
        seqs = self.seqs
        for i in range(B):
            key = (id(autos[i]), id(stop_lists[i]), mins[i], maxs[i])
            h = holes.get(key)
            if h is None:
                h = _Hole(autos[i], stop_lists[i], mins[i], maxs[i], backend.n_vocab, backend.eos_id, special, eog)
                holes[key] = h
            state = -1 if h.unconstrained else int(h.a.initial)
            ctx = list(contexts[i])
            if not ctx:
                raise DecodeError("a hole needs a non-empty context (start the prompt with BOS)")
            s = _Seq(i, h, ctx, len(ctx), state, init[i])
            if heal and len(ctx) >= 2 and not bool(np.isin(ctx[-1], special)) and ctx[-1] != backend.eos_id:
                last = backend.piece(ctx[-1])
                if last:
                    s.heal, s.healing, s.heal_tok = last, True, ctx[-1]
                    s.context = ctx[:-1]
                    s.start = len(ctx) - 1
            if not h.unconstrained and h.mte[state] >= _INF_TOKENS:
                raise DecodeError(
                    "the constraint cannot be satisfied with this model's vocabulary: no token sequence spells an "
                    "accepted value"
                )
            if h.max_tokens is not None and not h.unconstrained and h.mte[state] > h.max_tokens:
                raise DecodeError(
                    f"the constraint needs at least {int(h.mte[state])} tokens but the hole allows {h.max_tokens}"
                )
            if h.max_tokens is not None and h.max_tokens <= 0:
                s.ending = "max_tokens"
            elif len(ctx) >= dec.max_len:
                s.ending = "max_len"
            seqs.append(s)

    @property
    def scoring(self) -> bool:
        return self.dec is not None and self.dec.scoring

    @property
    def width(self) -> int:
        """Most sequences this run evaluates in one step (branches; at most ``n`` after a beam's first step)."""
        n = len(self.seqs)
        return max(n, self.strategy.n) if isinstance(self.strategy, Beam) else n

    def run(self) -> list[Completion]:
        """Decode the whole hole alone: the loop of :func:`decode_hole`."""
        if isinstance(self.strategy, Beam):
            out = _beam(self.dec, self.seqs, self.strategy.n) if self.seqs else []
            self.done = True
            return out
        while True:
            todo = self.pending()
            if self.done:
                return self.completions()
            self.apply(eval_seqs(self.dec.b, todo))  # type: ignore[union-attr]  # seqs exist, so dec does

    def pending(self) -> list[_Seq]:
        """Append forced tokens, then the sequences needing a model row this step (``done`` when none).

        A sequence that already ended is included when scoring still needs rows for its forced tail.
        """
        if not self.stepwise:
            raise DecodeError("internal error: beam search is not step-wise (use HoleRun.run)")
        if self.done:
            return []
        dec, seqs = self.dec, self.seqs
        for s in seqs:
            if s.ending is None:
                dec.advance_forced(s)
        _raise_dead(seqs)
        todo = [s for s in seqs if s.ending is None or (s.pending and dec.scoring)]
        if not todo:
            self.done = True
        self._todo = todo
        return todo

    def apply(self, logits: np.ndarray) -> None:
        """Choose and append one token per sequence of the last :meth:`pending`, from its next-token logits.

        ``logits`` is float32[len(todo), V] in the order of ``todo``; their forced tails must already be scored
        (:func:`eval_seqs` does both). Random draws use this run's generator, in branch order.
        """
        todo = self._todo
        if todo is None or len(logits) != len(todo):
            raise DecodeError("internal error: HoleRun.apply without a matching pending()")
        self._todo = None
        dec, strategy, rng = self.dec, self.strategy, self.rng
        ends = dec.ends
        lse = _lse(logits) if dec.scoring else None
        for k, s in enumerate(todo):
            if s.ending is not None:
                continue  # was only evaluated to score its forced tail
            row = logits[k]
            ids, dense = dec.allowed(s)
            if isinstance(strategy, Sample):
                tok = _sample(row, ids, dense, strategy, rng)
            else:
                tok = _argmax(row, ids, dense)
            if tok < 0:
                s.ending = "dead"
                continue
            if lse is not None:
                s.logprob += float(row[tok]) - float(lse[k])
            if tok in ends:
                s.ending = "eos"
            else:
                dec.push(s, tok)
        _raise_dead(self.seqs)

    def completions(self) -> list[Completion]:
        """One completion per branch, in branch order (after ``done``)."""
        return [self.dec.complete(s) for s in self.seqs]


def eval_seqs(backend: Backend, seqs: Sequence[_Seq]) -> np.ndarray:
    """Next-token logits float32[len(seqs), V] in ONE backend call; scores the sequences' pending forced tokens.

    The sequences may come from several :class:`HoleRun`\\ s (only scoring runs have pending tokens).
    """
    ctxs = [s.context for s in seqs]
    if any(s.pending for s in seqs):
        parts = backend.eval_rows(ctxs, [s.pending + 1 for s in seqs])
        for s, rows in zip(seqs, parts, strict=True):
            if s.pending:
                toks = np.asarray(s.context[len(s.context) - s.pending :])
                lse = _lse(rows[:-1])
                s.logprob += float((rows[np.arange(s.pending), toks] - lse).sum())
                s.pending = 0
        return np.stack([p[-1] for p in parts])
    return backend.eval(ctxs)


def _raise_dead(seqs: list[_Seq]) -> None:
    for s in seqs:
        if s.ending == "dead":
            raise DecodeError(
                f"no allowed continuation for branch {s.parent} after {len(s.tokens)} tokens "
                f"(value so far {bytes(s.value)!r}): the constraint cannot be completed within the token budget"
            )


def _beam(dec: _Decoder, seqs: list[_Seq], n: int) -> list[Completion]:
    ends = dec.ends
    live = [s for s in seqs if s.ending is None]
    finished: list[_Seq] = [s for s in seqs if s.ending is not None]
    while True:
        for s in live:
            dec.advance_forced(s)
        # Sequences that ended on a forced token still need their forced tail scored by this step's batch.
        todo = [s for s in live if s.ending != "dead"]
        if not todo:
            break
        logits, lse = dec.evaluate(todo)
        if lse is None:  # scoring is forced on for beam search
            raise DecodeError("internal error: beam search ran without scores")
        cand_score: list[np.ndarray] = []
        cand_tok: list[np.ndarray] = []
        cand_seq: list[np.ndarray] = []
        for k, s in enumerate(todo):
            if s.ending is not None:
                finished.append(s)
                continue
            ids, dense = dec.allowed(s)
            toks, vals = _topn(logits[k], ids, dense, n)
            if len(toks) == 0:
                continue  # a dead beam simply drops out
            cand_score.append(s.score + (vals.astype(np.float64) - lse[k]))
            cand_tok.append(toks)
            cand_seq.append(np.full(len(toks), k))
        finished.sort(key=lambda f: -f.score)
        del finished[n:]
        if not cand_score:
            break
        sc = np.concatenate(cand_score)
        tk = np.concatenate(cand_tok)
        sq = np.concatenate(cand_seq)
        order = np.argsort(-sc, kind="stable")[:n]
        # The n best of (finished sequences, candidate extensions): the candidates among them go on.
        entries: list[tuple[float, int, int]] = [(f.score, 0, k) for k, f in enumerate(finished)]
        entries += [(float(sc[j]), 1, int(j)) for j in order]
        entries.sort(key=lambda e: (-e[0], e[1]))
        live = []
        for _, kind, j in entries[:n]:
            if kind == 0:
                continue
            parent = todo[int(sq[j])]
            child = parent.fork()
            tok = int(tk[j])
            child.logprob = float(sc[j]) - child.score0
            if tok in ends:
                child.ending = "eos"
            else:
                dec.push(child, tok)
            (live if child.ending is None else finished).append(child)
        finished.sort(key=lambda f: -f.score)
        del finished[n:]
        if not live:
            break
    if not finished:
        raise DecodeError("beam search found no sequence that satisfies the constraint")
    return [dec.complete(s) for s in finished[:n]]


def hole_limits(hole: Any) -> dict[str, Any]:
    """``stops``, ``min_tokens`` and ``max_tokens`` keyword arguments from a ``compiler.ir.HoleIR``."""
    return {"stops": tuple(hole.stops), "min_tokens": int(hole.min_tokens), "max_tokens": hole.max_tokens}


def score_options(backend: Backend, context: Sequence[int], options: Sequence[Sequence[int]]) -> np.ndarray:
    """Total log-probability of each option's tokens as a continuation of ``context`` (one batched call).

    Parameters
    ----------
    backend : Backend
    context : token ids (non-empty)
    options : K token-id sequences

    Returns
    -------
    np.ndarray
        float64[K]: sum over the option's tokens of the model's log-softmax; 0.0 for an empty option.
    """
    ctx = list(context)
    if not ctx:
        raise DecodeError("cannot score options after an empty context")
    out = np.zeros(len(options), np.float64)
    idx = [k for k, o in enumerate(options) if len(o)]
    if not idx:
        return out
    # Row j of (context + option[:-1]) predicts option[j].
    ctxs = [ctx + list(options[k][:-1]) for k in idx]
    parts = backend.eval_rows(ctxs, [len(options[k]) for k in idx])
    for k, rows in zip(idx, parts, strict=True):
        toks = np.asarray(options[k])
        out[k] = float((rows[np.arange(len(toks)), toks] - _lse(rows)).sum())
    return out
