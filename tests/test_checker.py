"""Query helpers: holes, inputs, per-occurrence constraints and slots, printing and JSON; semantic checks."""

from __future__ import annotations

import json

import pytest

from lmqc.compiler import nodes
from lmqc.compiler.checker import (
    format_constraint,
    format_prompt_string,
    format_query,
    hole_constraints,
    hole_slots,
    holes,
    inputs,
    query_to_json,
)
from lmqc.compiler.parser import parse
from lmqc.errors import QuerySyntaxError, QueryTypeError

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
    assert holes(parse('"[B] [A]"\nfor x in y:\n    "[C] [B2]"\n"[D] [A]"')) == ["B", "A", "C", "B2", "D"]
    assert [h.index for h in parse(LOOP).holes()] == [0, 1, 2]


# ---- inputs ------------------------------------------------------------------------------------------------


def test_inputs_are_free_names_in_order() -> None:
    # topic, n, limit and extra are read but never bound; facts/i/f/z are bound; len/int are builtins
    assert inputs(parse(LOOP)) == ["topic", "n", "limit", "extra"]


def test_inputs_read_before_assignment() -> None:
    assert inputs(parse('x = int(x)\ny = 3\n"{x} {y} {z} [H] {H}"')) == ["x", "z"]
    assert inputs(parse('"[A]"\nA += suffix\n"{A}"')) == ["suffix"]
    assert inputs(parse('import math\n"{math.pi} {w}"')) == ["w"]
    # a name assigned first and read later is not an input
    assert inputs(parse('y = 1\ny = y + k\n"{y}"')) == ["k"]


def test_inputs_of_python_constructs() -> None:
    src = '''import os
def helper(v):
    return v + offset
argmax
    from json import dumps
    class C:
        size = width
    def local(a, *rest, key=default, **kw):
        return a + len(rest) + kw.get(key, 0) + inner_only
    async def fetch():
        return await source()
    with open(path) as fh:
        pass
    try:
        pass
    except ValueError as exc:
        print(exc)
    while (m := next_item()) is not None:
        "{dumps(m)} {os.sep} {helper(1)} {lmql} [X]"
    total = sum(v for v in values)
'''
    # names read inside functions and classes count too: they come from the inputs when called
    assert inputs(parse(src)) == ["offset", "width", "default", "inner_only", "source", "path", "next_item", "values"]


@pytest.mark.parametrize(
    "source",
    [
        '"a\\n {topic} {n}"',  # the `n` of `\n` is not a use of n
        '# n is a count\n"{topic} {n}"',  # nor is a comment
        'sample(n=2)\n    "{topic} {n}"',  # nor a keyword argument
    ],
)
def test_inputs_order_is_the_order_of_use(source: str) -> None:
    assert inputs(parse(source)) == ["topic", "n"]


def test_unknown_decoder_call_is_python_and_its_name_an_input() -> None:
    q = parse('greedy(n=2)\n"[X]"')
    assert q.decoder is None and inputs(q) == ["greedy"]


def test_inputs_from_constraint_expressions_and_tactics() -> None:
    q = parse('"[X: answer(q)] [Y]" where Y in options and len(Y) < n\n"[@post Z]"\n')
    assert inputs(q) == ["answer", "q", "options", "n", "post"]


# ---- constraints per hole occurrence -------------------------------------------------------------------------


def test_hole_constraints_combine_annotation_inline_and_global() -> None:
    q = parse(LOOP)
    hc = hole_constraints(q)
    assert set(hc) == {0, 1, 2}
    assert hc[0] == nodes.And(
        (nodes.Regex("FACT", "[A-Z][a-z ]+"), nodes.StopsBefore("FACT", "\n"), nodes.LenCmp("FACT", "<", 30))
    )
    assert hc[1] == hc[2] == nodes.OneOf("VERDICT", ("ok", "no"))
    assert hole_slots(q) == {0: "FACT", 1: "VERDICT", 2: "VERDICT"}


