"""The LMQL front end: layout, the body as Python, query strings and their spans, constraints, errors with
positions, goldens, and never-crash on junk."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmqc.compiler import nodes
from lmqc.compiler.checker import format_query, inputs
from lmqc.compiler.parser import parse
from lmqc.compiler.program import build
from lmqc.errors import LmqcError, QuerySyntaxError, QueryTypeError

FIXTURES = Path(__file__).parent / "fixtures"
UPDATE = os.environ.get("LMQC_UPDATE_GOLDEN") == "1"

SEED = '''beam(n=3)
    "Q: Say 'Hello, {name}!'\\n"
    "A: [RESPONSE]"
from "gemma-3-270m"
where len(TOKENS(RESPONSE)) < 20
'''


def error_of(source: str) -> LmqcError:
    with pytest.raises(LmqcError) as info:
        parse(source, "q.lmql")
    return info.value


def prompt_exprs(query: nodes.Query) -> list[ast.Expr]:
    """The body's statement-level string expressions outside nested scopes, in source order."""
    from lmqc.compiler.parser import find_prompts

    return find_prompts(query.body)


def texts(ps: nodes.PromptString) -> str:
    return "".join(p.value for p in ps.parts if isinstance(p, nodes.Text))


# ---- structure ---------------------------------------------------------------------------------------------


def test_seed_query() -> None:
    q = parse(SEED)
    assert q.decoder == nodes.Decoder("beam", (("n", 3),))
    assert q.model == "gemma-3-270m"
    assert q.where == nodes.LenCmp("RESPONSE", "<", 20, tokens=True)
    assert q.distribution is None and q.prologue is None
    first, second = q.prompts
    assert (first.index, second.index) == (0, 1)
    assert first.parts == (nodes.Text("Q: Say 'Hello, "), nodes.Interp("name"), nodes.Text("!'\n"))
    assert second.parts == (nodes.Text("A: "), nodes.Hole("RESPONSE", index=0))
    assert first.where is None and second.where is None
    assert q.source == SEED
    assert isinstance(q.body, ast.Module)
    assert [type(s) for s in q.body.body] == [ast.Expr, ast.Expr]


def test_spans_point_at_source() -> None:
    q = parse(SEED)
    first, second = q.prompts
    assert first.span == nodes.Span(2, 5, 2, 32)
    assert first.parts[0].span == nodes.Span(2, 6, 2, 21)  # Q: Say 'Hello,_
    assert first.parts[1].span == nodes.Span(2, 21, 2, 27)  # {name}
    assert first.parts[2].span == nodes.Span(2, 27, 2, 30)  # !'\n (the escape is two source characters)
    assert second.parts[1].span == nodes.Span(3, 9, 3, 19)  # [RESPONSE]
    assert q.where is not None and q.where.span == nodes.Span(5, 7, 5, 33)
    assert q.decoder is not None and q.decoder.span == nodes.Span(1, 1, 1, 10)
    # the body's ast keeps the source's positions
    exprs = prompt_exprs(q)
    assert [(e.lineno, e.col_offset + 1) for e in exprs] == [(2, 5), (3, 5)]


def test_inline_clause_spans() -> None:
    src = 'argmax\n    "a [X]" where len(X) < 3 and STOPS_AT(X, ".")\n    "b [Y]" distribution Y in ["p", "q"]\n'
    q = parse(src)
    first, second = q.prompts
    assert first.span == nodes.Span(2, 5, 2, 50)  # the string and its inline clause
    assert first.where is not None and first.where.span == nodes.Span(2, 19, 2, 50)
    assert isinstance(first.where, nodes.And) and first.where.items[1].span == nodes.Span(2, 34, 2, 50)
    assert second.distribution == nodes.Distribution("Y", ("p", "q"))
    assert second.distribution.span == nodes.Span(3, 13, 3, 41)  # from the keyword to the options' end
    assert q.distribution is None and q.where is None


def test_spans_in_a_multiline_string() -> None:
    q = parse('argmax\n    """one\n    two {x} [X]"""\n')
    text, interp, text2, hole = q.prompts[0].parts
    assert text == nodes.Text("one\ntwo ") and text.span == nodes.Span(2, 8, 3, 9)
    assert interp.span == nodes.Span(3, 9, 3, 12)
    assert text2 == nodes.Text(" ")
    assert hole == nodes.Hole("X") and hole.span == nodes.Span(3, 13, 3, 16)
    assert q.prompts[0].span == nodes.Span(2, 5, 3, 19)


def test_body_only_docstring_form() -> None:
    q = parse('"Q: Say \'Hello, {name}!\'\\n"\n"A: [RESPONSE]" where len(TOKENS(RESPONSE)) < 20\n')
    assert q.decoder is None and q.model is None and q.where is None
    assert q.prompts[0].where is None
    assert q.prompts[1].where == nodes.LenCmp("RESPONSE", "<", 20, tokens=True)


def test_uniformly_indented_body_only_form() -> None:
    q = parse('    "Q: [A]"\n    "R: [B]" where INT(B)\n')
    assert [h.name for h in q.holes()] == ["A", "B"]
    assert q.prompts[1].where == nodes.IsInt("B")
    assert [(e.lineno, e.col_offset + 1) for e in prompt_exprs(q)] == [(1, 5), (2, 5)]


def test_one_line_query() -> None:
    q = parse('argmax "Hello [X]" from "m" where STOPS_AT(X, ".") and len(X) < 10')
    assert q.decoder == nodes.Decoder("argmax")
    assert q.model == "m"
    assert q.where == nodes.And((nodes.StopsAt("X", "."), nodes.LenCmp("X", "<", 10)))
    (ps,) = q.prompts
    assert ps.parts == (nodes.Text("Hello "), nodes.Hole("X"))
    assert ps.span == nodes.Span(1, 8, 1, 19) and ps.parts[1].span == nodes.Span(1, 15, 1, 18)
    assert ps.where is None  # `where` after `from` is the query's clause, not an inline one


