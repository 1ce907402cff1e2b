"""A model's vocabulary as plain data: token id -> bytes, plus constraint-independent precomputation.

The automaton builder never loops over tokens in Python; it works on the level arrays computed here once per
vocabulary: tokens that may appear in a value, sorted by byte length (longest first), so that the tokens with
more than ``d`` bytes are always a prefix of that order, and the ``d``-th byte of each of them stored
contiguously.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from lmqc.errors import VocabularyError


class Vocabulary:
    """Token pieces of one model.

    Parameters
    ----------
    pieces
        ``pieces[i]`` is the byte string token ``i`` detokenizes to (``b""`` for pieces that produce nothing).
    eos_id
        The end-of-sequence token; never allowed inside a value (the automaton adds it where a value may end).
    special_ids
        Control/special tokens, never allowed inside a value.

    Attributes
    ----------
    buffer : uint8[total_bytes]
        All pieces concatenated.
    offsets : int64[V + 1]
        Piece ``i`` is ``buffer[offsets[i]:offsets[i + 1]]``.
    never : bool[V]
        Tokens never allowed inside a value: special ids, EOS and zero-length pieces.
    """

    __slots__ = ("buffer", "offsets", "eos_id", "special_ids", "never", "_fingerprint", "_levels")

    def __init__(self, pieces: Sequence[bytes], eos_id: int, special_ids: Iterable[int] = ()) -> None:
        pieces = list(pieces)
        lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
        offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        buffer = np.frombuffer(b"".join(pieces), dtype=np.uint8).copy()
        self._init(buffer, offsets, int(eos_id), np.asarray(sorted(set(special_ids)), dtype=np.int64))

    def _init(self, buffer: np.ndarray, offsets: np.ndarray, eos_id: int, special: np.ndarray) -> None:
        n = len(offsets) - 1
        if n <= 0:
            raise VocabularyError("a vocabulary needs at least one token")
        if offsets[0] != 0 or offsets[-1] != len(buffer) or np.any(np.diff(offsets) < 0):
            raise VocabularyError("vocabulary offsets are inconsistent with its byte buffer")
        if not 0 <= eos_id < n:
            raise VocabularyError(f"eos id {eos_id} is outside the vocabulary (size {n})")
        if len(special) and (special.min() < 0 or special.max() >= n):
            raise VocabularyError("a special token id is outside the vocabulary")
        self.buffer = buffer
        self.offsets = offsets
        self.eos_id = eos_id
        self.special_ids = special
        never = np.diff(offsets) == 0
        never[special] = True
        never[eos_id] = True
        self.never = never
        self._fingerprint: str | None = None
        self._levels: _Levels | None = None

    # -- basic access ---------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.offsets) - 1

    def __len__(self) -> int:
        return self.size

    def piece(self, i: int) -> bytes:
        return self.buffer[self.offsets[i] : self.offsets[i + 1]].tobytes()

    @property
    def lengths(self) -> np.ndarray:
        """int64[V] byte length of every piece."""
        return np.diff(self.offsets)

    @property
    def fingerprint(self) -> str:
        """sha256 hex over every piece, the EOS id and the special ids (stable across processes)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(b"lmqc-vocab-v1")
            h.update(np.asarray([self.size, self.eos_id], dtype="<i8").tobytes())
            h.update(self.offsets.astype("<i8").tobytes())
            h.update(self.buffer.tobytes())
            h.update(self.special_ids.astype("<i8").tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # -- serialization --------------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "buffer": self.buffer,
            "offsets": self.offsets,
            "eos_id": np.asarray([self.eos_id], dtype=np.int64),
            "special_ids": self.special_ids,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Vocabulary:
        try:
            buffer = np.ascontiguousarray(arrays["buffer"], dtype=np.uint8)
            offsets = np.ascontiguousarray(arrays["offsets"], dtype=np.int64)
            eos = int(np.asarray(arrays["eos_id"]).reshape(-1)[0])
            special = np.asarray(arrays["special_ids"], dtype=np.int64).reshape(-1)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise VocabularyError(f"malformed vocabulary arrays: {e}") from None
        v = cls.__new__(cls)
        v._init(buffer, offsets, eos, special)
        return v

    # -- constraint-independent precomputation ----------------------------------------------------------------

    @property
    def levels(self) -> _Levels:
        """Level arrays for the automaton builder (computed once, cached)."""
        if self._levels is None:
            self._levels = _Levels.build(self)
        return self._levels

    def __repr__(self) -> str:
        return f"Vocabulary(size={self.size}, eos_id={self.eos_id}, fingerprint={self.fingerprint[:12]})"


def _byte_groups() -> np.ndarray:
    """uint8[256]: a label per byte such that the common wide constraints never tell bytes of one label apart.

    Every ASCII byte but the letters and digits is its own group; a-z, A-Z and 0-9 are one group each; the UTF-8
    continuation bytes split where a validating DFA splits them (80-8F, 90-9F, A0-BF), lead bytes by the
    sequences they start (C2-DF, E0, E1-EC, ED, EE-EF, F0, F1-F3, F4), and the bytes that never occur in UTF-8
    (C0, C1, F5-FF) are one group.
    """
    ranges = [range(b, b + 1) for b in range(128) if not chr(b).isalnum()]
    ranges += [range(97, 123), range(65, 91), range(48, 58), range(0x80, 0x90), range(0x90, 0xA0),
               range(0xA0, 0xC0), range(0xC2, 0xE0), range(0xE0, 0xE1), range(0xE1, 0xED), range(0xED, 0xEE),
               range(0xEE, 0xF0), range(0xF0, 0xF1), range(0xF1, 0xF4), range(0xF4, 0xF5)]
    groups = np.full(256, len(ranges), dtype=np.uint8)  # C0, C1, F5-FF
    for g, r in enumerate(ranges):
        groups[list(r)] = g
    return groups


BYTE_GROUP = _byte_groups()


class _Levels:
    """Candidate tokens (not ``never``) sorted by length, longest first, with their bytes stored by level.

    Attributes
    ----------
    tokens : int32[N]
        Candidate token ids in that order.
    lengths : int64[N]
        Their byte lengths (non-increasing).
    count : int64[L + 1]
        ``count[d]`` tokens have more than ``d`` bytes: they are ``tokens[:count[d]]``; ``count[L] == 0``.
    level_bytes : list of uint8[count[d]]
        ``level_bytes[d][i]`` is byte ``d`` of ``tokens[i]``.
    """

    __slots__ = ("tokens", "lengths", "count", "level_bytes", "_trie", "_group_trie")

    def __init__(self, tokens: np.ndarray, lengths: np.ndarray, count: np.ndarray, level_bytes: list) -> None:
        self.tokens = tokens
        self.lengths = lengths
        self.count = count
        self.level_bytes = level_bytes
        self._trie: _Trie | None = None
        self._group_trie: _Trie | None = None

    @property
    def trie(self) -> _Trie:
        """The byte trie of the candidate tokens (computed once, cached)."""
        if self._trie is None:
            self._trie = _Trie.build(self)
        return self._trie

    @property
    def group_trie(self) -> _Trie:
        """The trie of the candidate tokens over :data:`BYTE_GROUP` labels instead of bytes (computed once, cached).

        A DFA that never tells two bytes of one group apart (``len(X) < 50``, ``[^.]*``, ``[a-z0-9._]+``: ASCII
        letters, digits and UTF-8 continuation ranges move alike) behaves alike on tokens with the same labels:
        its walk can run over this trie, which has ~30,000 nodes on Gemma's vocabulary instead of ~590,000.
        """
        if self._group_trie is None:
            self._group_trie = _Trie.build(self, BYTE_GROUP)
        return self._group_trie

    @classmethod
    def build(cls, vocab: Vocabulary) -> _Levels:
        cand = np.flatnonzero(~vocab.never)
        lens = vocab.lengths[cand]
        # Stable sort keeps ids ascending within one length; that order is only an internal convenience.
        order = np.argsort(-lens, kind="stable")
        tokens = cand[order].astype(np.int32)
        lengths = lens[order]
        max_len = int(lengths[0]) if len(lengths) else 0
        # count[d] = number of tokens with length > d; lengths are non-increasing so use searchsorted on -len.
        count = np.searchsorted(-lengths, -np.arange(max_len + 1), side="left").astype(np.int64)
        starts = vocab.offsets[tokens]
        level_bytes = [vocab.buffer[starts[: count[d]] + d] for d in range(max_len)]
        return cls(tokens, lengths, count, level_bytes)


@dataclass(frozen=True, slots=True)
class TrieViews:
    """A :class:`_Trie` as a Python walk reads it: memoryviews of its per-depth arrays (indexing one costs a
    fraction of ``ndarray.item``, and ``bisect`` searches one directly) and two tables over first bytes.

    Attributes
    ----------
    child_ptr, byte, end_ptr, end_tok : list of memoryview
        The trie's arrays of the same names, per depth.
    root : list of int
        ``root[b]``: the depth-0 node of first byte ``b`` (-1 if no token starts with ``b``), 256 entries.
    fanout : float64[256]
        The number of depth-1 nodes under each first byte (0 where none).
    """

    child_ptr: list
    byte: list
    end_ptr: list
    end_tok: list
    root: list
    fanout: np.ndarray

    @classmethod
    def of(cls, trie: _Trie) -> TrieViews:
        root = np.full(256, -1, np.int64)
        fanout = np.zeros(256, np.float64)
        if trie.byte:
            root[trie.byte[0]] = np.arange(len(trie.byte[0]))
            if len(trie.child_ptr) > 1:
                fanout[trie.byte[0]] = np.diff(trie.child_ptr[1])
        return cls([memoryview(a) for a in trie.child_ptr], [memoryview(a) for a in trie.byte],
                   [memoryview(a) for a in trie.end_ptr], [memoryview(a) for a in trie.end_tok], root.tolist(), fanout)


class _Trie:
    """The byte trie of the candidate tokens, level by level: every distinct prefix of every token is one node.

    A vocabulary of 262,144 tokens has about 2 million bytes but under 600,000 distinct prefixes, so walking
    a DFA over the trie (``automaton._walk``) touches each shared prefix once instead of once per token. Nodes
    of one depth are sorted by (parent, byte), so the children of a node are one contiguous range of the next
    depth: a walk that has ruled out a prefix never looks at anything under it (a narrow language such as
    digits touches only the tokens that can start it).

    Attributes
    ----------
    parent : list of int32[N_d]
        ``parent[d][i]``: the node at depth ``d - 1`` that node ``i`` at depth ``d`` extends (0 at depth 0).
    byte : list of uint8[N_d]
        The last byte of each node at depth ``d``.
    end : list of int32
        ``end[d]``: the depth-``d`` node of each token with exactly ``d + 1`` bytes, in ``_Levels.tokens`` order
        (those tokens are ``tokens[count[d + 1]:count[d]]``).
    child_ptr : list of int64[N_{d-1} + 1]
        ``child_ptr[d][p]:child_ptr[d][p + 1]`` are the depth-``d`` children of node ``p`` at depth ``d - 1``
        (depth 0: one root, ``[0, N_0]``).
    end_ptr, end_tok : list of int64[N_d + 1], list of int32
        The tokens that end exactly at depth-``d`` node ``i`` are ``end_tok[d][end_ptr[d][i]:end_ptr[d][i + 1]]``
        (token ids, ascending).
    """

    __slots__ = ("parent", "byte", "end", "child_ptr", "end_ptr", "end_tok", "_views")

    def __init__(self, parent: list, byte: list, end: list, child_ptr: list, end_ptr: list, end_tok: list) -> None:
        self.parent = parent
        self.byte = byte
        self.end = end
        self.child_ptr = child_ptr
        self.end_ptr = end_ptr
        self.end_tok = end_tok
        self._views: TrieViews | None = None

    @property
    def views(self) -> TrieViews:
        """The trie for walks that visit nodes one at a time in Python (built once, cached)."""
        if self._views is None:
            self._views = TrieViews.of(self)
        return self._views

    @classmethod
    def build(cls, lv: _Levels, labels: np.ndarray | None = None) -> _Trie:
        """The trie of ``lv``'s tokens; with ``labels`` (uint8[256]), of their bytes' labels (``byte`` then holds
        labels, and tokens with the same label sequence end at the same node)."""
        parent: list[np.ndarray] = []
        byte: list[np.ndarray] = []
        end: list[np.ndarray] = []
        child_ptr: list[np.ndarray] = []
        end_ptr: list[np.ndarray] = []
        end_tok: list[np.ndarray] = []
        node = np.zeros(int(lv.count[0]) if len(lv.count) else 0, dtype=np.int64)  # per token: node at depth d-1
        n_prev = 1  # the root
        for d in range(len(lv.level_bytes)):
            k = int(lv.count[d])
            level = lv.level_bytes[d] if labels is None else labels[lv.level_bytes[d]]
            key = node[:k] * 256 + level
            uniq, inv = np.unique(key, return_inverse=True)
            par = (uniq // 256).astype(np.int32)
            parent.append(par)
            byte.append((uniq % 256).astype(np.uint8))
            child_ptr.append(np.searchsorted(par, np.arange(n_prev + 1)).astype(np.int64))
            node = inv.reshape(-1).astype(np.int64)
            e = node[int(lv.count[d + 1]) : k].astype(np.int32)
            end.append(e)
            toks = lv.tokens[int(lv.count[d + 1]) : k]
            order = np.lexsort((toks, e))
            end_tok.append(toks[order].astype(np.int32))
            end_ptr.append(np.searchsorted(e[order], np.arange(len(uniq) + 1)).astype(np.int64))
            n_prev = len(uniq)
        return cls(parent, byte, end, child_ptr, end_ptr, end_tok)
