"""lmqc.QueryBuilder: a query assembled clause by clause (LMQL's QueryBuilder)."""

from __future__ import annotations

import asyncio

import pytest

import lmqc


def test_built_query_runs_with_its_clauses() -> None:
    q = (
        lmqc.QueryBuilder()
        .set_decoder("sample", n=2, seed=3, temperature=0.5)
        .set_prompt('What is the "capital" of\nFrance? [ANSWER]')
        .set_model("lmqc:tiny")
        .set_where("len(TOKENS(ANSWER)) < 6")
        .set_where("not '\\n' in ANSWER")
        .build()
    )
    results = q.run_sync()
    assert len(results) == 2
    for r in results:
        assert r.prompt.startswith('What is the "capital" of\nFrance? ')
        assert "\n" not in r.variables["ANSWER"]
    again = asyncio.run(q.run())
    assert [r.prompt for r in again] == [r.prompt for r in results]  # seeded: the same samples


def test_inputs_and_distribution() -> None:
    q = lmqc.QueryBuilder().set_prompt("{who} picks [X]").set_model("lmqc:tiny").set_distribution("X", '["A", "B"]')
    r = q.build().run_sync(who="Ann")
    assert r.prompt.startswith("Ann picks ") and set(r.distribution) == {"A", "B"}


def test_mistakes_are_refused_where_they_are_made() -> None:
    with pytest.raises(ValueError, match="unknown decoder"):
        lmqc.QueryBuilder().set_decoder("greedy")
    with pytest.raises(ValueError, match="n"):
        lmqc.QueryBuilder().set_decoder("beam", n=0)
    with pytest.raises(ValueError, match="already set"):
        lmqc.QueryBuilder().set_prompt("a").set_prompt("b")
    with pytest.raises(ValueError, match="needs a prompt"):
        lmqc.QueryBuilder().build()
    with pytest.raises(lmqc.QueryTypeError):
        lmqc.QueryBuilder().set_prompt("[X]").set_where("len(TOKENS(Y)) < 3").build()
