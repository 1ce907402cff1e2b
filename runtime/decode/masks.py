"""Allowed-token sets and the per-automaton tables that cache them.

A :class:`Mask` is one distinct allowed set of an automaton: sparse sorted ids, or a :class:`Dense` set when it
covers more than a quarter of the vocabulary (membership by the automaton's own tables or a bitmap; ids, complement
and -inf bias built only when something asks). :class:`MaskTables` holds everything the decoder derives from one automaton (masks by
mask id, forced-text runs, token-budget and healing tables), so a state's allowed set is a table lookup; the
automaton owns them (``automaton.tables``) and they are bounded in bytes (:data:`TABLE_BYTES`).
Vocabulary-wide tables (first byte and length of every token, the sorted pieces) are cached per vocabulary.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "INF_TOKENS",
    "TABLE_BYTES",
    "Dense",
    "Mask",
    "MaskTables",
    "PerObject",
    "array_bytes",
    "piece_ids",
    "tables_of",
    "token_info",
    "unconstrained_tables",
]

INF_TOKENS = 1 << 30  # min_tokens_to_end at or above this (or negative) means "cannot end"


# Logits per block of the blocked search. One pass takes the argmax of every block (on a 262k row, 64 blocks
# of 4096 cost what a plain argmax costs; 1024-logit blocks 30 % more); after a rejected favourite only blocks
# whose maximum could beat the best allowed logit found are searched, usually two or three.
_BLOCK = 4096


class Dense:
    """A large allowed set: membership by a bitmap (or by the automaton's token -> sequence table, for a mask
    given as its allowed sequences), the complement, bitmap and -inf bias row built only when first needed, and
    an argmax that costs about one plain pass over the row (:meth:`argmax`)."""

    __slots__ = ("V", "ids", "_comp", "_bias", "_bits", "_seq", "_hits", "_misses", "_blocks")

    def __init__(
        self,
        V: int,
        ids: np.ndarray | None = None,
        comp: np.ndarray | None = None,
        bits: np.ndarray | None = None,
        seq: tuple[np.ndarray, np.ndarray, int, bool] | None = None,
    ) -> None:
        self.V = V
        self.ids = ids  # sorted allowed ids (None until needed when the set is given another way)
        self._comp = comp
        self._bias: np.ndarray | None = None
        self._bits = bits
        # (allowed bool[U + 1] per sequence with a False appended, int32[V] token -> sequence (-1: never), the
        # EOS id, whether EOS is allowed): EOS has no sequence of its own
        self._seq = seq
        self._hits = self._misses = 0  # argmax calls whose row favourite was allowed / rejected
        self._blocks: dict[int, np.ndarray] | None = None  # bias of the blocks searched so far, by first index

    def _keep(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """bool[hi - lo]: the set's tokens ``lo..hi-1`` (all by default), from whichever form is known."""
        if hi is None:
            hi = self.V
        if self._seq is not None:
            ext, tok_seq, eos, eos_ok = self._seq
            keep = ext.take(tok_seq[lo:hi])  # ``take`` with int32 indices: ~60 % of fancy indexing's time
            if lo <= eos < hi:
                keep[eos - lo] = eos_ok
            return keep
        if lo or hi != self.V:
            bits = self.bits[lo >> 3 : (hi + 7) >> 3]  # lo is a multiple of 8
            return np.unpackbits(bits, count=hi - lo, bitorder="little").view(bool)
        if self._bits is not None:
            keep = np.unpackbits(self._bits, count=self.V, bitorder="little").view(bool)
        elif self.ids is not None:
            keep = np.zeros(self.V, bool)
            keep[self.ids] = True
        else:
            keep = np.ones(self.V, bool)
            keep[self._comp] = False
        return keep

    @property
    def bias(self) -> np.ndarray:
        """float32[V]: 0 where allowed, -inf elsewhere (built on first use)."""
        if self._bias is None:
            self._bias = _BIAS_OF.take(self._keep().view(np.uint8))
            self._blocks = None  # slices of the row from now on
        return self._bias

    @property
    def bits(self) -> np.ndarray:
        """uint8[ceil(V / 8)]: the set as a little-endian bitmap (built on first use)."""
        if self._bits is None:
            self._bits = np.packbits(self._keep(), bitorder="little")
        return self._bits

    def contains(self, t: int) -> bool:
        seq = self._seq
        if seq is not None:  # two table reads
            return seq[3] if t == seq[2] else seq[0].item(seq[1].item(t))
        # a bitmap probe, ~0.2 µs: a binary search over a quarter million ids costs ~3 µs
        return (self.bits.item(t >> 3) >> (t & 7)) & 1 == 1

    def _bias_range(self, lo: int, hi: int) -> np.ndarray:
        """float32[hi - lo]: the bias of tokens ``lo..hi-1`` (``lo`` a multiple of 8): a slice of the whole row
        once built, else built for this range only and kept (a first rejected favourite searches two or three
        blocks: building the whole 1 MB row then cost a millisecond or more mid-decode)."""
        if self._bias is not None:
            return self._bias[lo:hi]
        blocks = self._blocks
        if blocks is None:
            blocks = self._blocks = {}
        got = blocks.get(lo)
        if got is None:  # (a range starting at ``lo`` always ends at the same ``hi``: a block, the tail, the row)
            got = blocks[lo] = _BIAS_OF.take(self._keep(lo, hi).view(np.uint8))
        return got

    def _masked_argmax(self, row: np.ndarray, lo: int, hi: int) -> tuple[float, int]:
        """(largest allowed logit of ``row[lo:hi]``, its first index), (-inf, -1) if every allowed one is -inf.

        Adds the bias rather than selecting by the bitmap: ``np.where`` on a random boolean mask costs ~3 ns a
        logit (branch mispredictions), the addition ~0.25."""
        seg = row[lo:hi] + self._bias_range(lo, hi)
        j = int(seg.argmax())
        v = seg.item(j)
        return (v, lo + j) if v > -np.inf else (v, -1)

    def argmax(self, row: np.ndarray) -> int:
        """The first index of the largest allowed logit of ``row`` (what ``argmax(row + bias)`` gives), or -1
        if every allowed logit is -inf.

        The row's favourite is usually allowed: then this is one plain pass, the unconstrained step's own
        work. A set that has rejected the favourite more often than not (a language that excludes the model's
        likely tokens) starts with one pass of block argmaxes instead, which costs about as much and leaves
        the blocks' favourites behind; after a rejection only blocks whose favourite could beat the best allowed
        logit found so far are searched, best first, and a block whose own favourite is allowed costs nothing.
        """
        V = self.V
        nb = V // _BLOCK
        if nb < 2:  # small vocabulary: one masked pass
            return self._masked_argmax(row, 0, V)[1]
        head = nb * _BLOCK
        blocked = self._misses > self._hits
        if not blocked:
            t = int(row.argmax())
            if self.contains(t):
                self._hits += 1
                return t if row.item(t) > -np.inf else -1
        top = row[:head].reshape(nb, _BLOCK).argmax(axis=1)
        top += _block_starts(nb)
        vals = row[top]
        if blocked:
            c = int(vals.argmax())
            t = top.item(c)
            if (head == V or vals.item(c) >= row[head:].max()) and self.contains(t):
                self._hits += 1
                return t if vals.item(c) > -np.inf else -1
        self._misses += 1
        best_v, best_t = self._masked_argmax(row, head, V) if head < V else (-np.inf, -1)
        # Blocks, best favourite first, while one could hold a larger (or equal, earlier) allowed logit. In
        # Python lists: right after passes over a 1 MB row every NumPy call costs several µs of cache misses,
        # and usually two or three blocks qualify.
        vl, tl = vals.tolist(), top.tolist()
        for c in sorted(range(nb), key=vl.__getitem__, reverse=True):  # stable: equal maxima keep block order
            m = vl[c]
            if m < best_v:
                break
            lo = c * _BLOCK
            if m == best_v and lo > best_t:
                continue
            if self.contains(tl[c]):
                v, t = m, tl[c]
            else:
                v, t = self._masked_argmax(row, lo, lo + _BLOCK)
            if v > best_v or (v == best_v and t < best_t):
                best_v, best_t = v, t
        return best_t if best_v > -np.inf else -1

    @property
    def comp(self) -> np.ndarray:
        """Sorted disallowed ids (int32)."""
        if self._comp is None:
            self._comp = _complement(self.V, self.ids) if self.ids is not None else np.flatnonzero(
                ~self._keep()).astype(np.int32)
        return self._comp

    def all_ids(self) -> np.ndarray:
        """Sorted allowed ids (int32)."""
        if self.ids is None:
            self.ids = np.flatnonzero(self._keep()).astype(np.int32)
        return self.ids


