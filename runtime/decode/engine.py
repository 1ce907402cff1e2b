"""The hole-decoding engine: :class:`HoleRun` steps every sequence of one :class:`~.request.DecodeRequest`
together; :func:`decode` runs it to the end; :func:`decode_hole` builds the request from keyword arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lmqc.errors import DecodeError

from .beam import BeamSearch
from .hole import HoleTables
from .masks import INF_TOKENS
from .request import Completion, DecodeRequest, HoleSpec
from .scoring import eval_seqs, lse
from .sequences import Seq, Sequencer, raise_dead
from .stops import is_stop_rule
from .strategies import Argmax, Beam, Sample, Strategy, choose_argmax, choose_sample, parse_strategy

__all__ = ["HoleRun", "decode", "decode_hole", "hole_limits", "request_for"]


def decode(backend: Any, request: DecodeRequest) -> list[Completion]:
    """Fill one hole for every branch of ``request`` on an in-process backend.

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
    return HoleRun(backend, request).run()


def _per_branch(value: Any, B: int, name: str, *, is_scalar: Any) -> list[Any]:
    if is_scalar(value):
        return [value] * B
    out = list(value)
    if len(out) != B:
        raise DecodeError(f"{name}: got {len(out)} entries for {B} branches")
    return out


def request_for(
    contexts: Sequence[Sequence[int]],
    automata: Any = None,
    *,
    strategy: Strategy | str = Argmax(),  # noqa: B008 - frozen dataclass, safe as a default
    stops: Any = (),
    min_tokens: int | Sequence[int] = 0,
    max_tokens: int | None | Sequence[int | None] = None,
    heal: bool = False,
    **options: Any,
) -> DecodeRequest:
    """A :class:`DecodeRequest` from per-branch or shared hole settings (the keyword form of :func:`decode_hole`).

    ``automata``, ``stops``, ``min_tokens`` and ``max_tokens`` are one value for every branch or a sequence of
    one per branch; ``options`` are :class:`DecodeRequest` fields (``max_len``, ``rng``, ``scores``, ...).
    """
    B = len(contexts)
    if isinstance(strategy, str):
        strategy = parse_strategy(strategy)
    autos = _per_branch(automata, B, "automata", is_scalar=lambda v: v is None or hasattr(v, "initial"))
    if isinstance(stops, str | bytes) or is_stop_rule(stops):
        raise DecodeError("stops must be a sequence of stop rules, e.g. [Stop('\\n', keep=False)]")
    shared = len(stops) == 0 or is_stop_rule(stops[0])
    stop_lists = [stops] * B if shared else _per_branch(stops, B, "stops", is_scalar=lambda v: False)
    mins = _per_branch(min_tokens, B, "min_tokens", is_scalar=lambda v: isinstance(v, int | np.integer))
    maxs = _per_branch(max_tokens, B, "max_tokens", is_scalar=lambda v: v is None or isinstance(v, int | np.integer))
    specs = [HoleSpec(autos[i], tuple(stop_lists[i]), mins[i], maxs[i], heal) for i in range(B)]
    return DecodeRequest(tuple(contexts), tuple(specs), strategy, **options)


def decode_hole(backend: Any, contexts: Sequence[Sequence[int]], automata: Any = None, **kwargs: Any) -> list[Completion]:
    """Fill one hole for a batch of branches: :func:`decode` of :func:`request_for` ``(contexts, automata, **kwargs)``.

    Keyword arguments: ``strategy``, ``stops``, ``min_tokens``, ``max_tokens``, ``heal`` (see
    :class:`~.request.HoleSpec`; each one value or one per branch) and the :class:`~.request.DecodeRequest`
    fields ``max_len``, ``rng``, ``scores``, ``score``, ``forced_text``. For a ``HoleIR``,
    ``decode_hole(..., **hole_limits(hole))`` passes its stops and token window.
    """
    return decode(backend, request_for(contexts, automata, **kwargs))


def hole_limits(hole: Any) -> dict[str, Any]:
    """``stops``, ``min_tokens`` and ``max_tokens`` keyword arguments from a ``compiler.ir.HoleIR``."""
    return {"stops": tuple(hole.stops), "min_tokens": int(hole.min_tokens), "max_tokens": hole.max_tokens}