def test_one_line_decoder_with_a_body_below() -> None:
    src = 'sample(n=2) "a [X]" where len(X) < 3\n    if X:\n        "b [Y]" where INT(Y)\nfrom "m"\n'
    q = parse(src)
    assert q.decoder == nodes.Decoder("sample", (("n", 2),))
    assert [ps.where for ps in q.prompts] == [nodes.LenCmp("X", "<", 3), nodes.IsInt("Y")]
    exprs = prompt_exprs(q)
    # the first statement shares the decoder's line: its ast positions are still the source's
    assert [(e.lineno, e.col_offset + 1) for e in exprs] == [(1, 13), (3, 9)]
    assert q.prompts[0].parts[1].span == nodes.Span(1, 16, 1, 19)
    assert isinstance(q.body.body[1], ast.If)


def test_lmql_style_indented_clauses_and_case_insensitive_keywords() -> None:
    q = parse('ARGMAX\n    "Hello[WHO]"\nFROM\n    "llama.cpp:m.gguf"\nWHERE\n    STOPS_AT(WHO, "\\n") and\n    len(WHO) < 9\n')
    assert q.decoder == nodes.Decoder("argmax")
    assert q.model == "llama.cpp:m.gguf"
    assert q.where == nodes.And((nodes.StopsAt("WHO", "\n"), nodes.LenCmp("WHO", "<", 9)))


def test_continuation_line_starting_with_and() -> None:
    q = parse('"[X]"\nwhere len(X) < 9\n    and STOPS_AT(X, ".")\n')
    assert q.where == nodes.And((nodes.LenCmp("X", "<", 9), nodes.StopsAt("X", ".")))


def test_decoder_arguments_sorted_and_typed() -> None:
    q = parse('sample(temperature=1, n=2, top_p=0.9, seed=7, top_k=40, max_len=64)\n    "[X]"\n')
    assert q.decoder is not None
    assert q.decoder.args == (
        ("max_len", 64),
        ("n", 2),
        ("seed", 7),
        ("temperature", 1.0),
        ("top_k", 40),
        ("top_p", 0.9),
    )
    assert isinstance(q.decoder.arg("temperature"), float)


def test_decoder_variants() -> None:
    assert parse('argmax(n=2)\n    "[X]"').decoder == nodes.Decoder("argmax", (("n", 2),))
    assert parse('BEAM_VAR(n=2)\n    "[X]"').decoder == nodes.Decoder("beam_var", (("n", 2),))
    # options LMQL accepts that mean nothing for a local model: accepted, dropped
    lmql_only = "chunksize=4, openai_chunksize=8, verbose=True, cache=False, show_speculative=True, certificate=True"
    q = parse(f'argmax({lmql_only}, stream=True, step_budget=9, max_len=5)\n    "[X]"')
    assert q.decoder == nodes.Decoder("argmax", (("max_len", 5),))


def test_unknown_decoder_name_is_python() -> None:
    q = parse('greedy(n=2)\n"[X]"')
    assert q.decoder is None
    assert isinstance(q.body.body[0], ast.Expr) and isinstance(q.body.body[0].value, ast.Call)
    assert inputs(q) == ["greedy"]
    # a decoder name used as Python is not a decoder clause either
    q = parse('argmax = 1\nsample.x = 2\n"[X]"')
    assert q.decoder is None and len(q.body.body) == 3


# ---- the body is Python -------------------------------------------------------------------------------------


PYTHON_BODY = '''import json
from dataclasses import dataclass
LIMIT = 3

def helper(x):
    "a docstring of the prologue"
    return x * 2

argmax
    from math import sqrt
    @dataclass
    class Item:
        "a docstring, not a query string"
        name: str
    async def fetch(v):
        "nor this"
        return v
    items = []
    i = 0
    while True:
        i += 1
        if i > LIMIT:
            break
        if i == 2:
            continue
        "Item {i}: [NAME]\\n" where STOPS_AT(NAME, "\\n")
        items.append(Item(NAME))
    else:
        pass
    try:
        v = await fetch(helper(1))
    except ValueError as exc:
        v = str(exc)
    finally:
        pass
    with open(path) as f:
        "File: {await fetch(f.name)!r:>5} [X]"
    if not items:
        return None
    "Done {json.dumps([it.name for it in items])} {sqrt(4)} {(lambda: 'not a prompt')()}"
    return items
from "gemma-3-270m"
where len(X) < 5
'''


def test_python_constructs_in_the_body() -> None:
    q = parse(PYTHON_BODY)
    kinds = [type(s).__name__ for s in q.body.body]
    assert kinds == [
        "ImportFrom", "ClassDef", "AsyncFunctionDef", "Assign", "Assign", "While", "Try", "With", "If", "Expr",
        "Return",
    ]  # fmt: skip
    assert q.body.body[1].decorator_list[0].id == "dataclass"  # type: ignore[attr-defined]
    # docstrings of classes and functions are Python, not query strings
    assert [ps.span.line for ps in q.prompts] == [26, 37, 40]
    assert [ps.index for ps in q.prompts] == [0, 1, 2]
    assert [h.name for h in q.holes()] == ["NAME", "X"]
    assert q.prompts[0].where == nodes.StopsAt("NAME", "\n")
    assert q.prompts[1].parts[1] == nodes.Interp("await fetch(f.name)", "r", ">5")
    assert q.where == nodes.LenCmp("X", "<", 5)
    assert q.model == "gemma-3-270m"
    assert inputs(q) == ["path"]  # LIMIT/helper/json come from the prologue; the rest is bound in the body
    program = build(q)
    assert "('await', fetch(helper(1)))" in program.source  # `await` in the body hands the awaitable over
    assert "(yield ('await', fetch(f.name)))!r:>5" in program.source  # ... and inside {...}


def test_prologue_is_the_python_before_the_decoder() -> None:
    q = parse(PYTHON_BODY)
    assert q.prologue is not None
    assert [type(s).__name__ for s in q.prologue.body] == ["Import", "ImportFrom", "Assign", "FunctionDef"]
    assert q.prologue.body[3].lineno == 5  # type: ignore[attr-defined]
    assert q.body.body[0].lineno == 10  # type: ignore[attr-defined]
    # no decoder clause: everything is body, and a string at the top is a query string
    q = parse('import math\n"{math.pi} [X]"\n')
    assert q.prologue is None and len(q.prompts) == 1