def test_hole_constraints_single_and_none() -> None:
    hc = hole_constraints(parse('"[A: int] [B] [C]" where len(C) < 3 or INT(C)'))
    assert hc == {0: nodes.IsInt("A"), 1: None, 2: nodes.Or((nodes.LenCmp("C", "<", 3), nodes.IsInt("C")))}


def test_hole_constraints_split_by_variable() -> None:
    hc = hole_constraints(parse('"[X] [Y]"\nwhere INT(X) and (len(Y) < 4 and STOPS_AT(Y, ".")) and len(X) < 3'))
    assert hc[0] == nodes.And((nodes.IsInt("X"), nodes.LenCmp("X", "<", 3)))
    assert hc[1] == nodes.And((nodes.LenCmp("Y", "<", 4), nodes.StopsAt("Y", ".")))


def test_duplicate_constraints_are_not_repeated() -> None:
    hc = hole_constraints(parse('"[X: int]" where INT(X) and len(X) < 3\nwhere len(X) < 3'))
    assert hc[0] == nodes.And((nodes.IsInt("X"), nodes.LenCmp("X", "<", 3)))


def test_inline_where_applies_to_its_own_string_only() -> None:
    q = parse('"a [X]" where INT(X)\n"b [X]"\n"c [X]" where len(X) < 4\nwhere STOPS_AT(X, ".")')
    hc = hole_constraints(q)
    assert hc == {
        0: nodes.And((nodes.IsInt("X"), nodes.StopsAt("X", "."))),
        1: nodes.StopsAt("X", "."),
        2: nodes.And((nodes.LenCmp("X", "<", 4), nodes.StopsAt("X", "."))),
    }
    assert hole_slots(q) == {0: "X", 1: "X#2", 2: "X#3"}


def test_same_hole_with_different_inline_constraints_gets_two_slots() -> None:
    q = parse('argmax\n    "[X]" where len(X) < 3\n    "[X]" where INT(X)\n    "[X]" where len(X) < 3\n    "[X] [Y]"\n')
    hc = hole_constraints(q)
    assert hc == {0: nodes.LenCmp("X", "<", 3), 1: nodes.IsInt("X"), 2: nodes.LenCmp("X", "<", 3), 3: None, 4: None}
    # occurrences with equal constraints share a slot; slots are numbered by first appearance
    assert hole_slots(q) == {0: "X", 1: "X#2", 2: "X", 3: "X#3", 4: "Y"}
    assert holes(q) == ["X", "Y"]


def test_dyn_constraints_are_kept_per_occurrence() -> None:
    q = parse('"[X]" where X in options\n"[X]" where X in other\n"[X]" where X in options\n')
    hc = hole_constraints(q)
    assert hc[0] == hc[2] == nodes.OneOf("X", nodes.Dyn("options"))
    assert hc[1] == nodes.OneOf("X", nodes.Dyn("other"))
    assert hole_slots(q) == {0: "X", 1: "X#2", 2: "X"}


@pytest.mark.parametrize(
    "where",
    ["INT(X) or INT(Y)", "not (INT(X) and INT(Y))", "INT(X) and (len(Y) < 3 or len(X) < 3)"],
)
def test_or_not_across_variables_rejected(where: str) -> None:
    with pytest.raises(QueryTypeError, match="combined with 'and'"):
        parse(f'"[X] [Y]"\nwhere {where}')
    with pytest.raises(QueryTypeError, match="combined with 'and'"):
        parse(f'"[X] [Y]" where {where}')


def test_holes_may_repeat_anywhere() -> None:
    # LMQL semantics: a later occurrence generates the variable again and rebinds it
    for src in [
        '"[X] [X]"',
        '"[X]"\n"[X]"',
        '"[X]"\nif a:\n    "[X]"\n',
        'for i in range(3):\n    "[X]"\n    "[Y] [Y]"\n',
        'if a:\n    "[X]"\nelse:\n    "[X]"\n',
    ]:
        q = parse(src)
        assert [h.index for h in q.holes()] == list(range(len(q.holes())))


