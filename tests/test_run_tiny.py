"""End to end on the deterministic tiny backend: parse -> compile -> run, every decoder x constraint kind."""

from __future__ import annotations

import re

import pytest

import lmqc
from lmqc.errors import MaxLenError, QueryTypeError

DECODERS = ["argmax", "sample(n=3, seed=7)", "sample(n=2, temperature=0.7, top_k=20, top_p=0.9, seed=3)", "beam(n=3)"]

# (where clause, predicate on the value)
CASES = [
    ("INT(X) and len(TOKENS(X)) < 6", lambda v: isinstance(v, int)),
    ('X in ["positive", "negative", "neutral"]', lambda v: v in {"positive", "negative", "neutral"}),
    ('STOPS_AT(X, ".") and len(TOKENS(X)) < 12', lambda v: "." not in v[:-1] and (v.endswith(".") or len(v) >= 0)),
    ('STOPS_BEFORE(X, "\\n") and len(X) < 30', lambda v: "\n" not in v and len(v) < 30),
    ("len(X) < 12", lambda v: len(v) < 12),
    ('REGEX(X, r"[0-9]{4}-[0-9]{2}-[0-9]{2}")', lambda v: re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", v)),
    ('STARTS_WITH(X, "no") and len(X) < 10', lambda v: v.startswith("no") and len(v) < 10),
    ('not "e" in X and len(X) < 8 and len(X) > 2', lambda v: "e" not in v and 2 < len(v) < 8),
    ('(X in ["yes", "no"] or INT(X)) and len(X) < 4', lambda v: v in {"yes", "no"} or re.fullmatch(r" ?[0-9]+", str(v))),
]


def _source(where: str, decoder: str) -> str:
    return f'{decoder}\n    "Answer: [X]"\nfrom "lmqc:tiny"\nwhere {where}\n'


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize(("where", "ok"), CASES, ids=[c[0] for c in CASES])
def test_every_value_satisfies_its_constraint(decoder: str, where: str, ok) -> None:
    res = lmqc.run(_source(where, decoder))
    results = res if isinstance(res, list) else [res]
    n = int(re.search(r"n=(\d+)", decoder).group(1)) if "n=" in decoder else 1
    assert 1 <= len(results) <= n
    if decoder.startswith("sample"):
        assert len(results) == n
    for r in results:
        value = r.variables["X"]
        assert ok(value), (where, decoder, value)
        assert r.prompt == "Answer: " + str(r.prompt[len("Answer: ") :])


def test_int_values_are_python_ints() -> None:
    r = lmqc.run(_source("INT(X) and len(TOKENS(X)) < 4", "argmax"))
    assert isinstance(r.variables["X"], int)


def test_beam_results_are_ordered_by_score() -> None:
    rs = lmqc.run(_source("len(TOKENS(X)) < 5", "beam(n=3)"))
    scores = [r.logprob for r in rs]
    assert scores == sorted(scores, reverse=True)
    assert len({r.variables["X"] for r in rs}) == len(rs)


def test_seed_reproduces_samples() -> None:
    src = _source("len(TOKENS(X)) < 6", "sample(n=3, seed=11)")
    a = [r.variables["X"] for r in lmqc.run(src)]
    b = [r.variables["X"] for r in lmqc.run(src)]
    assert a == b
    c = [r.variables["X"] for r in lmqc.run(src.replace("seed=11", "seed=12"))]
    assert a != c


def test_for_loop_fills_every_hole_and_stops_cut() -> None:
    src = '''argmax
    "List:\\n"
    items = []
    for i in range(3):
        "- [ITEM]\\n" where STOPS_BEFORE(ITEM, "\\n") and len(ITEM) < 10
        items.append(ITEM)
    "Count: {len(items)}"
from "lmqc:tiny"
'''
    r = lmqc.run(src)
    assert r.prompt.endswith("Count: 3")
    assert r.prompt.count("- ") >= 3
    assert "\n" not in r.variables["ITEM"]


def test_distribution_sums_to_one() -> None:
    src = '''argmax
    "Review: great!\\nSentiment: [CLS]"
from "lmqc:tiny"
distribution CLS in ["positive", "negative", "neutral"]
'''
    r = lmqc.run(src)
    assert set(r.distribution) == {"positive", "negative", "neutral"}
    assert abs(sum(r.distribution.values()) - 1) < 1e-9
    assert r.variables["CLS"] == max(r.distribution, key=r.distribution.get)


def test_inputs_and_decoder_override() -> None:
    src = '"Hi {name}: [X]" where len(TOKENS(X)) < 3'
    r = lmqc.run(src, model="lmqc:tiny", name="Bob")
    assert r.prompt.startswith("Hi Bob: ")
    rs = lmqc.run(src, model="lmqc:tiny", decoder="beam(n=2)", name="Bob")
    assert isinstance(rs, list) and len(rs) == 2
    with pytest.raises(QueryTypeError, match="name"):
        lmqc.run(src, model="lmqc:tiny")


def test_max_len_keeps_partial_result() -> None:
    src = 'argmax(max_len=12)\n    "Tell me a story: [X]"\nfrom "lmqc:tiny"\n'
    with pytest.raises(MaxLenError) as info:
        lmqc.run(src)
    assert info.value.partial is not None
    assert info.value.partial.prompt.startswith("Tell me a story: ")


def test_query_decorator_compiles_once_and_sees_scope() -> None:
    greeting = "Hello"  # noqa: F841 - read by the query through the enclosing scope

    @lmqc.query(model="lmqc:tiny")
    def greet(name):
        '''lmql
        "{greeting}, {name}: [X]" where len(TOKENS(X)) < 4
        '''

    r1 = greet("Bob")
    r2 = greet(name="Ann")
    assert r1.prompt.startswith("Hello, Bob: ") and r2.prompt.startswith("Hello, Ann: ")
