"""The blocked argmax of a dense allowed set is ``argmax(row + bias)`` (first index on ties, -1 if every allowed logit
is -inf),
whichever first pass the set has switched to (:meth:`Dense.argmax` adapts to how often it rejects the favourite)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lmqc.runtime.decode.masks import _BLOCK, Dense
from lmqc.runtime.decode.strategies import choose_argmax


def _masked_argmax(row: np.ndarray, allowed: np.ndarray) -> int:
    masked = row + np.where(allowed, 0, -np.inf).astype(np.float32)
    return int(np.argmax(masked)) if masked.max() > -np.inf else -1


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([3 * _BLOCK, 4 * _BLOCK + 777, 5000]),
    st.sampled_from([0.0005, 0.3, 0.9, 1.0]),
    st.lists(st.sampled_from(["plain", "ties", "drop_top", "tail_top", "neg_inf"]), min_size=1, max_size=6),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_dense_argmax_is_masked_argmax(V, frac, rows, full_blocks, seed):
    rng = np.random.default_rng(seed)
    allowed = rng.random(V) < frac
    if full_blocks:  # whole blocks allowed or not: a block's own favourite answers for it
        allowed[: 2 * _BLOCK] = True
        allowed[2 * _BLOCK : 3 * _BLOCK] = False
    ids = np.flatnonzero(allowed).astype(np.int32)
    by_ids, by_comp = Dense(V, ids), Dense(V, comp=np.flatnonzero(~allowed).astype(np.int32))
    # as an automaton's allowed sequences: token t in sequence t, EOS (token 5) in none
    tok_seq = np.arange(V, dtype=np.int32)
    tok_seq[5] = -1
    by_seq = Dense(V, seq=(np.append(allowed, False), tok_seq, 5, bool(allowed[5])))
    for kind in rows:  # one set over several rows: its first pass switches after rejections
        row = rng.standard_normal(V).astype(np.float32)
        if kind == "ties":
            row = np.round(row, 1)  # many equal logits across blocks
        elif kind == "drop_top":
            allowed_top = row == row.max()
            row[allowed_top & allowed] -= 10  # the favourite is rejected: the block search runs
        elif kind == "tail_top":
            row[-1] = 100.0  # the largest logit in the partial last block
        elif kind == "neg_inf":
            row[allowed] = -np.inf  # nothing allowed is finite
        want = _masked_argmax(row, allowed)
        assert by_ids.argmax(row) == want
        assert choose_argmax(row, None, by_comp) == want
        assert by_seq.argmax(row) == want


def _both_modes(V: int, allowed: np.ndarray) -> list[Dense]:
    """A fresh set (plain pass first) and one that has rejected its favourite (block argmaxes first)."""
    fresh, rejecting = Dense(V, np.flatnonzero(allowed)), Dense(V, np.flatnonzero(allowed))
    row = np.zeros(V, np.float32)
    row[np.flatnonzero(~allowed)[0]] = 1.0
    rejecting.argmax(row)
    return [fresh, rejecting]


def test_dense_argmax_equal_allowed_maximum_in_an_earlier_block():
    V = 4 * _BLOCK
    allowed = np.ones(V, bool)
    row = np.full(V, -5.0, np.float32)
    row[3 * _BLOCK + 10] = 2.0  # the favourite, rejected
    allowed[3 * _BLOCK + 10] = False
    row[3 * _BLOCK + 20] = 1.5  # its block's best allowed logit...
    row[_BLOCK + 7] = 1.5  # ...equals an earlier block's maximum: the earlier index wins
    for d in _both_modes(V, allowed):
        assert d.argmax(row) == _BLOCK + 7 == _masked_argmax(row, allowed)


def test_dense_argmax_largest_logit_in_the_partial_last_block():
    V = 4 * _BLOCK + 100
    allowed = np.ones(V, bool)
    allowed[5] = False
    row = np.zeros(V, np.float32)
    row[_BLOCK + 3] = 1.0  # the blocks' best, allowed
    row[V - 2] = 2.0  # the tail's, larger
    for d in _both_modes(V, allowed):
        assert d.argmax(row) == V - 2 == _masked_argmax(row, allowed)


def test_dense_argmax_eos_by_sequence():
    """EOS has no sequence of its own: the set says whether it is allowed, in every block the search builds."""
    V = 4 * _BLOCK
    tok_seq = np.zeros(V, np.int32)  # every token in sequence 0, allowed...
    tok_seq[[7, _BLOCK + 9]] = 1  # ...but two, in sequence 1
    tok_seq[5] = -1  # EOS
    row = np.zeros(V, np.float32)
    row[_BLOCK + 9] = 3.0  # the favourite, rejected
    row[7] = 2.5  # rejected too
    row[5] = 2.0  # EOS: the best allowed
    for eos_ok, want in ((True, 5), (False, 0)):
        d = Dense(V, seq=(np.array([True, False, False]), tok_seq, 5, eos_ok))
        assert d.argmax(row) == want
        assert d.argmax(row) == want  # again, from the blocks' bias built by the first search
