"""Constrained decoding of one hole for a batch of branches, and option scoring for ``distribution``.

Entry points
------------
:func:`decode` fills one hole (:class:`DecodeRequest`: B contexts, a :class:`HoleSpec` each) at once with
``argmax``, ``sample`` or ``beam``; :func:`decode_hole` is its keyword form.
All live sequences advance together: one batched :meth:`Backend.eval` call per step, never one per sequence.
:func:`score_options` gives the log-probability of each option of a ``distribution`` clause in one call.
:class:`HoleRun` is the step-wise engine under :func:`decode` (every strategy): ``pending()`` /
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
prompt/hole boundary that only re-spells the prompt's last token counts zero (see :meth:`.sequences.Sequencer.push`).
Stop phrases follow LMQL: they end generation only once the other constraints allow it, so while fewer than
``min_tokens`` value tokens exist a stop phrase is ignored (its text stays in the value and generation goes on);
the first occurrence that completes in a token that brings the count to ``min_tokens`` or beyond ends the hole
(see :meth:`.sequences.Sequencer.check_end` and :class:`.hole.HoleTables` for how automata that contain the stops are handled).

Scores
------
Beam search ranks by the model's full log-softmax (LMQL-like: the mask does not renormalize scores), summed
over every generated token including forced ones and EOS. Sampling draws from the distribution renormalized
over the allowed tokens (after temperature, top-k, top-p). Scoring costs a log-sum-exp over the vocabulary per
step (and logit rows for forced runs), so it is on by default only for beam search (``score=``).

Layout (one module per job)
---------------------------
``request``     the seam's types: :class:`HoleSpec`, :class:`DecodeRequest`, :class:`Completion`, :class:`DecoderService`
``strategies``  :class:`Argmax`, :class:`Sample`, :class:`Beam` and their token choice
``masks``       allowed-token sets (:class:`~.masks.Mask`, :class:`~.masks.Dense`) and per-automaton tables
``stops``       stop rules, the stop search, the stop-only automaton test
``hole``        :class:`~.hole.HoleTables`: a hole's allowed set per state under its token window, healing, forced runs
``sequences``   :class:`~.sequences.Seq` and :class:`~.sequences.Sequencer`: appending tokens, ends, completions
``engine``      :class:`HoleRun` (step-wise, every strategy), :func:`decode`, :func:`decode_hole`
``beam``        beam search, step by step (:class:`~.beam.BeamSearch`)
``scoring``     log-sum-exp, :func:`eval_seqs` (scores forced tails), :func:`score_options`
"""

from __future__ import annotations

from .engine import HoleRun, decode, decode_hole, hole_limits, request_for
from .request import Completion, DecodeRequest, DecoderService, HoleSpec
from .scoring import eval_seqs, score_options
from .strategies import Argmax, Beam, Sample, Strategy, parse_strategy, strategy_name

__all__ = [
    "Argmax",
    "Beam",
    "Completion",
    "DecodeRequest",
    "DecoderService",
    "HoleRun",
    "HoleSpec",
    "Sample",
    "Strategy",
    "decode",
    "decode_hole",
    "eval_seqs",
    "hole_limits",
    "parse_strategy",
    "request_for",
    "score_options",
    "strategy_name",
]
