"""The decoder's allowed sets are the automaton's: a dense set held as the automaton's allowed sequences (ids listed
only when asked) and a set built from its ids agree token for token, with and without EOS; the per-state step cache
gives the sets the full rules give."""

from __future__ import annotations

import numpy as np
from _oracle import constraints, vocabularies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmqc.compiler.automaton import TokenAutomaton
from lmqc.compiler.bytedfa import ByteDFA
from lmqc.compiler.lower import lower_hole
from lmqc.compiler.vocabulary import Vocabulary
from lmqc.errors import ConstraintError
from lmqc.runtime.decode import HoleSpec
from lmqc.runtime.decode.hole import HoleTables
from lmqc.runtime.decode.masks import Mask


def _automaton(c, spec) -> tuple[TokenAutomaton, int, int, np.ndarray] | None:
    """The token automaton of constraint ``c`` over a ``vocabularies()`` draw, with the vocabulary size, EOS id and
    the other special ids (what a backend reports); None if the constraint cannot be built over it."""
    pieces, specials, _ = spec
    vocab = Vocabulary(pieces, 0, specials)
    try:
        a = TokenAutomaton.build(ByteDFA.from_ir(lower_hole("X", c)), vocab)
    except ConstraintError:
        return None
    eos = vocab.eos_id
    return a, vocab.size, eos, np.asarray([s for s in specials if s != eos], np.int32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(constraints(), vocabularies())
def test_hole_masks_are_the_automaton_sets(c, spec):
    built = _automaton(c, spec)
    if built is None or built[0].unconstrained:
        return
    a, V, eos, special = built
    holes = HoleTables(HoleSpec(a), V, eos, special)
    for state in range(a.n_states):
        want = np.asarray(a.allowed(state))
        m = holes.mask(state)
        assert m.size == len(want) and m.has_eos == (eos in want) and m.only_eos == (want.tolist() == [eos])
        assert (m.dense is not None) == (len(want) > V // 4)
        plain = Mask(want, V, eos)  # the same set from its ids
        if m.dense is not None:  # (before its ids are listed: each of these is derived from the sequences)
            assert [m.dense.contains(t) for t in range(V)] == [plain.dense.contains(t) for t in range(V)]
            assert np.array_equal(m.dense.comp, plain.dense.comp)
            assert np.array_equal(m.dense.bias, plain.dense.bias)
        assert np.array_equal(m.ids, want)
        assert np.array_equal(m.without_eos(V, eos).ids, want[want != eos])
        assert not m.without_eos(V, eos).has_eos


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(constraints(), vocabularies(), st.integers(0, 3), st.one_of(st.none(), st.integers(1, 8)))
def test_hole_allowed_sets_with_and_without_the_plain_step_cache(c, spec, min_tokens, max_tokens):
    """Between the minimum and the budget a step's set comes from a per-state dict; it is the set the full
    rules give (EOS before the minimum, blocked stops, the budget's pruning)."""
    built = _automaton(c, spec)
    if built is None:
        return
    a, V, eos, special = built
    hole = HoleSpec(a, min_tokens=min_tokens, max_tokens=max_tokens)
    cached, full = HoleTables(hole, V, eos, special), HoleTables(hole, V, eos, special)
    full._plain_until = -1  # every step through the full rules
    for n in range(0, (max_tokens or 6) + 1):
        for state in range(a.n_states):
            got, want = (_as_ids(*t.allowed(state, n)) for t in (cached, full))
            assert np.array_equal(got, want), (state, n)


def _as_ids(ids, dense):
    return np.asarray(ids if ids is not None else dense.all_ids())