_BIAS_OF = np.array([-np.inf, 0.0], dtype=np.float32)  # bias of a disallowed / allowed token


@functools.cache
def _block_starts(nb: int) -> np.ndarray:
    """intp[nb]: the first index of each block (one array per block count; read only)."""
    return np.arange(nb, dtype=np.intp) * _BLOCK


def _complement(V: int, ids: np.ndarray) -> np.ndarray:
    """Sorted int32 ids of ``range(V)`` not in ``ids``."""
    keep = np.ones(V, bool)
    keep[ids] = False
    return np.flatnonzero(keep).astype(np.int32)


class Mask:
    """One distinct allowed set of an automaton: sparse ids, or a :class:`Dense` when large."""

    __slots__ = ("_ids", "dense", "size", "has_eos", "only_eos", "_noeos")

    def __init__(self, ids: np.ndarray, V: int, eos: int, has_eos: bool | None = None) -> None:
        # Above a quarter of the vocabulary, gathering the allowed logits costs more than the blocked pass of
        # Dense.argmax (one pass over the row, which an unconstrained step pays too). Below it, the model's
        # favourite is often rejected and the blocked search would visit many blocks: the gather is cheaper.
        if len(ids) > V // 4:
            ids = np.asarray(ids, dtype=np.int32)  # only read to build the bitmap: half the memory of intp
            self.dense: Dense | None = Dense(V, ids)
        else:
            # intp ids: NumPy converts int32 indices on every gather (65 µs vs 33 µs for 33k ids on 262k logits)
            ids = np.asarray(ids, dtype=np.intp)
            self.dense = None
        self._ids: np.ndarray | None = ids
        self.size = len(ids)
        self.has_eos = bool(np.any(ids == eos)) if has_eos is None else has_eos  # (the caller may know it)
        self.only_eos = self.has_eos and len(ids) == 1
        self._noeos: Mask | None = None

    @classmethod
    def from_sequences(cls, allowed: np.ndarray, tok_seq: np.ndarray, eos: int, eos_ok: bool, size: int, V: int) -> Mask:
        """A dense set (``size`` > V / 4 tokens) given as the automaton's allowed sequences: ``allowed`` bool[U + 1]
        per sequence (the last False, for tokens of sequence -1), ``tok_seq`` int32[V] token -> sequence, and
        whether EOS (which has no sequence) is in it. Nothing vocabulary-wide is built until asked for: the
        argmax checks membership in the two tables, a rejected favourite builds the bias of the blocks it
        searches, sampling the whole bias row, :attr:`ids` the ids."""
        m = cls.__new__(cls)
        m._ids = None
        m.dense = Dense(V, seq=(allowed, tok_seq, eos, eos_ok))
        m.size = size
        m.has_eos = eos_ok
        m.only_eos = eos_ok and size == 1
        m._noeos = None
        return m

    @property
    def ids(self) -> np.ndarray:
        """Sorted allowed ids (intp when sparse, int32 when dense)."""
        return self._ids if self._ids is not None else self.dense.all_ids()

    @property
    def nbytes(self) -> int:
        """What this set may come to hold: its ids (twice if it has EOS: the set without it), and a dense set's
        bitmap, bias row and complement (all built on demand)."""
        if self.dense is None:
            return self._ids.nbytes * (2 if self.has_eos else 1)
        V = self.dense.V
        return (4 * self.size + V // 8 + 4 * V + 4 * (V - self.size)) * (2 if self.has_eos else 1)

    def without_eos(self, V: int, eos: int) -> Mask:
        if self._noeos is None:
            seq = self.dense._seq if self.dense is not None else None
            if seq is not None:  # the same sequences without EOS
                self._noeos = Mask.from_sequences(seq[0], seq[1], eos, False, self.size - int(self.has_eos), V)
            else:
                self._noeos = Mask(self._ids[self._ids != eos], V, eos)
        return self._noeos


#: Memory bound of the tables derived from one automaton (masks, budget, healing and stop tables): past it the
#: derived tables are dropped, then the masks too, and rebuilt on demand. A dense mask on a 262k vocabulary holds
#: up to ~2 MB (ids, a -inf bias row, the complement), so an automaton with ~40 distinct dense masks
#: (``len(X) < N``) needs ~80-160 MB to keep all of them.
TABLE_BYTES = 256 << 20


class MaskTables:
    """Everything the decoder derives from one automaton: allowed sets by (mask id, final), forced-text runs,
    token-budget, healing and stop tables.

    Owned by the automaton (its ``tables`` attribute, see :func:`tables_of`), so they live exactly as long as it
    does. ``nbytes`` counts what they hold; :meth:`put` drops everything when a new entry would pass ``limit``.
    """

    __slots__ = (
        "masks", "runs", "budget", "heals", "warm", "stopping", "premin", "stops_only", "nbytes", "mask_bytes", "limit"
    )

    def __init__(self, limit: int = TABLE_BYTES) -> None:
        self.limit = limit
        self.nbytes = 0  # everything counted, masks included
        self.mask_bytes = 0
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
        self.stops_only: dict[tuple[tuple[bytes, bool], ...], Any] = {}  # see stops.without_stops

    def put(self, table: dict, key: Any, value: Any, nbytes: int) -> Any:
        """``table[key] = value``, counting ``nbytes``. Past the bound the derived tables are dropped first (cheap
        to rebuild), then the masks as well."""
        if self.nbytes + nbytes > self.limit:
            self.clear(masks=False)
            if self.nbytes + nbytes > self.limit:
                self.clear()
        table[key] = value
        self.nbytes += nbytes
        if table is self.masks:
            self.mask_bytes += nbytes
        return value

    def clear(self, *, masks: bool = True) -> None:
        """Drop the derived tables, and the masks too unless ``masks=False`` (all are rebuilt on demand)."""
        for table in (self.runs, self.budget, self.heals, self.stopping, self.premin, self.stops_only):
            table.clear()
        if masks:
            self.masks.clear()
            self.warm = False
            self.mask_bytes = 0
        self.nbytes = self.mask_bytes


def array_bytes(*values: Any) -> int:
    """Bytes held by the arrays among ``values`` (others count 64)."""
    return sum(v.nbytes if isinstance(v, np.ndarray) else 64 for v in values)


class PerObject:
    """A small LRU of values derived from objects (vocabularies), keyed by the object itself: an entry keeps its
    object alive and is found only for that very object."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[int, Any], tuple[Any, Any]] = OrderedDict()

    def get(self, obj: Any, key: Any, build: Callable[[], Any]) -> Any:
        k = (id(obj), key)
        entry = self._entries.get(k)
        if entry is not None and entry[0] is obj:
            self._entries.move_to_end(k)
            return entry[1]
        value = build()
        self._entries[k] = (obj, value)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value


_UNOWNED = PerObject(64)  # tables of automata that cannot hold them (no ``tables`` attribute)
_UNCONSTRAINED = PerObject(4)  # tables of unconstrained holes (healing), per vocabulary


def tables_of(automaton: Any) -> MaskTables:
    """The :class:`MaskTables` of an automaton, created on first use and kept on the automaton (``tables``)."""
    tables = getattr(automaton, "tables", None)
    if isinstance(tables, MaskTables):
        return tables
    tables = MaskTables()
    try:
        automaton.tables = tables
    except AttributeError:  # an automaton without the attribute: the identity-keyed LRU keeps its tables
        return _UNOWNED.get(automaton, None, lambda: tables)
    return tables


def unconstrained_tables(vocabulary: Any) -> MaskTables:
    """The tables of unconstrained holes over a vocabulary (their healed first-token tables)."""
    return _UNCONSTRAINED.get(vocabulary, None, MaskTables)


_VOCAB_TABLES = PerObject(8)


def token_info(backend: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """First byte (-1 if empty) and byte length of every token of the backend's vocabulary (cached per vocabulary)."""
    try:
        v = backend.vocabulary
        offsets, buffer = v.offsets, v.buffer
    except (ImportError, AttributeError):
        return None  # no vocabulary arrays: forced-text runs are simply not used

    def build() -> tuple[np.ndarray, np.ndarray]:
        lengths = np.diff(offsets)
        first = np.full(len(lengths), -1, np.int16)
        nz = lengths > 0
        first[nz] = buffer[offsets[:-1][nz]]
        return first, lengths

    return _VOCAB_TABLES.get(v, "token_info", build)


def _ragged(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The strings ``[start, start + length)`` laid end to end: (buffer index of each byte, its position in its
    string, where each string begins in the layout)."""
    first = np.cumsum(lengths) - lengths
    pos = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(first, lengths)
    return np.repeat(starts, lengths) + pos, pos, first


def _string_hashes(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, salt: int) -> np.ndarray:
    """A 64-bit polynomial hash of each string ``buffer[start : start + length]`` (vectorized over all bytes)."""
    out = np.full(len(starts), np.uint64(salt), np.uint64)
    if len(starts) and int(lengths.max()):
        at, pos, first = _ragged(starts, lengths)
        powers = np.cumprod(np.full(int(lengths.max()), np.uint64(0x100000001B3), np.uint64))
        with np.errstate(over="ignore"):
            terms = (buffer[at].astype(np.uint64) + np.uint64(1)) * powers[pos]
            nz = lengths > 0
            out[nz] += np.add.reduceat(terms, first[nz])
    with np.errstate(over="ignore"):
        out ^= lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return out


def _same_strings(buffer: np.ndarray, a: np.ndarray, b: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Whether ``buffer[a : a + n] == buffer[b : b + n]`` for each pair (same length ``n``)."""
    out = np.ones(len(a), bool)
    nz = lengths > 0
    if nz.any():
        at, pos, first = _ragged(a[nz], lengths[nz])
        equal = buffer[at] == buffer[np.repeat(b[nz], lengths[nz]) + pos]
        out[nz] = np.logical_and.reduceat(equal, first)
    return out


def piece_ids(v: Any, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The token id whose piece is ``v.buffer[start : start + length]``, for each (start, length); -2 if none.

    Among tokens with equal pieces the lowest id wins; ``never`` tokens are not candidates. Vectorized: the
    pieces are hashed and sorted once per vocabulary (with a salt under which different pieces never share a
    hash), looked up with ``searchsorted`` and confirmed byte by byte.
    """
    buffer = v.buffer
    offs = np.asarray(v.offsets, np.int64)

    def build() -> tuple[np.ndarray, np.ndarray, int]:
        ids = np.flatnonzero(~np.asarray(v.never))
        starts_all, lengths_all = offs[ids], np.diff(offs)[ids]
        for salt in range(1, 64):
            h = _string_hashes(buffer, starts_all, lengths_all, salt)
            order = np.lexsort((ids, h))  # by hash, then id: the lowest id of equal pieces comes first
            h, sid = h[order], ids[order]
            same = np.flatnonzero(h[1:] == h[:-1])
            la, lb = np.diff(offs)[sid[same]], np.diff(offs)[sid[same + 1]]
            if np.all(la == lb) and _same_strings(buffer, offs[sid[same]], offs[sid[same + 1]], la).all():
                return h, sid, salt
        raise AssertionError("no collision-free salt")  # pragma: no cover - 2**-40 per salt on 262k pieces

    keys, ids, salt = _VOCAB_TABLES.get(v, "piece_ids", build)
    starts = np.asarray(starts, np.int64)
    lengths = np.asarray(lengths, np.int64)
    out = np.full(len(starts), -2, np.int64)
    if not len(keys) or not len(starts):
        return out
    probe = _string_hashes(buffer, starts, lengths, salt)
    pos = np.minimum(np.searchsorted(keys, probe), len(keys) - 1)
    hit = np.flatnonzero(keys[pos] == probe)
    tok = ids[pos[hit]]
    ok = np.diff(offs)[tok] == lengths[hit]
    ok[ok] = _same_strings(buffer, offs[tok[ok]], starts[hit[ok]], lengths[hit[ok]])
    out[hit[ok]] = tok[ok]
    return out