def test_inline_where_naming_another_strings_hole() -> None:
    with pytest.raises(QueryTypeError, match="'X' is not a hole of this query string") as info:
        parse('"[X]"\n"[Y]" where len(Y) < 3 and INT(X)')
    assert (info.value.line, info.value.column) == (2, 32)
    with pytest.raises(QueryTypeError, match="unknown variable 'Z' in where clause") as info:
        parse('"[X]" where len(Z) < 3')
    assert (info.value.line, info.value.column) == (1, 17)


def test_distribution_must_be_last_hole() -> None:
    q = parse('"a [A] b [B]"\ndistribution B in ["x", "y"]')
    assert q.distribution == nodes.Distribution("B", ("x", "y"))
    with pytest.raises(QueryTypeError, match="unknown distribution variable 'C'"):
        parse('"a [A]"\ndistribution C in ["x"]')
    with pytest.raises(QueryTypeError, match="last hole of the prompt"):
        parse('"a [A] b [B]"\ndistribution A in ["x"]')
    # an inline distribution scores its own string's last hole
    q = parse('"a [A]" distribution A in ["x"]\n"b [B]"')
    assert q.prompts[0].distribution == nodes.Distribution("A", ("x",)) and q.distribution is None
    with pytest.raises(QueryTypeError, match="only one distribution clause"):
        parse('"a [A]" distribution A in ["x"]\n"b [B]"\ndistribution B in ["y"]')


@pytest.mark.parametrize(
    ("source", "line", "column", "fragment"),
    [
        ("argmax\n    return 1\n    yield 2", 3, 5, "'yield' is not allowed"),
        ('argmax\n    "[X]"\n    nonlocal q', 3, 5, "no binding for nonlocal 'q'"),
        ("argmax\n    def f():\n        nonlocal zz", 3, 9, "no binding for nonlocal 'zz'"),
        ('argmax\n    x = 1\n    "[X]"\n    global x', 4, 5, "assigned to before global declaration"),
        ('x = 1\nargmax\n    "{x}"\n    global x', 4, 5, "used prior to global declaration"),
        ('nonlocal y\nargmax\n    "[X]"', 1, 1, "not allowed at module level"),
        ('return 1\nargmax\n    "[X]"', 1, 1, "'return' outside function"),
        ('await f()\nargmax\n    "[X]"', 1, 1, "'await' outside function"),
    ],
)
def test_python_the_compiler_refuses_is_a_located_syntax_error(source: str, line: int, column: int, fragment: str) -> None:
    """Errors Python finds only when compiling (symbol tables, not the grammar) are located in the query too."""
    with pytest.raises(QuerySyntaxError) as info:
        parse(source, "q.lmql")
    assert fragment in info.value.message, str(info.value)
    assert (info.value.line, info.value.column) == (line, column), str(info.value)


# ---- printing ------------------------------------------------------------------------------------------------


def test_format_constraint() -> None:
    c = nodes.And((nodes.IsInt("X"), nodes.Or((nodes.LenCmp("X", "<", 2), nodes.Not(nodes.Contains("X", "0"))))))
    assert format_constraint(c) == "INT(X) and (len(X) < 2 or not '0' in X)"
    assert format_constraint(nodes.LenCmp("X", "<", nodes.Dyn("n"), tokens=True)) == "len(TOKENS(X)) < {n}"


@pytest.mark.parametrize(
    ("constraint", "text"),
    [
        (nodes.OneOf("X", nodes.Dyn("options")), "X in {options}"),
        (nodes.Not(nodes.OneOf("X", nodes.Dyn("[answer]"))), "not X in {[answer]}"),
        (nodes.StopsAt("X", nodes.Dyn("stop")), "STOPS_AT(X, {stop})"),
        (nodes.StopsBefore("X", nodes.Dyn("stop")), "STOPS_BEFORE(X, {stop})"),
        (nodes.Regex("X", nodes.Dyn("pat")), "REGEX(X, {pat})"),
        (nodes.StartsWith("X", nodes.Dyn("p")), "STARTS_WITH(X, {p})"),
        (nodes.Contains("X", nodes.Dyn("sep")), "{sep} in X"),
    ],
)
def test_format_constraint_with_python_arguments(constraint: nodes.Constraint, text: str) -> None:
    """An argument given as a Python expression prints as {expr}, as LenCmp's bound does."""
    assert format_constraint(constraint) == text