class HoleRun:
    """One :class:`~.request.DecodeRequest` as a step-wise engine, so a caller can batch the steps of several holes.

    One step, for every strategy::

        todo = run.pending()           # forced tokens appended; the sequences that need a model row now
        if run.done: ...               # nothing left: run.completions()
        run.apply(eval_seqs(backend, todo))   # or rows of a bigger batch, in the order of ``todo``

    :func:`decode` itself runs this loop (:meth:`run`), so a caller that merges the ``todo`` lists of several
    runs into one :func:`eval_seqs` call gets each run's tokens exactly as in-process whenever the backend's
    logits do not depend on the batch (each run draws from its own generator, in branch order).
    """

    def __init__(self, backend: Any, request: DecodeRequest) -> None:
        self.request = request
        self.strategy = strategy = request.strategy
        self.done = False
        self._todo: list[Seq] | None = None
        self.seqs: list[Seq] = []
        self.dec: Sequencer | None = None
        self.beam: BeamSearch | None = None
        self.rng = request.rng
        B = len(request.contexts)
        if B == 0:  # nothing to decode: no checks, no backend access
            self.done = True
            return
        if isinstance(strategy, Beam) and not request.scoring:
            raise DecodeError("beam search needs scores (score=False given)")
        self.dec = dec = Sequencer(backend, request.max_len, request.scoring, request.forced_text)
        init = [0.0] * B if request.scores is None else list(request.scores)
        special = np.asarray(backend.special_ids, dtype=np.int32)
        eog = np.asarray(getattr(backend, "eog_ids", ()), dtype=np.int32)
        holes: dict[HoleSpec, HoleTables] = {}
        for i, (ctx, spec) in enumerate(zip(request.contexts, request.specs, strict=True)):
            h = holes.get(spec)
            if h is None:
                h = holes[spec] = HoleTables(spec, backend.n_vocab, backend.eos_id, special, eog)
            self.seqs.append(self._start(i, h, list(ctx), init[i], backend, special))
        if isinstance(strategy, Beam):
            self.beam = BeamSearch(dec, self.seqs, strategy.n, strategy.temperature, request.rng)

    def _start(self, i: int, h: HoleTables, ctx: list[int], score0: float, backend: Any, special: np.ndarray) -> Seq:
        """Branch ``i``'s sequence at the start of the hole (healing set up, hopeless holes refused)."""
        state = -1 if h.unconstrained else int(h.a.initial)
        if not ctx:
            raise DecodeError("a hole needs a non-empty context (start the prompt with BOS)")
        s = Seq(i, h, ctx, len(ctx), state, score0)
        if h.spec.heal and len(ctx) >= 2 and not bool(np.isin(ctx[-1], special)) and ctx[-1] != backend.eos_id:
            last = backend.piece(ctx[-1])
            if last:
                s.heal, s.healing, s.heal_tok = last, True, ctx[-1]
                s.context = ctx[:-1]
                s.start = len(ctx) - 1
        if not h.unconstrained and h.mte_need[state] >= INF_TOKENS:
            raise DecodeError(
                "the constraint cannot be satisfied with this model's vocabulary: no token sequence spells an "
                "accepted value"
            )
        if h.max_tokens is not None and not h.unconstrained and h.mte_need[state] > h.max_tokens:
            raise DecodeError(
                f"the constraint needs at least {int(h.mte_need[state])} tokens but the hole allows {h.max_tokens}"
            )
        if h.max_tokens is not None and h.max_tokens <= 0:
            s.ending = "max_tokens"
        elif len(ctx) >= self.dec.max_len:  # type: ignore[union-attr]  # set before any sequence starts
            s.ending = "max_len"
        return s

    @property
    def scoring(self) -> bool:
        return self.dec is not None and self.dec.scoring

    @property
    def width(self) -> int:
        """Most sequences this run evaluates in one step (branches; at most ``n`` after a beam's first step)."""
        return self.request.width

    def run(self) -> list[Completion]:
        """Decode the whole hole alone."""
        while True:
            todo = self.pending()
            if self.done:
                return self.completions()
            self.apply(eval_seqs(self.dec.b, todo))  # type: ignore[union-attr]  # seqs exist, so dec does

    def pending(self) -> list[Seq]:
        """Append forced tokens, then the sequences needing a model row this step (``done`` when none).

        A sequence that already ended is included when scoring still needs rows for its forced tail.
        """
        if self.done:
            return []
        if self.beam is not None:
            todo = self.beam.pending()
        else:
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
        if self.beam is not None:
            self.beam.apply(todo, logits)
            return
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
        """Argmax/sample: one completion per branch, in branch order; beam: the best first (after ``done``)."""
        if self.beam is not None:
            return self.beam.completions()
        return [self.dec.complete(s) for s in self.seqs]
