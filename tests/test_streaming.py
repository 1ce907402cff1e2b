"""Streaming in the library (issue 13): on_token callbacks, LMQL's output writers, and lmqc.stream iterated with
``for`` and ``async for``. On the tiny backend."""

from __future__ import annotations

import asyncio
import io

import pytest

import lmqc
from lmqc.runtime.execution import QueryRuntimeError

TWO_HOLES = '"Hello [X] and [Y: int]!" where len(TOKENS(X)) < 8 and len(Y) < 4'


@pytest.fixture(autouse=True)
def tiny():
    before = lmqc.default_model()
    lmqc.set_default_model("lmqc:tiny")
    yield lmqc.model()
    lmqc.set_default_model(before)


def _key(r):
    return (r.prompt, r.variables, r.spans, r.return_value)


def _transcript(events, branch: int = 0) -> str:
    return "".join(e.text for e in events if e.kind in ("prompt", "token") and e.branch == branch)


def test_on_token_spells_the_prompt_token_by_token() -> None:
    events: list = []
    result = lmqc.run(TWO_HOLES, on_token=events.append)
    assert _key(result) == _key(lmqc.run(TWO_HOLES))  # streaming changes nothing
    assert _transcript(events) == result.prompt
    tokens = [e for e in events if e.kind == "token" and e.variable == "X"]
    assert len(tokens) > 1  # X arrived in pieces, each event holding the text so far
    assert all(b.value == a.value + b.text for a, b in zip(tokens, tokens[1:], strict=False))
    values = {e.variable: e.value for e in events if e.kind == "value"}
    assert values == result.variables and isinstance(values["Y"], int)
    assert events[-1].kind == "result" and events[-1].result is result
    kinds = [e.kind for e in events]
    assert kinds.index("value") < len(kinds) - 1 and kinds.count("result") == 1


def test_stop_phrase_text_is_never_streamed() -> None:
    """A stop phrase cut from the value (STOPS_BEFORE) does not appear among the streamed tokens, also when it
    spans several tokens (the tiny model writes "Alice" then " 7" here: "Alice" must be held back)."""
    for q, phrase in [('"Say [X]" where STOPS_BEFORE(X, "it") and len(TOKENS(X)) < 30', "it"),
                      ('"Hello [X]" where STOPS_BEFORE(X, "Alice 7") and len(TOKENS(X)) < 30', "Alice")]:
        events: list = []
        result = lmqc.run(q, on_token=events.append)
        streamed = "".join(e.text for e in events if e.kind == "token")
        assert streamed == result.variables["X"]
        assert all(phrase not in e.value for e in events if e.kind == "token")
        assert _transcript(events) == result.prompt


def test_sampled_branches_stream_separately() -> None:
    q = 'sample(n=3, temperature=1.0, seed=3)\n"Go [X]" where len(TOKENS(X)) < 6'
    events: list = []
    results = lmqc.run(q, on_token=events.append)
    assert {e.branch for e in events if e.kind == "token"} == {0, 1, 2}
    for i, r in enumerate(results):
        assert "".join(e.text for e in events if e.kind == "token" and e.branch == i) == r.variables["X"]


def test_beam_reports_values_only() -> None:
    events: list = []
    results = lmqc.run('beam(n=2)\n"B [X]" where len(TOKENS(X)) < 4', on_token=events.append)
    values = [e.value for e in events if e.kind == "value"]
    assert sorted(values) == sorted(r.variables["X"] for r in results)
    # a beam's text only arrives when the hole is done: one piece per finished branch
    assert len([e for e in events if e.kind == "token"]) == len(values)


def test_stream_iterates_the_same_events_sync_and_async() -> None:
    direct: list = []
    result = lmqc.run(TWO_HOLES, on_token=direct.append)
    stream = lmqc.stream(TWO_HOLES)
    events = list(stream)
    assert [(e.kind, e.variable, e.text) for e in events] == [(e.kind, e.variable, e.text) for e in direct]
    assert _key(stream.result) == _key(result) and events[-1].result is stream.result

    async def collect():
        s = lmqc.stream(TWO_HOLES)
        return [e async for e in s], s.result

    aevents, aresult = asyncio.run(collect())
    assert [(e.kind, e.text) for e in aevents] == [(e.kind, e.text) for e in direct] and _key(aresult) == _key(result)


