"""lmqc.model(...) objects, as LMQL's lmql.LLM: generation verbs, accepted as model= and in `from m`."""

from __future__ import annotations

import asyncio

import pytest

import lmqc

Q = '"A: [X]" where len(TOKENS(X)) < 4'


def test_model_object_generates_scores_and_keeps_the_backend_api() -> None:
    m = lmqc.model("lmqc:tiny")
    assert m is lmqc.model("lmqc:tiny") and m.model_identifier == "lmqc:tiny"
    text = m.generate_sync("Hello", max_tokens=4)
    assert isinstance(text, str) and text == lmqc.generate_sync("Hello", max_tokens=4, model="lmqc:tiny")
    two = m.generate_sync("Hello", max_tokens=3, decoder="sample", n=2, seed=1)
    assert isinstance(two, list) and len(two) == 2
    assert asyncio.run(m.generate("Hello", max_tokens=4)) == text
    scores = m.score_sync("Hello", [" World", " Apples"])
    assert scores.continuations == [" World", " Apples"]
    assert list(asyncio.run(m.score("Hello", [" World", " Apples"])).logprobs) == list(scores.logprobs)
    assert m.tokenize("Hello") == m.backend.tokenize("Hello")  # the backend's own methods


def test_model_object_as_model_argument_and_in_from() -> None:
    m = lmqc.model("lmqc:tiny")
    expected = lmqc.run(Q, model="lmqc:tiny").prompt
    assert lmqc.run(Q, model=m).prompt == expected
    assert lmqc.run('"A: [X]" from m where len(TOKENS(X)) < 4', m=m).prompt == expected
    assert asyncio.run(lmqc.run_async('"A: [X]" from m where len(TOKENS(X)) < 4', m=m)).prompt == expected
    assert lmqc.compile(Q, m).model == "lmqc:tiny"

    @lmqc.query
    def ask(llm):
        '''lmql
        "A: [X]" from llm where len(TOKENS(X)) < 4
        '''

    assert ask(m).prompt == expected
    assert lmqc.query(Q, model=m)().prompt == expected


def test_from_expression_errors_name_the_clause() -> None:
    with pytest.raises(lmqc.ModelError, match="from clause"):
        lmqc.run('"A: [X]" from pick() where len(TOKENS(X)) < 4', pick=lambda: 1 / 0)
    with pytest.raises(lmqc.ModelError, match="model spec string"):
        lmqc.run('"A: [X]" from m where len(TOKENS(X)) < 4', m=42)