def test_strings_in_nested_scopes_are_not_query_strings() -> None:
    src = 'argmax\n    f = lambda: "no [A]"\n    def g():\n        "no [B]"\n    class C:\n        "no [C]"\n    "yes [D]"\n'
    q = parse(src)
    assert [h.name for h in q.holes()] == ["D"]
    # ... but strings inside any statement block of the body are
    q = parse('argmax\n    for i in x:\n        while y:\n            with z:\n                try:\n                    "[A]"\n'
              '                except E:\n                    "[B]"\n')  # fmt: skip
    assert [h.name for h in q.holes()] == ["A", "B"]


def test_control_flow() -> None:
    src = '''argmax
    "List:\\n"
    items = []
    for i in range(3):
        "- [ITEM]\\n" where STOPS_BEFORE(ITEM, "\\n")
        items.append(ITEM)
    if len(items) > 2:
        "Many [A]"
    elif items:
        "Few [B]"
    else:
        pass
    "Done {len(items)}"
from "gemma-3-270m"
'''
    q = parse(src)
    loop = q.body.body[2]
    assert isinstance(loop, ast.For) and ast.unparse(loop.iter) == "range(3)"
    assert isinstance(loop.body[0], ast.Expr) and loop.body[0].lineno == 5
    branch = q.body.body[3]
    assert isinstance(branch, ast.If) and ast.unparse(branch.test) == "len(items) > 2"
    assert [ps.span.line for ps in q.prompts] == [2, 5, 8, 10, 13]
    assert q.prompts[1].where == nodes.StopsBefore("ITEM", "\n")
    assert [(h.name, h.index) for h in q.holes()] == [("ITEM", 0), ("A", 1), ("B", 2)]
    assert q.prompts[4].parts[1] == nodes.Interp("len(items)")


def test_one_line_blocks_and_multiline_python() -> None:
    q = parse('xs = [1,\n      2]\nfor x in xs: "[A]"\nif xs: "[B]" where INT(B)\n')
    assert isinstance(q.body.body[0], ast.Assign) and q.body.body[0].end_lineno == 2
    assert isinstance(q.body.body[1], ast.For) and isinstance(q.body.body[2], ast.If)
    assert q.prompts[1].where == nodes.IsInt("B")


def test_where_and_from_as_python_names() -> None:
    q = parse('where = 3\nfrom_ = where\nfrom os import path\n"[X] {where}"\n')
    assert q.where is None and q.model is None
    assert [type(s).__name__ for s in q.body.body] == ["Assign", "Assign", "ImportFrom", "Expr"]


def test_await_in_body_and_interpolation() -> None:
    q = parse('argmax\n    v = await f(1)\n    "{await g(v)} [X]"\n')
    assert isinstance(q.body.body[0].value, ast.Await)  # type: ignore[attr-defined]
    assert q.prompts[0].parts[0] == nodes.Interp("await g(v)")
    assert inputs(q) == ["f", "g"]


# ---- query strings ------------------------------------------------------------------------------------------


def test_escapes_and_string_forms() -> None:
    q = parse('"a [[b]] {{c}} \\t\\x41\\u00e9\\N{BULLET}"\nr"raw \\n [X]"\n"""tri\nple [Y]"""\n\'single [Z: int]\'\n')
    first = q.prompts[0]
    assert first.parts == (nodes.Text("a [b] {c} \tA\u00e9\u2022"),)
    assert q.prompts[1].parts == (nodes.Text("raw \\n "), nodes.Hole("X", index=0))
    assert q.prompts[2].parts == (nodes.Text("tri\nple "), nodes.Hole("Y", index=1))
    assert q.prompts[3].parts == (nodes.Text("single "), nodes.Hole("Z", nodes.IsInt("Z"), index=2))


def test_implicit_concatenation_is_one_query_string() -> None:
    q = parse('argmax\n    "a " "b [X]"\n    ("c "\n     "d [Y]")\n')
    assert [texts(ps) for ps in q.prompts] == ["a b ", "c d "]
    assert q.prompts[0].parts[1].span == nodes.Span(2, 13, 2, 16)
    assert q.prompts[1].parts[1].span == nodes.Span(4, 9, 4, 12)


def test_multiline_strings_lose_the_body_indentation() -> None:
    q = parse('argmax\n    """a\n    b [X]"""\n')
    assert q.prompts[0].parts == (nodes.Text("a\nb "), nodes.Hole("X"))
    # only the body's indentation goes; deeper indentation stays
    q = parse('argmax\n    """a\n      b\n    c [X]"""\n')
    assert texts(q.prompts[0]) == "a\n  b\nc "
    # in a deeper block, only the body's indentation goes (LMQL dedents the query, not each block)
    q = parse('argmax\n    if x:\n        """a\n        b [X]"""\n')
    assert texts(q.prompts[0]) == "a\n    b "
    # at the top level there is nothing to remove
    assert texts(parse('"""a\n    b [X]"""\n').prompts[0]) == "a\n    b "


def test_dedent_touches_only_leading_source_whitespace() -> None:
    # a continuation line indented less than the body: its leading spaces go, the text's own spaces stay
    q = parse('argmax\n        """a\n    b c [X]"""\n')
    assert texts(q.prompts[0]) == "a\nb c "
    # an escape at the start of a continuation line is text, not indentation
    q = parse('argmax\n    """a\n\\tb\n    \\t c [X]"""\n')
    assert texts(q.prompts[0]) == "a\n\tb\n\t c "


def test_hole_annotations() -> None:
    q = parse('"[A: int] [B: r\'[0-9]{4}\'] [C: \'\'\'x]y\'\'\'] [D: str] [E: answer(q, k=2)] [F: mod.fn]"\n')
    assert q.holes() == [
        nodes.Hole("A", nodes.IsInt("A"), index=0),
        nodes.Hole("B", nodes.Regex("B", "[0-9]{4}"), index=1),
        nodes.Hole("C", nodes.Regex("C", "x]y"), index=2),
        nodes.Hole("D", index=3),  # str is the default type
        nodes.Hole("E", tactic="answer(q, k=2)", index=4),  # a nested query
        nodes.Hole("F", tactic="mod.fn", index=5),
    ]
    assert inputs(q) == ["answer", "q", "mod"]


