"""Sequences of one hole: appending a token (healing, automaton step, stop search, token budget), forced text
without a model call, and the final :class:`~.request.Completion` (value cut at a stop, context re-tokenized).

Token window: ``min_tokens``/``max_tokens`` (``len(TOKENS(X))`` bounds) count *value tokens*. A token healed at the
prompt/hole boundary that only re-spells the prompt's last token counts zero (see :meth:`Sequencer.push`).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmqc.errors import DecodeError

from .hole import HoleTables
from .masks import Dense, token_info
from .request import Completion
from .stops import find_stop

__all__ = ["Seq", "Sequencer", "raise_dead"]


@dataclass(slots=True)
class Seq:
    parent: int
    hole: HoleTables
    context: list[int]
    start: int
    state: int
    score0: float
    tokens: list[int] = field(default_factory=list)
    value: bytearray = field(default_factory=bytearray)
    ends: list[int] = field(default_factory=list)  # byte offset in value after each token
    logprob: float = 0.0
    pending: int = 0  # trailing forced tokens whose log-probability is not yet known
    ending: str | None = None
    cut: int | None = None
    heal: bytes = b""  # bytes of the prompt's last token, taken back for token healing (see HoleSpec.heal)
    healing: bool = False  # the next token must start with ``heal``
    heal_tok: int = -1  # the prompt token taken back (restored if the hole ends before re-spelling it)
    free: int = 0  # generated tokens that are not value tokens (a healed token re-spelling only prompt bytes)

    def fork(self) -> Seq:
        return Seq(
            self.parent, self.hole, list(self.context), self.start, self.state, self.score0, list(self.tokens),
            bytearray(self.value), list(self.ends), self.logprob, self.pending, self.ending, self.cut,
            self.heal, self.healing, self.heal_tok, self.free,
        )

    @property
    def n_value(self) -> int:
        """Value tokens so far: what ``min_tokens``/``max_tokens`` (``len(TOKENS(X))``) count."""
        return len(self.tokens) - self.free

    @property
    def score(self) -> float:
        return self.score0 + self.logprob


class Sequencer:
    def __init__(self, backend: Any, max_len: int | None, score: bool, forced_text: bool = True) -> None:
        self.b = backend
        self.eos = backend.eos_id
        self.max_len = backend.n_ctx if max_len is None else min(int(max_len), backend.n_ctx)
        self.scoring = score
        self.ends = {self.eos, *(int(t) for t in getattr(backend, "eog_ids", ()))}
        self.tokinfo = token_info(backend) if forced_text else None

    # Appending a token and detecting how the hole ends ----------------------------------------------------

    def allowed(self, s: Seq) -> tuple[np.ndarray | None, Dense | None]:
        """The allowed set of a sequence's next token (the healed first token has its own table)."""
        h = s.hole
        if not s.healing:
            return h.allowed(s.state, s.n_value)
        ids, nxt, carries = h.heal_table(s.heal, self.b)
        if h.max_tokens is not None and not h.unconstrained:
            # a piece equal to the healed bytes costs no budget (push); one carrying value bytes costs one
            keep = h.mte[nxt] <= h.max_tokens - carries
            if h.block_stops and h.min_tokens > 1:
                keep &= ~(h.stopped(nxt) & (carries > 0))
            ids = ids[keep]
        elif h.block_stops and h.min_tokens > 1:
            ids = ids[~(h.stopped(nxt) & (carries > 0))]
        return ids, None

    def push(self, s: Seq, tok: int) -> None:
        h = s.hole
        s.context.append(tok)
        s.tokens.append(tok)
        old = len(s.value)
        if s.healing:
            # The token re-spells the prompt's last bytes (s.heal): only what follows them belongs to the value.
            # Token window rule (LMQL: a token that only re-spells prompt text is not a token of the value):
            # the heal table's pieces are s.heal + rest, with rest empty or ONE token the automaton allows first.
            # With rest non-empty the token carries value text and counts as one value token (matching the one
            # automaton step it makes); with rest empty all its bytes lie within the prompt text taken back and
            # it counts zero: no max_tokens budget, nothing toward min_tokens (so neither toward the point from
            # which stop phrases count). A piece cannot be shorter than s.heal: it must re-spell all of it.
            s.healing = False
            rest = self.b.piece(tok)[len(s.heal) :]
            if not rest:
                s.free += 1
            s.value += rest
            s.ends.append(len(s.value))
            if not h.unconstrained:
                ids, nxt, _ = h.heal_table(s.heal, self.b)
                i = int(np.searchsorted(ids, tok))
                if i >= len(ids) or int(ids[i]) != tok:
                    raise DecodeError(f"internal error: token {tok} does not heal {s.heal!r}")
                s.state = int(nxt[i])
            self.check_end(s, old)
            return
        s.value += self.b.piece(tok)
        s.ends.append(len(s.value))
        if not h.unconstrained:
            nxt = h.a.step(s.state, tok)
            if nxt < 0:
                raise DecodeError(f"internal error: automaton rejected token {tok} it allowed in state {s.state}")
            s.state = nxt
        self.check_end(s, old)

    def check_end(self, s: Seq, old: int) -> None:
        """End the hole after a token that added ``s.value[old:]`` if a stop phrase, the budget or ``max_len``
        says so.

        Stop rule with a token minimum: a stop phrase counts only in a token after which the value has at
        least ``min_tokens`` tokens. The search looks at occurrences that end in this token's bytes (they may
        start in earlier ones), so an occurrence that completed in an earlier token, before the minimum, stays
        ignored for good; the value is cut at the earliest-starting occurrence completing in this token.
        """
        h = s.hole
        if h.stops and len(s.value) > old and s.n_value >= h.min_tokens:
            cut = find_stop(s.value, old, h.stops)
            if cut is not None:
                s.cut, s.ending = cut, "stop"
                return
        if not h.unconstrained and h.a.is_stopped(s.state):
            s.ending = "stop"
        elif h.max_tokens is not None and s.n_value >= h.max_tokens:
            s.ending = "max_tokens"
        elif len(s.context) >= self.max_len:
            s.ending = "max_len"

    def advance_forced(self, s: Seq) -> None:
        """Append forced text and tokens (and end on an EOS-only state when not scoring) without a model call.

        The appended tokens reach the model in one batch with the next step's evaluation.
        """
        h = s.hole
        if h.unconstrained or s.healing:
            return
        a = h.a
        while s.ending is None:
            run = h.forced_run(s.state, self.tokinfo, self.b) if self.tokinfo is not None else None
            if run is not None and h.block_stops and s.n_value + len(run[0]) < h.min_tokens and a.is_stopped(run[1]):
                run = None  # its last token would stop before the minimum: the model chooses instead
            if run is not None:
                toks, end = run
                if h.max_tokens is None or len(toks) + h.mte[end] <= h.max_tokens - s.n_value:
                    for tok in toks:
                        self.push(s, tok)
                        if self.scoring:
                            s.pending += 1
                        if s.ending is not None:
                            break
                    continue
            tok = a.forced(s.state)
            if tok < 0:
                if not self.scoring and s.n_value >= h.min_tokens and h.mask(s.state).only_eos:
                    s.ending = "eos"
                return
            if h.block_stops and s.n_value + 1 < h.min_tokens:
                nxt = a.step(s.state, tok)
                if nxt < 0 or a.is_stopped(nxt):
                    s.ending = "dead"  # the only way on is a stop phrase, and the minimum is not reached
                    return
            if h.max_tokens is not None:
                r = h.max_tokens - s.n_value
                nxt = a.step(s.state, tok)
                if nxt < 0 or h.mte[nxt] > r - 1:
                    s.ending = "dead"
                    return
            self.push(s, tok)
            if self.scoring:
                s.pending += 1

    def complete(self, s: Seq) -> Completion:
        if s.healing:  # ended before the healed token was chosen: give the prompt its token back
            s.context = s.context + [s.heal_tok]
            s.healing = False
        if s.cut is None:
            value = bytes(s.value)
            context = s.context
        else:
            value = bytes(s.value[: s.cut])
            j = bisect.bisect_right(s.ends, s.cut)  # tokens entirely inside the kept value
            context = s.context[: s.start + j]
            tail = value[(s.ends[j - 1] if j else 0) :]
            if j == 0 and s.heal:
                tail = s.heal + tail  # the healed token also carried the prompt's last bytes
            if tail:
                context = context + self.b.tokenize(tail, bos=False)
        lp = s.logprob if self.scoring else math.nan
        return Completion(
            parent=s.parent, tokens=list(s.tokens), value=value, context=list(context), logprob=lp,
            score=s.score0 + lp, ending=s.ending or "max_len", state=-1 if s.hole.unconstrained else s.state,
        )


def raise_dead(seqs: list[Seq]) -> None:
    for s in seqs:
        if s.ending == "dead":
            raise DecodeError(
                f"no allowed continuation for branch {s.parent} after {len(s.tokens)} tokens "
                f"(value so far {bytes(s.value)!r}): the constraint cannot be completed within the token budget"
            )
