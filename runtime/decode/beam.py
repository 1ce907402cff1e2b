"""Beam search over one hole: the n best sequences by total log-probability, finished ones competing too."""

from __future__ import annotations

import numpy as np

from lmqc.errors import DecodeError

from .request import Completion
from .scoring import eval_seqs, lse
from .sequences import Seq, Sequencer
from .strategies import top_n


def beam_search(dec: Sequencer, seqs: list[Seq], n: int) -> list[Completion]:
    ends = dec.ends
    live = [s for s in seqs if s.ending is None]
    finished: list[Seq] = [s for s in seqs if s.ending is not None]
    while True:
        for s in live:
            dec.advance_forced(s)
        # Sequences that ended on a forced token still need their forced tail scored by this step's batch.
        todo = [s for s in live if s.ending != "dead"]
        if not todo:
            break
        logits = eval_seqs(dec.b, todo)
        norm = lse(logits)
        cand_score: list[np.ndarray] = []
        cand_tok: list[np.ndarray] = []
        cand_seq: list[np.ndarray] = []
        for k, s in enumerate(todo):
            if s.ending is not None:
                finished.append(s)
                continue
            ids, dense = dec.allowed(s)
            toks, vals = top_n(logits[k], ids, dense, n)
            if len(toks) == 0:
                continue  # a dead beam simply drops out
            cand_score.append(s.score + (vals.astype(np.float64) - norm[k]))
            cand_tok.append(toks)
            cand_seq.append(np.full(len(toks), k))
        finished.sort(key=lambda f: -f.score)
        del finished[n:]
        if not cand_score:
            break
        sc = np.concatenate(cand_score)
        tk = np.concatenate(cand_tok)
        sq = np.concatenate(cand_seq)
        order = np.argsort(-sc, kind="stable")[:n]
        # The n best of (finished sequences, candidate extensions): the candidates among them go on.
        entries: list[tuple[float, int, int]] = [(f.score, 0, k) for k, f in enumerate(finished)]
        entries += [(float(sc[j]), 1, int(j)) for j in order]
        entries.sort(key=lambda e: (-e[0], e[1]))
        live = []
        for _, kind, j in entries[:n]:
            if kind == 0:
                continue
            parent = todo[int(sq[j])]
            child = parent.fork()
            tok = int(tk[j])
            child.logprob = float(sc[j]) - child.score0
            if tok in ends:
                child.ending = "eos"
            else:
                dec.push(child, tok)
            (live if child.ending is None else finished).append(child)
        finished.sort(key=lambda f: -f.score)
        del finished[n:]
        if not live:
            break
    if not finished:
        raise DecodeError("beam search found no sequence that satisfies the constraint")
    return [dec.complete(s) for s in finished[:n]]