def test_hole_decorators() -> None:
    q = parse('"[@f X] [@mod.g(1, k=2) @h Y: int]"\n')
    x, y = q.holes()
    assert x == nodes.Hole("X", decorators=("f",))
    assert y == nodes.Hole("Y", nodes.IsInt("Y"), index=1, decorators=("mod.g(1, k=2)", "h"))
    assert y.span == nodes.Span(1, 9, 1, 35)
    assert inputs(q) == ["f", "mod", "h"]


def test_interpolations_roles_and_format_specs() -> None:
    q = parse('"{:system}Be brief.{ :user }Q: {x!r:>5} {d[\'k\']:^{w}} {a != b} {f(1, 2)!s}{:assistant}[A]"\n')
    parts = q.prompts[0].parts
    assert parts[0] == nodes.Role("system") and parts[0].span == nodes.Span(1, 2, 1, 11)
    assert parts[2] == nodes.Role("user")
    assert parts[4] == nodes.Interp("x", "r", ">5") and parts[4].span == nodes.Span(1, 32, 1, 40)
    assert parts[6] == nodes.Interp("d['k']", "", "^{w}")
    assert parts[8] == nodes.Interp("a != b")  # `!=` is an operator, not a conversion
    assert parts[10] == nodes.Interp("f(1, 2)", "s")
    assert parts[11] == nodes.Role("assistant")
    assert parts[12] == nodes.Hole("A")


def test_format_specs_have_f_string_semantics() -> None:
    """{x:>{w}}: a replacement field inside the spec is evaluated, as in an f-string."""
    from lmqc.compiler.program import FUNCTION

    q = parse('"<{x:>{w}}> <{y!r:^5}> <{x:*^{w + 2}.1}> [X]"\n')
    assert q.prompts[0].parts[1] == nodes.Interp("x", "", ">{w}")
    program = build(q)
    assert inputs(q) == ["x", "w", "y"]
    namespace: dict[str, object] = {"x": "ab", "w": 4, "y": "c"}
    exec(program.code, namespace)
    events = namespace[FUNCTION](*(namespace[p] for p in program.params))  # type: ignore[operator]
    assert next(events) == ("text", "<  ab> < 'c' > <**a***> ")


def test_same_hole_name_in_several_strings() -> None:
    q = parse('"[X]" where len(X) < 3\n"[X] [X]" where INT(X)\nfor i in y:\n    "[X]"\n')
    assert [(h.name, h.index) for h in q.holes()] == [("X", 0), ("X", 1), ("X", 2), ("X", 3)]
    assert q.prompts[0].where == nodes.LenCmp("X", "<", 3)
    assert q.prompts[1].where == nodes.IsInt("X")
    assert q.prompts[2].where is None


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("len(X) < 5", nodes.LenCmp("X", "<", 5)),
        ("len(X) <= 5", nodes.LenCmp("X", "<=", 5)),
        ("len(X) > 5", nodes.LenCmp("X", ">", 5)),
        ("len(X) >= 5", nodes.LenCmp("X", ">=", 5)),
        ("len(X) == 5", nodes.LenCmp("X", "==", 5)),
        ("5 > len(X)", nodes.LenCmp("X", "<", 5)),
        ("len(TOKENS(X)) < 7", nodes.LenCmp("X", "<", 7, tokens=True)),
        ("2 < len(X) <= 5", nodes.And((nodes.LenCmp("X", ">", 2), nodes.LenCmp("X", "<=", 5)))),
        ('X in ["a", \'b\']', nodes.OneOf("X", ("a", "b"))),
        ('X in ("a", "b", "a")', nodes.OneOf("X", ("a", "b"))),
        ('X == "yes"', nodes.OneOf("X", ("yes",))),
        ('"yes" == X', nodes.OneOf("X", ("yes",))),
        ('X != "no"', nodes.Not(nodes.OneOf("X", ("no",)))),
        ('X not in ["a"]', nodes.Not(nodes.OneOf("X", ("a",)))),
        ("INT(X)", nodes.IsInt("X")),
        ('REGEX(X, r"\\d+")', nodes.Regex("X", "\\d+")),
        ('STOPS_AT(X, ".")', nodes.StopsAt("X", ".")),
        ('STOPS_BEFORE(X, "\\n")', nodes.StopsBefore("X", "\n")),
        ('STARTS_WITH(X, "A")', nodes.StartsWith("X", "A")),
        ('"s" in X', nodes.Contains("X", "s")),
        ('not "s" in X', nodes.Not(nodes.Contains("X", "s"))),
        ('"s" not in X', nodes.Not(nodes.Contains("X", "s"))),
        # LMQL's lowercase spellings
        ('stops_at(X, ".")', nodes.StopsAt("X", ".")),
        ('stops_before(X, ".")', nodes.StopsBefore("X", ".")),
        ("int(X)", nodes.IsInt("X")),
        ('regex(X, "[a-z]+")', nodes.Regex("X", "[a-z]+")),
        ("len(tokens(X)) < 3", nodes.LenCmp("X", "<", 3, tokens=True)),
        # arguments given as Python expressions, evaluated when the hole starts
        ("X in options", nodes.OneOf("X", nodes.Dyn("options"))),
        ("X in cfg.choices[1:]", nodes.OneOf("X", nodes.Dyn("cfg.choices[1:]"))),
        ("X == answer", nodes.OneOf("X", nodes.Dyn("[answer]"))),
        ("len(X) < n", nodes.LenCmp("X", "<", nodes.Dyn("n"))),
        ("len(TOKENS(X)) <= n + 1", nodes.LenCmp("X", "<=", nodes.Dyn("n + 1"), tokens=True)),
        ("STOPS_AT(X, stop)", nodes.StopsAt("X", nodes.Dyn("stop"))),
        ('STOPS_BEFORE(X, f"{q}!")', nodes.StopsBefore("X", nodes.Dyn('f"{q}!"'))),
        ("REGEX(X, patterns[0])", nodes.Regex("X", nodes.Dyn("patterns[0]"))),
        ("seps[0] in X", nodes.Contains("X", nodes.Dyn("seps[0]"))),
        (
            'INT(X) and (len(X) < 3 or (len(X) > 9 and not "0" in X))',
            nodes.And(
                (
                    nodes.IsInt("X"),
                    nodes.Or(
                        (
                            nodes.LenCmp("X", "<", 3),
                            nodes.And((nodes.LenCmp("X", ">", 9), nodes.Not(nodes.Contains("X", "0")))),
                        )
                    ),
                )
            ),
        ),
        ("(INT(X) and len(X) < 3) and len(X) > 1", nodes.And((nodes.IsInt("X"), nodes.LenCmp("X", "<", 3), nodes.LenCmp("X", ">", 1)))),
        ("INT(X) or len(X) < 3 or len(X) > 1", nodes.Or((nodes.IsInt("X"), nodes.LenCmp("X", "<", 3), nodes.LenCmp("X", ">", 1)))),
    ],
)
def test_constraints_normalize(where: str, expected: nodes.Constraint) -> None:
    assert parse(f'"[X]"\nwhere {where}\n').where == expected
    assert parse(f'"[X]" where {where}\n').prompts[0].where == expected


