"""The types of the hole-decoding seam: what one hole is (:class:`HoleSpec`), what one decode asks for
(:class:`DecodeRequest`), what it returns (:class:`Completion`), and who serves it (:class:`DecoderService`:
the in-process decoder, ``runtime.service.LocalDecoder``, and the client of ``lmqc serve``,
``runtime.client.RemoteModel``).

A hole's settings are built once from its IR (:meth:`HoleSpec.from_ir`) and travel as one value through the
query driver, the engine, the wire protocol (``runtime.protocol``) and the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lmqc.errors import DecodeError

from .stops import StopRule, is_stop_rule, stop_pair
from .strategies import Argmax, Beam, Strategy

__all__ = ["Completion", "DecodeRequest", "DecoderService", "HoleSpec"]


@dataclass(frozen=True, slots=True)
class HoleSpec:
    """One hole as the decoder sees it.

    Attributes
    ----------
    automaton : TokenAutomaton or None
        The hole's token automaton; ``None`` (or ``automaton.unconstrained``) means any text up to EOS (control
        tokens other than EOS are never chosen).
    stops : tuple of (phrase bytes, keep) pairs
        Stop rules, normalized from ``compiler.ir.Stop`` values or ``(str | bytes, bool)`` pairs. Generation
        ends at the first occurrence; the value is cut there (``keep`` keeps the phrase).
    min_tokens, max_tokens : int, int or None
        Token window of the value (EOS excluded): EOS is not allowed before ``min_tokens``; with ``r`` tokens
        left only tokens after which the automaton can still end within ``r - 1`` more are allowed, and the
        hole ends (``"max_tokens"``) when the budget is used.
    heal : bool
        Token healing at the prompt/hole boundary: the context's last token (e.g. a trailing space) is taken
        back and the first generated token must re-spell its bytes, followed by a valid start of the value
        (for a constrained hole: nothing, or one token the automaton allows first). So ``"A: "`` can continue
        with the model's natural ``" 42"`` instead of a space token followed by ``"42"``. The value and the
        returned context are unchanged in meaning: the context still detokenizes to prompt + value.

    Two specs are equal when they hold the same automaton object and equal settings, so the branches of one
    hole share its tables.
    """

    automaton: Any = None
    stops: tuple[StopRule, ...] = ()
    min_tokens: int = 0
    max_tokens: int | None = None
    heal: bool = False

    def __post_init__(self) -> None:
        stops = self.stops
        if isinstance(stops, str | bytes) or is_stop_rule(stops):
            raise DecodeError("stops must be a sequence of stop rules, e.g. [Stop('\\n', keep=False)]")
        object.__setattr__(self, "stops", tuple(stop_pair(s) for s in stops))
        object.__setattr__(self, "min_tokens", int(self.min_tokens or 0))
        if self.max_tokens is not None:
            object.__setattr__(self, "max_tokens", int(self.max_tokens))
        object.__setattr__(self, "heal", bool(self.heal))

    @classmethod
    def from_ir(cls, ir: Any, automaton: Any, *, heal: bool = True) -> HoleSpec:
        """The spec of a compiled hole: its automaton and the stops and token window of its ``HoleIR``."""
        return cls(automaton, tuple(ir.stops), int(ir.min_tokens), ir.max_tokens, heal)

    @property
    def unconstrained(self) -> bool:
        return self.automaton is None or bool(getattr(self.automaton, "unconstrained", False))


@dataclass(frozen=True, slots=True)
class DecodeRequest:
    """One hole for a batch of branches.

    Attributes
    ----------
    contexts : tuple of B token-id lists
        Each branch's context (prompt so far, ending where the hole starts). For ``sample(n=k)`` pass the same
        context k times: each copy is sampled independently.
    specs : tuple of B :class:`HoleSpec`
        The hole of each branch (usually one spec repeated; :meth:`of` broadcasts one).
    strategy : Argmax | Sample | Beam
    max_len : int, optional
        Limit on the total context length in tokens (prompt plus everything generated), as LMQL's ``max_len``;
        always capped by the model's ``n_ctx``. Reaching it ends the hole with ``"max_len"``.
    rng : numpy.random.Generator
        Randomness for ``Sample`` (draws happen in branch order, so a seed reproduces the samples; an int or
        None given here becomes ``np.random.default_rng(rng)``).
    scores : tuple of B floats, optional
        Incoming score of each branch (beam search over several holes ranks by the running total).
    score : bool, optional
        Compute log-probabilities (default: only for beam search, which needs them).
    forced_text : bool
        Fast-forward text the automaton forces (every allowed token starts with the same byte, repeatedly):
        the forced bytes are tokenized as the model tokenizes text and appended without sampling, reaching the
        model in one batch. With ``False`` only single forced tokens (``automaton.forced``) are skipped.
    """

    contexts: tuple[list[int], ...]
    specs: tuple[HoleSpec, ...]
    strategy: Strategy = field(default_factory=Argmax)
    max_len: int | None = None
    rng: Any = None
    scores: tuple[float, ...] | None = None
    score: bool | None = None
    forced_text: bool = True

    def __post_init__(self) -> None:
        contexts = tuple(list(c) for c in self.contexts)
        specs = tuple(self.specs)
        if len(specs) != len(contexts):
            raise DecodeError(f"specs: got {len(specs)} entries for {len(contexts)} branches")
        if not all(isinstance(s, HoleSpec) for s in specs):
            raise DecodeError("specs must be HoleSpec values")
        object.__setattr__(self, "contexts", contexts)
        object.__setattr__(self, "specs", specs)
        if self.scores is not None:
            scores = tuple(float(x) for x in self.scores)
            if len(scores) != len(contexts):
                raise DecodeError(f"scores: got {len(scores)} entries for {len(contexts)} branches")
            object.__setattr__(self, "scores", scores)
        if not isinstance(self.rng, np.random.Generator):
            object.__setattr__(self, "rng", np.random.default_rng(self.rng))
        if self.max_len is not None:
            object.__setattr__(self, "max_len", int(self.max_len))

    @classmethod
    def of(cls, contexts: Sequence[Sequence[int]], spec: HoleSpec | Sequence[HoleSpec], **kwargs: Any) -> DecodeRequest:
        """A request for ``contexts`` with one spec for every branch (or one per branch)."""
        specs = (spec,) * len(contexts) if isinstance(spec, HoleSpec) else tuple(spec)
        return cls(tuple(contexts), specs, **kwargs)

    @property
    def width(self) -> int:
        """Most sequences one step of this request evaluates (a beam: its width after the first step)."""
        n = len(self.contexts)
        return max(n, self.strategy.n) if isinstance(self.strategy, Beam) else n

    @property
    def scoring(self) -> bool:
        """Whether log-probabilities are computed (beam search always needs them)."""
        return isinstance(self.strategy, Beam) if self.score is None else bool(self.score)


class DecoderService(Protocol):
    """What the query driver needs of a model: tokenization, hole decoding and option scoring.

    Implemented in-process by ``runtime.service.LocalDecoder`` and against ``lmqc serve`` by
    ``runtime.client.RemoteModel``; both give the same results for the same request.
    """

    @property
    def vocabulary(self) -> Any: ...

    @property
    def fingerprint(self) -> str: ...

    def begin(self) -> None:
        """Start a query (in-process: from an empty KV cache, so a seeded sample does not depend on history)."""

    def tokenize(self, text: str | bytes, *, bos: bool = False, special: bool = False) -> list[int]: ...

    def decode(self, request: DecodeRequest) -> list[Completion]:
        """Fill one hole for every branch of ``request`` (see ``runtime.decode.decode``)."""

    def score_options(self, context: Sequence[int], options: Sequence[Sequence[int]]) -> np.ndarray: ...


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
