"""The model interface the decoders use, the KV-cache slot manager, and a deterministic tiny test backend.

The protocol
------------
A backend evaluates several token sequences at once and returns next-token logits. Every backend here keeps a
fixed number of *slots* (llama.cpp sequence ids), each holding the tokens currently in its KV cache. A call
to :meth:`KVCacheBackend.eval` maps each requested context onto a slot so that as little as possible is
recomputed:

* the slot whose cached tokens share the longest common prefix with the context is reused, and only the
  divergent suffix is rolled back (``seq_rm``) and the new tokens are fed;
* when beams or samples fork, a slot that lost its own sequence gets the shared prefix copied from another slot
  (``seq_cp``) instead of recomputing it;
* when several contexts share a prefix that is in no slot yet (``sample(n=4)`` on a fresh prompt), that prefix
  is evaluated once and copied;
* all new tokens of all contexts go to the model in ONE batch (split only when longer than ``n_batch``).

Forced-token runs need nothing special: a context extended by k tokens since the last call simply feeds those
k tokens in the same batch.

Backends are single-threaded objects; logits returned by ``eval`` are a read-only view valid until the next
call (copy them to keep them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from lmqc.errors import DecodeError

if TYPE_CHECKING:
    from lmqc.compiler.vocabulary import Vocabulary

__all__ = ["Backend", "CacheFull", "EvalStats", "KVCacheBackend", "TinyBackend", "common_prefix_len"]


class CacheFull(DecodeError):
    """The model's KV cache has no room for a batch (nothing was written; the caller may free cells and retry)."""


@dataclass(slots=True)
class EvalStats:
    """Counters for tests and benchmarks.

    Attributes
    ----------
    eval_calls : int
        Calls of ``eval`` / ``eval_rows`` (one per decoding step for a whole batch of branches).
    decode_calls : int
        Batches sent to the model (``llama_decode`` calls).
    tokens : int
        Tokens fed to the model (cache hits are not counted).
    rows : int
        Logit rows the model produced.
    copies : int
        Prefix copies between slots (``seq_cp``).
    """

    eval_calls: int = 0
    decode_calls: int = 0
    tokens: int = 0
    rows: int = 0
    copies: int = 0

    def reset(self) -> None:
        self.eval_calls = self.decode_calls = self.tokens = self.rows = self.copies = 0