def test_dyn_spans_and_inputs() -> None:
    q = parse('"[X]" where X in options and len(X) < limit\n')
    assert isinstance(q.prompts[0].where, nodes.And)
    one_of, length = q.prompts[0].where.items
    assert one_of.options.span == nodes.Span(1, 18, 1, 25)  # type: ignore[union-attr]
    assert length.bound.span == nodes.Span(1, 39, 1, 44)  # type: ignore[union-attr]
    assert inputs(q) == ["options", "limit"]


def test_distribution() -> None:
    q = parse('"Review: {r}\\nSentiment: [CLS]"\ndistribution CLS in ["pos", "neg"]\n')
    assert q.distribution == nodes.Distribution("CLS", ("pos", "neg"))
    assert q.distribution.span == nodes.Span(2, 1, 2, 35)
    q = parse('"[X]"\n"[CLS]" distribution CLS in labels\n')
    assert q.distribution is None
    assert q.prompts[1].distribution == nodes.Distribution("CLS", nodes.Dyn("labels"))
    assert inputs(q) == ["labels"]


def test_comments_and_blank_lines() -> None:
    q = parse('# inputs: none\n\nargmax  # the decoder\n    # a comment\n\n    "[X]"  # trailing\nfrom "m"\n# end')
    assert q.model == "m" and len(q.prompts) == 1 and q.prompts[0].span.line == 6


def test_query_without_query_strings() -> None:
    q = parse('argmax\n    x = 1\nfrom "m"\n')
    assert q.prompts == () and q.holes() == [] and q.model == "m"


