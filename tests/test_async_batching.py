"""Concurrent async queries share the in-process model with batching (issue 13): their holes are decoded by one
worker (runtime.scheduler.Scheduler) that evaluates the pending sequences of all of them in one model call per
step. On the tiny backend, whose logits do not depend on the batch, results equal sequential runs exactly."""

from __future__ import annotations

import asyncio
import threading

import pytest

import lmqc
from lmqc.runtime.service import QueryCancelled, scheduler_for

QUERIES = [
    '"Q: [X] and [Y]" where len(TOKENS(X)) < 8 and len(TOKENS(Y)) < 5',
    '"A number: [N: int]" where len(N) < 4',
    '"Pick[C]"\ndistribution C in [" yes", " no", " maybe"]',
    'sample(n=3, temperature=0.8, seed=7)\n"Say [X]" where len(TOKENS(X)) < 6',
    'beam(n=2)\n"Beam [X]" where len(TOKENS(X)) < 4',
    '"{who} says [X]" where STOPS_AT(X, "it") and len(TOKENS(X)) < 10',
]


@pytest.fixture
def tiny():
    before = lmqc.default_model()
    lmqc.set_default_model("lmqc:tiny")
    yield lmqc.model()
    lmqc.set_default_model(before)


def _key(result):
    if isinstance(result, list):
        return [_key(r) for r in result]
    return (result.prompt, result.variables, result.distribution, result.spans)


async def _together(scheduler, awaitables, expect: int):
    """Start every awaitable while the worker is paused, resume once ``expect`` jobs wait: their first holes
    meet in one batch whatever the threads' timing."""
    scheduler.pause()
    try:
        tasks = [asyncio.ensure_future(a) for a in awaitables]
        for _ in range(3000):  # up to 30 s for the threads to compile and submit
            if scheduler.queued() >= expect or any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.01)
    finally:
        scheduler.resume()
    return await asyncio.gather(*tasks)


def test_concurrent_queries_equal_sequential_with_fewer_model_calls(tiny) -> None:
    inputs = {"who": "Bob"}
    tiny.stats.reset()
    sequential = [lmqc.run(q, **inputs) if "{who}" in q else lmqc.run(q) for q in QUERIES]
    sequential_calls = tiny.stats.eval_calls

    scheduler = scheduler_for(tiny)
    before = dict(scheduler.stats)
    tiny.stats.reset()
    runs = [lmqc.run_async(q, **inputs) if "{who}" in q else lmqc.run_async(q) for q in QUERIES]
    # the distribution query's first request is a score job, run alone; the other five are holes
    concurrent = asyncio.run(_together(scheduler, runs, expect=len(QUERIES)))
    concurrent_calls = tiny.stats.eval_calls

    assert [_key(r) for r in concurrent] == [_key(r) for r in sequential]
    assert concurrent_calls < sequential_calls
    assert scheduler.stats["merged_steps"] > before["merged_steps"]
    assert scheduler.stats["most_requests_in_step"] >= 4


def test_async_query_functions_generate_and_score_batch_too(tiny) -> None:
    @lmqc.query
    async def ask(topic):
        '''lmql
        "About {topic}: [X]" where len(TOKENS(X)) < 6
        return X
        '''

    sync_ask = lmqc.query('"About {topic}: [X]" where len(TOKENS(X)) < 6\nreturn X\n')
    expected = [sync_ask(t) for t in ("cats", "dogs", "owls")]  # query functions that return give the value
    scheduler = scheduler_for(tiny)
    before = scheduler.stats["merged_steps"]
    results = asyncio.run(_together(scheduler, [ask(t) for t in ("cats", "dogs", "owls")], expect=3))
    assert results == expected and all(isinstance(r, str) for r in results)
    assert scheduler.stats["merged_steps"] > before

    async def both():
        return await asyncio.gather(lmqc.generate("Once", max_tokens=4), lmqc.score("The sky is", [" blue", " red"]))

    text, scored = asyncio.run(both())
    assert text == lmqc.generate_sync("Once", max_tokens=4)
    assert list(scored.logprobs) == list(lmqc.score_sync("The sky is", [" blue", " red"]).logprobs)