@runtime_checkable
class Backend(Protocol):
    """What the decoders need from a model.

    Attributes
    ----------
    n_vocab : int
        Logit width V.
    bos_id : int or None
        Token prepended to a prompt (None if the model uses none).
    eos_id : int
        End of sequence: ends a hole.
    n_ctx : int
        Longest context (tokens) one sequence may have.
    n_seq : int
        Sequences that can be evaluated together (beam/sample width must not exceed it for one batch).
    special_ids : np.ndarray
        int32, sorted: tokens never generated inside a value (control tokens and pieces that detokenize to
        nothing), EOS excluded. Unconstrained holes mask exactly these (except ``eog_ids``).
    eog_ids : np.ndarray
        int32 (optional attribute): other end-of-generation tokens (e.g. ``<end_of_turn>``); in an
        unconstrained hole they end the value like EOS and are never part of it.
    stats : EvalStats
    """

    n_vocab: int
    bos_id: int | None
    eos_id: int
    n_ctx: int
    n_seq: int
    special_ids: np.ndarray
    stats: EvalStats

    @property
    def vocabulary(self) -> Vocabulary: ...

    def tokenize(self, text: str | bytes, *, bos: bool = False) -> list[int]:
        """Token ids of ``text`` (no BOS unless ``bos``); never adds EOS."""
        ...

    def detokenize(self, ids: Sequence[int]) -> bytes:
        """The bytes the model prints for ``ids`` (control tokens print nothing)."""
        ...

    def piece(self, token: int) -> bytes:
        """Bytes of one token (as in ``detokenize([token])``)."""
        ...

    def eval(self, contexts: Sequence[Sequence[int]]) -> np.ndarray:
        """Next-token logits after each context: float32[B, V] (read-only, valid until the next call)."""
        ...

    def eval_rows(self, contexts: Sequence[Sequence[int]], rows: Sequence[int]) -> list[np.ndarray]:
        """Logits of the last ``rows[i]`` positions of each context: list of float32[rows[i], V].

        Row j of context i (length L) is the distribution of the token at position ``L - rows[i] + j + 1``;
        the last row is the next-token distribution. Used to score forced runs and ``distribution`` options.
        """
        ...

    def reset(self) -> None:
        """Forget every cached sequence."""
        ...


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences (vectorized; fast path for extensions)."""
    m = min(len(a), len(b))
    if m == 0:
        return 0
    # The common case in decoding: one sequence extends the other. List slice equality runs in C.
    if list(a[:m]) == list(b[:m]):
        return m
    x = np.asarray(a[:m], dtype=np.int64)
    y = np.asarray(b[:m], dtype=np.int64)
    return int(np.flatnonzero(x != y)[0])


class KVCacheBackend:
    """Slot bookkeeping shared by every backend; subclasses implement the four model primitives.

    Subclasses set ``n_vocab``, ``bos_id``, ``eos_id``, ``n_ctx``, ``n_seq``, ``n_batch``, ``special_ids`` and
    implement ``_decode``, ``_seq_rm``, ``_seq_cp`` and ``_clear``.
    """

    n_vocab: int
    bos_id: int | None
    eos_id: int
    n_ctx: int
    n_seq: int
    n_batch: int
    special_ids: np.ndarray

    #: A shared uncached prefix at least this long is evaluated once and copied into the other slots.
    SHARE_MIN = 4

    def __init__(self) -> None:
        self.stats = EvalStats()
        self._slots: list[list[int]] = [[] for _ in range(self.n_seq)]
        self._active: set[int] = set()  # slots the current call reads or writes

    # -- primitives (subclass) --------------------------------------------------------------------------------

    def _decode(
        self, tokens: np.ndarray, positions: np.ndarray, seq_ids: np.ndarray, want: np.ndarray
    ) -> np.ndarray:
        """Feed one batch; return float32[want.sum(), V] logits of the rows flagged in ``want``, in order."""
        raise NotImplementedError

    def _seq_rm(self, seq: int, p0: int) -> None:
        """Drop cached positions ``>= p0`` of sequence ``seq``."""
        raise NotImplementedError

    def _seq_cp(self, src: int, dst: int, p1: int) -> None:
        """Make positions ``[0, p1)`` of ``src`` visible to ``dst`` (``dst`` is empty)."""
        raise NotImplementedError

    def _clear(self) -> None:
        raise NotImplementedError

    # -- public -----------------------------------------------------------------------------------------------

    def reset(self) -> None:
        self._clear()
        self._slots = [[] for _ in range(self.n_seq)]

    def eval(self, contexts: Sequence[Sequence[int]]) -> np.ndarray:
        """Next-token logits after each context.

        Parameters
        ----------
        contexts : sequence of token-id sequences, B of them, each non-empty

        Returns
        -------
        np.ndarray
            float32[B, V], read-only; valid until the next call on this backend.
        """
        out = self._eval(contexts, [1] * len(contexts))
        if isinstance(out, np.ndarray):
            return out
        return np.concatenate(out, axis=0)

    def eval_rows(self, contexts: Sequence[Sequence[int]], rows: Sequence[int]) -> list[np.ndarray]:
        """Logits of the last ``rows[i]`` positions of each context (see :class:`Backend`)."""
        out = self._eval(contexts, list(rows))
        if isinstance(out, np.ndarray):
            offs = np.concatenate([[0], np.cumsum(rows)])
            return [out[offs[i] : offs[i + 1]] for i in range(len(rows))]
        return out

    # -- slot planning ----------------------------------------------------------------------------------------

    def _eval(self, contexts: Sequence[Sequence[int]], rows: list[int]) -> np.ndarray | list[np.ndarray]:
        self.stats.eval_calls += 1
        if not contexts:
            return np.zeros((0, self.n_vocab), np.float32)
        for ctx, r in zip(contexts, rows, strict=True):
            if len(ctx) == 0:
                raise DecodeError("cannot evaluate an empty context (a prompt needs at least one token)")
            if len(ctx) > self.n_ctx:
                raise DecodeError(f"context of {len(ctx)} tokens exceeds the model's context size n_ctx={self.n_ctx}")
            if not 1 <= r <= len(ctx):
                raise DecodeError(f"cannot return {r} logit rows for a context of {len(ctx)} tokens")
        if len(contexts) <= self.n_seq:
            return self._eval_group(contexts, rows)
        # More sequences than slots: evaluate in groups (correct, but each group is its own batch).
        parts: list[np.ndarray] = []
        for g in range(0, len(contexts), self.n_seq):
            res = self._eval_group(contexts[g : g + self.n_seq], rows[g : g + self.n_seq])
            parts.extend(self._split(res, rows[g : g + self.n_seq]))
        return parts

    @staticmethod
    def _split(res: np.ndarray, rows: Sequence[int]) -> list[np.ndarray]:
        offs = np.concatenate([[0], np.cumsum(rows)]).astype(int)
        return [np.array(res[offs[i] : offs[i + 1]]) for i in range(len(rows))]

    def _eval_group(self, contexts: Sequence[Sequence[int]], rows: list[int]) -> np.ndarray:
        B, S = len(contexts), self.n_seq
        # Positions below `limit` may be served from the cache; the rows we need must be recomputed.
        limit = [len(c) - r for c, r in zip(contexts, rows, strict=True)]
        self._share_prefix(contexts, limit)
        lcp = [[min(common_prefix_len(c, s), lim) for s in self._slots] for c, lim in zip(contexts, limit, strict=True)]

        # 1. Assign contexts to slots, longest reuse first.
        slot_of = [-1] * B
        taken = [False] * S
        pairs = sorted(((lcp[i][s], i, s) for i in range(B) for s in range(S)), reverse=True)
        for _, i, s in pairs:
            if slot_of[i] < 0 and not taken[s]:
                slot_of[i] = s
                taken[s] = True
        keep = [lcp[i][slot_of[i]] for i in range(B)]
        self._active = set(slot_of)
        # What each slot still holds after its own rollback (unassigned slots keep everything).
        holds = [len(t) for t in self._slots]
        for i in range(B):
            holds[slot_of[i]] = keep[i]

        # 2. Copies: a context whose own slot shares little takes a longer prefix from another slot. A slot is
        # either a source or a destination, never both, so the copies can run in any order.
        sources: set[int] = set()
        dests: set[int] = set()
        copies: list[tuple[int, int, int]] = []
        for i in range(B):
            d = slot_of[i]
            best, best_s = keep[i], -1
            for s in range(S):
                if s == d or s in dests:
                    continue
                g = min(lcp[i][s], holds[s])
                if g > best:
                    best, best_s = g, s
            if best_s >= 0 and d not in sources:
                self._active.add(best_s)
                copies.append((best_s, d, best))
                sources.add(best_s)
                dests.add(d)
                keep[i] = best

        # 3. Execute: copies first (they only read positions every source keeps), then rollbacks.
        for s, d, g in copies:
            self._seq_rm(d, 0)
            self._seq_cp(s, d, g)
            self._slots[d] = self._slots[s][:g]
            self.stats.copies += 1
        for i in range(B):
            d = slot_of[i]
            if d not in dests and len(self._slots[d]) > keep[i]:
                self._seq_rm(d, keep[i])
                del self._slots[d][keep[i] :]

        # 4. One batch with every new token of every context.
        toks: list[int] = []
        pos: list[int] = []
        seq: list[int] = []
        want: list[bool] = []
        for i, c in enumerate(contexts):
            n = len(c) - keep[i]
            toks.extend(c[keep[i] :])
            pos.extend(range(keep[i], len(c)))
            seq.extend([slot_of[i]] * n)
            want.extend([False] * (n - rows[i]) + [True] * rows[i])
        out = self._feed_or_undo(
            np.asarray(toks, np.int32), np.asarray(pos, np.int32), np.asarray(seq, np.int32), np.asarray(want),
            {slot_of[i]: keep[i] for i in range(B)},
        )
        # Recorded only now: a feed that fails part-way must not leave a slot claiming tokens the cache lacks
        # (the next call, perhaps another client's, would reuse them and read a truncated context).
        for i, c in enumerate(contexts):
            self._slots[slot_of[i]] = list(c)
        return out

    def _share_prefix(self, contexts: Sequence[Sequence[int]], limit: list[int]) -> None:
        """Evaluate a prefix shared by several contexts once, if no slot holds it yet."""
        if len(contexts) < 2:
            return
        shared = min(limit)
        first = contexts[0]
        for c in contexts[1:]:
            shared = min(shared, common_prefix_len(first, c))
            if shared < self.SHARE_MIN:
                return
        cached = max(common_prefix_len(first[:shared], s) for s in self._slots)
        if shared - cached < self.SHARE_MIN:
            return
        # Put it in the slot that already holds the most of it; the planner then copies it to the others.
        s = max(range(self.n_seq), key=lambda k: (common_prefix_len(first[:shared], self._slots[k]), -len(self._slots[k])))
        self._active = {s}
        have = common_prefix_len(first[:shared], self._slots[s])
        if len(self._slots[s]) > have:
            self._seq_rm(s, have)
            del self._slots[s][have:]
        n = shared - have
        self._feed_or_undo(
            np.asarray(first[have:shared], np.int32),
            np.arange(have, shared, dtype=np.int32),
            np.full(n, s, np.int32),
            np.zeros(n, bool),
            {s: have},
        )
        self._slots[s] = list(first[:shared])

    def _feed_or_undo(
        self, toks: np.ndarray, pos: np.ndarray, seq: np.ndarray, want: np.ndarray, kept: dict[int, int]
    ) -> np.ndarray:
        """``_feed``; if it fails, the slots it wrote (``kept``: slot -> cached length before the feed) are rolled
        back to what they held, so the cache and ``_slots`` agree again.

        A long feed goes to the model in chunks: the chunks before a failing one (a full cache) are in the cache.
        Rolling them back makes the failure leave nothing behind, so a caller may retry (alone, or after freeing
        cells) on a consistent cache. If even the rollback fails, everything is forgotten.
        """
        try:
            return self._feed(toks, pos, seq, want)
        except BaseException:
            try:
                for s, k in kept.items():
                    self._seq_rm(s, k)
                    del self._slots[s][k:]
            except BaseException:  # noqa: BLE001 - the original error is the one to report
                self.reset()
            raise

    def _feed(self, toks: np.ndarray, pos: np.ndarray, seq: np.ndarray, want: np.ndarray) -> np.ndarray:
        n = len(toks)
        self.stats.tokens += n
        self.stats.rows += int(want.sum())
        if n <= self.n_batch:
            return self._decode_retry(toks, pos, seq, want)
        parts = []
        for a in range(0, n, self.n_batch):
            b = a + self.n_batch
            out = self._decode_retry(toks[a:b], pos[a:b], seq[a:b], want[a:b])
            if len(out):
                parts.append(np.array(out))  # the model's buffer is reused by the next chunk
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, self.n_vocab), np.float32)

    def _decode_retry(self, toks: np.ndarray, pos: np.ndarray, seq: np.ndarray, want: np.ndarray) -> np.ndarray:
        """Decode; when the cache is full, drop the sequences this call does not use and try once more."""
        self.stats.decode_calls += 1
        try:
            return self._decode(toks, pos, seq, want)
        except CacheFull:
            idle = [s for s in range(self.n_seq) if s not in self._active and self._slots[s]]
            if not idle:
                raise
            for s in idle:
                self._seq_rm(s, 0)
                self._slots[s] = []
            return self._decode(toks, pos, seq, want)


# ---------------------------------------------------------------------------------------------------------------
# The tiny deterministic backend
# ---------------------------------------------------------------------------------------------------------------

_TINY_WORDS = [
    # words and sub-words, with and without a leading space
    "the", " the", " a", " an", "hello", "Hello", " Hello", " hello", "world", " world", " Bob", "Bob", " is",
    " was", " not", " and", " or", " of", " to", " in", " it", "it", " I", "I", " you", " say", " said",
    "positive", " positive", "negative", " negative", "neutral", " neutral", "pos", "neg", "neu", "itive", "ative",
    "tral", "Q", "A", ":", ": ", " :", "'", "\"", " \"", "\",", "\":", "{\"", "\"}", "{", "}", " {", "[", "]",
    "name", "age", " age", "Alice", " Alice", "Ann", " Ann", "email", "@", ".", ". ", ".\n", ",", ", ", "!", "?",
    "!\n", "\n", "\n\n", " ", "  ", "    ", "\t", "-", " -", "_", "com", ".com", "org", ".org", "net", ".net",
    "mail", "example", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "12", "19", "20", "42", "99",
    "100", "123", "2024", "-0", " 1", " 2", " 3", " 42", " 7", "ab", "abc", "de", "er", "ing", " ing", "ed",
    "ly", "th", "he", "in", "on", "at", "st", "re", "es", "yes", "no", " yes", " no", "Yes", "No", "ok",
    # multi-byte UTF-8, whole and split across tokens
    "é", "ü", "ß", "ñ", "日本", "日", "本", "語", "€", "👍", " é", "café", "naïve", "\u00e9t\u00e9",
]
# Pieces that split a UTF-8 character, as byte-level BPE vocabularies have.
_TINY_RAW = [b"\xc3", b"\xe6\x97", b"\xa5\xe6\x9c\xac", b"\xf0\x9f", b"\x91\x8d"]


class TinyBackend(KVCacheBackend):
    """A deterministic backend with no weights, for fast unit tests.

    Vocabulary (~430 tokens): ``<pad>`` (0), ``<bos>`` (1), ``<eos>`` (2), ``<unused0>`` (3, prints nothing),
    256 byte tokens ``<0xNN>`` (4..259, each one raw byte), then words, sub-words, digits, punctuation and
    multi-byte UTF-8 pieces (some of them split mid-character, like a real byte-level vocabulary).

    The logits of the token after position p are a fixed function of the tokens at p-1 and p and of p itself:
    a seeded bigram table, a hashed trigram table and an end-of-sequence bias growing with p, so argmax, beam
    and sample disagree and unconstrained text ends eventually. The model keeps a simulated KV cache per slot
    and computes logits only from what is cached, so a slot-management bug shows up as wrong logits (compare
    :meth:`reference_logits`, the stateless truth).
    """

    def __init__(
        self, *, seed: int = 0, n_seq: int = 8, n_ctx: int = 512, n_batch: int = 64, n_cells: int | None = None
    ) -> None:
        pieces: list[bytes] = [b"", b"", b"", b""]
        pieces += [bytes([b]) for b in range(256)]
        pieces += [w.encode("utf-8") for w in _TINY_WORDS] + _TINY_RAW
        self.pieces = pieces
        self.n_vocab = len(pieces)
        self.bos_id = 1
        self.eos_id = 2
        self.n_ctx = n_ctx
        self.n_seq = n_seq
        self.n_batch = n_batch
        self.n_cells = n_cells  # simulated KV capacity (cells summed over sequences), None = unlimited
        self.special_ids = np.array([0, 1, 3], np.int32)
        self.eog_ids = np.zeros(0, np.int32)
        self._byte_tokens = range(4, 260)
        rng = np.random.default_rng(seed)
        V = self.n_vocab
        self._bigram = (rng.standard_normal((V, V)) * 2.0).astype(np.float32)
        self._trigram = (rng.standard_normal((61, V)) * 1.5).astype(np.float32)
        # Byte tokens are a fallback: a real model rarely prefers them.
        self._bigram[:, 4:260] -= 3.0
        self._bigram[:, 0] = self._bigram[:, 1] = self._bigram[:, 3] = -5.0
        self._eos_base = np.float32(-4.0)
        # Longest-match tokenizer over bytes; named pieces win over byte tokens of the same bytes.
        self._piece_id: dict[bytes, int] = {}
        for i in range(4, V):
            if i >= 260 or pieces[i] not in self._piece_id:
                self._piece_id[pieces[i]] = i
        self._max_piece = max(len(p) for p in pieces)
        self._kv: list[dict[int, int]] = [{} for _ in range(n_seq)]
        self._vocab: Vocabulary | None = None
        super().__init__()

    # -- vocabulary and text ----------------------------------------------------------------------------------

    @property
    def vocabulary(self) -> Vocabulary:
        if self._vocab is None:
            from lmqc.compiler.vocabulary import Vocabulary

            self._vocab = Vocabulary(self.pieces, self.eos_id, special_ids=[0, 1, 3])
        return self._vocab

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in self.pieces:
            h.update(len(p).to_bytes(2, "little") + p)
        return h.hexdigest()

    def tokenize(self, text: str | bytes, *, bos: bool = False, special: bool = False) -> list[int]:
        # ``special`` (parse control-token texts) is accepted for LlamaBackend's signature and ignored: this
        # vocabulary has no control-token texts, and TinyBackend has no chat template (chat_format is plain).
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        out = [self.bos_id] if bos else []
        i = 0
        while i < len(data):
            for n in range(min(self._max_piece, len(data) - i), 0, -1):
                tok = self._piece_id.get(data[i : i + n])
                if tok is not None:
                    out.append(tok)
                    i += n
                    break
        return out

    def detokenize(self, ids: Sequence[int]) -> bytes:
        return b"".join(self.pieces[int(i)] for i in ids)

    def piece(self, token: int) -> bytes:
        return self.pieces[int(token)]

    # -- the "model" ------------------------------------------------------------------------------------------

    def _row(self, prev2: int, prev: int, pos: int) -> np.ndarray:
        row = self._bigram[prev] + self._trigram[(prev2 * 31 + prev) % 61]
        row = row.copy()
        row[self.eos_id] = self._eos_base + 0.25 * pos
        return row

    def reference_logits(self, context: Sequence[int]) -> np.ndarray:
        """Stateless next-token logits after ``context``: float32[V]."""
        prev = int(context[-1])
        prev2 = int(context[-2]) if len(context) > 1 else 0
        return self._row(prev2, prev, len(context) - 1)

    def _decode(self, tokens: np.ndarray, positions: np.ndarray, seq_ids: np.ndarray, want: np.ndarray) -> np.ndarray:
        if self.n_cells is not None and sum(map(len, self._kv)) + len(tokens) > self.n_cells:
            raise CacheFull(f"tiny KV cache full ({self.n_cells} cells)")
        for t, p, s in zip(tokens.tolist(), positions.tolist(), seq_ids.tolist(), strict=True):
            kv = self._kv[s]
            if p in kv:
                raise RuntimeError(f"tiny KV cache: position {p} of sequence {s} written twice")
            if p > 0 and p - 1 not in kv:
                raise RuntimeError(f"tiny KV cache: position {p} of sequence {s} written before {p - 1}")
            kv[p] = t
        out = []
        for t, p, s, w in zip(tokens.tolist(), positions.tolist(), seq_ids.tolist(), want.tolist(), strict=True):
            if w:
                kv = self._kv[s]
                out.append(self._row(kv.get(p - 1, 0), t, p))
        if not out:
            return np.zeros((0, self.n_vocab), np.float32)
        res = np.stack(out)
        res.flags.writeable = False
        return res

    def _seq_rm(self, seq: int, p0: int) -> None:
        kv = self._kv[seq]
        for p in [p for p in kv if p >= p0]:
            del kv[p]

    def _seq_cp(self, src: int, dst: int, p1: int) -> None:
        for p, t in self._kv[src].items():
            if p < p1:
                self._kv[dst][p] = t

    def _clear(self) -> None:
        self._kv = [{} for _ in range(self.n_seq)]