# ---- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "kind", "line", "column", "fragment"),
    [
        # constraints
        ('"A: [X]"\nwhere len(RESPONS) < 10', QueryTypeError, 2, 11, "unknown variable 'RESPONS'"),
        ('"A: [RESPONSE]"\nwhere len(RESPONS) < 10', QueryTypeError, 2, 11, "did you mean 'RESPONSE'"),
        ('"[X]"\n"[Y]" where len(X) < 3', QueryTypeError, 2, 17, "not a hole of this query string"),
        ('"[X]" where STOPS_AT(X, 3)', QueryTypeError, 1, 25, "STOPS_AT expects a string"),
        ('"[X]" where STOPS_AT(X)', QueryTypeError, 1, 13, "takes 2 arguments"),
        ('"[X]" where len(X) < "a"', QueryTypeError, 1, 22, "integer"),
        ('"[X]" where len(X) < -1', QueryTypeError, 1, 22, "negative"),
        ('"[X]" where len(X) < 2.5', QueryTypeError, 1, 22, "integer"),
        ('"[X]" where len(X) != 3', QueryTypeError, 1, 20, "unsupported comparison for lengths"),
        ('"[X]" where (len(X)) != 3', QueryTypeError, 1, 22, "unsupported comparison for lengths"),
        ('"[X]" where X < 3', QueryTypeError, 1, 15, "unsupported comparison"),
        ('"[X]" where 3 in 4', QueryTypeError, 1, 15, "unsupported use of 'in'"),
        ('"[X]" where STOPS_AT(X, "")', QueryTypeError, 1, 25, "non-empty"),
        ('"[X]" where STOPS_BEFORE(X, \'\')', QueryTypeError, 1, 29, "non-empty"),
        ('"[X]" where "" in X', QueryTypeError, 1, 13, "must not be empty"),
        ('"[X]" where REGEX(X, r"ab[c")', QueryTypeError, 1, 26, "invalid regular expression"),
        ('"[X]" where X in []', QueryTypeError, 1, 18, "empty list of options"),
        ('"[X]" where X in ["a", 1]', QueryTypeError, 1, 24, "options must be strings"),
        ('"[X]" where X in "abc"', QueryTypeError, 1, 18, "expected a list of strings"),
        ('"[X]" where X', QueryTypeError, 1, 13, "'X' alone is not a constraint"),
        ('"[X]" where INT("X")', QueryTypeError, 1, 17, "INT expects a variable name"),
        ('"[X]" where len(X)', QueryTypeError, 1, 13, "must be compared with a number"),
        ('"[X]" where FOO(X)', QueryTypeError, 1, 13, "unknown constraint function 'FOO'"),
        ('"[X]" where STOP_AT(X, "a")', QueryTypeError, 1, 13, "did you mean STOPS_AT"),
        ('"[X]" where stops_a(X, "a")', QueryTypeError, 1, 13, "did you mean stops_at"),
        ('"[X] [Y]" where len(X) < 3 or len(Y) < 3', QueryTypeError, 1, 17, "combined with 'and'"),
        ('"[X] [Y]" where not (INT(X) and INT(Y))', QueryTypeError, 1, 17, "combined with 'and'"),
        # holes
        ('"[X: r\'a(b\']"', QueryTypeError, 1, 9, "invalid regular expression"),
        ('"[X: 3]"', QueryTypeError, 1, 6, "unsupported hole annotation '3'"),
        ('"[X: 1 + 2]"', QueryTypeError, 1, 6, "unsupported hole annotation"),
        ('"[@1 X]"', QuerySyntaxError, 1, 3, "expected a decorator"),
        ('"A: [X"', QuerySyntaxError, 1, 7, "expected ']'"),
        ('"A: [ ]"', QuerySyntaxError, 1, 5, "variable name"),
        ('"A: [if]"', QuerySyntaxError, 1, 6, "is a Python keyword"),
        ('"A: ]"', QuerySyntaxError, 1, 5, "']]'"),
        ('"A: }"', QuerySyntaxError, 1, 5, "'}}'"),
        # interpolations and role tags
        ('"A: {x +}"', QuerySyntaxError, 1, 6, "invalid Python"),
        ('"A: {}"', QuerySyntaxError, 1, 5, "empty expression"),
        ('"A: {x"', QuerySyntaxError, 1, 5, "never closed"),
        ('"A: {x!q}"', QuerySyntaxError, 1, 7, "invalid conversion"),
        ('"A: {:}"', QuerySyntaxError, 1, 5, "invalid role tag"),
        ('"A: {: two words}"', QuerySyntaxError, 1, 5, "invalid role tag"),
        ('"A: [X]"\n"B: {x:{}}"', QuerySyntaxError, 2, 5, "invalid format spec '{}'"),
        ('"B: {x:{y:{z}}}"', QuerySyntaxError, 1, 5, "invalid format spec"),
        ('argmax "{x +} [X]"', QuerySyntaxError, 1, 10, "invalid Python"),
        # string literals
        ('"abc', QuerySyntaxError, 1, 1, "unterminated string"),
        ('argmax\n    """abc\n', QuerySyntaxError, 2, 5, "unterminated triple-quoted string"),
        ('"\\xZZ"', QuerySyntaxError, 1, 2, "\\x escape"),
        ('x = "ok\\xZ"\n"[X]"', QuerySyntaxError, 1, 8, "\\x escape"),
        ('"[X]"\n"""a\n\\N{NOPE}"""', QuerySyntaxError, 3, 1, "unknown Unicode character name 'NOPE'"),
        ('"[X]" where STOPS_AT(X, "\\xZZ")', QuerySyntaxError, 1, 26, "\\x escape"),
        ('b"[X]"', QuerySyntaxError, 1, 1, "bytes"),
        ('"a\x00"', QuerySyntaxError, 1, 3, "NUL"),
        # decoder
        ("beam(n=0)\n    \"[X]\"", QueryTypeError, 1, 8, "n must be >= 1"),
        ("beam(n=2.5)\n    \"[X]\"", QueryTypeError, 1, 8, "integer"),
        ("sample(temperature=-0.5)\n    \"[X]\"", QueryTypeError, 1, 20, "temperature"),
        ("sample(top_p=0)\n    \"[X]\"", QueryTypeError, 1, 14, "top_p"),
        ("sample(top_p=1.01)\n    \"[X]\"", QueryTypeError, 1, 14, "top_p"),
        ("beam(temperature=1)\n    \"[X]\"", QueryTypeError, 1, 6, "unknown argument 'temperature'"),
        ("argmax(n=1, n=2)\n    \"[X]\"", QueryTypeError, 1, 13, "duplicate decoder argument 'n'"),
        ("sample(2)\n    \"[X]\"", QueryTypeError, 1, 8, "by keyword"),
        ("sample(**kw)\n    \"[X]\"", QueryTypeError, 1, 10, "** is not supported"),
        # distribution
        ('"[X] [Y]"\ndistribution X in ["a", "b"]', QueryTypeError, 2, 14, "must be the last hole"),
        ('"[X] [Y]" distribution X in ["a"]', QueryTypeError, 1, 24, "last hole of its query string"),
        ('"[X]" distribution X in ["a"]\n"[Y]" distribution Y in ["b"]', QueryTypeError, 2, 7, "only one distribution"),
        ('"[X]"\ndistribution X in ["a", "a"]', QueryTypeError, 2, 25, "duplicate"),
        ('"[X]"\ndistribution X in []', QueryTypeError, 2, 19, "at least one"),
        ('"[X]"\ndistribution X in ["a", 1]', QueryTypeError, 2, 25, "strings"),
        ('"[X]"\ndistribution len(X) < 3', QueryTypeError, 2, 14, "distribution VAR in"),
        ('"[X]"\ndistribution Z in ["a"]', QueryTypeError, 2, 14, "unknown distribution variable 'Z'"),
        # clauses
        ("", QuerySyntaxError, 1, 1, "empty query"),
        ("   \n\n", QuerySyntaxError, 1, 1, "empty query"),
        ('"[X]"\nwhere', QuerySyntaxError, 2, 6, "expected where clause"),
        ('"[X]" where len(X) < 3 and', QuerySyntaxError, 1, 27, "invalid where clause"),
        ('"[X]"\nwhere len(X) < 3 and\n  \n', QuerySyntaxError, 2, 21, "invalid where clause"),
        ('"[X]"\nwhere len(X) < 3\nwhere INT(X)', QuerySyntaxError, 3, 1, "duplicate 'where' clause"),
        ('"[X]"\nfrom "a"\nfrom "b"', QuerySyntaxError, 3, 1, "duplicate 'from' clause"),
        ('"[X]"\nfrom 3', QueryTypeError, 2, 6, "model name string"),
        ('"[X]"\nfrom ""', QueryTypeError, 2, 6, "empty model name"),
        ('"[X]" $', QuerySyntaxError, 1, 7, "unexpected character '$'"),
        # Python
        ("x = (1,\n", QuerySyntaxError, 1, 5, "never closed"),
        ("x = = 1\n\"[X]\"", QuerySyntaxError, 1, 5, "invalid Python"),
        ("x = = 1\nargmax\n    \"[X]\"", QuerySyntaxError, 1, 5, "invalid Python"),
        ('argmax "a [X]"\n    y = = 1', QuerySyntaxError, 2, 9, "invalid Python"),
        ("argmax\n    x = 1 where len(X) < 3", QuerySyntaxError, 2, 11, "invalid Python"),
        ('for x in y\n    "a"', QuerySyntaxError, 1, 11, "invalid Python"),
        ('"[X]"\n  "b"', QuerySyntaxError, 2, 3, "unexpected indent"),
        ('argmax\n    "a"\n      "b"', QuerySyntaxError, 3, 7, "unexpected indent"),
        ('if x:\n    "a"\n  "b"', QuerySyntaxError, 3, 3, "unindent"),
        ('argmax\n    if x:\n        "a"\n      "b"', QuerySyntaxError, 4, 7, "unindent"),
        ("for x in y:\n\"a\"", QuerySyntaxError, 2, 1, "indented block"),
        ("break", QuerySyntaxError, 1, 1, "'break' outside loop"),
        ("argmax\n    \"[X]\"\n    if X:\n        break", QuerySyntaxError, 4, 9, "'break' outside loop"),
        ("argmax\n    \"[X]\"\n    continue", QuerySyntaxError, 3, 5, "'continue' not properly in loop"),
        ("argmax\n    \"[X]\"\n    yield X", QuerySyntaxError, 3, 5, "'yield' is not allowed"),
        ("argmax\n    for i in x:\n        y = yield from g()", QuerySyntaxError, 3, 13, "'yield' is not allowed"),
    ],
)
def test_errors_have_positions(source: str, kind: type, line: int, column: int, fragment: str) -> None:
    e = error_of(source)
    assert type(e) is kind, str(e)
    assert fragment in e.message, str(e)
    assert (e.line, e.column) == (line, column), str(e)
    assert str(e).startswith(f"q.lmql:{line}:{column}: ")