def test_one_failing_query_leaves_the_others(tiny) -> None:
    good = '"Hi [X]" where len(TOKENS(X)) < 5'
    bad = '"Hi [X]" where X in ["a", "b"] and len(TOKENS(X)) < 1'  # no value fits in no tokens
    expected = lmqc.run(good)

    async def main():
        return await asyncio.gather(lmqc.run_async(good), lmqc.run_async(bad), lmqc.run_async(good),
                                    return_exceptions=True)

    a, err, b = asyncio.run(main())
    assert isinstance(err, lmqc.LmqcError)
    assert _key(a) == _key(b) == _key(expected)


def test_cancelling_a_task_stops_its_query(tiny) -> None:
    scheduler = scheduler_for(tiny)
    cancelled_before = scheduler.stats["cancelled"]
    long = '"Long [X]" where len(TOKENS(X)) < 200'
    finished = threading.Event()

    async def main():
        scheduler.pause()
        try:
            task = asyncio.ensure_future(lmqc.run_async(long, on_token=lambda e: e.kind == "token" and finished.set()))
            for _ in range(3000):
                if scheduler.queued() >= 1:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task  # the task has cancelled its query by now: resuming cannot run a step of it
        finally:
            scheduler.resume()

    asyncio.run(main())
    for _ in range(3000):  # the worker drops the job before its first step
        if scheduler.stats["cancelled"] > cancelled_before:
            break
        threading.Event().wait(0.01)
    assert scheduler.stats["cancelled"] > cancelled_before
    assert not finished.is_set()  # no step of it ran
    assert lmqc.run('"[X]" where len(TOKENS(X)) < 3').prompt is not None  # the model is still usable


def test_cancelled_service_refuses_new_holes(tiny) -> None:
    from lmqc.runtime.query import run_compiled
    from lmqc.runtime.service import BatchedDecoder

    service = BatchedDecoder(tiny)
    service.cancel()
    with pytest.raises(QueryCancelled):
        run_compiled(lmqc.compile('"[X]" where len(TOKENS(X)) < 3'), service=service)


def test_a_sync_run_beside_async_queries(tiny) -> None:
    """A synchronous run in another thread while async queries decode: the backend lock keeps them apart."""
    q = '"Side [X] [Y]" where len(TOKENS(X)) < 10 and len(TOKENS(Y)) < 10'
    expected = lmqc.run(q)
    out: list = []
    thread = threading.Thread(target=lambda: out.extend(lmqc.run(q) for _ in range(3)))

    async def main():
        thread.start()
        return await asyncio.gather(*[lmqc.run_async(q) for _ in range(4)])

    results = asyncio.run(main())
    thread.join()
    assert all(_key(r) == _key(expected) for r in [*results, *out])


@pytest.mark.model
def test_gemma_concurrent_queries_batch_and_keep_their_constraints() -> None:
    """On Gemma 3 the logits of a sequence depend slightly on its batch, so texts are not compared with
    sequential runs: every value must satisfy its own constraint, and the model calls must be fewer."""
    gemma = lmqc.model("gemma-3-270m")
    queries = [
        '"The capital of France is[X]" where X in [" Paris", " London", " Rome"]',
        '"Count: 1, 2, 3, 4,[N: int]" where len(N) < 3',
        '"Q: Say hello.\\nA:[A]" where STOPS_AT(A, ".") and len(TOKENS(A)) < 8',
    ]
    compiled = [lmqc.compile(q, "gemma-3-270m") for q in queries]
    gemma.stats.reset()
    for c in compiled:
        lmqc.run(c)
    sequential_calls = gemma.stats.eval_calls

    scheduler = scheduler_for(gemma)
    gemma.stats.reset()
    x, n, a = asyncio.run(_together(scheduler, [lmqc.run_async(c) for c in compiled], expect=3))
    assert gemma.stats.eval_calls < sequential_calls
    assert x.variables["X"] in (" Paris", " London", " Rome")
    assert isinstance(n.variables["N"], int) and 0 <= n.variables["N"] < 100
    value = a.variables["A"]
    assert value.endswith(".") or a.n_tokens <= 8  # at most 7 value tokens (and a healed one)
    assert a.prompt == "Q: Say hello.\nA:" + value
