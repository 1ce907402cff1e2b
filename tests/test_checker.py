"""Query helpers: holes, inputs, per-hole constraints, printing and JSON."""

from __future__ import annotations

import json

import pytest

from lmqc.compiler import nodes
from lmqc.compiler.checker import (
    format_constraint,
    format_query,
    hole_constraints,
    holes,
    inputs,
    query_to_json,
)
from lmqc.compiler.parser import parse
from lmqc.errors import QueryTypeError

LOOP = '''argmax
    "Facts about {topic}:\\n"
    facts = []
    for i in range(int(n)):
        "{i + 1}. [FACT: r'[A-Z][a-z ]+']\\n" where STOPS_BEFORE(FACT, "\\n")
        facts.append(FACT)
    if len(facts) > limit:
        "Too many. [VERDICT]"
    else:
        "Fine. [VERDICT]"
    "{VERDICT} {[f.upper() for f in facts]} {(lambda z: z + extra)(1)}"
from "gemma-3-270m"
where len(FACT) < 30 and VERDICT in ["ok", "no"]
'''


def test_holes_in_program_order_unique() -> None:
    assert holes(parse(LOOP)) == ["FACT", "VERDICT"]
    assert holes(parse('"[B] [A]"\nfor x in y:\n    "[C] [B2]"\n"[D]"')) == ["B", "A", "C", "B2", "D"]


def test_inputs_are_free_names_in_order() -> None:
    # topic, n, limit and extra are read but never bound; facts/i/f/z are bound; len/int are builtins
    assert inputs(parse(LOOP)) == ["topic", "n", "limit", "extra"]


def test_inputs_read_before_assignment() -> None:
    assert inputs(parse('x = int(x)\ny = 3\n"{x} {y} {z} [H] {H}"')) == ["x", "z"]
    assert inputs(parse('"[A]"\nA += suffix\n"{A}"')) == ["suffix"]
    assert inputs(parse('import math\n"{math.pi} {w}"')) == ["w"]


def test_hole_constraints_combine_annotation_inline_and_global() -> None:
    hc = hole_constraints(parse(LOOP))
    assert hc["FACT"] == nodes.And(
        (nodes.Regex("FACT", "[A-Z][a-z ]+"), nodes.StopsBefore("FACT", "\n"), nodes.LenCmp("FACT", "<", 30))
    )
    assert hc["VERDICT"] == nodes.OneOf("VERDICT", ("ok", "no"))


def test_hole_constraints_single_and_none() -> None:
    hc = hole_constraints(parse('"[A: int] [B] [C]" where len(C) < 3 or INT(C)'))
    assert hc == {"A": nodes.IsInt("A"), "B": None, "C": nodes.Or((nodes.LenCmp("C", "<", 3), nodes.IsInt("C")))}


def test_hole_constraints_split_by_variable() -> None:
    hc = hole_constraints(parse('"[X] [Y]"\nwhere INT(X) and (len(Y) < 4 and STOPS_AT(Y, ".")) and len(X) < 3'))
    assert hc["X"] == nodes.And((nodes.IsInt("X"), nodes.LenCmp("X", "<", 3)))
    assert hc["Y"] == nodes.And((nodes.LenCmp("Y", "<", 4), nodes.StopsAt("Y", ".")))


@pytest.mark.parametrize(
    "where",
    ["INT(X) or INT(Y)", "not (INT(X) and INT(Y))", "INT(X) and (len(Y) < 3 or len(X) < 3)"],
)
def test_or_not_across_variables_rejected(where: str) -> None:
    with pytest.raises(QueryTypeError, match="combined with 'and'"):
        parse(f'"[X] [Y]"\nwhere {where}')


def test_holes_in_loops_and_branches_may_repeat() -> None:
    parse('for i in range(3):\n    "[X]"\n    "[Y] [Y]"\n')
    parse('if a:\n    "[X]"\nelse:\n    "[X]"\n')
    with pytest.raises(QueryTypeError, match="already filled"):
        parse('"[X]"\nif a:\n    "[X]"\n')


def test_distribution_must_be_last_hole() -> None:
    q = parse('"a [A] b [B]"\ndistribution B in ["x", "y"]')
    assert q.distribution == nodes.Distribution("B", ("x", "y"))
    with pytest.raises(QueryTypeError, match="unknown distribution variable 'C'"):
        parse('"a [A]"\ndistribution C in ["x"]')


def test_format_constraint() -> None:
    c = nodes.And((nodes.IsInt("X"), nodes.Or((nodes.LenCmp("X", "<", 2), nodes.Not(nodes.Contains("X", "0"))))))
    assert format_constraint(c) == "INT(X) and (len(X) < 2 or not '0' in X)"


def test_format_query_round_trips() -> None:
    """The printed prompt is itself valid query source that prints the same way."""
    printed = format_query(parse(LOOP))
    body = printed.split("prompt:\n", 1)[1].split("\nwhere:", 1)[0]
    again = format_query(parse(body))
    assert again.split("prompt:\n", 1)[1].split("\nwhere:", 1)[0] == body


def test_query_to_json() -> None:
    data = query_to_json(parse(LOOP.replace("argmax", "sample(n=2, temperature=0.5)")))
    assert data == {
        "decoder": {"name": "sample", "args": {"n": 2, "temperature": 0.5}},
        "holes": ["FACT", "VERDICT"],
        "inputs": ["topic", "n", "limit", "extra"],
        "model": "gemma-3-270m",
        "constraints": {
            "FACT": "REGEX(FACT, '[A-Z][a-z ]+') and STOPS_BEFORE(FACT, '\\n') and len(FACT) < 30",
            "VERDICT": "VERDICT in ['ok', 'no']",
        },
        "distribution": None,
    }
    json.dumps(data)
    empty = query_to_json(parse('"[X]"\ndistribution X in ["a"]'))
    assert empty["decoder"] is None and empty["model"] is None
    assert empty["distribution"] == {"var": "X", "options": ["a"]}