def test_format_query_with_python_arguments() -> None:
    printed = format_query(parse('"[X]" where X in options and len(X) < n\n"[Y]"\ndistribution Y in labels\n'))
    assert '    1: "[X]" where X in {options} and len(X) < {n}\n' in printed
    assert "distribution: Y in {labels}\n" in printed
    assert "    X: X in {options} and len(X) < {n}\n" in printed


def test_format_query_decoder_with_python_arguments() -> None:
    printed = format_query(parse('sample(n=k, temperature=t * 2)\n    "[X]"\n'))
    assert printed.startswith("decoder: sample(n={k}, temperature={t * 2})\n")


def test_decoder_argument_expressions_name_inputs() -> None:
    q = parse('sample(n=k, temperature=t * 2)\n    "[X]"\n')
    assert set(inputs(q)) == {"k", "t"}


def test_format_prompt_string() -> None:
    q = parse('"{:user}a [[b]] {x!r:>3} [@f Y: int] [Z: r\'\\\\d+\'] [W: sub(q)]" where len(W) < 3\n')
    assert format_prompt_string(q.prompts[0]) == (
        "\"{:user}a [[b]] {x!r:>3} [@f Y: int] [Z: '\\\\\\\\d+'] [W: sub(q)]\" where len(W) < 3"
    )


def test_format_query_lists_every_query_string_with_its_line() -> None:
    printed = format_query(parse(LOOP))
    section = printed.split("query strings:\n", 1)[1].split("\nwhere:", 1)[0].splitlines()
    assert section == [
        '    2: "Facts about {topic}:\\n"',
        "    5: \"{i + 1}. [FACT: '[A-Z][a-z ]+']\\n\" where STOPS_BEFORE(FACT, '\\n')",
        '    8: "Too many. [VERDICT]"',
        '    10: "Fine. [VERDICT]"',
        '    11: "{VERDICT} {[f.upper() for f in facts]} {(lambda z: z + extra)(1)}"',
    ]
    assert "    FACT: REGEX(FACT, '[A-Z][a-z ]+') and STOPS_BEFORE(FACT, '\\n') and len(FACT) < 30\n" in printed
    # two occurrences with the same constraint print one slot
    assert printed.split("constraints:\n")[1].splitlines()[1:] == ["    VERDICT: VERDICT in ['ok', 'no']"]


def test_format_query_query_strings_round_trip() -> None:
    """Each printed query string is itself valid query source that prints the same way."""
    printed = format_query(parse(LOOP))
    section = printed.split("query strings:\n", 1)[1].split("\nwhere:", 1)[0].splitlines()
    body = "\n".join(line.split(": ", 1)[1] for line in section)
    again = format_query(parse(body))
    again_section = again.split("query strings:\n", 1)[1].split("\nwhere:", 1)[0].splitlines()
    assert [line.split(": ", 1)[1] for line in again_section] == [line.split(": ", 1)[1] for line in section]


def test_format_query_prints_slots() -> None:
    printed = format_query(parse('"[X]" where INT(X)\n"[X]"\n"[X]" where INT(X)\n'))
    assert printed.split("constraints:\n")[1] == "    X: INT(X)\n    X#2: -\n"


def test_query_to_json() -> None:
    data = query_to_json(parse(LOOP.replace("argmax", "sample(top_k=2, temperature=0.5)")))
    assert data == {
        "decoder": {"name": "sample", "args": {"temperature": 0.5, "top_k": 2}},
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
    slots = query_to_json(parse('"[X]" where INT(X)\n"[X]" where len(X) < 2\n'))
    assert slots["constraints"] == {"X": "INT(X)", "X#2": "len(X) < 2"}
    assert slots["holes"] == ["X"]


def test_query_to_json_distribution_options_are_a_list() -> None:
    data = query_to_json(parse('"[X]"\ndistribution X in ["a", "b"]'))
    assert data["decoder"] is None and data["model"] is None
    assert data["distribution"] == {"var": "X", "options": ["a", "b"]}