def test_leaving_a_stream_early_stops_the_query(tiny) -> None:
    from lmqc.runtime.service import scheduler_for

    scheduler = scheduler_for(tiny)
    before = scheduler.stats["cancelled"]
    long = '"Long [X]" where len(TOKENS(X)) > 300 and len(TOKENS(X)) < 400'
    try:
        for event in lmqc.stream(long):
            if event.kind == "token":
                scheduler.pause()  # at most one more step: the hole cannot finish before the loop is left
                break
    finally:
        scheduler.resume()
    for _ in range(3000):
        if scheduler.stats["cancelled"] > before:
            break
        asyncio.run(asyncio.sleep(0.01))
    assert scheduler.stats["cancelled"] > before  # its hole was dropped, not decoded to the end
    assert lmqc.run('"[X]" where len(TOKENS(X)) < 3').prompt is not None


def test_query_errors_reach_the_iterator_after_the_events_before_them() -> None:
    q = '"A [X]" where len(TOKENS(X)) < 3\nraise ValueError("boom")\n'
    seen: list = []
    with pytest.raises(QueryRuntimeError, match="boom"):
        for e in lmqc.stream(q):
            seen.append(e.kind)
    assert "value" in seen and "result" not in seen

    async def consume():
        async for _ in lmqc.stream(q):
            pass

    with pytest.raises(QueryRuntimeError, match="boom"):
        asyncio.run(consume())


def test_lmql_output_writers(capsys) -> None:
    result = lmqc.run(TWO_HOLES, output_writer=lmqc.printing)
    assert capsys.readouterr().out == result.prompt + "\n"
    writer = lmqc.stream("X")
    assert isinstance(writer, lmqc.streaming.VariableWriter)
    result = lmqc.run(TWO_HOLES, output_writer=writer)
    assert capsys.readouterr().out == result.variables["X"] + "\n"
    lmqc.run(TWO_HOLES, output_writer=lmqc.silent)
    assert capsys.readouterr().out == ""
    with pytest.raises(TypeError):
        lmqc.run(TWO_HOLES, output_writer=42)


def test_custom_lmql_writer_with_async_method() -> None:
    class Writer:
        def __init__(self):
            self.calls = []

        async def add_interpreter_head_state(self, variable, head, prompt, where, trace, is_valid, is_final, mask,
                                             num_tokens, program_variables):
            self.calls.append((variable, head, prompt, is_final, dict(program_variables)))

    w = Writer()
    result = lmqc.run(TWO_HOLES, output_writer=w)
    final = [c for c in w.calls if c[3]]
    assert final[-1] == (None, 0, result.prompt, True, result.variables)
    assert any(c[0] == "X" and not c[3] for c in w.calls)  # intermediate states while X decodes
    assert all(result.prompt.startswith(c[2]) for c in w.calls)


def test_query_functions_stream() -> None:
    @lmqc.query
    def ask(topic):
        '''lmql
        "About {topic}: [X]" where len(TOKENS(X)) < 5
        '''

    events: list = []
    result = ask("cats", on_token=events.append)
    assert _transcript(events) == result.prompt
    streamed = list(ask.stream("cats"))
    assert [e.text for e in streamed] == [e.text for e in events]

    @lmqc.query
    def takes_on_token(on_token):
        '''lmql
        "{on_token} [X]" where len(X) < 3
        '''

    assert takes_on_token("T").prompt.startswith("T ")  # an input of that name is an input


def test_printing_to_a_file_object() -> None:
    buf = io.StringIO()
    result = lmqc.run(TWO_HOLES, output_writer=lmqc.streaming.PrintingWriter(buf))
    assert buf.getvalue() == result.prompt + "\n"


@pytest.mark.model
def test_gemma_streams_tokens_sync_and_async() -> None:
    q = '"Q: Name a color.\\nA:[A]" where STOPS_BEFORE(A, "\\n") and len(TOKENS(A)) < 6'
    compiled = lmqc.compile(q, "gemma-3-270m")
    events = list(lmqc.stream(compiled))
    result = events[-1].result
    assert _transcript(events) == result.prompt
    assert len([e for e in events if e.kind == "token"]) >= 1
    assert "\n" not in "".join(e.text for e in events if e.kind == "token")

    async def collect():
        return [e async for e in lmqc.stream(compiled)]

    aevents = asyncio.run(collect())
    assert _transcript(aevents) == aevents[-1].result.prompt
