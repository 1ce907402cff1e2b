"""The Python API as LMQL users call it (issue 13): query functions from strings, lmqc.F, positional inputs,
call-time overrides, the default model. On the tiny backend."""

from __future__ import annotations

import pytest

import lmqc


@pytest.fixture
def tiny_default():
    before = lmqc.default_model()
    lmqc.set_default_model("lmqc:tiny")
    yield
    lmqc.set_default_model(before)


def test_query_from_a_string_with_positional_inputs(tiny_default) -> None:
    q = lmqc.query('"Q: {a} and {b}? [X]" where len(X) < 4\n')
    r = q("one", b="two")
    assert r.prompt.startswith("Q: one and two? ") and r.return_value is None and not r.returned
    # a query that returns gives its return value, as LMQL's query functions do
    assert lmqc.query('"Q: {a} and {b}? [X]" where len(X) < 4\nreturn X.upper()\n')("one", b="two") == r.variables["X"].upper()
    named = lmqc.query('"{x}{y} [X]" where len(X) < 3', input_variables=["y", "x"])
    assert named("Y", "X").prompt.startswith("XY ")
    with pytest.raises(TypeError):
        named("only one")


def test_f_returns_values(tiny_default) -> None:
    summarize = lmqc.F("Summarize: {text} [SUMMARY]", "len(TOKENS(SUMMARY)) < 4")
    value = summarize("a long text")
    assert isinstance(value, str)
    two = lmqc.F('Quote "{x}": [A] [B: int]', "len(A) < 3 and len(B) < 4")
    values = two("hi")
    assert set(values) == {"A", "B"} and isinstance(values["B"], int)


def test_call_time_overrides(tiny_default) -> None:
    @lmqc.query
    def ask(topic):
        '''lmql
        "About {topic}: [X]" where len(X) < 5
        '''

    assert not isinstance(ask("cats"), list)
    samples = ask("cats", decoder="sample", n=3, temperature=0.7, seed=1)
    assert isinstance(samples, list) and len(samples) == 3
    with pytest.raises(lmqc.QueryTypeError, match="does not take temperature"):
        ask("cats", decoder="beam(n=2)", temperature=0.5)
    assert ask("cats", model="lmqc:tiny").prompt.startswith("About cats: ")

    @lmqc.query
    def with_n(n):
        '''lmql
        "{n} [X]" where len(X) < 3
        '''

    assert with_n(7).prompt.startswith("7 ")  # an input named n is an input, not a decoder override


def test_default_model_and_model_options(tiny_default) -> None:
    assert lmqc.run('"[X]" where len(X) < 3').prompt is not None  # no from clause: the default model
    assert lmqc.model() is lmqc.model("lmqc:tiny", n_ctx=512)
    with pytest.raises(ValueError):
        lmqc.set_default_model("")


def test_generate_and_score(tiny_default) -> None:
    text = lmqc.generate_sync("Once upon a time", max_tokens=5)
    assert isinstance(text, str)
    scored = lmqc.score_sync("The sky is", [" blue", " green", " a very long answer"])
    assert scored.logprobs.shape == (3,) and (scored.logprobs < 0).all()
    assert abs(scored.probs.sum() - 1) < 1e-9 and scored.argmax() in scored.continuations
    assert (scored.scores("mean") >= scored.logprobs).all()
    # the same as the distribution clause's own scoring of the options
    r = lmqc.run('"The sky is[C]"\ndistribution C in [" blue", " green", " a very long answer"]')
    assert r.distribution is not None
    assert max(r.distribution, key=r.distribution.get) == scored.argmax()


def test_async_run_and_async_query_functions(tiny_default) -> None:
    import asyncio

    @lmqc.query
    async def ask(topic):
        '''lmql
        "About {topic}: [X]" where len(X) < 5
        return X
        '''

    async def main():
        return await asyncio.gather(lmqc.run_async('"[X]" where len(X) < 3'), ask("cats"), ask("dogs"))

    a, b, c = asyncio.run(main())
    assert a.prompt is not None and isinstance(b, str) and 0 < len(b) < 5 and isinstance(c, str)  # returned X
    assert asyncio.run(lmqc.generate("Hi", max_tokens=3)) is not None


def test_error_classes_are_the_python_ones(tiny_default) -> None:
    with pytest.raises(SyntaxError) as info:
        lmqc.run('"unclosed [X"\n')
    assert isinstance(info.value, lmqc.QuerySyntaxError) and info.value.lineno == 1
    with pytest.raises(TypeError) as info:
        lmqc.run('"{missing} [X]" where len(X) < 3')
    assert isinstance(info.value, lmqc.QueryTypeError)


def test_from_a_model_expression_and_is_async_for_source_queries(tiny_default) -> None:
    import asyncio

    r = lmqc.run('"Hi [X]" where len(X) < 3\nfrom lmql.model("lmqc:tiny", n_ctx=512)\n')
    assert r.prompt.startswith("Hi ")
    q = lmqc.query('"About {t}: [X]" where len(X) < 4', is_async=True)
    awaitable = q("owls")
    assert asyncio.iscoroutine(awaitable)
    assert asyncio.run(awaitable).prompt == lmqc.run('"About {t}: [X]" where len(X) < 4', t="owls").prompt


def test_query_function_returns_what_the_body_returned(tiny_default) -> None:
    # LMQL's test_return_value: `return None` is a return value; no `return` gives the result object
    none = lmqc.query('"Hi, [C]." where len(TOKENS(C)) == 2\nreturn None\n')
    some = lmqc.query('"Hi, [C]." where len(TOKENS(C)) == 2\nreturn "Something"\n')
    plain = lmqc.query('"Hi,[C]" where len(TOKENS(C)) == 2\n')
    assert none() is None and none(decoder="beam", n=2) == [None, None] and some() == "Something"
    assert plain().prompt.startswith("Hi,")
    scope = {"none": none, "some": some, "plain": plain}
    # as nested queries: a returned value (even None) replaces the nested prompt; no return keeps its text
    assert lmqc.run('"[T: none]."\nreturn context.prompt\n', **scope).return_value == "None."
    assert lmqc.run('"[T: some]."\nreturn context.prompt\n', **scope).return_value == "Something."
    r = lmqc.run('"[T: plain]."\nreturn context.prompt\n', **scope)
    assert r.return_value == "Hi," + r.variables["T"] + "."
