"""Hostile inputs on the client and decoding side (issue 11): extreme temperatures, absurd branch counts, a server
that never answers or answers garbage, and very large queries (parse memory, error positions)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import lmqc
from lmqc.errors import DecodeError, LmqcError, QueryTypeError
from lmqc.runtime.decode import Beam, Sample, parse_strategy
from lmqc.runtime.decode.masks import Dense
from lmqc.runtime.decode.strategies import choose_sample

# -- sampling temperature ------------------------------------------------------------------------------------


def _row_and_mask(V: int = 1000) -> tuple[np.ndarray, np.ndarray, Dense]:
    row = (np.random.default_rng(7).normal(size=V) * 5).astype(np.float32)
    allowed = np.arange(0, V, 2, dtype=np.int32)  # the last token (V - 1) is not allowed
    return row, allowed, Dense(V, allowed)


@pytest.mark.parametrize("sparse", [True, False], ids=["ids", "dense"])
@pytest.mark.parametrize("temperature", [1e46, 1e300, 1.7e308])
def test_huge_temperature_samples_uniformly_over_allowed(sparse: bool, temperature: float) -> None:
    """T beyond float32's 1/T samples every allowed token alike (the softmax's limit), never NaN weights."""
    row, allowed, dense = _row_and_mask()
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "invalid value encountered in multiply" was the NaN weights
        draws = [
            choose_sample(row, allowed if sparse else None, None if sparse else dense, Sample(temperature), rng)
            for _ in range(2000)
        ]
    assert all(t % 2 == 0 for t in draws)
    counts = np.bincount(draws, minlength=len(row))[allowed]
    # 2000 uniform draws over 500 tokens: ~4 each, and most tokens drawn at least once
    assert (counts > 0).mean() > 0.9 and counts.max() < 20


@pytest.mark.parametrize("sparse", [True, False], ids=["ids", "dense"])
@pytest.mark.parametrize("temperature", [1e-46, 1e-40, 5e-324])
def test_tiny_temperature_is_argmax_with_ties_shared(sparse: bool, temperature: float) -> None:
    row, allowed, dense = _row_and_mask()
    best = int(allowed[np.argmax(row[allowed])])
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pick = lambda r: choose_sample(r, allowed if sparse else None, None if sparse else dense, Sample(temperature), rng)  # noqa: E731
        assert {pick(row) for _ in range(50)} == {best}
        tied = row.copy()
        other = int(allowed[allowed != best][0])
        tied[other] = tied[best]
        assert {pick(tied) for _ in range(200)} == {best, other}


def test_moderate_temperatures_unchanged_and_sharpen() -> None:
    """The exact limits only replace scales float32 cannot hold; ordinary temperatures follow exp(z / T)."""
    row, allowed, dense = _row_and_mask(64)
    rng = np.random.default_rng(1)
    draws = [choose_sample(row, None, dense, Sample(1e-30), rng) for _ in range(20)]
    assert set(draws) == {int(allowed[np.argmax(row[allowed])])}
    draws = [choose_sample(row, None, dense, Sample(1e30), rng) for _ in range(600)]
    assert len(set(draws)) > 25 and all(t % 2 == 0 for t in draws)


@pytest.mark.parametrize("bad", ["-1.0", "float('nan')", "float('inf')"])
def test_invalid_temperatures_are_clear_errors(bad: str) -> None:
    with pytest.raises(DecodeError, match="temperature"):
        Sample(float(eval(bad)))  # noqa: S307
    with pytest.raises(QueryTypeError, match="temperature"):
        lmqc.run(f'sample(temperature={bad})\n"Q: [X]" where len(TOKENS(X)) < 3', model="lmqc:tiny")


def test_extreme_temperatures_on_the_tiny_backend() -> None:
    """A whole query: T=1e46 samples valid, varied values (it failed with "automaton rejected token"); T=1e-46
    gives the greedy value."""
    q = '{dec}\n"Q: Say hi\\nA:[X]" where len(TOKENS(X)) < 4 and STOPS_AT(X, "\\n")\n'
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hot = lmqc.run(q.format(dec="sample(n=6, temperature=1e46, seed=1)"), model="lmqc:tiny")
        cold = lmqc.run(q.format(dec="sample(n=3, temperature=1e-46, seed=1)"), model="lmqc:tiny")
    greedy = lmqc.run(q.format(dec="argmax"), model="lmqc:tiny")
    assert len({r.variables["X"] for r in hot}) > 3
    assert {r.variables["X"] for r in cold} == {greedy.variables["X"]}


# -- branch count cap ----------------------------------------------------------------------------------------


def test_branch_count_cap() -> None:
    from lmqc.compiler.decoders import MAX_BRANCHES

    q = '{dec}\n"Q: [X]" where len(TOKENS(X)) < 3'
    for dec in ("beam(n=100000)", "sample(n=100000)", "argmax(n=100000)"):
        with pytest.raises(QueryTypeError, match=f"n must be <= {MAX_BRANCHES}") as e:
            lmqc.compile(q.format(dec=dec), "lmqc:tiny")  # literal: refused when the query is compiled
        assert e.value.line == 1
    # an expression: refused when the query runs, located at the expression
    compiled = lmqc.compile(q.format(dec="beam(n=width)"), "lmqc:tiny")
    with pytest.raises(QueryTypeError, match=f"n must be <= {MAX_BRANCHES}"):
        lmqc.run(compiled, model="lmqc:tiny", width=100000)
    with pytest.raises(QueryTypeError, match=f"<= {MAX_BRANCHES}"):
        lmqc.run(q.format(dec="argmax"), model="lmqc:tiny", decoder="beam(n=100000)")
    with pytest.raises(DecodeError, match=f"<= {MAX_BRANCHES}"):
        Beam(100000)
    with pytest.raises(DecodeError, match=f"<= {MAX_BRANCHES}"):
        parse_strategy("beam", n=MAX_BRANCHES + 1)
    assert Beam(MAX_BRANCHES).n == MAX_BRANCHES
    assert issubclass(QueryTypeError, LmqcError)