def test_error_renders_line_and_caret() -> None:
    e = error_of('"A: [RESPONSE]"\nwhere len(RESPONS) < 10\n')
    assert str(e) == (
        "q.lmql:2:11: unknown variable 'RESPONS' in where clause; did you mean 'RESPONSE'?\n"
        "    where len(RESPONS) < 10\n"
        "              ^"
    )
    e = error_of("argmax\n    \"[X]\"\n    yield X\n")
    assert str(e).splitlines()[1:] == ["        yield X", "        ^"]


def test_python_in_nested_scopes_is_not_refused() -> None:
    # yield/return/break are fine where Python allows them: in functions and loops of the body
    q = parse('argmax\n    def gen():\n        yield 1\n    for i in gen():\n        if i:\n            break\n'
              '        "[X]"\n    return X\n')  # fmt: skip
    assert [h.name for h in q.holes()] == ["X"]


# ---- goldens -----------------------------------------------------------------------------------------------


def _golden(kind: str) -> list[Path]:
    return sorted((FIXTURES / kind).glob("*.lmql"))


@pytest.mark.parametrize("path", _golden("parse"), ids=lambda p: p.stem)
def test_parse_golden(path: Path) -> None:
    actual = format_query(parse(path.read_text(encoding="utf-8"), path.name))
    expected_path = path.with_suffix(".txt")
    if UPDATE:
        expected_path.write_text(actual, encoding="utf-8")
    assert actual == expected_path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", _golden("errors"), ids=lambda p: p.stem)
def test_error_golden(path: Path) -> None:
    with pytest.raises(LmqcError) as info:
        parse(path.read_text(encoding="utf-8"), path.name)
    actual = str(info.value) + "\n"
    expected_path = path.with_suffix(".txt")
    if UPDATE:
        expected_path.write_text(actual, encoding="utf-8")
    assert actual == expected_path.read_text(encoding="utf-8")


def test_goldens_exist() -> None:
    assert len(_golden("parse")) >= 8 and len(_golden("errors")) >= 10
    for path in _golden("parse") + _golden("errors"):
        assert path.with_suffix(".txt").exists(), f"{path.name} has no golden"


# ---- robustness --------------------------------------------------------------------------------------------

_PIECES = [
    '"', "'", "[", "]", "{", "}", "(", ")", "\n", "    ", "\t", ":", "=", ",", ".", "-", "#", "\\", "r", "b", "f",
    "0", "7", "x", "X", "_", "@", "!", "where ", "from ", "and ", "or ", "not ", " in ", "for ", "if ", "else:",
    "elif ", "while ", "def ", "class ", "return ", "yield ", "await ", "break", "try:", "except:", "with ",
    "import ", "lambda ", "argmax", "beam(n=2)", "sample(", "len(", "TOKENS(", "INT(", "REGEX(", "STOPS_AT(",
    "stops_at(", '"""', "'''", "distribution ", "[X]", "[X: int]", "[@f X]", "[X: g(1)]", "{x}", "{x!r:>3}", "{x:>{w}}", "{x:{", "{x:{}}",
    "{:user}", '"a [X]"\n', "\x00", "\r", "\x0c", "\u00e9", "\u2028", "<", "==", "\\N{", "\\x",
]  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_PIECES), max_size=40).map("".join))
def test_junk_from_pieces_never_crashes(source: str) -> None:
    try:
        query = parse(source)
    except LmqcError as e:
        assert e.line is None or e.line >= 1
        assert str(e)
    else:
        assert isinstance(query, nodes.Query)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_random_text_never_crashes(source: str) -> None:
    try:
        parse(source)
    except LmqcError:
        pass


_LINES = [
    'argmax', 'sample(n=2)', '"a [X]"', '"b {x} [Y: int]" where len(Y) < 3', "x = 1", "for i in range(2):",
    "if x:", "else:", "while x:", "def f():", "return 1", "break", "pass", "try:", "except E:", "with x:",
    'from "m"', "where INT(X)", 'distribution X in ["a"]', '"""multi', 'line [Z]"""', "import os", "global x",
    "nonlocal x", "x = await y", "yield x", "async def g():", "class C:", "@dec",
]  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["", "    ", "        "]), st.sampled_from(_LINES)), max_size=10))
def test_junk_from_lines_never_crashes(lines: list[tuple[str, str]]) -> None:
    """Plausible lines at random indentation: Python's parser and compiler errors all come out located."""
    source = "\n".join(indent + line for indent, line in lines)
    try:
        query = parse(source)
    except LmqcError as e:
        assert e.line is None or 1 <= e.line <= source.count("\n") + 1, str(e)
    else:
        assert [h.index for h in query.holes()] == list(range(len(query.holes())))


