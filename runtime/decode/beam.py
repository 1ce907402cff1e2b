"""Beam search over one hole, step by step: the n best sequences by total log-probability, finished ones
competing too.

:class:`BeamSearch` has the engine's step interface (``pending()`` / ``apply(logits)``), so a beam hole advances
in the same batched evaluations as argmax and sample holes (``lmqc serve`` merges them step by step).
"""

from __future__ import annotations

import numpy as np

from lmqc.errors import DecodeError

from .request import Completion
from .scoring import lse
from .sequences import Seq, Sequencer
from .strategies import sample_n, top_n

__all__ = ["BeamSearch"]


class BeamSearch:
    """The beam of one hole: ``live`` sequences (at most ``n`` after the first step) and ``finished`` ones."""

    def __init__(
        self, dec: Sequencer, seqs: list[Seq], n: int, temperature: float = 0.0, rng: np.random.Generator | None = None
    ) -> None:
        if temperature > 0 and rng is None:
            raise DecodeError("beam_sample needs a random generator")
        self.dec = dec
        self.n = n
        self.temperature = temperature
        self.rng = rng
        self.live = [s for s in seqs if s.ending is None]
        self.finished: list[Seq] = [s for s in seqs if s.ending is not None]
        self.over = False

    def pending(self) -> list[Seq]:
        """Forced tokens appended; the sequences that need a model row now (none when the search is over).

        Sequences that ended on a forced token are included: their forced tail is scored by this step's batch.
        """
        if self.over:
            return []
        for s in self.live:
            self.dec.advance_forced(s)
        todo = [s for s in self.live if s.ending != "dead"]
        if not todo:
            self.over = True
        return todo

    def apply(self, todo: list[Seq], logits: np.ndarray) -> None:
        """Extend the beam by one token from the next-token logits of ``todo`` (forced tails already scored)."""
        dec, n, finished = self.dec, self.n, self.finished
        norm = lse(logits)
        cand_score: list[np.ndarray] = []
        cand_tok: list[np.ndarray] = []
        cand_seq: list[np.ndarray] = []
        for k, s in enumerate(todo):
            if s.ending is not None:
                finished.append(s)
                continue
            ids, dense = dec.allowed(s)
            if self.temperature > 0:
                toks, vals = sample_n(logits[k], ids, dense, self.temperature, n, self.rng)  # type: ignore[arg-type]
            else:
                toks, vals = top_n(logits[k], ids, dense, n)
            if len(toks) == 0:
                continue  # a dead beam simply drops out
            cand_score.append(s.score + (vals.astype(np.float64) - norm[k]))
            cand_tok.append(toks)
            cand_seq.append(np.full(len(toks), k))
        finished.sort(key=lambda f: -f.score)
        del finished[n:]
        if not cand_score:
            self.over = True
            return
        sc = np.concatenate(cand_score)
        tk = np.concatenate(cand_tok)
        sq = np.concatenate(cand_seq)
        order = np.argsort(-sc, kind="stable")[:n]
        # The n best of (finished sequences, candidate extensions): the candidates among them go on.
        entries: list[tuple[float, int, int]] = [(f.score, 0, k) for k, f in enumerate(finished)]
        entries += [(float(sc[j]), 1, int(j)) for j in order]
        entries.sort(key=lambda e: (-e[0], e[1]))
        live: list[Seq] = []
        for _, kind, j in entries[:n]:
            if kind == 0:
                continue
            child = todo[int(sq[j])].fork()
            tok = int(tk[j])
            child.logprob = float(sc[j]) - child.score0
            if tok in dec.ends:
                child.ending = "eos"
            else:
                dec.push(child, tok)
            (live if child.ending is None else finished).append(child)
        finished.sort(key=lambda f: -f.score)
        del finished[n:]
        self.live = live
        if not live:
            self.over = True

    def completions(self) -> list[Completion]:
        """The ``n`` best finished sequences, best first."""
        if not self.finished:
            raise DecodeError("beam search found no sequence that satisfies the constraint")
        return [self.dec.complete(s) for s in self.finished[: self.n]]
