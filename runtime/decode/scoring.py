"""Log-probabilities: the row-wise log-sum-exp, batched evaluation that scores forced tails, and option scoring
for ``distribution`` clauses.

Beam search ranks by the model's full log-softmax (LMQL-like: the mask does not renormalize scores), summed over
every generated token including forced ones and EOS. Scoring costs a log-sum-exp over the vocabulary per step (and
logit rows for forced runs), so it is on by default only for beam search.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lmqc.errors import DecodeError

__all__ = ["eval_seqs", "lse", "score_options"]


def lse(x: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp of float32[B, V] -> float64[B] (float32 SIMD exp, pairwise float32 sums)."""
    m = x.max(axis=1, keepdims=True)
    buf = np.subtract(x, m, dtype=np.float32)
    np.exp(buf, out=buf)
    return np.log(buf.sum(axis=1).astype(np.float64)) + m[:, 0].astype(np.float64)


def eval_seqs(backend: Any, seqs: Sequence[Any]) -> np.ndarray:
    """Next-token logits float32[len(seqs), V] in ONE backend call; scores the sequences' pending forced tokens.

    The sequences may come from several :class:`~.engine.HoleRun`\\ s (only scoring runs have pending tokens).
    """
    ctxs = [s.context for s in seqs]
    if any(s.pending for s in seqs):
        parts = backend.eval_rows(ctxs, [s.pending + 1 for s in seqs])
        for s, rows in zip(seqs, parts, strict=True):
            if s.pending:
                toks = np.asarray(s.context[len(s.context) - s.pending :])
                norm = lse(rows[:-1])
                s.logprob += float((rows[np.arange(s.pending), toks] - norm).sum())
                s.pending = 0
        return np.stack([p[-1] for p in parts])
    return backend.eval(ctxs)


def score_options(backend: Any, context: Sequence[int], options: Sequence[Sequence[int]]) -> np.ndarray:
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
        out[k] = float((rows[np.arange(len(toks)), toks] - lse(rows)).sum())
    return out