@settings(max_examples=100, deadline=None)
@given(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    st.sampled_from(['"', "'", '"""', "'''"]),
    st.sampled_from(["", "r"]),
)
def test_prompt_text_round_trips(text: str, quote: str, prefix: str) -> None:
    """Any text, escaped for the prompt and written as a string literal, parses back to the same text."""
    escaped = text.replace("[", "[[").replace("]", "]]").replace("{", "{{").replace("}", "}}")
    literal = prefix + quote + (escaped if prefix else escaped.replace("\\", "\\\\")) + quote
    try:
        query = parse(literal + "\n")
    except LmqcError:
        return  # e.g. the text contains the quote or a newline in a one-line literal
    got = "".join(p.value for p in query.prompts[0].parts if isinstance(p, nodes.Text))
    if prefix == "r":
        if "\\" not in text and quote[0] not in text and "\r" not in text:
            assert got == text
    elif quote[0] not in text and "\\" not in text and "\r" not in text:
        assert got == text


# -- large queries: the generated program and the tokenizer stay proportional ------------------------------------


def _drive(program: object, sent: list[str]) -> tuple[list[tuple], object]:
    """Run a program's generator, sending ``sent`` values to its holes in turn: (events, return value)."""
    from lmqc.compiler.program import FUNCTION, NO_RETURN

    namespace: dict[str, object] = {NO_RETURN: "<no return>", "y": [1, 2]}
    if program.prologue is not None:  # type: ignore[attr-defined]
        exec(program.prologue, namespace)  # type: ignore[attr-defined]
    exec(program.code, namespace)  # type: ignore[attr-defined]
    gen = namespace[FUNCTION](*(namespace[p] for p in program.params))  # type: ignore[attr-defined,operator]
    events: list[tuple] = []
    values = iter(sent)
    value = None
    try:
        while True:
            event = gen.send(value)
            events.append(event)
            value = next(values) if event[0] in ("hole", "dist") else None
    except StopIteration as stop:
        return events, stop.value


def test_runs_of_constant_query_strings_are_one_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long runs of query strings whose events are constants compile to one ``yield from`` statement: the same
    events, sent values and bindings as one statement per event."""
    from lmqc.compiler import program as program_module

    run = "".join(f'    "Q{i}: [X{i % 5}] {{:user}}[Y]\\n"\n    ""\n' for i in range(20))
    source = (
        "argmax\n"
        '    "start {y}"\n'
        + run
        + "    a = X0 + Y\n"
        + "    for i in y:\n"
        + run.replace("\n    ", "\n        ").replace('    "Q', '        "Q', 1)
        + '        "mid [Z: int] {a}"\n'
        + run.replace("\n    ", "\n        ").replace('    "Q', '        "Q', 1)
        + "    return dict(locals())\n"
    )
    q = parse(source)
    compact = program_module._build(q)
    assert "__lmqc_events__" in compact.source and compact.source.count("yield from") == 3
    monkeypatch.setattr(program_module, "RUN_MIN", 10**9)
    inline = program_module._build(q)
    assert "__lmqc_events__" not in inline.source
    sent = [f"v{k}" if k % 7 else str(k) for k in range(400)]
    events, value = _drive(compact, sent)
    assert len(events) > 300 and {"a", "i", "X4", "Y", "Z"} <= set(value)  # type: ignore[arg-type]
    assert (events, value) == _drive(inline, sent)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([
    '"a\\nb"', "'x\\'y'", '"""a"b""c\\"""', "'''q'q\\n'''", "#c'\n", "x = '", '"\\\n cont"', "f'{a!r}\\t'", "\n",
    " ", "(", ")", "r'\\d'", "b'\\x00'", '"', "'", "\\", "'''", '"""', "[X]", "\\\n", "#", "abc", '"\\\\"',
]), max_size=16))
def test_masked_tokenizing_gives_the_same_tokens(pieces: list[str]) -> None:
    """String bodies masked for tokenize (its string regex is quadratic in memory on escapes) give the tokens
    and errors of the source as written."""
    import io
    import re
    import tokenize

    from lmqc.compiler.parser import _generate_tokens

    text = "".join(pieces)

    def tokens(gen: object) -> list[object]:
        out: list[object] = []
        try:
            out.extend((t.type, t.string, t.start, t.end) for t in gen)  # type: ignore[attr-defined]
        except (tokenize.TokenError, SyntaxError) as e:
            out.append((type(e).__name__, str(e)))
        return out

    starts = [0, *(m.end() for m in re.finditer("\n", text))]
    assert tokens(_generate_tokens(text, starts)) == tokens(tokenize.generate_tokens(io.StringIO(text).readline))


# -- the layout's fast scanner gives tokenize's tokens, or leaves the source to tokenize -------------------------

_FRAGMENTS = [
    "x", "where", "len", "X", "_a1", "1", "0.5", "1e3", "0x1F", "1_000", ".5", "'a'", '"b"', "'''t\n'''", '"""q"""',
    "r'\\d'", "f'{x}'", "b'y'", "'é'", "'\\''", "(", ")", "[", "]", "{", "}", ",", ":", "==", "<", "+", "->", "**=",
    ".", "@", " ", "  ", "\n", "\n    ", "\n        ", "# note", "\t", "é", "\\\n", "'open", "!", "$", "?",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=14))
def test_fast_layout_tokens_are_tokenizes(parts):
    import tokenize as tk

    from lmqc.compiler.parser import _SKIP, _fast_tokens, _Text, _tokens
    from lmqc.compiler.qstrings import Errors

    text = "".join(parts)
    fast = _fast_tokens(text)
    if fast is None:
        return  # left to tokenize (and its errors)
    src = _Text(text)
    try:
        slow = [(t.type, t.string, src.offset(t.start), src.offset(t.end))
                for t in _tokens(src, Errors(text, "<q>")) if t.type not in _SKIP]
    except (LmqcError, SyntaxError, tk.TokenError) as e:
        raise AssertionError(f"the fast scanner accepted what tokenize rejects: {text!r} ({e})") from None
    assert fast == slow, text
