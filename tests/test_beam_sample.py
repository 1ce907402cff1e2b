"""LMQL's beam_sample decoder: beam search whose beams propose sampled tokens."""

from __future__ import annotations

import numpy as np
import pytest

import lmqc
from lmqc.runtime import decode
from lmqc.runtime.protocol import decode_strategy, encode_strategy

Q = 'beam_sample(n=3, seed={seed})\n    "A: [X]" where len(TOKENS(X)) < 5 and not "\\n" in X\nfrom "lmqc:tiny"\n'


def test_beam_sample_is_seeded_ranked_and_constrained() -> None:
    r = lmqc.run(Q.format(seed=4))
    assert len(r) == 3
    assert [x.logprob for x in r] == sorted((x.logprob for x in r), reverse=True)
    # < 5 value tokens, plus the healed token re-spelling the prompt's trailing space
    assert all(x.n_tokens <= 5 and "\n" not in x.variables["X"] for x in r)
    assert [x.prompt for x in lmqc.run(Q.format(seed=4))] == [x.prompt for x in r]
    others = {tuple(x.prompt for x in lmqc.run(Q.format(seed=s))) for s in range(5, 9)}
    assert len(others | {tuple(x.prompt for x in r)}) > 1  # the seed matters: it samples


def test_sample_n_draws_only_allowed_tokens() -> None:
    rng = np.random.default_rng(0)
    row = rng.normal(size=1000).astype(np.float32)
    ids = np.array([3, 10, 500, 999], dtype=np.int32)
    toks, vals = decode.strategies.sample_n(row, ids, None, 1.0, 50, rng)
    assert set(toks.tolist()) <= set(ids.tolist()) and len(toks) == len(set(toks.tolist()))
    assert np.array_equal(vals, row[toks])
    # a very low temperature draws only the best allowed token
    toks, _ = decode.strategies.sample_n(row, ids, None, 1e-6, 20, rng)
    assert toks.tolist() == [int(ids[np.argmax(row[ids])])]
    toks, _ = decode.strategies.sample_n(row, np.empty(0, np.int32), None, 1.0, 5, rng)
    assert len(toks) == 0


def test_beam_sample_settings_checked_and_sent_over_the_wire() -> None:
    with pytest.raises(lmqc.QueryTypeError):
        lmqc.parse('beam_sample(n=2, temperature=-1)\n    "[X]"\n')
    with pytest.raises(lmqc.QueryTypeError):
        lmqc.parse('beam(n=2, temperature=0.5)\n    "[X]"\n')  # plain beam does not sample
    s = decode.parse_strategy("beam_sample", n=2)
    assert s == decode.Beam(2, 1.0)  # LMQL's default temperature
    assert decode_strategy(encode_strategy(decode.Beam(2, 0.5))) == decode.Beam(2, 0.5)
