"""The blocked argmax of a dense allowed set is ``argmax(row + bias)`` (first index on ties, -1 if nothing finite)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lmqc.runtime.decode.masks import _BLOCK, Dense
from lmqc.runtime.decode.strategies import choose_argmax


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([3 * _BLOCK, 4 * _BLOCK + 777, 5000]),
    st.sampled_from([0.0005, 0.3, 0.9, 1.0]),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_dense_argmax_is_masked_argmax(V, frac, ties, drop_top, seed):
    rng = np.random.default_rng(seed)
    row = rng.standard_normal(V).astype(np.float32)
    if ties:
        row = np.round(row, 1)  # many equal logits across blocks
    allowed = rng.random(V) < frac
    if drop_top:
        allowed[row == row.max()] = False  # the favourite is rejected: the block search runs
    ids = np.flatnonzero(allowed).astype(np.int32)
    bias = np.where(allowed, 0, -np.inf).astype(np.float32)
    masked = row + bias
    want = int(np.argmax(masked)) if np.isfinite(masked.max()) else -1
    assert Dense(V, ids).argmax(row) == want
    assert choose_argmax(row, None, Dense(V, comp=np.flatnonzero(~allowed).astype(np.int32))) == want
