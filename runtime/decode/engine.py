"""The hole-decoding engine: :class:`HoleRun` steps every sequence of one hole together, and
:func:`decode_hole` runs it to the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lmqc.errors import DecodeError

from .beam import beam_search
from .hole import HoleTables
from .masks import INF_TOKENS
from .request import Completion
from .scoring import eval_seqs, lse
from .sequences import Seq, Sequencer, raise_dead
from .stops import is_stop_rule
from .strategies import Argmax, Beam, Sample, Strategy, choose_argmax, choose_sample, parse_strategy

__all__ = ["HoleRun", "decode_hole", "hole_limits"]


def _per_branch(value: Any, B: int, name: str, *, is_scalar: Any) -> list[Any]:
    if is_scalar(value):
        return [value] * B
    out = list(value)
    if len(out) != B:
        raise DecodeError(f"{name}: got {len(out)} entries for {B} branches")
    return out


def decode_hole(
    backend: Any,
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
        backend: Any,
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
        self._todo: list[Seq] | None = None
        self.seqs: list[Seq] = []
        self.dec: Sequencer | None = None
        if B == 0:  # nothing to decode: no checks, no backend access (as decode_hole always did)
            self.done = True
            self.rng = None
            return
        scoring = isinstance(strategy, Beam) if score is None else bool(score)
        if isinstance(strategy, Beam) and not scoring:
            raise DecodeError("beam search needs scores (score=False given)")
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.dec = dec = Sequencer(backend, max_len, scoring, forced_text)
        autos = _per_branch(automata, B, "automata", is_scalar=lambda v: v is None or hasattr(v, "initial"))
        shared_stops = isinstance(stops, (str, bytes)) or is_stop_rule(stops) or len(stops) == 0 or is_stop_rule(stops[0])
        if isinstance(stops, (str, bytes)) or is_stop_rule(stops):
            raise DecodeError("stops must be a sequence of stop rules, e.g. [Stop('\\n', keep=False)]")
        stop_lists = [stops] * B if shared_stops else _per_branch(stops, B, "stops", is_scalar=lambda v: False)
        mins = _per_branch(min_tokens, B, "min_tokens", is_scalar=lambda v: isinstance(v, (int, np.integer)))
        maxs = _per_branch(max_tokens, B, "max_tokens", is_scalar=lambda v: v is None or isinstance(v, (int, np.integer)))
        init = [0.0] * B if scores is None else [float(x) for x in scores]

        special = np.asarray(backend.special_ids, dtype=np.int32)
        eog = np.asarray(getattr(backend, "eog_ids", ()), dtype=np.int32)
        holes: dict[tuple[int, int, int, int | None], HoleTables] = {}
        seqs = self.seqs
        for i in range(B):
            key = (id(autos[i]), id(stop_lists[i]), mins[i], maxs[i])
            h = holes.get(key)
            if h is None:
                h = HoleTables(autos[i], stop_lists[i], mins[i], maxs[i], backend.n_vocab, backend.eos_id, special, eog)
                holes[key] = h
            state = -1 if h.unconstrained else int(h.a.initial)
            ctx = list(contexts[i])
            if not ctx:
                raise DecodeError("a hole needs a non-empty context (start the prompt with BOS)")
            s = Seq(i, h, ctx, len(ctx), state, init[i])
            if heal and len(ctx) >= 2 and not bool(np.isin(ctx[-1], special)) and ctx[-1] != backend.eos_id:
                last = backend.piece(ctx[-1])
                if last:
                    s.heal, s.healing, s.heal_tok = last, True, ctx[-1]
                    s.context = ctx[:-1]
                    s.start = len(ctx) - 1
            if not h.unconstrained and h.mte[state] >= INF_TOKENS:
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
            out = beam_search(self.dec, self.seqs, self.strategy.n) if self.seqs else []
            self.done = True
            return out
        while True:
            todo = self.pending()
            if self.done:
                return self.completions()
            self.apply(eval_seqs(self.dec.b, todo))  # type: ignore[union-attr]  # seqs exist, so dec does

    def pending(self) -> list[Seq]:
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
        raise_dead(seqs)
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
        norm = lse(logits) if dec.scoring else None
        for k, s in enumerate(todo):
            if s.ending is not None:
                continue  # was only evaluated to score its forced tail
            row = logits[k]
            ids, dense = dec.allowed(s)
            if isinstance(strategy, Sample):
                tok = choose_sample(row, ids, dense, strategy, rng)
            else:
                tok = choose_argmax(row, ids, dense)
            if tok < 0:
                s.ending = "dead"
                continue
            if norm is not None:
                s.logprob += float(row[tok]) - float(norm[k])
            if tok in ends:
                s.ending = "eos"
            else:
                dec.push(s, tok)
        raise_dead(self.seqs)

    def completions(self) -> list[Completion]:
        """One completion per branch, in branch order (after ``done``)."""
        return [self.dec.complete(s) for s in self.seqs]


def hole_limits(hole: Any) -> dict[str, Any]:
    """``stops``, ``min_tokens`` and ``max_tokens`` keyword arguments from a ``compiler.ir.HoleIR``."""
    return {"stops": tuple(hole.stops), "min_tokens": int(hole.min_tokens), "max_tokens": hole.max_tokens}
