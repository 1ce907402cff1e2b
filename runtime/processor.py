"""A llama-cpp-python ``logits_processor`` that applies a token automaton during ``Llama.create_completion``.

For users who drive llama-cpp-python themselves but want lmqc's compiled constraints::

    import lmqc
    from llama_cpp import Llama, LogitsProcessorList
    from lmqc.runtime.models import resolve_model
    from lmqc.runtime.processor import AutomatonLogitsProcessor

    q = lmqc.compile('"Age: [AGE]" where INT(AGE)', model="gemma-3-270m")
    llm = Llama(model_path=resolve_model("gemma-3-270m"), verbose=False)
    proc = AutomatonLogitsProcessor(q.automaton("AGE"))          # one processor per completion call
    out = llm.create_completion("Q: How old is the Eiffel tower?\\nA: ", max_tokens=8, temperature=0,
                                logits_processor=LogitsProcessorList([proc]))
    out["choices"][0]["text"]   # satisfies INT

The processor sees ``(input_ids, scores)`` before every sampled token. It remembers how many ids the first call
saw (the prompt), advances the automaton over every id generated since, and masks ``scores`` in place:
disallowed tokens get ``-inf`` (a gather for small allowed sets, the complement for large ones). When the
automaton is final and nothing else may follow, only end-of-sequence remains, so the completion stops there;
after a stop phrase completes (``is_stopped``) only end-of-sequence is allowed too.

The token budget (``len(TOKENS(X)) < N``), ``STOPS_BEFORE`` cutting and the other decoding features of
:func:`lmqc.runtime.decode.decode_hole` are not applied here; pass ``max_tokens``/``stop`` to llama-cpp-python.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmqc.errors import DecodeError

__all__ = ["AutomatonLogitsProcessor"]


class AutomatonLogitsProcessor:
    """Mask llama-cpp-python scores by a :class:`~lmqc.compiler.automaton.TokenAutomaton`.

    Parameters
    ----------
    automaton : TokenAutomaton
        Built for the same vocabulary as the ``Llama`` model (compare ``vocabulary.fingerprint``).
    pieces : callable, optional
        ``token id -> bytes``, used only to fill :attr:`value` (e.g. ``vocabulary.piece``).

    Attributes
    ----------
    state : int
        Current automaton state (-1 once a generated token was rejected, which cannot happen while this
        processor is the last one in the list).
    tokens : list[int]
        Tokens generated before the latest call (the completion's very last token is sampled after the last
        call, so it is not seen here: read the final text from the completion itself).
    """

    def __init__(self, automaton: Any, pieces: Any = None) -> None:
        self.automaton = automaton
        self.eos_id = int(automaton.eos_id)
        self.state = int(automaton.initial)
        self.tokens: list[int] = []
        self._pieces = pieces
        self._start: int | None = None
        self._masks: dict[tuple[int, bool], tuple[np.ndarray, np.ndarray | None]] = {}

    @property
    def value(self) -> bytes:
        """Bytes of :attr:`tokens` (needs ``pieces``)."""
        if self._pieces is None:
            raise DecodeError("AutomatonLogitsProcessor.value needs pieces= (e.g. vocabulary.piece)")
        return b"".join(self._pieces(t) for t in self.tokens)

    def _advance(self, input_ids: np.ndarray) -> None:
        if self._start is None:
            self._start = len(input_ids)
        a = self.automaton
        for tok in input_ids[self._start + len(self.tokens) :].tolist():
            self.tokens.append(int(tok))
            if tok == self.eos_id or self.state < 0:
                continue
            self.state = a.step(self.state, int(tok))

    def _allowed(self, n_vocab: int) -> tuple[np.ndarray, np.ndarray | None]:
        a = self.automaton
        if self.state < 0:
            raise DecodeError("a token outside the constraint was generated (another logits processor ran last?)")
        if a.is_stopped(self.state):
            return np.array([self.eos_id], np.int32), None
        key = (a.mask_id(self.state), bool(a.is_final(self.state)))
        cached = self._masks.get(key)
        if cached is None:
            ids = np.asarray(a.allowed(self.state), dtype=np.int32)
            comp = None
            if len(ids) > n_vocab // 2:  # dense: cheaper to mask what is not allowed
                keep = np.ones(n_vocab, bool)
                keep[ids] = False
                comp = np.flatnonzero(keep)
            cached = (ids, comp)
            self._masks[key] = cached
        return cached

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Mask ``scores`` (float32[V], the next-token logits) in place and return it."""
        if getattr(self.automaton, "unconstrained", False):
            return scores
        self._advance(np.asarray(input_ids))
        ids, comp = self._allowed(len(scores))
        if comp is not None:
            scores[comp] = -np.inf
        else:
            kept = scores[ids].copy()
            scores[:] = -np.inf
            scores[ids] = kept
        return scores
